"""Independent oracles: SciPy and plain NumPy, map by map. Never the code under test."""

from __future__ import annotations

import numpy as np
from scipy.signal import convolve2d, correlate2d

from anycnn.layers.activations import Activation


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


# --- any number of spatial axes (issue 18): scipy.signal.convolve / correlate, map by map ------
def _crop(a, pads):
    return a[tuple(slice(p, a.shape[i] - p) for i, p in enumerate(pads))]


def _pad(a, pads):
    return np.pad(a, [(p, p) for p in pads])


def conv_valid_nd(x, kernel, selection=None, padding=None):
    """``u[n, j] = sum_i convolve(pad(x[n, i]), k[j, i], 'valid')`` (the notes' conv2, N-D)."""
    from scipy.signal import convolve

    n, c_in = x.shape[:2]
    c_out = kernel.shape[0]
    pads = padding or (0,) * (x.ndim - 2)
    sel = np.ones((c_out, c_in), bool) if selection is None else selection
    size = [s + 2 * p - k + 1 for s, p, k in zip(x.shape[2:], pads, kernel.shape[2:], strict=True)]
    out = np.zeros((n, c_out, *size))
    for b in range(n):
        for j in range(c_out):
            for i in range(c_in):
                if sel[j, i]:
                    out[b, j] += convolve(_pad(x[b, i], pads), kernel[j, i], mode="valid")
    return out


def conv_full_nd(delta, kernel, selection=None, padding=None):
    """``g[n, i] = sum_j crop(correlate(delta[n, j], k[j, i], 'full'))``: conv2(delta,
    rot180(k), 'full') along every axis, cropped by the forward padding."""
    from scipy.signal import correlate

    n, c_out = delta.shape[:2]
    c_in = kernel.shape[1]
    pads = padding or (0,) * (delta.ndim - 2)
    sel = np.ones((c_out, c_in), bool) if selection is None else selection
    size = [
        s + k - 1 - 2 * p for s, k, p in zip(delta.shape[2:], kernel.shape[2:], pads, strict=True)
    ]
    out = np.zeros((n, c_in, *size))
    for b in range(n):
        for i in range(c_in):
            for j in range(c_out):
                if sel[j, i]:
                    out[b, i] += _crop(correlate(delta[b, j], kernel[j, i], mode="full"), pads)
    return out


def conv_kernel_grad_nd(x, delta, selection=None, padding=None):
    """Eq. (7) along every axis: ``flip(sum_n correlate(pad(x[n, i]), delta[n, j], 'valid'))``."""
    from scipy.signal import correlate

    c_in = x.shape[1]
    c_out = delta.shape[1]
    pads = padding or (0,) * (x.ndim - 2)
    sel = np.ones((c_out, c_in), bool) if selection is None else selection
    ks = [s + 2 * p - d + 1 for s, p, d in zip(x.shape[2:], pads, delta.shape[2:], strict=True)]
    out = np.zeros((c_out, c_in, *ks))
    for j in range(c_out):
        for i in range(c_in):
            if sel[j, i]:
                for b in range(x.shape[0]):
                    term = correlate(_pad(x[b, i], pads), delta[b, j], mode="valid")
                    out[j, i] += np.flip(term)
    return out


def kron_upsample_nd(x, n):
    return np.kron(x, np.ones((1, 1) + (n,) * (x.ndim - 2)))


def block_sum_nd(x, n):
    """One block at a time (the blkproc stand-in), any number of spatial axes."""
    import itertools

    sizes = [s // n for s in x.shape[2:]]
    out = np.zeros((*x.shape[:2], *sizes))
    for index in itertools.product(*(range(s) for s in sizes)):
        block = x[(slice(None), slice(None), *(slice(i * n, (i + 1) * n) for i in index))]
        out[(slice(None), slice(None), *index)] = block.sum(axis=tuple(range(2, x.ndim)))
    return out


def block_mean_nd(x, n):
    return block_sum_nd(x, n) / n ** (x.ndim - 2)


def decimate_nd(x, n):
    return x[(slice(None), slice(None), *(slice(None, None, n) for _ in x.shape[2:]))]


def decimate_transpose_nd(delta, n):
    out = np.zeros((*delta.shape[:2], *(s * n for s in delta.shape[2:])))
    out[(slice(None), slice(None), *(slice(None, None, n) for _ in delta.shape[2:]))] = delta
    return out


class Softsign(Activation):
    """f(u) = u / (1 + |u|), an activation with no description (Note [Activation
    descriptions]): no backend can compile it, so every backend must call its own methods."""

    name = "softsign"

    def forward(self, u):
        return u / (1 + abs(u))

    def derivative(self, y, u=None):
        return (1 - abs(y)) ** 2
