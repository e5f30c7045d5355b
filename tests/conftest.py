"""Test set-up: 8 simulated CPU devices, offline hub, and the session fixtures (tiny checkpoints
of every supported family in a temp folder, SmolLM2 and its transformers reference). Builders and
references the tests import live in helpers.py."""

import os

from xla_test_flags import DEVICES, FAST_COMPILE

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", f"{DEVICES} {FAST_COMPILE}")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The CLI turns on JAX's persistent compilation cache in the user's cache folder; the suite's
# in-process CLI calls must not write there, nor switch it on for the rest of their process.
# tests/cli/test_compilation_cache.py turns it on in processes of its own.
os.environ["PROSOCIAL_JAX_COMPILATION_CACHE"] = "off"

import pytest
from helpers import FAMILIES, TinyCheckpoint, build_tiny_chat, build_tiny_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drops every compiled program after each test module. XLA:CPU maps memory for each
    executable it keeps, and the suite's few thousand programs, all kept by the jit caches,
    passed Linux's 65,530 memory maps per process: the next compile then aborted or segfaulted
    (twice in CI, at the same test near the end; 27,000 maps after 4 minutes of tests)."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, TinyCheckpoint]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_checkpoint(family, root / family)
            for family in (*FAMILIES, "llama_mesh", "llama_small")}


@pytest.fixture(params=FAMILIES)
def tiny(request, tiny_checkpoints) -> TinyCheckpoint:
    return tiny_checkpoints[request.param]


@pytest.fixture(scope="session")
def smollm2():
    import prosocial_jax as pj

    return pj.load_model("bundled:smollm2")


@pytest.fixture(scope="session")
def smollm2_torch():
    """transformers' own GGUF loading of the same file: the outside reference."""
    import torch
    import transformers

    from prosocial_jax.models.model import bundled_model_path

    path = bundled_model_path("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory) -> TinyCheckpoint:
    """A tiny random Llama that speaks SmolLM2's tokenizer and chat template (for SFT tests)."""
    return build_tiny_chat(tmp_path_factory.mktemp("tiny_chat"))


def _fault_tally(config):
    import collections

    return config.stash.setdefault(_FAULT_TALLY, collections.Counter())


_FAULT_TALLY = pytest.StashKey()


def pytest_sessionfinish(session):
    """Collects the fault-injection tally (tests/cli/test_faults.py) of this process; an xdist
    worker hands it to the controller, which prints the sum."""
    import sys

    faults = sys.modules.get("test_faults")
    if faults is None:
        return
    if hasattr(session.config, "workeroutput"):
        session.config.workeroutput["fault_tally"] = dict(faults.TALLY)
    else:
        _fault_tally(session.config).update(faults.TALLY)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # xdist, on the controller: a worker finished
    _fault_tally(node.config).update(getattr(node, "workeroutput", {}).get("fault_tally", {}))


def pytest_terminal_summary(terminalreporter):
    """The fault-injection tally, when tests/cli/test_faults.py ran."""
    tally = _fault_tally(terminalreporter.config)
    if tally:
        terminalreporter.write_line(
            f"fault injection: {tally['inputs']} inputs tried, {tally['faults']} faults "
            f"injected, {tally['bystander_bytes']} bytes of bystander files checked, 0 lost")
