"""Reference hot operations in pure Array API: the oracle and the fallback of every backend.

Every function here runs on any namespace that follows the Array API standard (2023.12), as
array-api-strict checks: no ``einsum``, ``pad``, ``kron`` or in-place writes. A backend overrides
any of them with a faster version of the same name and signature (``Note [Hot-op dispatch]`` in
:mod:`anycnn.backend`); these stay the oracle the fast versions are tested against.

Conventions
-----------
* Maps are ``(N, C, H, W)``: batch, maps, rows, columns; or, in any number of spatial
  dimensions, ``(N, C, *spatial)``: signals ``(N, C, L)``, volumes ``(N, C, D, H, W)``
  (``Note [N dimensions]``). Every op below takes 1, 2 or 3 spatial axes (any number, in fact).
* Kernels are ``(C_out, C_in, kh, kw)`` (``(C_out, C_in, *k)`` in N-D). An input-map selection
  (``M_j`` of section 3.1 of the notes) is a boolean ``(C_out, C_in)`` table;
  ``selection[j, i]`` says output map ``j`` sums over input map ``i``. Kernels outside the
  selection act as zero.
* "Convolution" means MATLAB's ``conv2``, as in the notes: the kernel is flipped (rot180), so
  ``conv_valid(x, k)[n, j] = sum_i conv2(x[n, i], k[j, i], 'valid')``. PyTorch's and most
  frameworks' "convolution" is cross-correlation; :func:`anycnn.layers.to_cross_correlation`
  converts kernels between the two.

The arguments are assumed valid here (inner loops do not re-check); :mod:`anycnn.functional`
holds the checked public entry points.
"""

from __future__ import annotations

import functools
import itertools
import types
from typing import Any

import array_api_compat

__all__ = [
    "conv_valid",
    "conv_full",
    "conv_kernel_grad",
    "kron_upsample",
    "block_sum",
    "block_mean",
    "decimate",
    "decimate_transpose",
    "fully_connected",
    "fully_connected_weight_grad",
    "fully_connected_input_grad",
]

Array = Any

# Note [N dimensions]
# ~~~~~~~~~~~~~~~~~~~
# The notes derive everything for 2-D maps and say it "can be extended without much additional
# effort to an arbitrary number of dimensions" (section 1). It can, axis by axis: conv2's rot180
# becomes a flip of every kernel axis, the 'valid' and 'full' borders apply along each axis, the
# kron up-sampling x (kron) 1_{n x n} tiles n times along each axis (1_{n x n x n} for volumes),
# and down() sums, averages (1/n^d) or keeps the first sample of each n^d block. The ops below
# loop over kernel taps with itertools.product over the kernel's axes, in the row-major order of
# the 2-D loops they replace, so 2-D results are the same operations in the same order: bit for
# bit what they were. Padding is one amount per spatial axis; a padding of zeros (the default
# ``(0, 0)``) means none whatever the number of axes.


def _spatial(x: Array) -> int:
    """How many spatial axes an ``(N, C, *spatial)`` array has."""
    return x.ndim - 2


def _masked(kernel: Array, selection: Array | None, xp: Any) -> Array:
    if selection is None:
        return kernel
    c_out, c_in = selection.shape
    d = kernel.ndim - 2
    return kernel * xp.reshape(xp.astype(selection, kernel.dtype), (c_out, c_in, *((1,) * d)))


def _window(starts: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[slice, ...]:
    """The index ``[:, :, s0 : s0 + n0, s1 : s1 + n1, ...]``."""
    return (
        slice(None),
        slice(None),
        *(slice(s, s + n) for s, n in zip(starts, sizes, strict=True)),
    )


def _padding(padding: Any, d: int) -> tuple[int, ...]:
    """One amount per spatial axis; zeros (the default ``(0, 0)``) mean none for any d."""
    pads = tuple(int(p) for p in padding)
    if not any(pads):
        return (0,) * d
    if len(pads) != d:
        raise ValueError(f"padding {padding!r}: expected {d} amounts, one per spatial axis")
    return pads


def conv_valid(
    x: Array, kernel: Array, selection: Array | None = None, padding: tuple[int, int] = (0, 0)
) -> Array:
    """Sum over selected input maps of their 'valid' convolutions: the forward pass of 3.1.

    Computes ``u[n, j] = sum_{i in M_j} conv2(x[n, i], kernel[j, i], 'valid')``, the inner sum of
    the convolution layer ``x_j = f(sum_{i in M_j} x_i * k_ij + b_j)`` (section 3.1).

    Parameters
    ----------
    x : array, shape (N, C_in, H, W), or (N, C_in, *spatial) with any number of spatial axes
    kernel : array, shape (C_out, C_in, kh, kw), with kh <= H + 2 ph and kw <= W + 2 pw
        (``(C_out, C_in, *k)`` in N-D, Note [N dimensions])
    selection : bool array, shape (C_out, C_in), optional
        The input maps ``M_j`` of each output map; all of them when omitted.
    padding : (int, int)
        ``(ph, pw)`` rows and columns of zeros added on each side of every map first (Note
        [Zero padding]); the notes' 'valid' convolution is ``(0, 0)``. One amount per spatial
        axis in N-D; zeros mean none.

    Returns
    -------
    array, shape (N, C_out, H + 2 ph - kh + 1, W + 2 pw - kw + 1), axis by axis in N-D

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> u = ops.conv_valid(a(1, 1, 3, 3), be.asarray(np.ones((2, 1, 2, 2)), "float64"))
    >>> tuple(u.shape), float(u[0, 0, 0, 0])      # 0 + 1 + 3 + 4
    ((1, 2, 2, 2), 8.0)
    """
    xp = array_api_compat.array_namespace(x, kernel)
    d = _spatial(x)
    pads = _padding(padding, d)
    if any(pads):
        x = _pad(x, pads, xp)
    ks = tuple(kernel.shape[2:])
    outs = tuple(size - k + 1 for size, k in zip(x.shape[2:], ks, strict=True))
    # conv2 flips the kernel: tap (a, b) of the cross-correlation uses kernel[..., kh-1-a, kw-1-b]
    # (every axis flipped in N-D).
    flipped = xp.flip(_masked(kernel, selection, xp), axis=tuple(range(2, 2 + d)))
    out = None
    # a loop over kernel taps, not over examples or maps (row-major: Note [N dimensions])
    for taps in itertools.product(*(range(k) for k in ks)):
        patch = x[_window(taps, outs)]  # (N, C_in, *outs)
        tap = flipped[(slice(None), slice(None), *taps)]  # (C_out, C_in)
        term = xp.tensordot(patch, tap, axes=([1], [1]))  # (N, *outs, C_out)
        out = term if out is None else out + term
    return xp.permute_dims(out, (0, d + 1, *range(1, d + 1)))


def _pad(x: Array, pads: tuple[int, ...], xp: Any) -> Array:
    """Zero-pad each spatial axis by its amount on each side (the last axis first)."""
    dev = array_api_compat.device(x)
    for axis in range(x.ndim - 1, 1, -1):
        p = pads[axis - 2]
        if p:
            shape = list(x.shape)
            shape[axis] = p
            side = xp.zeros(tuple(shape), dtype=x.dtype, device=dev)
            x = xp.concat([side, x, side], axis=axis)
    return x


def fit_maps(x: Array, *size: int) -> Array:
    """``x`` cropped or zero-padded at the bottom and right to ``(N, C, h, w)`` (``fit_maps(x,
    h, w)``; in N-D one size per spatial axis, each cropped or padded at its end).

    Not a hot op (a slice, or one concatenation): the subsampling layers' ``remainder`` crops
    (``"drop"``) or pads (``"pad"``) their input to whole blocks with it, and its adjoint, the
    same call with the input's size, takes ``up(delta)`` back (zeros for the dropped rows, the
    padded rows cut off). Returns ``x`` itself when it already has that size.
    """
    xp = array_api_compat.array_namespace(x)
    have = tuple(x.shape[2:])
    if have == tuple(size):
        return x
    x = x[
        (slice(None), slice(None), *(slice(0, min(a, b)) for a, b in zip(have, size, strict=True)))
    ]
    dev = array_api_compat.device(x)
    for axis in range(x.ndim - 1, 1, -1):  # the last axis first, as the 2-D version did
        missing = size[axis - 2] - x.shape[axis]
        if missing > 0:
            shape = list(x.shape)
            shape[axis] = missing
            zeros = xp.zeros(tuple(shape), dtype=x.dtype, device=dev)
            x = xp.concat([x, zeros], axis=axis)
    return x


# Note [Zero padding]
# ~~~~~~~~~~~~~~~~~~
# A convolution layer with ``padding=(ph, pw)`` convolves its maps with ph rows and pw columns of
# zeros added on each side: ``u = conv_valid(pad(x), k)``, and everything of 3.1.1 and 3.2.1
# holds for ``pad(x)``. So the kernel gradient is eq. (7) on the padded input,
# ``conv_kernel_grad(pad(x), delta)``, and the sensitivity of the padded input is the notes'
# ``conv2(delta, rot180(k), 'full')``, of size ``H + 2 ph``; the zeros are constants, so the
# sensitivity of x itself is that 'full' convolution cropped back by (ph, pw) on each side (the
# adjoint of pad is the crop). The ops take ``padding`` and avoid the padded copies where they
# can: the reference reads the 'full' convolution's windows at an offset (a ``delta`` padded by
# ``kh - 1`` rows, output rows ``ph .. ph + H - 1``); the NumPy backend's direct kernels pad the
# forward convolution as they interleave rows and compute the cropped 'full' one with ``ph``
# fewer rows of padding (Note [Direct convolutions]), while its eq. (7) and its BLAS paths run
# on a zero-padded copy of x; CuPy's im2col pads in its index arithmetic. PyTorch's
# ``conv2d(padding=...)`` is the same padding (its kernels are the rot180 of ours: DESIGN.md's
# conv2 convention). Padding is one amount per spatial axis, so the N-D layers take the same
# specification (``anycnn.layers.conv.resolve_padding``).


def conv_full(
    delta: Array, kernel: Array, selection: Array | None = None, padding: tuple[int, int] = (0, 0)
) -> Array:
    """Back-propagate sensitivities through a convolution: ``conv2(delta, rot180(k), 'full')``.

    Computes ``g[n, i] = sum_{j : i in M_j} conv2(delta[n, j], rot180(kernel[j, i]), 'full')``,
    the sum of section 3.2.1 (``delta_i = f'(u_i) o g_i`` for the layer below). It is the adjoint
    of :func:`conv_valid` in its first argument: ``<conv_valid(x, k), d> = <x, conv_full(d, k)>``,
    for the same ``padding`` too: then ``g`` is the 'full' convolution cropped by ``(ph, pw)`` on
    each side (Note [Zero padding]).

    Parameters
    ----------
    delta : array, shape (N, C_out, h, w) (``(N, C_out, *spatial)`` in N-D)
    kernel : array, shape (C_out, C_in, kh, kw) (``(C_out, C_in, *k)``)
    selection : bool array, shape (C_out, C_in), optional
    padding : (int, int)
        The ``(ph, pw)`` of the forward convolution (one amount per spatial axis in N-D).

    Returns
    -------
    array, shape (N, C_in, h + kh - 1 - 2 ph, w + kw - 1 - 2 pw), axis by axis in N-D

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> g = ops.conv_full(a(1, 2, 2, 2), be.asarray(np.ones((2, 1, 2, 2)), "float64"))
    >>> tuple(g.shape), float(g[0, 0, 0, 0])      # delta[0, 0, 0, 0] + delta[0, 1, 0, 0]
    ((1, 1, 3, 3), 4.0)
    """
    xp = array_api_compat.array_namespace(delta, kernel)
    d = _spatial(delta)
    pads = _padding(padding, d)
    ks = tuple(kernel.shape[2:])
    padded = _pad(delta, tuple(k - 1 for k in ks), xp)
    k = _masked(kernel, selection, xp)
    outs = tuple(
        size + kk - 1 - 2 * p for size, kk, p in zip(delta.shape[2:], ks, pads, strict=True)
    )
    out = None
    # conv2 with rot180(k) is a cross-correlation with k itself: no flip here; the crop of
    # Note [Zero padding] is the offset (ph, pw) of every window.
    for taps in itertools.product(*(range(kk) for kk in ks)):
        starts = tuple(p + a for p, a in zip(pads, taps, strict=True))
        patch = padded[_window(starts, outs)]  # (N, C_out, *outs)
        term = xp.tensordot(patch, k[(slice(None), slice(None), *taps)], axes=([1], [0]))
        out = term if out is None else out + term  # (N, *outs, C_in)
    return xp.permute_dims(out, (0, d + 1, *range(1, d + 1)))


def conv_kernel_grad(
    x: Array, delta: Array, selection: Array | None = None, padding: tuple[int, int] = (0, 0)
) -> Array:
    """Kernel gradient of a convolution layer, eq. (7) in its rot180 / 'valid' form.

    Computes ``dE/dk[j, i] = sum_n rot180(conv2(x[n, i], rot180(delta[n, j]), 'valid'))``, summed
    over the batch; zero outside the selection. It is the adjoint of :func:`conv_valid` in its
    second argument: ``<conv_valid(x, k), d> = <k, conv_kernel_grad(x, d)>``, for the same
    ``padding`` too (then eq. (7) runs on the padded ``x``: Note [Zero padding]).

    Parameters
    ----------
    x : array, shape (N, C_in, H, W) (``(N, C_in, *spatial)`` in N-D)
        The layer's input maps (``x^{l-1}``).
    delta : array, shape (N, C_out, h, w)
        The layer's sensitivities; the kernel size is ``(H + 2 ph - h + 1, W + 2 pw - w + 1)``.
    selection : bool array, shape (C_out, C_in), optional
    padding : (int, int)
        The ``(ph, pw)`` of the forward convolution (one amount per spatial axis in N-D).

    Returns
    -------
    array, shape (C_out, C_in, H + 2 ph - h + 1, W + 2 pw - w + 1), axis by axis in N-D

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> dk = ops.conv_kernel_grad(a(1, 1, 3, 3), be.asarray(np.ones((1, 2, 2, 2)), "float64"))
    >>> tuple(dk.shape)
    (2, 1, 2, 2)
    """
    xp = array_api_compat.array_namespace(x, delta)
    d = _spatial(x)
    pads = _padding(padding, d)
    if any(pads):
        x = _pad(x, pads, xp)
    sizes = tuple(delta.shape[2:])
    ks = tuple(size - s + 1 for size, s in zip(x.shape[2:], sizes, strict=True))
    summed = [0, *range(2, 2 + d)]  # the batch and every position
    taps = []
    for starts in itertools.product(*(range(k) for k in ks)):
        patch = x[_window(starts, sizes)]  # (N, C_in, *sizes)
        taps.append(xp.tensordot(delta, patch, axes=(summed, summed)))  # (C_out, C_in)
    c_out, c_in = taps[0].shape
    correlation = xp.reshape(xp.stack(taps, axis=2), (c_out, c_in, *ks))
    grad = xp.flip(correlation, axis=tuple(range(2, 2 + d)))  # the outer rot180 of eq. (7)
    return _masked(grad, selection, xp)


def kron_upsample(x: Array, n: int) -> Array:
    """Tile each pixel into an n x n block: ``up(x) = x (kron) 1_{n x n}`` (section 3.1.1).

    Parameters
    ----------
    x : array, shape (N, C, h, w) (``(N, C, *spatial)`` in N-D: n times along every axis)
    n : int, the subsampling factor

    Returns
    -------
    array, shape (N, C, h * n, w * n)

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> up = ops.kron_upsample(a(1, 1, 2, 2), 2)
    >>> tuple(up.shape), float(up[0, 0, 1, 1]), float(up[0, 0, 3, 3])
    ((1, 1, 4, 4), 0.0, 3.0)
    """
    xp = array_api_compat.array_namespace(x)
    b, c, *sizes = x.shape
    single = tuple(v for s in sizes for v in (s, 1))
    tiled = tuple(v for s in sizes for v in (s, n))
    tiles = xp.broadcast_to(xp.reshape(x, (b, c, *single)), (b, c, *tiled))
    return xp.reshape(tiles, (b, c, *(s * n for s in sizes)))


def block_sum(x: Array, n: int) -> Array:
    """Sum over each distinct n x n block: ``down(x)`` of section 3.2 (the notes' default).

    The adjoint of :func:`kron_upsample`. ``H`` and ``W`` must be multiples of ``n``. In N-D,
    the sum over each ``n^d`` block of ``(N, C, *spatial)`` maps.

    Returns
    -------
    array, shape (N, C, H // n, W // n)

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> float(ops.block_sum(a(1, 1, 2, 2), 2)[0, 0, 0, 0])   # 0 + 1 + 2 + 3
    6.0
    """
    xp = array_api_compat.array_namespace(x)
    b, c, *sizes = x.shape
    blocks = tuple(v for s in sizes for v in (s // n, n))
    return xp.sum(xp.reshape(x, (b, c, *blocks)), axis=tuple(range(3, 3 + 2 * len(sizes), 2)))


def block_mean(x: Array, n: int) -> Array:
    """Mean over each distinct n x n block (DeepLearnToolbox's subsampling): block_sum / n^2
    (``/ n^d`` over the ``n^d`` blocks of d spatial axes).

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> float(ops.block_mean(a(1, 1, 2, 2), 2)[0, 0, 0, 0])
    1.5
    """
    return block_sum(x, n) / n ** _spatial(x)


def decimate(x: Array, n: int) -> Array:
    """Keep every n-th sample along rows and columns ("throw away" the others, section 3.2).

    Returns
    -------
    array, shape (N, C, H // n, W // n), the top-left sample of each n x n block (the first
    corner of each ``n^d`` block in N-D)

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> float(ops.decimate(a(1, 1, 4, 4), 2)[0, 0, 1, 1])   # x[0, 0, 2, 2]
    10.0
    """
    return x[(slice(None), slice(None), *(slice(0, s - s % n, n) for s in x.shape[2:]))]


def decimate_transpose(delta: Array, n: int) -> Array:
    """The adjoint of :func:`decimate`: each value goes to the top-left of an n x n block of
    zeros.

    Returns
    -------
    array, shape (N, C, h * n, w * n)

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> g = ops.decimate_transpose(a(1, 1, 2, 2), 2)
    >>> tuple(g.shape), float(g[0, 0, 2, 2]), float(g[0, 0, 1, 1])
    ((1, 1, 4, 4), 3.0, 0.0)
    """
    xp = array_api_compat.array_namespace(delta)
    b, c, *sizes = delta.shape
    d = len(sizes)
    first = xp.astype(xp.arange(n, device=array_api_compat.device(delta)) == 0, delta.dtype)
    mask = None
    for axis in range(d):  # the first sample of every block along every axis
        shape = [1] * (2 + 2 * d)
        shape[3 + 2 * axis] = n
        part = xp.reshape(first, tuple(shape))
        mask = part if mask is None else mask * part
    single = tuple(v for s in sizes for v in (s, 1))
    blocks = xp.reshape(delta, (b, c, *single)) * mask
    return xp.reshape(blocks, (b, c, *(s * n for s in sizes)))


def fully_connected(x: Array, weight: Array) -> Array:
    """The inner products of a fully connected layer, ``u = W x`` of eq. (2), for a batch.

    Parameters
    ----------
    x : array, shape (N, D)
        One input vector per row.
    weight : array, shape (M, D)

    Returns
    -------
    array, shape (N, M): ``x @ weight^T`` (the bias is the layer's to add).

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> u = ops.fully_connected(a(2, 3), be.asarray(np.ones((4, 3)), "float64"))
    >>> tuple(u.shape), float(u[1, 0])               # 3 + 4 + 5
    ((2, 4), 12.0)
    """
    xp = array_api_compat.array_namespace(x, weight)
    return xp.matmul(x, xp.matrix_transpose(weight))


def fully_connected_weight_grad(x: Array, delta: Array) -> Array:
    """Weight gradient of a fully connected layer, ``dE/dW = delta x^T`` (eq. 5), batch summed.

    Parameters
    ----------
    x : array, shape (N, D)
        The layer's inputs ``x^{l-1}``.
    delta : array, shape (N, M)
        The layer's sensitivities.

    Returns
    -------
    array, shape (M, D): ``delta^T @ x``, the adjoint of :func:`fully_connected` in ``weight``.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> tuple(ops.fully_connected_weight_grad(a(2, 3), a(2, 4)).shape)
    (4, 3)
    """
    xp = array_api_compat.array_namespace(x, delta)
    return xp.matmul(xp.matrix_transpose(delta), x)


def fully_connected_input_grad(delta: Array, weight: Array) -> Array:
    """Back-propagate sensitivities through a fully connected layer: ``W^T delta`` (eq. 3).

    Parameters
    ----------
    delta : array, shape (N, M)
    weight : array, shape (M, D)

    Returns
    -------
    array, shape (N, D): ``delta @ weight``, the adjoint of :func:`fully_connected` in ``x``;
    the layer below multiplies it by its ``f'(u)``.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn import ops
    >>> be = anycnn.get_backend()     # the reference op runs on any Array API namespace
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
    >>> tuple(ops.fully_connected_input_grad(a(2, 4), a(4, 3)).shape)
    (2, 3)
    """
    xp = array_api_compat.array_namespace(delta, weight)
    return xp.matmul(delta, weight)


#: The ops whose first argument is ``(N, C, *spatial)`` maps (Note [N dimensions]).
MAP_OP_NAMES: tuple[str, ...] = (
    "conv_valid",
    "conv_full",
    "conv_kernel_grad",
    "kron_upsample",
    "block_sum",
    "block_mean",
    "decimate",
    "decimate_transpose",
    "conv_valid_activate",
    "conv_backward",
    "subsample_backward",
)


# --- fused ops -----------------------------------------------------------------------------------
# Note [Fused ops]
# ~~~~~~~~~~~~~~~~
# Section 3.4 asks that what can be done together be done together. A fused op computes a chain
# of the ops above (and an activation) in one call, so a backend can keep the intermediate in
# cache or registers: the NumPy backend applies the bias and f to each map of the convolution
# as it leaves the compiled kernel, forms a layer's sensitivity f'(u) o dy in one compiled pass
# instead of four, and with conv_backward forms a convolution layer's sensitivity (up-sampling
# included, Note [Deferred up-sampling] in anycnn.layers.base), kernel and bias gradients in
# one pass over its kernel-gradient grid; with subsample_forward it forms a trainable
# subsampling layer's block sums, beta d + b and f in one pass per batch slice.
#
# Every backend's op table has every fused op (FUSED_OP_NAMES): the backend's own where it gives
# one, else the chain below run on that backend's own plain ops (`compose_fused`), so a layer has
# one code path and a backend may fuse any subset. The functions here are that chain on the
# reference ops: the definition each fused version must meet and the oracle of the tests. The
# two leaves, `activate` and `sensitivity`, are the activation's own arithmetic
# (Note [Activation descriptions] in anycnn.backend.activations): a backend runs an activation
# it knows by its description, any other through the activation's methods.

#: Fused ops (``Note [Fused ops]``): in every backend's table, composed where a backend has none.
FUSED_OP_NAMES: tuple[str, ...] = (
    "conv_valid_activate",
    "conv_backward",
    "subsample_forward",
    "subsample_backward",
    "sensitivity",
    "activate",
)


def _padding_args(padding: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    # Padding reaches the plain ops only when there is some, so that a backend whose ops take no
    # padding argument still runs the notes' unpadded layers.
    return (padding,) if any(padding) else ()


def _per_map(v: Array, ndim: int) -> Array:
    """A ``(C,)`` vector indexed to broadcast over ``(N, C, *spatial)`` maps of ``ndim`` axes."""
    return v[(slice(None),) + (None,) * (ndim - 2)]


def _conv_valid_activate(ops, x, kernel, bias, activation, selection=None, padding=(0, 0)):
    u = ops.conv_valid(x, kernel, selection, *_padding_args(padding))
    u += _per_map(bias, u.ndim)  # u is ours: the bias and f in place where the namespace allows
    return ops.activate(u, activation)


def _conv_backward(
    ops, x, dy, y, activation, selection=None, up=1, need_delta=True, padding=(0, 0)
):
    if up > 1:  # Note [Deferred up-sampling]: dE/dy = up(dy), fitted to y (a remainder)
        dy = fit_maps(ops.kron_upsample(dy, up), *y.shape[2:])
    delta = ops.sensitivity(dy, y, activation)
    grad = ops.conv_kernel_grad(x, delta, selection, *_padding_args(padding))
    xp = array_api_compat.array_namespace(delta)
    bias_grad = xp.sum(delta, axis=(0, *range(2, delta.ndim)))
    return grad, bias_grad, delta if need_delta else None


def _subsample_forward(ops, x, n, mode, beta, bias, activation):
    d = ops.block_sum(x, n) if mode == "sum" else ops.block_mean(x, n)
    u = d * _per_map(beta, d.ndim)
    u += _per_map(bias, u.ndim)  # u is ours: the bias and f in place where the namespace allows
    return ops.activate(u, activation), d


def _subsample_backward(ops, dy, y, d, beta, activation, need_input_grad=True):
    delta = ops.sensitivity(dy, y, activation)
    xp = array_api_compat.array_namespace(delta)
    axes = (0, *range(2, delta.ndim))
    grad_beta = xp.sum(delta * d, axis=axes)
    grad_bias = xp.sum(delta, axis=axes)
    # beta before up-sampling: n^2 times fewer multiplications than after
    scaled = delta * _per_map(beta, delta.ndim) if need_input_grad else None
    return grad_beta, grad_bias, scaled


def conv_valid_activate(
    x: Array,
    kernel: Array,
    bias: Array,
    activation: Any,
    selection: Array | None = None,
    padding: tuple[int, int] = (0, 0),
) -> Array:
    """``f(conv_valid(x, kernel, selection) + bias)``: the whole forward pass of a convolution
    layer, ``x_j = f(sum_{i in M_j} x_i * k_ij + b_j)`` (section 3.1).

    ``activation`` is an :class:`anycnn.layers.Activation`; ``bias`` has shape ``(C_out,)``. A
    fused version must give what :func:`activate` gives on ``u`` to within 4 ulp (the layers
    are tested against the chain): its own vectorised f is allowed, a different f is not.
    """
    return _conv_valid_activate(_REFERENCE, x, kernel, bias, activation, selection, padding)


def conv_backward(
    x: Array,
    dy: Array,
    y: Array,
    activation: Any,
    selection: Array | None = None,
    up: int = 1,
    need_delta: bool = True,
    padding: tuple[int, int] = (0, 0),
) -> tuple[Array, Array, Array | None]:
    """The parameter gradients of a convolution layer ``y = f(conv_valid(x, k) + b)`` in one call
    (3.1.1): ``(dE/dk, dE/db, delta)``.

    ``delta = f'(u) o dE/dy`` from the saved output ``y`` (:func:`sensitivity`), where
    ``dE/dy = up(dy)``, the kron up-sampling by ``up`` (:func:`kron_upsample`) when the layer
    above is a subsampling layer, cropped or zero-padded to ``y``'s size (:func:`fit_maps`) when
    that layer has a remainder: then this is the notes' ``delta_j = beta_j (f'(u_j) o
    up(delta_j^{l+1}))``, the subsampling layer having already multiplied its sensitivity by
    ``beta``. ``dE/dk`` is eq. (7) (:func:`conv_kernel_grad`), ``dE/db_j = sum_{n,u,v} delta``;
    ``delta`` itself is returned when ``need_delta`` (the layer below needs
    ``conv_full(delta, k)``), else None. With ``padding`` the layer's convolution pads ``x``
    (Note [Zero padding]) and so does eq. (7). A fused version must agree with this to float
    rounding.
    """
    return _conv_backward(_REFERENCE, x, dy, y, activation, selection, up, need_delta, padding)


def subsample_forward(
    x: Array, n: int, mode: str, beta: Array, bias: Array, activation: Any
) -> tuple[Array, Array]:
    """The forward pass of a trainable subsampling layer (section 3.2) on maps whose sizes are
    multiples of ``n``: ``(y, d)`` with ``d = down(x)`` (:func:`block_sum` for ``mode="sum"``,
    :func:`block_mean` for ``"mean"``), which the backward pass reads, and
    ``y = f(beta_j d_j + b_j)``. A fused version must give ``d``'s bits and what :func:`activate`
    gives on ``beta d + b`` to within 4 ulp (its own vectorised f is allowed, as for
    :func:`conv_valid_activate`).
    """
    return _subsample_forward(_REFERENCE, x, n, mode, beta, bias, activation)


def subsample_backward(
    dy: Array, y: Array, d: Array, beta: Array, activation: Any, need_input_grad: bool = True
) -> tuple[Array, Array, Array | None]:
    """The gradients of a trainable subsampling layer (3.2.1) from ``dE/dy``: ``(dE/dbeta,
    dE/db, beta delta)`` with ``delta = f'(u) o dE/dy`` from the saved output ``y``,
    ``dE/dbeta_j = sum delta_j o d_j``, ``dE/db_j = sum delta_j``, and ``beta_j delta_j`` (what the
    layer up-samples into ``dE/dx``; None without ``need_input_grad``). A fused version must give
    ``beta delta``'s bits and the sums to float rounding.
    """
    return _subsample_backward(_REFERENCE, dy, y, d, beta, activation, need_input_grad)


def sensitivity(dy: Array, y: Array, activation: Any) -> Array:
    """``delta = f'(u) o dy`` from the saved output ``y = f(u)``: a layer's sensitivity,
    eqs. (3)-(4), ``delta^l = f'(u^l) o dE/dx^l``, with f' computed from the output (3.4).

    ``activation`` is an :class:`anycnn.layers.Activation`. A fused version must give exactly what
    ``activation.sensitivity(dy, y, xp)`` gives, and leave ``dy`` and ``y`` unchanged.
    """
    return activation.sensitivity(dy, y, array_api_compat.array_namespace(dy, y))


def activate(u: Array, activation: Any) -> Array:
    """``f(u)``, the activation of a layer's inner sums ``u`` (section 2.1), free to overwrite
    ``u`` (the layer's own temporary). A backend's version must give what
    ``activation.apply(u, xp)`` gives, bit for bit, e.g. by running the activation's description
    in place (Note [Activation descriptions] in anycnn.backend.activations).
    """
    return activation.apply(u, array_api_compat.array_namespace(u))


_COMPOSED = {
    "conv_valid_activate": (conv_valid_activate, _conv_valid_activate),
    "conv_backward": (conv_backward, _conv_backward),
    "subsample_forward": (subsample_forward, _subsample_forward),
    "subsample_backward": (subsample_backward, _subsample_backward),
}


def compose_fused(ops: Any) -> dict[str, Any]:
    """Every fused op as the chain of Note [Fused ops] on the table ``ops`` (the plain ops and
    the fused ops of one backend): the default of a backend that does not fuse an op itself.
    Each has the reference's name and signature; ``sensitivity`` and ``activate`` are the
    reference's own (the activation's arithmetic)."""
    table: dict[str, Any] = {"sensitivity": sensitivity, "activate": activate}
    for name, (reference, chain) in _COMPOSED.items():
        table[name] = _bind(reference, chain, ops)
    return table


def _bind(reference: Any, chain: Any, ops: Any) -> Any:
    # The chains take the reference's parameters, defaults included, after the table.
    @functools.wraps(reference)
    def composed(*args: Any, **kwargs: Any) -> Any:
        return chain(ops, *args, **kwargs)

    return composed


_REFERENCE = types.SimpleNamespace(
    block_sum=block_sum,
    block_mean=block_mean,
    conv_valid=conv_valid,
    conv_kernel_grad=conv_kernel_grad,
    kron_upsample=kron_upsample,
    sensitivity=sensitivity,
    activate=activate,
)


# --- fused updates -------------------------------------------------------------------------------
# Note [Fused updates]
# ~~~~~~~~~~~~~~~~~~~~
# An optimizer step is one or two elementwise passes per parameter (p -= lr g; with momentum
# v = m v + lr g, p -= v). On a GPU each pass is a kernel launch, so a backend may give the
# whole update as one kernel; anycnn.optim calls a backend's own when it has one (the op table's
# ``updates``) and computes the same in place itself otherwise. These are optional and never
# composed: they write their arguments, which not every namespace allows. The functions here
# define what each must compute (in place, returning ``param``).

#: Optional fused parameter updates (``Note [Fused updates]``).
UPDATE_OP_NAMES: tuple[str, ...] = ("sgd_update_", "momentum_update_")


def sgd_update_(param: Array, grad: Array, lr: float) -> Array:
    """``param <- param - lr grad`` (eq. 6 of the notes) in place; returns ``param``."""
    param -= lr * grad
    return param


def momentum_update_(
    param: Array, grad: Array, velocity: Array, lr: float, momentum: float
) -> Array:
    """Heavy-ball momentum in place, as :class:`anycnn.optim.Momentum` keeps it:
    ``velocity <- momentum velocity + lr grad``, ``param <- param - velocity``; returns
    ``param``."""
    velocity *= momentum
    velocity += lr * grad
    param -= velocity
    return param
