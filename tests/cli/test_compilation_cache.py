"""The CLI's persistent compilation cache, both sides: a cold run compiles and writes its
programs, a warm run of the same command reads them back (JAX's own monitoring events, counted
in the command's last line) and decodes the same tokens, on one device and on a 2x4 mesh; with
the cache off nothing is written. Each run is a process of its own, as from a shell: inside
one process JAX's in-memory caches would answer first."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import random_adapter
from xla_test_flags import DEVICES, FAST_COMPILE

import prosocial_jax as pj

SUMMARY = re.compile(r"compilation cache: (\d+) program\(s\) read back, (\d+) compiled and "
                     r"written \((.+)\)")


def _env(cache: str, extra=None) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JAX_")}
    # Every program written, however fast it compiled: the counts below are then exact.
    env.update(PROSOCIAL_JAX_COMPILATION_CACHE=cache, XLA_FLAGS=f"{DEVICES} {FAST_COMPILE}",
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **(extra or {}))
    return env


def _cli(argv, env) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`prosocial-jax argv --overwrite` in a fresh process; the run and its output rows."""
    done = subprocess.run([sys.executable, "-m", "prosocial_jax.cli", *argv, "--overwrite"],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    out = Path(argv[argv.index("--out") + 1])
    return done, [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]


def _run(argv, cache: str, env_extra=None) -> tuple[int, int, str | None, list[dict]]:
    """(programs read back, programs compiled and written, cache folder, output rows)."""
    done, rows = _cli(argv, _env(cache, env_extra))
    found = SUMMARY.findall(done.stderr)
    if not found:
        return 0, 0, None, rows
    assert len(found) == 1, done.stderr
    hits, writes, folder = found[0]
    return int(hits), int(writes), folder, rows


@pytest.mark.parametrize("mesh", [None, "2x4"])
def test_a_warm_run_reads_every_program_back_and_decodes_the_same(tiny_chat, tmp_path, mesh):
    model = pj.load_model(tiny_chat.path)
    adapter = pj.save_adapter(random_adapter(model.config), tmp_path / "adapter")
    cache = tmp_path / "jax cache"  # a space: the folder is passed through as given
    argv = ["generate", "--model", str(tiny_chat.path), "--prompt", "Say hi.",
            "--adapter", str(adapter), "--preference", "empathy=1", "--max-new-tokens", "6",
            "--quiet", "--out", str(tmp_path / "out.jsonl"), *(["--mesh", mesh] if mesh else [])]

    cold_hits, writes, folder, cold = _run(argv, str(cache))
    assert folder == str(cache)
    entries = sorted(p.name for p in cache.glob("*-cache"))
    assert writes > 0 and len(entries) == writes  # prefill, decode chunk, ... each written
    # (a cold run reads back only what it wrote itself: one program built twice)
    assert cold_hits < writes

    hits, writes, _, warm = _run(argv, str(cache))
    assert (hits, writes) == (cold_hits + len(entries), 0)  # all read back, none compiled
    assert sorted(p.name for p in cache.glob("*-cache")) == entries
    assert warm[0]["tokens"] == cold[0]["tokens"]
    assert warm[0]["safety_overrides"] == cold[0]["safety_overrides"]

    # The same command without the cache decodes the same tokens and writes nothing.
    hits, writes, folder, off = _run(argv, "off")
    assert folder is None and off[0]["tokens"] == cold[0]["tokens"]


def test_off_writes_nothing_and_a_users_jax_setting_wins(tiny_chat, tmp_path):
    argv = ["generate", "--model", str(tiny_chat.path), "--prompt", "Say hi.",
            "--max-new-tokens", "3", "--quiet", "--out", str(tmp_path / "out.jsonl")]
    home = tmp_path / "home cache"
    _, _, folder, _ = _run(argv, "off", {"PROSOCIAL_JAX_CACHE": str(home)})
    # Nothing of JAX's: the cache folder holds at most the native kernel's build (kernels/).
    assert folder is None and not (home / "jax_compilation_cache").exists()
    assert not home.exists() or [p.name for p in home.iterdir()] == ["kernels"]

    # No folder given: the default, inside the prosocial_jax cache folder.
    _, writes, folder, _ = _run(argv, "", {"PROSOCIAL_JAX_CACHE": str(home)})
    assert folder == str(home / "jax_compilation_cache") and writes > 0

    # JAX's own variable names the user's folder: it is used as set.
    theirs = tmp_path / "theirs"
    _, writes, folder, _ = _run(argv, "", {"JAX_COMPILATION_CACHE_DIR": str(theirs)})
    assert folder == str(theirs) and writes == len(list(theirs.glob("*-cache"))) > 0


def test_a_corrupt_entry_costs_a_compile_not_the_run(tiny_chat, tmp_path):
    """An entry cut short (a run killed while JAX wrote it): the next run reports it, compiles
    that program again and decodes the same tokens."""
    argv = ["generate", "--model", str(tiny_chat.path), "--prompt", "Say hi.",
            "--max-new-tokens", "3", "--quiet", "--out", str(tmp_path / "out.jsonl")]
    cache = tmp_path / "cache"
    _, writes, _, cold = _run(argv, str(cache))
    entries = sorted(cache.glob("*-cache"))
    assert len(entries) == writes > 0
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    done, again = _cli(argv, _env(str(cache)))
    assert "Error reading persistent compilation cache entry" in done.stderr
    assert again[0]["tokens"] == cold[0]["tokens"]
