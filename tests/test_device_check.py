"""benchmarks/device_check.py (the GPU/TPU check) runs end to end at the tiny scale on CPU:
the same code path, so a device host never meets a broken script."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_runs_and_accounts_for_every_byte(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("device_check",
                                                  ROOT / "benchmarks" / "device_check.py")
    device_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(device_check)
    out = tmp_path / "check.json"
    assert device_check.main(["--scale", "tiny", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["batch"] for row in report["guided"]] == [2]
    # Bytes read per step, by hand: both models' bfloat16 weights (2 bytes per parameter),
    # the float32 adapter, and every slot of both KV caches (64 prompt + 48 new tokens; keys
    # and values; 2 bytes; the Pv-Arm's cache has two rows per prompt).
    weights = 2 * (report["base_params"] + report["reward_params"])
    for row in report["guided"]:
        kv = row["batch"] * 112 * 2 * 2 * (4 * 2 * 16 + 2 * 2 * 2 * 8)
        adapter = row["bytes_per_step"] - weights - kv
        assert 0 < adapter < 0.2 * weights, row
        assert row["step_ms"] > 0 and row["bound_ms"] > 0
        assert row["tokens_per_s"] == pytest.approx(row["batch"] * 1e3 / row["step_ms"])
    assert report["pvarm_training"]["step_s"] > 0
    table = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert table[1] == ["batch", "ms/step", "tokens/s", "bound", "ms", "bound/step"]
    assert int(table[2][0]) == 2
