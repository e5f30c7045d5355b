"""Output folders: replaced only when they hold a previous output of the same kind, atomically,
and a process killed mid-write (really killed, SIGKILL) loses nothing."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from prosocial_jax import files
from prosocial_jax.files import MANIFEST, OutputExistsError, write_output_folder


def _writer(content: str):
    def write(folder):
        (folder / "weights.bin").write_text(content)
        (folder / "sub").mkdir()
        (folder / "sub" / "notes.txt").write_text(content * 2)
    return write


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_new_folder_gets_manifest_listing_every_file(tmp_path):
    out = write_output_folder(tmp_path / "out", "model", _writer("a"))
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest == {"kind": "model", "files": ["sub/notes.txt", "weights.bin"]}
    assert (out / "sub" / "notes.txt").read_text() == "aa"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp folder left


def test_folder_of_unrelated_files_is_refused_and_kept(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="not an output folder of prosocial-jax.*"
                                                "thesis.tex"):
        write_output_folder(out, "model", _writer("a"), overwrite=True)
    assert _snapshot(out) == {"thesis.tex": b"years of work"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_current_folder_and_its_parents_are_refused(tmp_path, monkeypatch):
    work = tmp_path / "project" / "run"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    (work / "x").write_text("x")
    for target in (".", "..", str(tmp_path / "project")):
        with pytest.raises(OutputExistsError, match="current folder"):
            write_output_folder(target, "model", _writer("a"), overwrite=True)
    assert (work / "x").read_text() == "x"


def test_replacing_needs_overwrite_same_kind_and_only_our_files(tmp_path):
    out = write_output_folder(tmp_path / "out", "adapter", _writer("old"))
    with pytest.raises(OutputExistsError, match="previous adapter output; pass --overwrite"):
        write_output_folder(out, "adapter", _writer("new"))
    with pytest.raises(OutputExistsError, match="holds a 'adapter' output, not a 'model'"):
        write_output_folder(out, "model", _writer("new"), overwrite=True)
    (out / "my_notes.md").write_text("added by hand")
    with pytest.raises(OutputExistsError, match="files added since.*my_notes.md"):
        write_output_folder(out, "adapter", _writer("new"), overwrite=True)
    assert (out / "weights.bin").read_text() == "old"
    (out / "my_notes.md").unlink()
    write_output_folder(out, "adapter", _writer("new"), overwrite=True)
    assert (out / "weights.bin").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_with_and_without_rename_exchange(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    out = write_output_folder(tmp_path / "out", "model", _writer("1"))
    write_output_folder(out, "model", _writer("2"), overwrite=True)
    assert _snapshot(out)["weights.bin"] == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failing_write_leaves_the_previous_output(tmp_path):
    out = write_output_folder(tmp_path / "out", "model", _writer("1"))
    before = _snapshot(out)

    def broken(folder):
        (folder / "weights.bin").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_output_folder(out, "model", broken, overwrite=True)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _run_and_kill(script: str) -> None:
    """Runs `script` in a fresh interpreter that SIGKILLs itself where the script says."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == -signal.SIGKILL, result.stderr


def test_killed_during_the_write_then_the_next_write_cleans_up(tmp_path):
    out = write_output_folder(tmp_path / "out", "model", _writer("1"))
    before = _snapshot(out)
    _run_and_kill(f"""
        import os, signal
        from prosocial_jax.files import write_output_folder
        def write(folder):
            (folder / "weights.bin").write_text("half written")
            os.kill(os.getpid(), signal.SIGKILL)
        write_output_folder({str(out)!r}, "model", write, overwrite=True)
    """)
    assert _snapshot(out) == before  # the previous output, untouched
    assert len(list(tmp_path.iterdir())) == 2  # and the dead process's temp folder
    write_output_folder(out, "model", _writer("2"), overwrite=True)
    assert _snapshot(out)["weights.bin"] == b"2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_killed_between_the_two_renames_then_the_previous_output_comes_back(tmp_path):
    out = write_output_folder(tmp_path / "out", "model", _writer("1"))
    before = _snapshot(out)
    _run_and_kill(f"""
        import os, signal
        from prosocial_jax import files
        files._exchange = lambda a, b: False  # the two-rename path (no RENAME_EXCHANGE)
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if ".old-" in str(dst):  # the old folder moved away, the new one not yet in place
                os.kill(os.getpid(), signal.SIGKILL)
        files.os.replace = replace
        files.write_output_folder({str(out)!r}, "model", lambda f: (f / "w").write_text("2"),
                                  overwrite=True)
    """)
    assert not out.exists()  # the crash window: the output is only under .out.old-PID
    # Any later write to the path first puts the previous output back; here it is refused
    # (no --overwrite), and the previous output is where it was.
    with pytest.raises(OutputExistsError, match="previous model output"):
        write_output_folder(out, "model", _writer("3"))
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".out.tmp")) \
        == ["out"]


def test_output_file_is_not_replaced_without_overwrite(tmp_path):
    target = tmp_path / "rows.jsonl"
    target.write_text("keep")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        files.check_output_file(target, overwrite=False)
    files.check_output_file(target, overwrite=True)
    with pytest.raises(OutputExistsError, match="is a folder"):
        files.check_output_file(tmp_path, overwrite=True)


def test_atomic_open_killed_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "rows.jsonl"
    target.write_text("old rows\n")
    _run_and_kill(f"""
        import os, signal
        from prosocial_jax.files import atomic_open
        with atomic_open({str(target)!r}) as handle:
            handle.write("new rows, half")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert target.read_text() == "old rows\n"


def test_permissions_follow_the_umask(tmp_path):
    out = write_output_folder(tmp_path / "out", "model", _writer("1"))
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask


def test_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PROSOCIAL_JAX_CACHE", str(tmp_path / "cache"))
    assert files.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("PROSOCIAL_JAX_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert files.cache_dir() == tmp_path / ".cache" / "prosocial_jax"
