"""Output that never loses data: atomic files, and folders that replace only what we wrote.

- `atomic_open` / `write_jsonl`: a sibling temp file, fsynced, renamed over the target. A crash
  leaves the old file or no file, never a half file that looks complete.
- `write_output_folder`: builds a folder in a sibling temp folder and swaps it into place. The
  folder gets a manifest (`MANIFEST`) naming its kind ("model", "adapter", ...) and every file
  written. An existing folder is replaced only when it is a previous output of the same kind,
  holds nothing but the files its manifest lists, and the caller passes `overwrite=True`;
  anything else (a folder of unrelated files, `.`, a training-checkpoint folder, another kind of
  output) is refused before anything is written. The replaced folder's files are deleted by
  name, so a file we did not write is never removed.
- A crash mid-swap leaves the previous folder under a `.NAME.old-PID` sibling; the next write to
  the same path puts it back first. Stale `.NAME.tmp-PID-*` siblings of dead processes are ours
  and are removed.
- `cache_dir`: where generated text goes by default (harmful data, preference sets,
  generations), so that none of it lands in the repository.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

MANIFEST = ".prosocial_jax_output.json"


class OutputExistsError(FileExistsError):
    """An output path that holds something this write must not replace."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Opens a sibling temp file; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's private 0600 would stick to the result
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def cache_dir() -> Path:
    """The cache folder: $PROSOCIAL_JAX_CACHE, default ~/.cache/prosocial_jax."""
    return Path(os.environ.get("PROSOCIAL_JAX_CACHE", Path.home() / ".cache" / "prosocial_jax"))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_open(path) as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def json_lines(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, decoded value, None) for every non-blank line of a JSONL file, or
    (line number, None, "not valid JSON (why)") for a line that does not decode: each reader
    decides whether a bad line is skipped and reported or stops the read."""
    with Path(path).open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except json.JSONDecodeError as err:
                yield number, None, f"not valid JSON ({err.msg}, column {err.colno})"


def check_output_file(path: str | Path, overwrite: bool, flag: str = "--overwrite") -> None:
    """Refuses to replace an existing file unless asked to (and never replaces a folder)."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; the output here is one file")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass {flag} to replace it (nothing was "
                                "written)")


def check_outside(path: str | Path, folder: str | Path, path_flag: str,
                  folder_flag: str) -> None:
    """Refuses an output file inside an output folder that is written (and replaced) as a
    whole: the folder's write would find the file there and refuse, after all the work."""
    path, folder = Path(path).absolute(), Path(folder).absolute()
    if path.is_relative_to(folder):
        raise OutputExistsError(f"{path_flag} {path} lies inside {folder_flag} {folder}, which "
                                "is written as a whole; choose a file outside it (nothing was "
                                "written)")


# ---------------------------------------------------------------------------- output folders
def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of a folder we wrote, or None if it has none (or an unreadable one)."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return None
    return manifest


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir())


def check_output_folder(out_dir: str | Path, kind: str, overwrite: bool,
                        flag: str = "--overwrite") -> None:
    """Raises OutputExistsError unless `write_output_folder` may write `out_dir` (call it
    before long work, so that a refusal costs nothing)."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder; refusing to replace it")
    here = Path.cwd().resolve()
    target = out_dir.resolve()
    if target == here or target in here.parents:
        raise OutputExistsError(f"{out_dir} is the current folder or contains it; choose a new "
                                "output folder (nothing was written)")
    present = _listing(out_dir)
    if not present and not any(out_dir.iterdir()):
        return  # an empty folder: replacing it loses nothing
    manifest = read_manifest(out_dir)
    if manifest is None:
        example = present[0] if present else next(iter(out_dir.iterdir())).name
        raise OutputExistsError(
            f"{out_dir} exists and is not an output folder of prosocial-jax (no {MANIFEST}; "
            f"it holds e.g. {example!r}); refusing to replace it. Choose a new or empty "
            "output folder, or move it away yourself (nothing was written)")
    if manifest.get("kind") != kind:
        raise OutputExistsError(f"{out_dir} holds a {manifest.get('kind')!r} output, not a "
                                f"{kind!r}; refusing to replace it (nothing was written)")
    ours = {*manifest["files"], MANIFEST}
    foreign = [name for name in present if name not in ours]
    if foreign:
        raise OutputExistsError(
            f"{out_dir} is a previous {kind} output but also holds files added since "
            f"({', '.join(repr(f) for f in foreign[:3])}); refusing to replace it (nothing was "
            "written)")
    if not overwrite:
        raise OutputExistsError(f"{out_dir} holds a previous {kind} output; pass {flag} to "
                                "replace it (nothing was written)")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only (PermissionError: alive, not ours)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _recover(out_dir: Path) -> None:
    """Undoes what a crash left beside `out_dir`: a swap cut in half, dead temp folders."""
    pattern = re.compile(rf"^\.{re.escape(out_dir.name)}\.(old|tmp)-(\d+)(-.*)?$")
    if not out_dir.parent.is_dir():
        return
    for sibling in sorted(out_dir.parent.iterdir()):
        match = pattern.match(sibling.name)
        if not match or not sibling.is_dir() or _pid_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not out_dir.exists() and read_manifest(sibling):
            os.replace(sibling, out_dir)  # the previous output, back where it was
        elif match.group(1) == "tmp" or read_manifest(sibling):
            _remove_ours(sibling, read_manifest(sibling))


def _remove_ours(folder: Path, manifest: dict[str, Any] | None) -> None:
    """Deletes the files a manifest lists (or, for our own temp folders, everything), then the
    emptied folders; anything else stays where it is."""
    names = _listing(folder) if manifest is None else [*manifest["files"], MANIFEST]
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def write_output_folder(out_dir: str | Path, kind: str, write: Callable[[Path], None],
                        overwrite: bool = False, flag: str = "--overwrite") -> Path:
    """Runs `write(tmp)` on a sibling temp folder, adds the manifest, swaps it into `out_dir`.

    Refused before anything is written (OutputExistsError) unless `out_dir` is new, empty, or a
    previous `kind` output holding only its own files and `overwrite` is true. `flag` names the
    option that sets `overwrite` in messages.
    """
    out_dir = Path(out_dir)
    _recover(out_dir)
    check_output_folder(out_dir, kind, overwrite, flag)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-",
                                dir=out_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's private 0700 would stick to the result
    try:
        write(tmp)
        files = _listing(tmp)
        (tmp / MANIFEST).write_text(json.dumps({"kind": kind, "files": files}, indent=2))
        for name in [*files, MANIFEST]:  # data must be on disk before the rename shows it
            with open(tmp / name, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        if out_dir.exists() and _exchange(tmp, out_dir):
            _remove_ours(tmp, read_manifest(tmp))  # tmp now holds the previous output
        elif out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            _remove_ours(old, read_manifest(old))
        else:
            os.replace(tmp, out_dir)
        _fsync_dir(out_dir.parent)
    except BaseException:
        if tmp.exists():
            _remove_ours(tmp, None)
        raise
    return out_dir

