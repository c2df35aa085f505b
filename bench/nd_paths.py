"""Does 1-D pay on the 2-D kernels? The NumPy backend's 1-D convolutions (maps one row high on
the 2-D ops, ``anycnn_numpy._nd``) against a 1-D im2col + BLAS path written here to compare.

Usage::

    ANYCNN_NUM_THREADS=1 python bench/nd_paths.py

Each op of the three convolutions of the notes (``conv_valid``, eq. (7)'s ``conv_kernel_grad``,
the 'full' ``conv_full``) at the 1-D rows of ``bench/nd.py``, float32, one thread: both paths
checked to agree, then the median of 7 calls each (interleaved per op). Prints; never asserts.
"""

from __future__ import annotations

import statistics
import time
from functools import partial

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

ROWS = [(150, 3, 1, 8, 64), (427, 7, 8, 16, 32), (1024, 15, 16, 32, 16), (4096, 31, 16, 64, 8),
        (16384, 31, 32, 64, 4)]  # fmt: skip


def im2col_valid(x, k):
    n, c, length = x.shape
    o, _, size = k.shape
    columns = sliding_window_view(x, size, axis=2)[..., ::-1].transpose(0, 1, 3, 2)
    columns = np.ascontiguousarray(columns).reshape(n, c * size, length - size + 1)
    return np.matmul(k.reshape(o, c * size), columns)


def im2col_kernel_grad(x, d):
    windows = sliding_window_view(x, d.shape[2], axis=2)  # [n, c, a, p] = x[n, c, a + p]
    return np.ascontiguousarray(np.tensordot(d, windows, axes=([0, 2], [0, 3]))[..., ::-1])


def im2col_full(d, k):
    n, o, out = d.shape
    _, c, size = k.shape
    padded = np.zeros((n, o, out + 2 * (size - 1)), d.dtype)
    padded[..., size - 1 : size - 1 + out] = d
    columns = sliding_window_view(padded, size, axis=2).transpose(0, 1, 3, 2)
    columns = np.ascontiguousarray(columns).reshape(n, o * size, out + size - 1)
    return np.matmul(np.ascontiguousarray(k.transpose(1, 0, 2)).reshape(c, o * size), columns)


def _median_ms(f, reps=7):
    f()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    import anycnn_numpy

    ops = anycnn_numpy._fast_ops()
    rng = np.random.default_rng(0)
    for length, size, c, o, n in ROWS:
        x = rng.standard_normal((n, c, length)).astype(np.float32)
        k = rng.standard_normal((o, c, size)).astype(np.float32)
        d = rng.standard_normal((n, o, length - size + 1)).astype(np.float32)
        for name, ours, theirs in [
            ("conv_valid", partial(ops["conv_valid"], x, k), partial(im2col_valid, x, k)),
            (
                "conv_kernel_grad",
                partial(ops["conv_kernel_grad"], x, d),
                partial(im2col_kernel_grad, x, d),
            ),
            ("conv_full", partial(ops["conv_full"], d, k), partial(im2col_full, d, k)),
        ]:
            a, b = ours(), theirs()
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3 * float(np.abs(a).max()))
            print(
                f"L {length:5d} k {size:2d} {c:2d}->{o:<2d} batch {n:2d} {name:16s} "
                f"2-D kernels {_median_ms(ours):9.2f} ms  1-D im2col {_median_ms(theirs):9.2f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
