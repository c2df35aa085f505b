"""Launchers of the CUDA kernels in :mod:`anycnn_cupy._sources`, and the matrix product.

Kernels are built on first use: one ``cupy.ElementwiseKernel`` per source and index width
(Note [Index width] in _sources.py), which CuPy compiles for a dtype the first time it is called
with it (NVRTC) and caches in memory and in ``~/.cupy/kernel_cache``. Nothing is built or
compiled at import.

The launchers take and return CuPy arrays, assume valid arguments (the public ops and the fused
functions check at their boundary), and make their inputs C-contiguous (a no-op when they are).

UNTESTED ON GPU HARDWARE: the kernel bodies were compiled and run on the CPU by the test suite
(tests/test_cupy_backend.py builds them with a host C++ compiler and drives these very launchers
through a NumPy stand-in for CuPy) and compiled with nvcc for sm_90 (bench/gpu/compile_check.py),
but no CUDA device has run them yet.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy

from anycnn_cupy._guard import require_cupy
from anycnn_cupy._sources import INDEX_LIMIT, KERNELS

cupy = require_cupy(__name__)

Array = Any

__all__ = [
    "FLOAT_DTYPES",
    "block_sum",
    "decimate",
    "decimate_transpose",
    "gemm",
    "gemm_mode",
    "im2col",
    "kernel",
    "kron_upsample",
    "matmul",
    "set_gemm",
    "uses_kernel_gemm",
]

FLOAT_DTYPES = (numpy.dtype("float32"), numpy.dtype("float64"))

_built: dict[tuple[str, bool], Any] = {}
_build_lock = threading.Lock()


def kernel(name: str, wide: bool = False) -> Any:
    """The ``cupy.ElementwiseKernel`` of a source in :data:`anycnn_cupy._sources.KERNELS`,
    built on first use (not compiled: CuPy compiles per dtype at the first call)."""
    key = (name, bool(wide))
    built = _built.get(key)
    if built is None:
        with _build_lock:
            built = _built.get(key)
            if built is None:
                source = KERNELS[name]
                built = cupy.ElementwiseKernel(
                    source.in_params,
                    source.out_params,
                    source.operation,
                    source.name,
                    preamble=source.full_preamble(wide),
                )
                _built[key] = built
    return built


def wide(*sizes: int) -> bool:
    """Whether an index may pass 2**31 - 1 (Note [Index width])."""
    return max(sizes, default=0) > INDEX_LIMIT


def is_float(*arrays: Any) -> bool:
    """All CuPy arrays of one float dtype (float32 or float64): the cases the kernels handle."""
    first = arrays[0]
    return (
        all(isinstance(a, cupy.ndarray) and a.dtype == first.dtype for a in arrays)
        and first.dtype in FLOAT_DTYPES
    )


def _i32(value: int) -> Any:
    return numpy.int32(value)


# --- hot ops ---------------------------------------------------------------------------------
def im2col(
    x: Array,
    kh: int,
    kw: int,
    oh: int,
    ow: int,
    *,
    pad: tuple[int, int] = (0, 0),
    flip: bool = False,
    layout: str = "nkp",
) -> Array:
    """Columns of the kh x kw windows of (N, C, H, W) maps for an oh x ow output.

    ``pad`` zero-pads rows and columns on both sides; ``flip`` reverses the taps (MATLAB's
    conv2). ``layout="nkp"`` gives ``(N, C kh kw, oh ow)`` (a batched GEMM with the kernels
    gives (N, C_out, oh ow) directly), ``"npk"`` gives ``(N oh ow, C kh kw)`` (one GEMM with the
    sensitivities gives the kernel gradient).
    """
    x = cupy.ascontiguousarray(x)
    n, c, h, w = x.shape
    k, p = c * kh * kw, oh * ow
    out = cupy.empty((n, k, p) if layout == "nkp" else (n * p, k), dtype=x.dtype)
    if out.size:
        kernel("anycnn_im2col", wide(out.size, x.size))(
            x,
            _i32(c),
            _i32(h),
            _i32(w),
            _i32(kh),
            _i32(kw),
            _i32(oh),
            _i32(ow),
            _i32(pad[0]),
            _i32(pad[1]),
            _i32(flip),
            _i32(layout == "npk"),
            out,
        )
    return out


def kron_upsample(x: Array, n: int) -> Array:
    """``x (kron) 1_{n x n}`` of (N, C, h, w) maps: (N, C, h n, w n)."""
    x = cupy.ascontiguousarray(x)
    b, c, h, w = x.shape
    out = cupy.empty((b, c, h * n, w * n), dtype=x.dtype)
    if out.size:
        kernel("anycnn_kron_upsample", wide(out.size))(x, _i32(n), _i32(h), _i32(w), out)
    return out


def block_sum(x: Array, n: int, scale: float = 1.0) -> Array:
    """Sum (times ``scale``) of each n x n block of (N, C, h n, w n) maps: (N, C, h, w)."""
    x = cupy.ascontiguousarray(x)
    b, c, hh, ww = x.shape
    h, w = hh // n, ww // n
    out = cupy.empty((b, c, h, w), dtype=x.dtype)
    if out.size:
        kernel("anycnn_block_sum", wide(x.size))(
            x, _i32(n), _i32(h), _i32(w), x.dtype.type(scale), out
        )
    return out


def decimate(x: Array, n: int) -> Array:
    """The top-left sample of each n x n block: (N, C, H // n, W // n)."""
    x = cupy.ascontiguousarray(x)
    b, c, hh, ww = x.shape
    h, w = hh // n, ww // n
    out = cupy.empty((b, c, h, w), dtype=x.dtype)
    if out.size:
        kernel("anycnn_decimate", wide(x.size))(
            x, _i32(n), _i32(hh), _i32(ww), _i32(h), _i32(w), out
        )
    return out


def decimate_transpose(delta: Array, n: int) -> Array:
    """The adjoint of :func:`decimate`: (N, C, h, w) to (N, C, h n, w n), zeros elsewhere."""
    delta = cupy.ascontiguousarray(delta)
    b, c, h, w = delta.shape
    out = cupy.empty((b, c, h * n, w * n), dtype=delta.dtype)
    if out.size:
        kernel("anycnn_decimate_transpose", wide(out.size))(delta, _i32(n), _i32(h), _i32(w), out)
    return out


# --- the matrix product ----------------------------------------------------------------------
# Note [GEMM inside a graph]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~
# CuPy 14 refuses every cuBLAS call made while the current stream is being captured into a CUDA
# graph (cupy_backends' cublas.setStream raises NotImplementedError "calling cuBLAS API during
# stream capture is currently unsupported"; cupy#6290 tracks lifting it, since cuBLAS itself
# supports capture under conditions such as its pointer mode and workspace). A graph of a whole
# training step must still multiply matrices, so `matmul` calls cuBLAS (cupy.matmul) normally and
# the elementwise GEMM of _sources.GEMM while the current stream captures. `gemm_mode("kernel")`
# forces the latter, e.g. for the warm-up run before a capture, so that the warm-up compiles the
# kernels the capture will use, and for tests comparing captured and uncaptured steps exactly.
# The elementwise GEMM is one thread per output with split-K for long inner dimensions: fine for
# the small matrices of these networks, far from cuBLAS on large ones.

#: cuBLAS, kept before anything (bench/gpu/cuda_graph.py) may redirect cupy.matmul in a capture.
_cublas_matmul = cupy.matmul
GEMM_MODES = ("auto", "cublas", "kernel")
_mode = "auto"
_local = threading.local()

#: Split-K aims at this many threads; each thread then sums at least MIN_CHUNK products.
TARGET_THREADS = 1 << 16
MIN_CHUNK = 32


def set_gemm(mode: str) -> str:
    """Choose the matrix product for this process: ``"auto"`` (cuBLAS, except while the
    current stream captures a CUDA graph), ``"cublas"`` or ``"kernel"``. Returns the old mode."""
    global _mode
    if mode not in GEMM_MODES:
        raise ValueError(f"set_gemm: mode must be one of {GEMM_MODES}, got {mode!r}")
    previous, _mode = _mode, mode
    return previous


@contextlib.contextmanager
def gemm_mode(mode: str) -> Iterator[None]:
    """:func:`set_gemm` for this thread inside a ``with`` block."""
    if mode not in GEMM_MODES:
        raise ValueError(f"gemm_mode: mode must be one of {GEMM_MODES}, got {mode!r}")
    previous = getattr(_local, "mode", None)
    _local.mode = mode
    try:
        yield
    finally:
        _local.mode = previous


def uses_kernel_gemm() -> bool:
    """Whether :func:`matmul` would call the elementwise GEMM now (Note [GEMM inside a graph])."""
    mode = getattr(_local, "mode", None) or _mode
    if mode != "auto":
        return mode == "kernel"
    stream = cupy.cuda.get_current_stream()
    return stream.ptr != 0 and bool(stream.is_capturing())  # the legacy stream never captures


def _kernel_gemm_handles(a: Any, b: Any) -> bool:
    if not (isinstance(a, cupy.ndarray) and isinstance(b, cupy.ndarray)):
        return False
    if a.ndim not in (2, 3) or b.ndim not in (2, 3) or not is_float(a, b):
        return False
    if a.shape[-1] != b.shape[-2]:
        return False
    if a.ndim == 3 and b.ndim == 3:
        return a.shape[0] == b.shape[0] or 1 in (a.shape[0], b.shape[0])
    return True


def matmul(a: Array, b: Array) -> Array:
    """``a @ b`` with ``cupy.matmul``'s meaning, on cuBLAS or the elementwise GEMM
    (Note [GEMM inside a graph]). Cases the GEMM kernel does not handle (more than one batch
    axis, 1-D operands, integers) always go to cuBLAS."""
    if uses_kernel_gemm() and _kernel_gemm_handles(a, b):
        return gemm(a, b)
    return _cublas_matmul(a, b)


def _operand(a: Array) -> tuple[Array, tuple[int, int, int]]:
    """A 1-D contiguous view of the memory ``a`` spans, from its first element, and its element
    strides (batch, row, column); no copy unless a stride is negative."""
    if any(s < 0 or s % a.itemsize for s in a.strides):
        a = cupy.ascontiguousarray(a)
    strides = [s // a.itemsize for s in a.strides]
    span = 1 + sum((d - 1) * s for d, s in zip(a.shape, strides, strict=True)) if a.size else 0
    flat = cupy.lib.stride_tricks.as_strided(a, shape=(span,), strides=(a.itemsize,))
    if a.ndim == 2:
        strides = [0, *strides]
    elif a.shape[0] == 1:
        strides[0] = 0  # broadcast along the batch
    return flat, (strides[0], strides[1], strides[2])


def _split(outputs: int, k: int) -> int:
    if outputs >= TARGET_THREADS or k < 2 * MIN_CHUNK:
        return 1
    return max(1, min(-(-TARGET_THREADS // outputs), k // MIN_CHUNK))


def gemm(a: Array, b: Array) -> Array:
    """``a @ b`` on the elementwise GEMM: ``a`` (M, K) or (B, M, K), ``b`` (K, N) or (B, K, N),
    a batch of 1 broadcast; any strides. Split-K when one product has few outputs."""
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
    flat_a, (sab, sam, sak) = _operand(a)
    flat_b, (sbb, sbk, sbn) = _operand(b)
    split = _split(m * n, k) if batch == 1 else 1
    chunk = -(-k // split) if k else 0
    out = cupy.empty((batch * split, m, n), dtype=a.dtype)
    if out.size:
        kernel("anycnn_gemm", wide(out.size, flat_a.size, flat_b.size))(
            flat_a,
            flat_b,
            _i32(m),
            _i32(n),
            numpy.int64(k),
            numpy.int64(chunk),
            _i32(split),
            numpy.int64(sab),
            numpy.int64(sam),
            numpy.int64(sak),
            numpy.int64(sbb),
            numpy.int64(sbk),
            numpy.int64(sbn),
            out,
        )
    if split > 1:
        out = out.sum(axis=0, keepdims=True)
    return out.reshape(m, n) if a.ndim == 2 and b.ndim == 2 else out
