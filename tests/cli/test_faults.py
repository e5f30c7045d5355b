"""Fault injection through the real command line: processes killed with SIGKILL (after a
checkpoint, in the middle of a checkpoint write, in the middle of an output-folder write),
output paths that hold other people's files, and a corpus of malformed inputs through every
command. Nothing may be lost, nothing may fail silently, nothing may print a traceback.

The counts (inputs tried, faults injected, bytes of bystander files checked) are printed at the
end of the test run (see conftest.py) and recorded in the README's reliability section.
"""

import collections
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from xla_test_flags import DEVICES, FAST_COMPILE

from prosocial_jax import cli
from prosocial_jax.files import MANIFEST

ROOT = Path(__file__).resolve().parents[2]

TALLY: collections.Counter = collections.Counter()  # read by conftest's terminal summary

SFT_ROWS = [{"prompt": f"Question {i}: name a colour.", "response": f"Colour number {i}."}
            for i in range(12)]
ARM_ATTRIBUTES = ("harmlessness", "empathy")


def _pref_rows(n: int = 24) -> list[dict]:
    rows = []
    for i in range(n):
        kind = ["a", "b", None][i % 3]
        rows.append({"prompt": f"Prompt {i}: how are you?", "response_a": f"Fine {i}, thanks.",
                     "response_b": f"Go away {i}.",
                     "winners": {"harmlessness": "a" if i % 2 else "b", "empathy": kind}})
    return rows


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def work(tiny_chat, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    # The killed and resumed commands share a compilation cache, as a user's do by default
    # (the suite turns it off in-process): resuming then also reads back what the killed run
    # compiled, and each rerun skips those compiles.
    ENV["PROSOCIAL_JAX_COMPILATION_CACHE"] = str(root / "compilation-cache")
    return {"root": root, "model": str(tiny_chat.path),
            "sft": str(_jsonl(root / "sft.jsonl", SFT_ROWS)),
            "prefs": str(_jsonl(root / "prefs.jsonl", _pref_rows()))}


# ---------------------------------------------------------------------------- processes
ENV = {**os.environ, "XLA_FLAGS": f"{DEVICES} {FAST_COMPILE}",
       "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "TQDM_DISABLE": "1"}
# Runs the CLI, after optionally arming one fault (a SIGKILL at a chosen moment).
LAUNCHER = textwrap.dedent("""
    import os, signal, sys
    fault = os.environ.get("FAULT", "")
    def die():
        os.kill(os.getpid(), signal.SIGKILL)
    if fault.startswith("checkpoint-write:"):  # inside orbax, data written, not yet committed
        from orbax.checkpoint._src.path import atomicity
        step = fault.split(":")[1]
        real = atomicity.AtomicRenameTemporaryPath.finalize
        async def finalize(self, *args, **kwargs):
            if self._final_path.name == step:
                die()
            return await real(self, *args, **kwargs)
        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    if fault == "output-write":  # inside the output folder write, half the files there
        from prosocial_jax.models import adapters as pblora
        real_write = pblora.write_adapter_files
        def write_adapter_files(adapter, folder):
            real_write(adapter, folder)
            (folder / "adapter.safetensors").write_bytes(b"half")
            die()
        pblora.write_adapter_files = write_adapter_files
    from prosocial_jax.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _command(args, fault: str = "", processes: int = 1) -> subprocess.Popen:
    """The CLI in a fresh interpreter; with `processes` > 1, that many cooperating processes
    started by launch/local.sh (4 CPU devices each), in their own process group."""
    TALLY["inputs"] += 1
    TALLY["faults"] += bool(fault)
    command = [sys.executable, "-c", LAUNCHER, *args]
    env = {**ENV, "FAULT": fault}
    if processes > 1:
        command = ["bash", str(ROOT / "launch" / "local.sh"), str(processes), *command]
        env.update(XLA_FLAGS=FAST_COMPILE, DEVICES_PER_PROCESS=str(8 // processes))
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, expect: int = 0) -> str:
    """Waits; the run's stderr (with several processes, local.sh streams process 0's stderr
    on its stdout: both are returned)."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == expect, (out + err)[-3000:]
    assert "Traceback" not in err and "Traceback" not in out
    return err + out


def _kill_after_first_checkpoint(args, checkpoint_dir: Path, processes: int = 1) -> None:
    """SIGKILL to every process of the run once its first checkpoint is on disk. (The stderr
    pipe is read only at the end: these runs print little before their first checkpoint.)"""
    proc = _command(args, processes=processes)
    TALLY["faults"] += 1
    first = checkpoint_dir / "checkpoints" / "1"
    deadline = time.time() + 300
    try:
        while not first.exists():
            assert proc.poll() is None, f"ended before its first checkpoint: {proc.stderr.read()}"
            assert time.time() < deadline
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and all its processes
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"


def _steps(folder: Path) -> list[int]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _tensors_equal(a: Path, b: Path, atol: float = 0.0) -> None:
    left, right = load_file(a), load_file(b)
    assert sorted(left) == sorted(right)
    for name in left:
        np.testing.assert_allclose(left[name], right[name], rtol=0, atol=atol, err_msg=name)


def _train_arm(work, out, checkpoints, *extra):
    return ["train-arm", "--model", work["model"], "--train-data", work["prefs"], "--out",
            str(out), "--checkpoint-dir", str(checkpoints), "--mesh", "2x4", "--steps", "8",
            "--batch-size", "8", "--max-len", "48", "--checkpoint-every", "1",
            "--adapter-attributes", ",".join(ARM_ATTRIBUTES), "--adapter-r1", "2",
            "--adapter-r2", "2", "--learning-rate", "0.01", "--beta", "1", *extra]


def test_train_arm_killed_three_ways_loses_nothing(work, tmp_path):
    """SIGKILL after the first checkpoint (to both processes of a 2-process run), then during a
    checkpoint write (one process), then during the output write: each rerun resumes from what
    was saved, whatever the number of processes (the last resume runs as 2 processes again),
    and the result equals an uninterrupted one-process run's up to the order of the
    cross-process sums (last bits: 6e-8 seen)."""
    reference = tmp_path / "reference"
    _finish(_command(_train_arm(work, reference, tmp_path / "reference-ckpt")))
    out, ckpt = tmp_path / "adapter", tmp_path / "ckpt"
    _kill_after_first_checkpoint(_train_arm(work, out, ckpt), ckpt, processes=2)
    assert not out.exists()
    _finish(_command(_train_arm(work, out, ckpt), fault="checkpoint-write:5"), -signal.SIGKILL)
    assert not (ckpt / "checkpoints" / "5").exists() and (ckpt / "checkpoints" / "4").exists()
    err = _finish(_command(_train_arm(work, out, ckpt), processes=2))
    assert f"{ckpt.resolve()}: resuming from its checkpoint at step 4 of 8" in err
    assert f"wrote {out}" in err
    _tensors_equal(reference / "adapter.safetensors", out / "adapter.safetensors", atol=1e-6)
    assert _steps(ckpt) == list(range(1, 9))  # each step once, whatever was interrupted
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _finish(_command(_train_arm(work, out, ckpt, "--overwrite"), fault="output-write"),
            -signal.SIGKILL)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the output is intact
    _finish(_command(_train_arm(work, out, ckpt, "--overwrite")))  # and the next run goes on
    _tensors_equal(reference / "adapter.safetensors", out / "adapter.safetensors", atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "ckpt", "reference",
                                                          "reference-ckpt"]


def test_finetune_killed_after_a_checkpoint_resumes_exactly(work, tmp_path):
    def args(out, ckpt):
        return ["finetune", "--model", work["model"], "--data", work["sft"], "--out", str(out),
                "--checkpoint-dir", str(ckpt), "--mesh", "2x4", "--steps", "8",
                "--batch-size", "4", "--max-len", "64", "--checkpoint-every", "1",
                "--lora-rank", "4", "--learning-rate", "0.01"]

    _finish(_command(args(tmp_path / "reference", tmp_path / "reference-ckpt")))
    out, ckpt = tmp_path / "model", tmp_path / "ckpt"
    _kill_after_first_checkpoint(args(out, ckpt), ckpt)
    _finish(_command(args(out, ckpt)))
    _tensors_equal(tmp_path / "reference" / "model.safetensors", out / "model.safetensors")
    assert _steps(ckpt) == list(range(1, 9))


# ---------------------------------------------------------------------------- bystanders
def _bystander(folder: Path) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "thesis.tex").write_text("years of work " * 100)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "results.csv").write_text("a,b\n1,2\n")
    return _contents(folder)


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _adapter(work, root: Path) -> str:
    import jax

    import prosocial_jax as pj
    from prosocial_jax.models import adapters as pblora

    path = root / "bystander-adapter"
    if not path.exists():
        model = pj.load_model(work["model"])
        pj.save_adapter(
            pblora.init_adapter(model.config, pblora.AdapterConfig(), jax.random.key(0)), path)
    return str(path)


def _output_commands(work, target: Path, fresh: Path) -> dict[str, list[str]]:
    """Every command that writes, pointed at `target` (folders) with `fresh` for the rest."""
    m = work["model"]
    return {
        "finetune --out": ["finetune", "--model", m, "--data", work["sft"], "--out",
                           str(target), "--checkpoint-dir", str(fresh / "c1"), "--steps", "1"],
        "finetune --checkpoint-dir": ["finetune", "--model", m, "--data", work["sft"],
                                      "--out", str(fresh / "o1"), "--checkpoint-dir",
                                      str(target), "--steps", "1"],
        "train-arm --out": ["train-arm", "--model", m, "--train-data", work["prefs"], "--out",
                            str(target), "--checkpoint-dir", str(fresh / "c2"), "--steps", "1"],
        "train-arm --checkpoint-dir": ["train-arm", "--model", m, "--train-data",
                                       work["prefs"], "--out", str(fresh / "o2"),
                                       "--checkpoint-dir", str(target), "--steps", "1"],
        "harm-vector --out": ["harm-vector", "--base", m, "--harmful", m, "--out", str(target)],
        "harm-vector --sweep --out": ["harm-vector", "--sweep", "--base", m, "--harmful", m,
                                      "--out", str(target), "--harmful-limit", "1"],
        "preference-set --out": ["preference-set", "--model", m, "--out", str(target),
                                 "--harmful-limit", "1", "--benign-limit", "1"],
        "compare --out": ["compare", "--base", m, "--direg", m,
                          "--adapter", _adapter(work, work["root"]), "--out", str(target),
                          "--harmful-limit", "1", "--benign-limit", "1"],
    }


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "with --overwrite"])
def test_every_output_command_refuses_a_folder_of_other_files(work, tmp_path, capsys,
                                                              monkeypatch, overwrite):
    target, fresh = tmp_path / "mine", tmp_path / "fresh"
    for name, args in _output_commands(work, target, fresh).items():
        before = _bystander(target)
        TALLY["inputs"] += 1
        TALLY["bystander_bytes"] += sum(map(len, before.values()))
        extra = ["--overwrite"] if overwrite and "checkpoint-dir" not in name else []
        assert cli.main([*args, *extra]) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and str(target) in err[-1], (name, err)
        assert sum("error" in line.lower() for line in err) == 1, (name, err)
        assert _contents(target) == before, name
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], name
    # "--out ." from inside a folder of files
    monkeypatch.chdir(target)
    before = _contents(target)
    args = _output_commands(work, Path("."), fresh)["train-arm --out"]
    assert cli.main([*args, "--overwrite"]) == 2
    assert "current folder" in capsys.readouterr().err
    assert _contents(target) == before


@pytest.mark.parametrize("command", ["generate", "prompts", "harmful-data", "compare"])
def test_file_outputs_are_not_replaced_without_overwrite(work, tmp_path, capsys, command):
    target = tmp_path / "rows.jsonl"
    target.write_text("somebody's rows\n")
    TALLY["inputs"] += 1
    TALLY["bystander_bytes"] += target.stat().st_size
    args = {"generate": ["generate", "--model", work["model"], "--prompt", "hi", "--out"],
            "prompts": ["prompts", "--out"],
            "harmful-data": ["harmful-data", "--model", work["model"], "--out"],
            "compare": ["compare", "--direg", work["model"], "--adapter",
                        _adapter(work, work["root"]), "--out", str(tmp_path / "report"),
                        "--generations"]}[command]
    assert cli.main([*args, str(target)]) == 2
    assert "pass --overwrite to replace it" in capsys.readouterr().err
    assert target.read_text() == "somebody's rows\n"



@pytest.mark.parametrize("command", ["compare", "guidance-sweep"])
def test_generations_inside_the_report_folder_are_refused_before_decoding(work, tmp_path,
                                                                          capsys, command):
    # The report folder is written as a whole at the end: a generations file inside it would
    # make that write refuse after all the decoding (it did, after 6 minutes).
    out = tmp_path / "report"
    adapter = _adapter(work, work["root"])
    args = {"compare": ["compare", "--direg", work["model"], "--adapter", adapter],
            "guidance-sweep": ["guidance-sweep", "--model", work["model"], "--adapter",
                               adapter, "--prompts", work["prefs"]]}[command]
    assert cli.main([*args, "--out", str(out), "--generations",
                     str(out / "generations.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "--generations" in err and "lies inside --out" in err, err
    assert not out.exists()

# ---------------------------------------------------------------------------- malformed inputs
def _model_copy(work, root: Path, name: str) -> Path:
    folder = root / name
    shutil.copytree(work["model"], folder)
    return folder


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _corrupt_models(work, root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model folder or file, text the error must contain)."""
    cases = {}
    folder = _model_copy(work, root, "truncated")
    _truncate(folder / "model.safetensors", 0.5)
    cases["truncated safetensors"] = (folder, "model.safetensors")
    folder = _model_copy(work, root, "bad-header")
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[8:40] = b"\xff" * 32  # the JSON header, garbled
    (folder / "model.safetensors").write_bytes(bytes(raw))
    cases["garbled safetensors header"] = (folder, "model.safetensors")
    folder = _model_copy(work, root, "huge-header")
    raw = bytearray((folder / "model.safetensors").read_bytes())
    raw[:8] = struct.pack("<Q", 10**12)  # a header length past the end of the file
    (folder / "model.safetensors").write_bytes(bytes(raw))
    cases["header length past the end"] = (folder, "model.safetensors")
    for label, edit, expect in (
            ("config: hidden_size as text", lambda c: c.update(hidden_size="32"),
             "hidden_size"),
            ("config: vocab_size missing", lambda c: c.pop("vocab_size"), "vocab_size"),
            ("config: unknown math key", lambda c: c.update(attn_logit_softcapping=50.0),
             "attn_logit_softcapping"),
            ("config: num_hidden_layers null", lambda c: c.update(num_hidden_layers=None),
             "num_hidden_layers")):
        folder = _model_copy(work, root, label.replace(" ", "_").replace(":", ""))
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
        cases[label] = (folder, expect)
    folder = _model_copy(work, root, "config-not-json")
    (folder / "config.json").write_text('{"model_type": "llama",')
    cases["config: not JSON"] = (folder, "config.json")
    for label, value in (("NaN weight", np.nan), ("inf weight", np.inf)):
        folder = _model_copy(work, root, label.replace(" ", "-"))
        tensors = load_file(folder / "model.safetensors")
        tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = value
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        cases[label] = (folder, "model.layers.1.mlp.up_proj.weight")
    from prosocial_jax.models.model import bundled_model_path

    gguf = bundled_model_path("smollm2")
    for label, make in (("truncated GGUF", lambda b: b[: len(b) // 3]),
                        ("GGUF bad magic", lambda b: b"XXXX" + b[4: 4 << 20]),
                        ("GGUF cut in its header", lambda b: b[:4096])):
        path = root / f"{label.replace(' ', '-')}.gguf"
        with open(gguf, "rb") as handle:
            head = handle.read() if "truncated" in label else handle.read(8 << 20)
        path.write_bytes(make(head))
        cases[label] = (path, path.name)
    cases["missing local path that looks like a hub id"] = (
        Path("meta-llama/Llama-3-8B-not-here"), "meta-llama/Llama-3-8B-not-here")
    return cases


@pytest.fixture(scope="module")
def corrupt_models(work):
    return _corrupt_models(work, work["root"] / "corrupt")


def _expect_one_line_error(capsys, args, *needles, out: Path | None = None) -> None:
    TALLY["inputs"] += 1
    TALLY["faults"] += 1
    assert cli.main(args) != 0, args  # returned: no traceback escaped
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    assert sum("error" in line.lower() for line in err) == 1, err  # one line, no traceback
    for needle in needles:
        assert needle in err[-1], (needle, err[-1])
    if out is not None:
        assert not out.exists(), f"{out} was written"


@pytest.mark.parametrize("case", [
    "truncated safetensors", "garbled safetensors header", "header length past the end",
    "config: hidden_size as text", "config: vocab_size missing", "config: unknown math key",
    "config: num_hidden_layers null", "config: not JSON", "NaN weight", "inf weight",
    "truncated GGUF", "GGUF bad magic", "GGUF cut in its header",
    "missing local path that looks like a hub id"])
def test_broken_checkpoints_through_every_command(work, corrupt_models, tmp_path, capsys,
                                                  case):
    path, needle = corrupt_models[case]
    good, adapter = work["model"], _adapter(work, work["root"])
    out = tmp_path / "out"
    for args in (
            ["generate", "--model", str(path), "--prompt", "hi", "--out", str(out)],
            ["finetune", "--model", str(path), "--data", work["sft"], "--out", str(out),
             "--checkpoint-dir", str(tmp_path / "c1"), "--steps", "1"],
            ["train-arm", "--model", str(path), "--train-data", work["prefs"], "--out",
             str(out), "--checkpoint-dir", str(tmp_path / "c2"), "--steps", "1"],
            ["harm-vector", "--base", good, "--harmful", str(path), "--out", str(out)],
            ["compare", "--base", good, "--direg", str(path), "--adapter", adapter, "--out",
             str(out)],
            ["generate", "--model", good, "--prompt", "hi", "--adapter", adapter,
             "--reward", str(path)]):
        _expect_one_line_error(capsys, args, needle, out=out)


def _adapter_variant(work, root: Path, name: str, config_edit=None, tensor_edit=None) -> Path:
    folder = root / name
    shutil.copytree(_adapter(work, work["root"]), folder)
    (folder / MANIFEST).unlink()
    if config_edit:
        config = json.loads((folder / "adapter_config.json").read_text())
        config_edit(config)
        (folder / "adapter_config.json").write_text(json.dumps(config))
    if tensor_edit:
        tensor_edit(folder / "adapter.safetensors")
    return folder


def _nan_factor(path: Path) -> None:
    tensors = load_file(path)
    tensors["model.layers.0.self_attn.v_proj.zeta"][0, 0] = np.nan
    save_file(tensors, path)


@pytest.mark.parametrize("label,config_edit,tensor_edit,needle", [
    ("r1 as text", lambda c: c.update(r1="4"), None, "r1 must be an integer, got '4'"),
    ("lora_alpha negative", lambda c: c.update(lora_alpha=-8.0), None,
     "lora_alpha must be > 0"),
    ("attributes as one string", lambda c: c.update(attributes="empathy"), None,
     "attributes must be a list of strings, got 'empathy'"),
    ("dropout inf", lambda c: c.update(dropout=float("inf")), None, "dropout must be finite"),
    ("unknown key", lambda c: c.update(rank=4), None, "unknown key(s) ['rank']"),
    ("NaN factor", None, _nan_factor, "model.layers.0.self_attn.v_proj.zeta"),
    ("truncated weights", None, lambda p: _truncate(p, 0.4), "adapter.safetensors"),
])
def test_broken_adapters_are_named(work, tmp_path, capsys, label, config_edit, tensor_edit,
                                   needle):
    folder = _adapter_variant(work, tmp_path, "adapter", config_edit, tensor_edit)
    _expect_one_line_error(capsys, ["generate", "--model", work["model"], "--prompt", "hi",
                                    "--adapter", str(folder)], needle)


@pytest.mark.parametrize("preference,needle", [
    ("empathy=-1", ">= 0"), ("kindness=1", "kindness"), ("nan,0,0,0,0,0", "finite"),
    ("0,0,0,0,0,0", "all zeros"), ("1,2", "needs 6 entries"), ("empathy=x", "empathy=x")])
def test_bad_preference_vectors(work, capsys, preference, needle):
    _expect_one_line_error(capsys, ["generate", "--model", work["model"], "--prompt", "hi",
                                    "--adapter", _adapter(work, work["root"]), "--preference",
                                    preference], needle)


@pytest.mark.parametrize("flag,value,needle", [
    ("--guidance", "inf", "guidance"), ("--guidance", "nan", "guidance"),
    ("--safety-margin", "-1", "safety_margin"), ("--temperature", "-0.5", "temperature")])
def test_bad_guidance_numbers(work, capsys, flag, value, needle):
    _expect_one_line_error(capsys, ["generate", "--model", work["model"], "--prompt", "hi",
                                    "--adapter", _adapter(work, work["root"]),
                                    "--preference", "empathy=1", flag, value], needle)


@pytest.mark.parametrize("flag,value,needle", [
    ("--beta", "-0.1", "beta must be > 0"), ("--betas", "0.1,-1", "betas must be > 0"),
    ("--learning-rate", "0", "learning_rate must be > 0"),
    ("--adapter-lora-alpha", "-8", "lora_alpha must be > 0"),
    ("--dirichlet", "0", "dirichlet must be > 0")])
def test_bad_training_settings(work, tmp_path, capsys, flag, value, needle):
    _expect_one_line_error(capsys, ["train-arm", "--model", work["model"], "--train-data",
                                    work["prefs"], "--out", str(tmp_path / "out"),
                                    "--checkpoint-dir", str(tmp_path / "c"), flag, value],
                           needle, out=tmp_path / "c")


def test_damaged_run_record_is_named(work, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "run.json").write_text('{"settings": {"steps": ')
    _expect_one_line_error(capsys, ["train-arm", "--model", work["model"], "--train-data",
                                    work["prefs"], "--out", str(tmp_path / "out"),
                                    "--checkpoint-dir", str(ckpt), "--steps", "1"],
                           f"{ckpt / 'run.json'}: not valid JSON", out=tmp_path / "out")


def test_malformed_rows_are_reported_with_line_numbers_and_skipped(work, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n{"prompt": \n{"text": "no prompt key"}\n'
                       '{"prompt": "Bye", "preference": "empathy=-1"}\n{"prompt": "Again"}\n')
    TALLY["inputs"] += 1
    TALLY["faults"] += 3
    out = tmp_path / "out.jsonl"
    assert cli.main(["generate", "--model", work["model"], "--prompts", str(prompts),
                     "--max-new-tokens", "2", "--adapter", _adapter(work, work["root"]),
                     "--preference", "empathy=1", "--quiet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for line in (2, 3, 4):
        assert f"prompts.jsonl:{line}: skipped" in err
    assert [json.loads(r)["line"] for r in out.read_text().splitlines()] == [1, 5]
    _expect_one_line_error(capsys, ["generate", "--model", work["model"], "--prompts",
                                    str(prompts), "--strict", "--out", str(tmp_path / "o2")],
                           out=tmp_path / "o2")
    sft = _jsonl(tmp_path / "sft.jsonl", SFT_ROWS[:3])
    with sft.open("a") as handle:
        handle.write("{broken\n")
    _expect_one_line_error(capsys, ["finetune", "--model", work["model"], "--data", str(sft),
                                    "--out", str(tmp_path / "m"), "--checkpoint-dir",
                                    str(tmp_path / "c"), "--steps", "1"],
                           "sft.jsonl:4", out=tmp_path / "m")
