"""Compiled kernels for the NumPy backend, through Numba when it is installed (``anycnn[jit]``).

Note [Kernel gradient as dot products]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Eq. (7)'s kernel gradient is, per example, ``D @ C.T`` with ``D`` the layer's deltas
``(C_out, P)`` and ``C`` the im2col columns ``(C_in kh kw, P)``: a product whose *result* is tiny
(6 x 25 for DLT's and LeNet-5's C1) and whose inner dimension is long (672, 896). OpenBLAS's
SGEMM is blocked for large results: on a 6 x 25 result it pads the register tiles and repacks
both operands at every call, and ran at 33 GFLOP/s on one core of this project's AMD EPYC.
:func:`kernel_grad_sum` computes the same sums as dot products along P, 3 delta rows x 2 columns
at a time (six accumulators, each vectorised along P by LLVM): 101-127 GFLOP/s on those
shapes, 99 vs 78 on DLT's C3 (12 x 150, P = 96) and 93 vs 83 on LeNet-5's C3 (16 x 150,
P = 140); float64 1.4-4x (one thread, 64 examples, 2026-11-25; ``python bench/ops.py`` measures
the float32 cases again, interleaved). Sums are taken in another order than BLAS's: results
agree to rounding.

Numba is optional. Without it, or with ``ANYCNN_NUMBA=0``, :data:`kernel_grad_sum` is None and
the backend uses BLAS. The kernel is compiled at its first use for each dtype (about a second;
Numba caches the machine code on disk where it can) and runs without the GIL, so the backend's
thread pool runs it on batch slices side by side.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


def _disabled() -> bool:
    return os.environ.get("ANYCNN_NUMBA", "1").strip() == "0"


def _compile() -> Callable[[Any, Any], Any] | None:
    if _disabled():
        return None
    try:
        import numba
        import numpy as np
    except ImportError:
        return None

    @numba.njit(fastmath=True, nogil=True, cache=True)
    def kernel_grad_sum(d, c):  # pragma: no cover - compiled; tested through conv_kernel_grad
        m, o, p = d.shape
        k = c.shape[1]
        out = np.zeros((o, k), d.dtype)
        zero = d.dtype.type(0)
        for n in range(m):
            i = 0
            while i < o:
                rows = min(3, o - i)
                j = 0
                while j < k:
                    if rows == 3 and j + 1 < k:
                        d0, d1, d2 = d[n, i], d[n, i + 1], d[n, i + 2]
                        c0, c1 = c[n, j], c[n, j + 1]
                        a00 = a01 = a10 = a11 = a20 = a21 = zero
                        for t in range(p):
                            x0, x1 = c0[t], c1[t]
                            a00 += d0[t] * x0
                            a01 += d0[t] * x1
                            a10 += d1[t] * x0
                            a11 += d1[t] * x1
                            a20 += d2[t] * x0
                            a21 += d2[t] * x1
                        out[i, j] += a00
                        out[i, j + 1] += a01
                        out[i + 1, j] += a10
                        out[i + 1, j + 1] += a11
                        out[i + 2, j] += a20
                        out[i + 2, j + 1] += a21
                        j += 2
                    else:
                        c0 = c[n, j]
                        for r in range(i, i + rows):
                            d0 = d[n, r]
                            a = zero
                            for t in range(p):
                                a += d0[t] * c0[t]
                            out[r, j] += a
                        j += 1
                i += rows
        return out

    return kernel_grad_sum


#: ``kernel_grad_sum(d, c) = sum_n d[n] @ c[n].T`` for C-contiguous ``d`` (M, O, P) and ``c``
#: (M, K, P) of one float dtype, or None without Numba (Note [Kernel gradient as dot products]).
kernel_grad_sum = _compile()

#: Results at most this large (C_out x C_in kh kw) go to the kernel; larger ones to BLAS, whose
#: cache blocking pays there. Products along fewer than MIN_LENGTH positions go to BLAS too.
MAX_RESULT = 4096
MIN_LENGTH = 16
