"""XLA flags and the compilation cache of every test process (conftest.py sets them before jax
starts; the tests that launch processes pass them on). No jax import: it is read before jax is
imported."""

import os
import tempfile

DEVICES = "--xla_force_host_platform_device_count=8"  # 8 simulated CPU devices: the meshes
# LLVM at -O0: the suite compiles a few thousand programs of tiny models, whose run time is
# nothing beside their compile time; -O0 cut a guided-decoding test file's time by 27%. XLA's
# own graph passes (fusion, layout, sharding) run as in production; only the machine code is
# less optimised. Benchmarks and the make targets run at XLA's default level.
FAST_COMPILE = "--xla_backend_optimization_level=0"

# The folder suite_compilation_cache made in this process, if it made one.
SUITE_CACHE: str | None = None


def suite_compilation_cache() -> dict[str, str]:
    """Environment variables for one JAX persistent compilation cache shared by the whole run.
    Compiled programs are dropped after each test module (conftest.py: the process would pass
    Linux's limit of memory maps), and later modules, xdist workers and CLI processes compile
    many of the same programs again; with the cache they read them back. The first process
    (the xdist controller, which the workers inherit the variables from) makes a fresh
    temporary folder and removes it at the end; a folder the caller set is used as it is, and
    tests that need their own cache settings (tests/cli/test_compilation_cache.py) drop JAX's
    variables. Returns {} where the caller set one."""
    global SUITE_CACHE
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return {}
    SUITE_CACHE = tempfile.mkdtemp(prefix="prosocial-jax-tests-compilation-cache-")
    return {"JAX_COMPILATION_CACHE_DIR": SUITE_CACHE,
            # Programs that compile in under 0.2 s cost less to compile again than to read.
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
            # A bound makes JAX lock the folder around each read and write, so that no
            # process reads an entry another is writing (JAX writes entries in place).
            "JAX_COMPILATION_CACHE_MAX_SIZE": str(8 << 30)}
