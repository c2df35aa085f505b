"""Fast hot ops for NumPy: the same names and signatures as :mod:`anycnn.ops`.

Convolutions are im2col (a strided window view copied once into a GEMM-friendly layout) plus one
BLAS matrix product; up- and down-sampling are broadcast views and reshaped sums. Section 3.4 of
the notes asks for exactly this: no per-block Python work, no per-example loops.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _masked(kernel, selection):
    if selection is None:
        return kernel
    return kernel * selection[:, :, None, None].astype(kernel.dtype, copy=False)


def _correlate_gemm(x, weights, kh, kw):
    """Cross-correlate every map of x with (C_out, C_in*kh*kw) weights: (N, C_out, oh, ow)."""
    n, c, h, w = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))  # (N, C, oh, ow, kh, kw), a view
    # im2col: one copy into (N, C*kh*kw, oh*ow) so the GEMM reads contiguous rows.
    columns = np.ascontiguousarray(windows.transpose(0, 1, 4, 5, 2, 3)).reshape(n, c * kh * kw, oh * ow)
    out = np.matmul(weights, columns)  # (N, C_out, oh*ow)
    return out.reshape(n, weights.shape[0], oh, ow)


def conv_valid(x, kernel, selection=None):
    c_out, c_in, kh, kw = kernel.shape
    flipped = _masked(kernel, selection)[:, :, ::-1, ::-1]  # conv2 flips the kernel
    return _correlate_gemm(x, np.ascontiguousarray(flipped).reshape(c_out, c_in * kh * kw), kh, kw)


def conv_full(delta, kernel, selection=None):
    c_out, c_in, kh, kw = kernel.shape
    padded = np.pad(delta, ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)))
    weights = np.ascontiguousarray(_masked(kernel, selection).transpose(1, 0, 2, 3))
    return _correlate_gemm(padded, weights.reshape(c_in, c_out * kh * kw), kh, kw)


def conv_kernel_grad(x, delta, selection=None):
    n, c_in, h_in, w_in = x.shape
    _, c_out, h, w = delta.shape
    kh, kw = h_in - h + 1, w_in - w + 1
    windows = sliding_window_view(x, (h, w), axis=(2, 3))  # (N, C_in, kh, kw, h, w)
    columns = np.ascontiguousarray(windows.transpose(1, 2, 3, 0, 4, 5)).reshape(c_in * kh * kw, n * h * w)
    deltas = np.ascontiguousarray(delta.transpose(1, 0, 2, 3)).reshape(c_out, n * h * w)
    correlation = (deltas @ columns.T).reshape(c_out, c_in, kh, kw)
    grad = np.ascontiguousarray(correlation[:, :, ::-1, ::-1])  # the outer rot180 of eq. (7)
    return _masked(grad, selection)


def kron_upsample(x, n):
    b, c, h, w = x.shape
    tiles = np.broadcast_to(x[:, :, :, None, :, None], (b, c, h, n, w, n))
    return tiles.reshape(b, c, h * n, w * n)


def block_sum(x, n):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // n, n, w // n, n).sum(axis=(3, 5))


def block_mean(x, n):
    out = block_sum(x, n)
    out *= 1.0 / (n * n)
    return out


def decimate(x, n):
    b, c, h, w = x.shape
    return np.ascontiguousarray(x[:, :, 0 : h - h % n : n, 0 : w - w % n : n])


def decimate_transpose(delta, n):
    b, c, h, w = delta.shape
    out = np.zeros((b, c, h * n, w * n), dtype=delta.dtype)
    out[:, :, ::n, ::n] = delta
    return out


OPS = {
    "conv_valid": conv_valid,
    "conv_full": conv_full,
    "conv_kernel_grad": conv_kernel_grad,
    "kron_upsample": kron_upsample,
    "block_sum": block_sum,
    "block_mean": block_mean,
    "decimate": decimate,
    "decimate_transpose": decimate_transpose,
}
