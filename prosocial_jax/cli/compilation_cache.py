"""JAX's persistent compilation cache, for CLI runs.

A short CLI job spends most of its decoding time getting ready to decode: one prompt through
`generate` on a 2-core CPU is seconds of tracing and XLA compilation (prefill, the decode chunk)
around well under a second of decoding. JAX can keep each compiled program on disk, keyed by
the program, its compile options, the devices it runs on and the jax/jaxlib versions, and a
later run of the same program reads it back instead of compiling it (SmolLM2, one new token:
decoding 6.8 s cold, 3.5 s warm; guided 18.2 and 8.6 s; what is left is tracing, which JAX
repeats in every process). Every `prosocial-jax` command turns it on before anything compiles;
importing `prosocial_jax` as a library changes no JAX setting.

Where: `$PROSOCIAL_JAX_COMPILATION_CACHE` (a folder, or `off`), by default
`jax_compilation_cache` in the prosocial_jax cache folder. A `JAX_COMPILATION_CACHE_DIR` the user
set wins: their folder, their settings; so does any other `JAX_` variable of the cache's.

Bounded: JAX evicts the least recently used entries past `MAX_BYTES`. Setting a bound also
makes JAX take a file lock around each read and write of the folder, so that two runs sharing
it never read an entry another is half-way through writing (JAX writes entries in place).

Safety: an earlier version of the test suite dropped this cache after a clean-clone run
aborted jaxlib 0.10 in a multi-device (4x2 mesh) test, and the abort was blamed on an
executable read back from it. It does not reproduce: multi-device executables with
collectives, read back in a fresh process, run correctly; the whole suite (813 tests, meshes
and multi-process runs included, two workers sharing one folder) passes with every program
cached, cold and then warm; the abort was later traced to the process passing Linux's limit
of 65,530 memory maps (each kept executable maps memory), which the suite now avoids by
dropping compiled programs after each test module. The cache therefore stays on for every
command and mesh; `PROSOCIAL_JAX_COMPILATION_CACHE=off` turns it off. An entry JAX cannot read
(a run killed while writing it) is reported by JAX as a warning and compiled again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from prosocial_jax.files import cache_dir

ENV = "PROSOCIAL_JAX_COMPILATION_CACHE"
OFF = frozenset({"off", "0", "false", "no", "none"})
MAX_BYTES = 4 << 30
# Programs that compile faster than this are not written: reading an entry back costs a few
# milliseconds, and the many tiny eager programs would only fill the folder.
MIN_COMPILE_SECONDS = 0.2


@dataclass
class CacheUse:
    """What the cache did in this process: `hits` programs read back instead of compiled,
    `writes` programs compiled and written (JAX counts these as its cache misses)."""

    folder: Path | None
    hits: int = 0
    writes: int = 0

    def summary(self) -> str:
        return (f"compilation cache: {self.hits} program(s) read back, {self.writes} "
                f"compiled and written ({self.folder})")


_use = CacheUse(folder=None)


def enable() -> CacheUse:
    """Turns the cache on for this process (once; later calls return the same record).
    Must run before the first compilation."""
    global _use
    if _use.folder is not None:
        return _use
    import jax

    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in OFF:
        return _use
    if jax.config.jax_compilation_cache_dir:  # the user's own JAX setting
        folder = Path(jax.config.jax_compilation_cache_dir)
    else:
        folder = Path(setting).expanduser() if setting else cache_dir() / "jax_compilation_cache"
        jax.config.update("jax_compilation_cache_dir", str(folder))
        for name, value in (("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS),
                            ("jax_compilation_cache_max_size", MAX_BYTES)):
            if name.upper() not in os.environ:  # JAX reads its variables itself; theirs win
                jax.config.update(name, value)
    _use = CacheUse(folder=folder)
    jax.monitoring.register_event_listener(_count)
    return _use


def _count(event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _use.hits += 1
    elif event == "/jax/compilation_cache/cache_misses":
        _use.writes += 1

