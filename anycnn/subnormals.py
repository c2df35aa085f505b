"""Flush-to-zero for anycnn's own CPU work: training does not slow down when units saturate.

Note [Subnormals]
~~~~~~~~~~~~~~~~~
When logistic units saturate (the notes' sigmoid at the reference code's learning rate of 1.0
on large maps), ``f'(u) = y (1 - y)`` and the sensitivities built from it fall below the
smallest normal float (1.2e-38 in float32, 2.2e-308 in float64) and become *subnormal*. x86
CPUs handle subnormal operands and results in microcode, tens to hundreds of cycles per
operation instead of one: a measured DLT-like training step on 128x128 images went from
0.067 s to 0.95 s, in anycnn and in PyTorch alike (issue 23). PyTorch leaves this to
``torch.set_flush_denormal(True)``, which few of its users know.

Two bits of the SSE control register MXCSR make the CPU treat them as zero at full speed:
FTZ (flush to zero, bit 15: a subnormal *result* becomes 0) and DAZ (denormals are zero, bit 6:
a subnormal *operand* is read as 0). MXCSR belongs to a thread. :func:`flushing` sets both bits
on the calling thread and, on exit, puts the two bits back as they were (the rest of the
register, such as the sticky exception flags NumPy reads, is left alone), so code that runs
after it is untouched; the NumPy backend's pool threads take the caller's setting with each job
(``_Job`` in ``anycnn_numpy._threads``), so the compiled kernels and the BLAS calls that anycnn
runs on them flush too. BLAS threads of OpenBLAS's own are not anycnn's: while an op's slices
run, the backend holds BLAS to one thread per slice (Note [Small jobs alone]), so those GEMMs run
on the calling thread or on the pool's, with the flag; a single large GEMM that OpenBLAS splits
over its own threads runs there without it (anycnn does not change threads it does not own).

``anycnn.train.train`` (and so ``anycnn train`` and ``Network.fit``) trains inside
``flushing()`` unless told not to (``flush_subnormals=False``, or ``ANYCNN_FLUSH_SUBNORMALS=0``
in the environment). The numerical effect: a number that would be subnormal is zero instead, an
absolute change below 1.2e-38 (float32) or 2.2e-308 (float64) per operation, far below the
float32 rounding of any value the network computes (a relative 6e-8); results that never meet
a subnormal are bit for bit the same (the DLT epoch and LeNet-5 test runs check it).

The register is read and written by two instructions (``stmxcsr``, ``ldmxcsr``) that Python
cannot issue; :mod:`anycnn._mxcsr` compiles them through Numba as LLVM's ``llvm.x86.sse.stmxcsr`` /
``ldmxcsr`` intrinsics (no inline assembly, no executable memory of our own). Without Numba
(the ``jit`` extra) or on another architecture :func:`available` is False and :func:`flushing`
does nothing.

The CUDA backend: NVIDIA GPUs keep subnormals in float64; in float32, code compiled with
``--use_fast_math`` (``-ftz=true``) flushes them and code compiled without it keeps them.
anycnn's CuPy kernels are compiled without fast math (``anycnn_cupy._sources``: no options are
passed to NVRTC), and anycnn asks nothing of cuBLAS's own kernels: anycnn flushes nothing on
the GPU, and :func:`flushing` changes only CPU threads. Whether saturated units slow
a GPU down has not been measured: no GPU was lent to this project (untested on hardware).
"""

from __future__ import annotations

import os
import platform
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["FLUSH_BITS", "available", "flushing", "is_flushing", "default_enabled"]

#: MXCSR's FTZ (bit 15) and DAZ (bit 6).
FLUSH_BITS = (1 << 15) | (1 << 6)

_state = threading.local()  # .flushing: whether this thread is inside flushing()
_access: tuple[Callable[[], int], Callable[[int], None]] | None | bool = False  # False: unknown


def _compile() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    """``(get, set)`` of the calling thread's MXCSR, compiled by Numba; None where not x86-64
    or without Numba (or with ``ANYCNN_NUMBA=0``)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if os.environ.get("ANYCNN_NUMBA", "1").strip() == "0":
        return None
    try:
        from anycnn._mxcsr import get_csr, set_csr
    except ImportError:
        return None
    try:
        set_csr(get_csr())  # compile both now, where a failure can still be reported as None
    except Exception:  # noqa: BLE001 - an LLVM without the intrinsics: no flushing, no crash
        return None
    return get_csr, set_csr


def _functions() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    global _access
    if _access is False:
        _access = _compile()
    return _access  # type: ignore[return-value]


def available() -> bool:
    """Whether this process can set flush-to-zero (x86-64 with Numba).

    Examples
    --------
    >>> from anycnn import subnormals
    >>> isinstance(subnormals.available(), bool)   # True on x86-64 with Numba
    True
    """
    return _functions() is not None


def default_enabled() -> bool:
    """Training flushes subnormals unless ``ANYCNN_FLUSH_SUBNORMALS=0``.

    Examples
    --------
    >>> import os
    >>> from anycnn import subnormals
    >>> subnormals.default_enabled() == (os.environ.get("ANYCNN_FLUSH_SUBNORMALS", "1") != "0")
    True
    """
    return os.environ.get("ANYCNN_FLUSH_SUBNORMALS", "1").strip() != "0"


def is_flushing() -> bool:
    """Whether the calling thread is inside :func:`flushing` (what pool threads copy).

    Examples
    --------
    >>> from anycnn import subnormals
    >>> subnormals.is_flushing()
    False
    >>> with subnormals.flushing() as on:
    ...     subnormals.is_flushing() == on
    True
    """
    return getattr(_state, "flushing", False)


def csr() -> int | None:
    """The calling thread's MXCSR, or None where it cannot be read."""
    access = _functions()
    return None if access is None else int(access[0]())


def set_flush_bits(flush: bool) -> None:
    """Set or clear FTZ and DAZ on the calling thread (the NumPy pool's threads call this to
    take the setting of the thread that posted a job); nothing where unavailable."""
    access = _functions()
    if access is None:
        return
    get, set_ = access
    value = int(get())
    wanted = value | FLUSH_BITS if flush else value & ~FLUSH_BITS
    if wanted != value:
        set_(wanted)


@contextmanager
def flushing(enabled: bool = True) -> Iterator[bool]:
    """Flush subnormal floats to zero (FTZ and DAZ) on this thread, and in the NumPy backend's
    pool threads for the jobs it posts, until the block ends (Note [Subnormals]).

    Yields whether flushing is on (False where ``enabled`` is False or the CPU or install cannot
    do it). On exit FTZ and DAZ are restored to what they were; nested blocks are fine.

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn import subnormals
    >>> tiny = np.float64(1e-310)                  # a subnormal float64
    >>> with subnormals.flushing() as on:
    ...     flushed = float(tiny * 1.0) == 0.0     # DAZ reads it as zero
    >>> flushed == on
    True
    >>> float(tiny * 1.0) == 1e-310                # restored on exit
    True
    """
    access = _functions() if enabled else None
    if access is None:
        yield False
        return
    get, set_ = access
    before = int(get())
    was = is_flushing()
    set_(before | FLUSH_BITS)
    _state.flushing = True
    try:
        yield True
    finally:
        _state.flushing = was
        now = int(get())
        set_((now & ~FLUSH_BITS) | (before & FLUSH_BITS))
