"""The NumPy backend's hot ops in 1 and 3 spatial dimensions, on top of its 2-D ones.

Every op of the table here takes ``(N, C, *spatial)`` arrays with 1, 2 or 3 spatial axes (``Note
[N dimensions]`` in anycnn.ops). 2-D arrays go straight to the backend's 2-D ops (one test of
``ndim`` more per call: 2-D results are those bits); the others are mapped onto those 2-D ops:

Note [1-D and 3-D on the 2-D kernels]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
* **1-D** signals ``(N, C, L)`` are maps one row high, ``(N, C, 1, L)``, and their kernels
  ``(C_out, C_in, 1, k)``: every convolution of the notes is then the 2-D one, on the compiled
  direct kernels or im2col + BLAS as the 2-D dispatch chooses, with no copy (a reshape is a view).
  Up- and down-sampling cannot be (an n x n block of a one-row map is not an n-sample block), so
  they are strided NumPy here.
* **3-D** volumes ``(N, C, D, H, W)``: a 3-D 'valid' convolution is a sum over the kernel's depth
  taps ``a`` of 2-D convolutions of slices, ``u[:, :, z] = sum_a conv2(x[:, :, z + a], k[:, :,
  kd-1-a])`` (conv2's flip along depth is the ``kd-1-a``). So the depth goes into the batch:
  ``x`` becomes ``N D`` maps ``(C, H, W)`` (one transposing copy), one 2-D call convolves them
  with all ``kd C_out`` depth slices of the kernel stacked as output maps, and ``kd`` strided
  adds sum the slices that belong together (computing all ``D`` depths where ``D - kd + 1`` are
  kept: ``D / (D - kd + 1)`` times the work, 1.07x at 64^3 with kd = 5). The 'full' convolution is
  the adjoint, the stack going into input maps, and eq. (7) is ``kd`` 2-D kernel gradients, one
  per depth tap, of the depth-shifted slices against all deltas. Depth padding is a padded copy;
  rows and columns are padded by the 2-D ops as usual.
"""

from __future__ import annotations

import numpy as np

from anycnn import ops as _reference
from anycnn_numpy import _activation, _conv, _resample

# The backend's 2-D ops these wrappers call: plain globals, so that a 2-D call costs one ``ndim``
# test and one call more, no lookup; :func:`dimension_generic` binds them to its table's ops.
_conv_valid2 = _conv.conv_valid
_conv_valid_activate2 = _conv.conv_valid_activate
_conv_full2 = _conv.conv_full
_conv_kernel_grad2 = _conv.conv_kernel_grad
_conv_backward2 = _conv.conv_backward
_subsample_backward2 = _resample.subsample_backward
_sensitivity = _activation.sensitivity
_kron2, _block_sum2, _block_mean2 = (
    _resample.kron_upsample,
    _resample.block_sum,
    _resample.block_mean,
)
_decimate2, _decimate_transpose2 = _resample.decimate, _resample.decimate_transpose
_BOUND = {
    "_conv_valid2": "conv_valid",
    "_conv_valid_activate2": "conv_valid_activate",
    "_conv_full2": "conv_full",
    "_conv_kernel_grad2": "conv_kernel_grad",
    "_conv_backward2": "conv_backward",
    "_subsample_backward2": "subsample_backward",
    "_sensitivity": "sensitivity",
    "_kron2": "kron_upsample",
    "_block_sum2": "block_sum",
    "_block_mean2": "block_mean",
    "_decimate2": "decimate",
    "_decimate_transpose2": "decimate_transpose",
}


def _pads(padding, d: int) -> tuple[int, ...]:
    pads = tuple(int(p) for p in padding)
    if not any(pads):
        return (0,) * d
    if len(pads) != d:
        raise ValueError(f"padding {padding!r}: expected {d} amounts, one per spatial axis")
    return pads


def _row(a: np.ndarray) -> np.ndarray:
    """``(N, C, L)`` -> ``(N, C, 1, L)`` (a view when it can be)."""
    return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2])


def _flat(a: np.ndarray) -> np.ndarray:
    """``(N, C, *spatial)`` -> ``(N, C, 1, prod(spatial))``: for per-map elementwise ops."""
    return a.reshape(a.shape[0], a.shape[1], 1, -1)


def _usable(a, b) -> bool:
    return a.dtype == b.dtype and a.dtype.kind == "f"


def _depth_padded(x: np.ndarray, pd: int) -> np.ndarray:
    if not pd:
        return x
    out = np.zeros((*x.shape[:2], x.shape[2] + 2 * pd, *x.shape[3:]), dtype=x.dtype)
    out[:, :, pd : pd + x.shape[2]] = x
    return out


def _depth_major(a: np.ndarray) -> np.ndarray:
    """``(N, C, D, H, W)`` -> ``(N * D, C, H, W)``: the depth in the batch (a copy)."""
    n, c, d, h, w = a.shape
    return np.ascontiguousarray(a.transpose(0, 2, 1, 3, 4)).reshape(n * d, c, h, w)


# --- convolutions ---------------------------------------------------------------------------------
def conv_valid(x, kernel, selection=None, padding=(0, 0)):
    if x.ndim == 4:
        return _conv_valid2(x, kernel, selection, padding)
    if not _usable(x, kernel) or x.ndim not in (3, 5):
        return _reference.conv_valid(x, kernel, selection, padding)
    if x.ndim == 3:
        (p,) = _pads(padding, 1)
        u = _conv_valid2(_row(x), _row(kernel), selection, (0, p) if p else (0, 0))
        return u.reshape(u.shape[0], u.shape[1], u.shape[3])
    return _conv_valid3(x, kernel, selection, _pads(padding, 3))


def _conv_valid3(x, kernel, selection, pads):
    pd, ph, pw = pads
    x = _depth_padded(x, pd)
    n, c, d, _, _ = x.shape
    o, _, kd, kh, kw = kernel.shape
    od = d - kd + 1
    # stack[(a, j)] = kernel[j, :, kd-1-a]: the depth taps as output maps (Note [1-D and 3-D ...])
    stack = np.ascontiguousarray(kernel[:, :, ::-1].transpose(2, 0, 1, 3, 4))
    stack = stack.reshape(kd * o, c, kh, kw)
    sel = None if selection is None else np.tile(np.asarray(selection, dtype=bool), (kd, 1))
    planes = _conv_valid2(_depth_major(x), stack, sel, (ph, pw) if ph or pw else (0, 0))
    _, _, oh, ow = planes.shape
    planes = planes.reshape(n, d, kd, o, oh, ow)
    out = np.empty((n, o, od, oh, ow), dtype=x.dtype)
    view = out.transpose(0, 2, 1, 3, 4)  # the sums go straight to (N, C_out, D, H, W)
    np.copyto(view, planes[:, 0:od, 0])
    for a in range(1, kd):
        view += planes[:, a : a + od, a]
    return out


def conv_valid_activate(x, kernel, bias, activation, selection=None, padding=(0, 0)):
    if x.ndim == 4:
        return _conv_valid_activate2(x, kernel, bias, activation, selection, padding)
    if not (_usable(x, kernel) and bias.dtype == x.dtype) or x.ndim not in (3, 5):
        return _reference.conv_valid_activate(x, kernel, bias, activation, selection, padding)
    if x.ndim == 3:
        (p,) = _pads(padding, 1)
        y = _conv_valid_activate2(
            _row(x), _row(kernel), bias, activation, selection, (0, p) if p else (0, 0)
        )
        return y.reshape(y.shape[0], y.shape[1], y.shape[3])
    u = _conv_valid3(x, kernel, selection, _pads(padding, 3))
    u += bias.reshape(-1, 1, 1, 1)
    y = activation.apply(u, np)
    return y


def conv_full(delta, kernel, selection=None, padding=(0, 0)):
    if delta.ndim == 4:
        return _conv_full2(delta, kernel, selection, padding)
    if not _usable(delta, kernel) or delta.ndim not in (3, 5):
        return _reference.conv_full(delta, kernel, selection, padding)
    if delta.ndim == 3:
        (p,) = _pads(padding, 1)
        g = _conv_full2(_row(delta), _row(kernel), selection, (0, p) if p else (0, 0))
        return g.reshape(g.shape[0], g.shape[1], g.shape[3])
    pd, ph, pw = _pads(padding, 3)
    n, o, od, _, _ = delta.shape
    _, c, kd, kh, kw = kernel.shape
    # stack[j, (a, i)] = kernel[j, i, kd-1-a]: the adjoint of _conv_valid3's stacking
    stack = np.ascontiguousarray(kernel[:, :, ::-1].transpose(0, 2, 1, 3, 4))
    stack = stack.reshape(o, kd * c, kh, kw)
    sel = None if selection is None else np.tile(np.asarray(selection, dtype=bool), (1, kd))
    planes = _conv_full2(_depth_major(delta), stack, sel, (ph, pw) if ph or pw else (0, 0))
    _, _, h, w = planes.shape
    planes = planes.reshape(n, od, kd, c, h, w)
    full = np.zeros((n, c, od + kd - 1, h, w), dtype=delta.dtype)
    view = full.transpose(0, 2, 1, 3, 4)  # the sums go straight to (N, C_in, D, H, W)
    for a in range(kd):
        view[:, a : a + od] += planes[:, :, a]
    if pd:  # Note [Zero padding]: the depth crop
        full = np.ascontiguousarray(full[:, :, pd : full.shape[2] - pd])
    return full


def conv_kernel_grad(x, delta, selection=None, padding=(0, 0)):
    if x.ndim == 4:
        return _conv_kernel_grad2(x, delta, selection, padding)
    if not _usable(x, delta) or x.ndim not in (3, 5):
        return _reference.conv_kernel_grad(x, delta, selection, padding)
    if x.ndim == 3:
        (p,) = _pads(padding, 1)
        g = _conv_kernel_grad2(_row(x), _row(delta), selection, (0, p) if p else (0, 0))
        return g.reshape(g.shape[0], g.shape[1], g.shape[3])
    pd, ph, pw = _pads(padding, 3)
    x = _depth_padded(x, pd)
    n, c, d, h, w = x.shape
    _, o, od, _, _ = delta.shape
    kd = d - od + 1
    deltas = _depth_major(delta)
    slabs = x.transpose(0, 2, 1, 3, 4)  # (N, D, C, H, W), a view
    taps = []
    for a in range(kd):  # eq. (7) per depth tap: slices z + a against the deltas at z
        slab = np.ascontiguousarray(slabs[:, a : a + od]).reshape(n * od, c, h, w)
        taps.append(_conv_kernel_grad2(slab, deltas, selection, (ph, pw) if ph or pw else (0, 0)))
    return np.ascontiguousarray(np.stack(taps[::-1], axis=2))  # tap a is kernel depth kd-1-a


def conv_backward(x, dy, y, activation, selection=None, up=1, need_delta=True, padding=(0, 0)):
    if x.ndim == 4:
        return _conv_backward2(x, dy, y, activation, selection, up, need_delta, padding)
    if not _usable(x, dy) or x.ndim not in (3, 5):
        return _reference.conv_backward(x, dy, y, activation, selection, up, need_delta, padding)
    if x.ndim == 3:
        # up(dy) of one-row maps by the 2-D op: its row index y // up of row 0 is row 0, so the
        # up-sampling happens along the signal only (the direct kernels form it as they read dy)
        (p,) = _pads(padding, 1)
        grad, bias, delta = _conv_backward2(
            _row(x), _row(dy), _row(y), activation, selection, up, need_delta,
            (0, p) if p else (0, 0),
        )  # fmt: skip
        grad = grad.reshape(grad.shape[0], grad.shape[1], grad.shape[3])
        return grad, bias, None if delta is None else delta.reshape(y.shape)
    if up > 1:  # up(dy) along every axis, fitted to y (a subsampling remainder)
        dy = np.ascontiguousarray(_reference.fit_maps(kron_upsample(dy, up), *y.shape[2:]))
    delta = _sensitivity(dy, y, activation)
    grad = conv_kernel_grad(x, delta, selection, padding)
    # the bias sum over contiguous rows: np.sum over axes (0, 2, 3, 4) was 20x slower
    bias = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2).sum(axis=0)
    return grad, bias, delta if need_delta else None


def subsample_backward(dy, y, d, beta, activation, need_input_grad=True):
    if y.ndim == 4:
        return _subsample_backward2(dy, y, d, beta, activation, need_input_grad)
    if y.ndim < 3 or dy.shape != y.shape or d.shape != y.shape:
        return _reference.subsample_backward(dy, y, d, beta, activation, need_input_grad)
    # per-map sums and products: the maps' shape does not matter (one row of all samples)
    grad_beta, grad_bias, scaled = _subsample_backward2(
        _flat(dy), _flat(y), _flat(d), beta, activation, need_input_grad
    )
    return grad_beta, grad_bias, None if scaled is None else scaled.reshape(y.shape)


# --- up- and down-sampling ------------------------------------------------------------------------
def kron_upsample(x, n):
    if x.ndim == 4:
        return _kron2(x, n)
    if n == 1:
        return x.copy()
    b, c, *sizes = x.shape
    # a broadcasting copy: np.repeat along the last axis was 10x slower (12 ms for 76k values)
    out = np.empty((b, c, *(s * n for s in sizes)), dtype=x.dtype)
    view = out.reshape(b, c, *(v for s in sizes for v in (s, n)))
    np.copyto(view, x.reshape(b, c, *(v for s in sizes for v in (s, 1))))
    return out


def _block_sum(x, n, scale):
    b, c, *sizes = x.shape
    blocks = x.reshape(b, c, *(v for s in sizes for v in (s // n, n)))
    out = blocks.sum(axis=tuple(range(3, 3 + 2 * len(sizes), 2)))
    if scale is not None:
        out *= scale
    return out


def block_sum(x, n):
    if x.ndim == 4:
        return _block_sum2(x, n)
    if n == 1:
        return x.copy()
    return _block_sum(x, n, None)


def block_mean(x, n):
    if x.ndim == 4:
        return _block_mean2(x, n)
    if x.dtype.kind != "f":
        return _reference.block_mean(x, n)
    if n == 1:
        return x.copy()
    return _block_sum(x, n, 1.0 / n ** (x.ndim - 2))


def decimate(x, n):
    if x.ndim == 4:
        return _decimate2(x, n)
    return np.ascontiguousarray(_reference.decimate(x, n))


def decimate_transpose(delta, n):
    if delta.ndim == 4:
        return _decimate_transpose2(delta, n)
    b, c, *sizes = delta.shape
    out = np.zeros((b, c, *(s * n for s in sizes)), dtype=delta.dtype)
    out[(slice(None), slice(None), *(slice(None, None, n) for _ in sizes))] = delta
    return out


_N_D = {
    "conv_valid": conv_valid,
    "conv_valid_activate": conv_valid_activate,
    "conv_backward": conv_backward,
    "subsample_backward": subsample_backward,
    "conv_full": conv_full,
    "conv_kernel_grad": conv_kernel_grad,
    "kron_upsample": kron_upsample,
    "block_sum": block_sum,
    "block_mean": block_mean,
    "decimate": decimate,
    "decimate_transpose": decimate_transpose,
}


def dimension_generic(table: dict) -> dict:
    """The backend's op table with every map op taking 1, 2 or 3 spatial axes: 2-D calls go to
    ``table``'s op (one ``ndim`` test more), 1-D and 3-D ones through the mappings of Note [1-D
    and 3-D on the 2-D kernels] onto those same 2-D ops. Other ops are left as they are."""
    for variable, name in _BOUND.items():
        globals()[variable] = table[name]
    return {name: _N_D.get(name, op) for name, op in table.items()}
