"""Fast hot ops for CuPy: the same names and signatures as :mod:`anycnn.ops`.

Convolutions are im2col (a strided window view copied once by a CUDA copy kernel) plus one
cuBLAS GEMM (``cupy.matmul``); up- and down-sampling are broadcast views and reshaped sums that
CuPy runs as single elementwise / reduction kernels. CuPy 14 has no cuDNN, so GEMM is the path.
"""

from __future__ import annotations

import cupy
from cupy.lib.stride_tricks import sliding_window_view


def _masked(kernel, selection):
    if selection is None:
        return kernel
    return kernel * selection[:, :, None, None].astype(kernel.dtype, copy=False)


def _correlate_gemm(x, weights, kh, kw):
    n, c, h, w = x.shape
    oh, ow = h - kh + 1, w - kw + 1
    windows = sliding_window_view(x, (kh, kw), axis=(2, 3))
    columns = cupy.ascontiguousarray(windows.transpose(0, 1, 4, 5, 2, 3)).reshape(
        n, c * kh * kw, oh * ow
    )
    return cupy.matmul(weights, columns).reshape(n, weights.shape[0], oh, ow)


def conv_valid(x, kernel, selection=None):
    c_out, c_in, kh, kw = kernel.shape
    flipped = _masked(kernel, selection)[:, :, ::-1, ::-1]
    return _correlate_gemm(x, cupy.ascontiguousarray(flipped).reshape(c_out, c_in * kh * kw), kh, kw)


def conv_full(delta, kernel, selection=None):
    c_out, c_in, kh, kw = kernel.shape
    padded = cupy.pad(delta, ((0, 0), (0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1)))
    weights = cupy.ascontiguousarray(_masked(kernel, selection).transpose(1, 0, 2, 3))
    return _correlate_gemm(padded, weights.reshape(c_in, c_out * kh * kw), kh, kw)


def conv_kernel_grad(x, delta, selection=None):
    n, c_in, h_in, w_in = x.shape
    _, c_out, h, w = delta.shape
    kh, kw = h_in - h + 1, w_in - w + 1
    windows = sliding_window_view(x, (h, w), axis=(2, 3))
    columns = cupy.ascontiguousarray(windows.transpose(1, 2, 3, 0, 4, 5)).reshape(
        c_in * kh * kw, n * h * w
    )
    deltas = cupy.ascontiguousarray(delta.transpose(1, 0, 2, 3)).reshape(c_out, n * h * w)
    correlation = cupy.matmul(deltas, columns.T).reshape(c_out, c_in, kh, kw)
    return _masked(cupy.ascontiguousarray(correlation[:, :, ::-1, ::-1]), selection)


def kron_upsample(x, n):
    b, c, h, w = x.shape
    tiles = cupy.broadcast_to(x[:, :, :, None, :, None], (b, c, h, n, w, n))
    return tiles.reshape(b, c, h * n, w * n)


def block_sum(x, n):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // n, n, w // n, n).sum(axis=(3, 5))


def block_mean(x, n):
    return block_sum(x, n) * (1.0 / (n * n))


def decimate(x, n):
    b, c, h, w = x.shape
    return cupy.ascontiguousarray(x[:, :, 0 : h - h % n : n, 0 : w - w % n : n])


def decimate_transpose(delta, n):
    b, c, h, w = delta.shape
    out = cupy.zeros((b, c, h * n, w * n), dtype=delta.dtype)
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
