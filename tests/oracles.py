"""Independent oracles: SciPy and plain NumPy, map by map. Never the code under test."""

from __future__ import annotations

import numpy as np
from scipy.signal import convolve2d, correlate2d


def conv_valid(x, kernel, selection=None):
    n, c_in = x.shape[:2]
    c_out = kernel.shape[0]
    sel = np.ones((c_out, c_in), bool) if selection is None else selection
    oh, ow = x.shape[2] - kernel.shape[2] + 1, x.shape[3] - kernel.shape[3] + 1
    out = np.zeros((n, c_out, oh, ow), dtype=np.float64)
    for b in range(n):
        for j in range(c_out):
            for i in range(c_in):
                if sel[j, i]:
                    out[b, j] += convolve2d(x[b, i], kernel[j, i], mode="valid")
    return out


def conv_full(delta, kernel, selection=None):
    n, c_out = delta.shape[:2]
    c_in, kh, kw = kernel.shape[1:]
    sel = np.ones((c_out, c_in), bool) if selection is None else selection
    out = np.zeros((n, c_in, delta.shape[2] + kh - 1, delta.shape[3] + kw - 1))
    for b in range(n):
        for i in range(c_in):
            for j in range(c_out):
                if sel[j, i]:  # the notes' conv2(delta, rot180(k), 'full')
                    out[b, i] += convolve2d(delta[b, j], np.rot90(kernel[j, i], 2), mode="full")
    return out


def conv_kernel_grad(x, delta, selection=None):
    n, c_in, h_in, w_in = x.shape
    c_out, h, w = delta.shape[1:]
    sel = np.ones((c_out, c_in), bool) if selection is None else selection
    out = np.zeros((c_out, c_in, h_in - h + 1, w_in - w + 1))
    for j in range(c_out):
        for i in range(c_in):
            if sel[j, i]:  # eq. (7): rot180(conv2(x_i, rot180(delta_j), 'valid'))
                for b in range(n):
                    out[j, i] += np.rot90(correlate2d(x[b, i], delta[b, j], mode="valid"), 2)
    return out


def kron_upsample(x, n):
    return np.kron(x, np.ones((1, 1, n, n)))


def block_sum(x, n):
    b, c, h, w = x.shape
    out = np.zeros((b, c, h // n, w // n))
    for r in range(h // n):  # the blkproc stand-in: one block at a time
        for s in range(w // n):
            out[:, :, r, s] = x[:, :, r * n : (r + 1) * n, s * n : (s + 1) * n].sum(axis=(2, 3))
    return out


def block_mean(x, n):
    return block_sum(x, n) / (n * n)


def decimate(x, n):
    return x[:, :, ::n, ::n]


def decimate_transpose(delta, n):
    b, c, h, w = delta.shape
    out = np.zeros((b, c, h * n, w * n))
    out[:, :, ::n, ::n] = delta
    return out
