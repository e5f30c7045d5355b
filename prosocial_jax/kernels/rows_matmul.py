"""Few-row float32 products against packed weights, as an XLA FFI custom call on CPU.

A decode step multiplies 1 to a few dozen rows (the batch; with guidance also the Pv-Arm's
prosocial and safety rows) by every weight matrix. XLA:CPU runs any product of more than one
row as a library GEMM that takes 1.8-2.4x the time of reading the weights once, and so does
PyTorch's MKL (`benchmarks/row_products.py`); neither streams the weights. `rows_matmul.cc`
does: the weights are packed once into strips of 16 output features, [ceil(N / 16), K, 16]
(`pack`), and each strip is one contiguous stream that updates 16 outputs of up to 6 rows per
pass from registers.

The kernel is compiled on first use (g++ -O3 -mavx2 -mfma against the FFI headers jaxlib
ships) into the cache folder, keyed by a hash of the source, the compiler and jaxlib, written
atomically, and registered as the custom call "prosocial_rows_matmul" for the CPU platform.
`available()` is False (and decoding keeps XLA's products) when there is no compiler, the build
fails, the CPU lacks AVX2/FMA, or PROSOCIAL_JAX_NATIVE_KERNELS=0.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from prosocial_jax.files import cache_dir

STRIP = 16  # output features per packed strip (two AVX2 registers)
# Up to this many rows per product the kernel runs; more (prefill chunks) go to XLA's GEMM on
# the unpacked weight, which is compute-bound there and faster than the kernel's 6-row groups.
MAX_ROWS = 64
TARGET = "prosocial_rows_matmul"
SOURCE = Path(__file__).with_name("rows_matmul.cc")
ENV_SWITCH = "PROSOCIAL_JAX_NATIVE_KERNELS"  # "0": never build or use the kernel

log = logging.getLogger(__name__)


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _build(compiler: str) -> Path:
    """The shared library for this source, compiler and jaxlib (built once, then reused)."""
    import jaxlib

    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=True).stdout.splitlines()[0]
    key = hashlib.sha256(source + version.encode() + jaxlib.__version__.encode()).hexdigest()
    library = cache_dir() / "kernels" / f"rows_matmul-{key[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, "-O3", "-mavx2", "-mfma", "-std=c++17", "-shared", "-fPIC",
                        "-w", f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp],
                       capture_output=True, text=True, check=True)
        os.replace(tmp, library)  # atomic: a concurrent build or reader sees all or nothing
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


@functools.cache
def available() -> bool:
    """Whether the kernel is built, runs on this CPU and is registered (decided once)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return False
    compiler = _compiler()
    if compiler is None:
        log.info("no C++ compiler found: decode steps use XLA's products")
        return False
    try:
        library = ctypes.cdll.LoadLibrary(str(_build(compiler)))
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        log.warning("the rows_matmul kernel did not build (%s); decode steps use XLA's "
                    "products", detail.strip().splitlines()[-1] if detail.strip() else err)
        return False
    if not library.prosocial_rows_matmul_supported():
        log.info("this CPU lacks AVX2/FMA: decode steps use XLA's products")
        return False
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.ProsocialRowsMatmul),
                                platform="cpu")
    return True


def pack(weight) -> np.ndarray:
    """A [N, K] weight (the HF orientation: out, in) as [ceil(N / 16), K, 16] float32 strips,
    the last one zero-padded: strip s, row k holds W[16 s : 16 s + 16, k]."""
    weight = np.asarray(weight, np.float32)
    n, k = weight.shape
    strips = -(-n // STRIP)
    if n % STRIP:  # only a partial last strip needs a padded copy first
        weight = np.pad(weight, ((0, strips * STRIP - n), (0, 0)))
    return np.ascontiguousarray(weight.reshape(strips, STRIP, k).transpose(0, 2, 1))


def unpack(packed: jax.Array, features: int) -> jax.Array:
    """The [N, K] weight of `pack`'s strips (traced: XLA's products for many rows, prefill)."""
    strips, k, _ = packed.shape
    return packed.transpose(0, 2, 1).reshape(strips * STRIP, k)[:features]


def takes(rows: jax.Array) -> bool:
    """Whether the kernel runs this product: float32 rows, at most `MAX_ROWS` of them (the
    caller keeps XLA's product for the rest)."""
    return rows.ndim == 2 and rows.shape[0] <= MAX_ROWS and rows.dtype == jnp.float32


def rows_matmul(rows: jax.Array, packed: jax.Array, features: int) -> jax.Array:
    """rows [M, K] float32 @ W^T -> [M, features], W packed by `pack`. Needs `available()`."""
    out = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(
        (rows.shape[0], packed.shape[0] * STRIP), jnp.float32))(rows, packed)
    return out if out.shape[1] == features else out[:, :features]
