"""A backend's 2-D map ops made to take 1-D signals and 3-D volumes too, for backends whose arrays
follow NumPy's API (NumPy itself, CuPy): :func:`dimension_generic`.

Every op of the returned table takes ``(N, C, *spatial)`` arrays with 1, 2 or 3 spatial axes
(``Note [N dimensions]`` in anycnn.ops). 2-D arrays go straight to the backend's 2-D ops (one test
of ``ndim`` more per call: 2-D results are those bits); the others are mapped onto those 2-D ops:

Note [1-D and 3-D on the 2-D kernels]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
* **1-D** signals ``(N, C, L)`` are maps one row high, ``(N, C, 1, L)``, and their kernels
  ``(C_out, C_in, 1, k)``: every convolution of the notes is then the 2-D one, on the backend's
  compiled direct kernels, im2col + BLAS or im2col + cuBLAS as its 2-D dispatch chooses, with no
  copy (a reshape is a view). Up- and down-sampling cannot be (an n x n block of a one-row map is
  not an n-sample block), so they are strided array expressions here.
* **3-D** volumes ``(N, C, D, H, W)``: a 3-D 'valid' convolution is a sum over the kernel's depth
  taps ``a`` of 2-D convolutions of slices, ``u[:, :, z] = sum_a conv2(x[:, :, z + a], k[:, :,
  kd-1-a])`` (conv2's flip along depth is the ``kd-1-a``). So the depth taps become input maps:
  ``X[(n, z), (a, i)] = x[n, i, z + a]``, ``N od`` maps of ``kd C`` input maps each (``od = D -
  kd + 1``; one copy, ``kd`` times the input), and ``K[j, (a, i)] = k[j, i, kd-1-a]``; one 2-D
  convolution of ``X`` with ``K`` is the 3-D one, its ``(N od, C_out)`` output maps transposed
  to ``(N, C_out, od)`` (one copy). The 2-D op adds the bias and applies f as it writes
  (``conv_valid_activate``), and eq. (7) is one 2-D kernel gradient of ``X`` against the deltas
  in the same depth-major order, ``dE/dK`` read back as ``dE/dk``; ``conv_backward`` hands the
  2-D op its deltas up-sampled along the depth only (and taken to the depth-major order in the
  same copy): the 2-D op up-samples rows and columns as it forms delta, fused, as in 2-D. The
  'full' convolution is the adjoint: ``N od`` 2-D 'full' convolutions of the deltas with ``K``
  into ``kd C`` maps, and ``kd`` strided adds put tap ``a`` of output slice ``z`` on input slice
  ``z + a``. (The first version put the depth into the batch and the ``kd`` taps into output
  maps: ``D / od`` times the work, ``kd`` strided adds over outputs ``kd`` times the size, and
  ``kd`` kernel-gradient calls; 0.3-0.8x PyTorch in bench/nd.py.) Depth padding is a padded
  copy; rows and columns are padded by the 2-D ops as usual.

The functions are closures over the 2-D ops and the array module (a closure's variables cost no
more to read than a module's globals): one table per backend, built once by its ``_fast_ops``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from anycnn import ops as _reference

#: The map ops this module makes dimension-generic (those whose first argument is maps); the
#: table's other ops are left as they are.
MAPPED = _reference.MAP_OP_NAMES


def _pads(padding: Any, d: int) -> tuple[int, ...]:
    pads = tuple(int(p) for p in padding)
    if not any(pads):
        return (0,) * d
    if len(pads) != d:
        raise ValueError(f"padding {padding!r}: expected {d} amounts, one per spatial axis")
    return pads


def _row(a: Any) -> Any:
    """``(N, C, L)`` -> ``(N, C, 1, L)`` (a view when it can be)."""
    return a.reshape(a.shape[0], a.shape[1], 1, a.shape[2])


def _flat(a: Any) -> Any:
    """``(N, C, *spatial)`` -> ``(N, C, 1, prod(spatial))``: for per-map elementwise ops."""
    return a.reshape(a.shape[0], a.shape[1], 1, -1)


def _usable(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.dtype.kind == "f"


def _planar(p: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D ops' padding argument for the last two amounts (``(0, 0)``: none)."""
    return (int(p[-2]), int(p[-1])) if any(p[-2:]) else (0, 0)


def dimension_generic(table: dict[str, Callable[..., Any]], xp: Any) -> dict[str, Any]:
    """``table`` (a backend's ops by name) with every map op taking 1, 2 or 3 spatial axes: 2-D
    calls go to ``table``'s op (one ``ndim`` test more), 1-D and 3-D ones through the mappings
    of Note [1-D and 3-D on the 2-D kernels] onto those same 2-D ops. ``xp`` is the array module
    of the backend's arrays (``numpy`` or ``cupy``: ``ascontiguousarray``, ``copyto``, ``tile``
    and the like). Other ops are left as they are.

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn import ops
    >>> from anycnn.backend.planar import MAPPED, dimension_generic
    >>> calls = []
    >>> def conv_valid(x, kernel, selection=None, padding=(0, 0)):  # a backend's 2-D op
    ...     calls.append(x.shape)
    ...     return ops.conv_valid(x, kernel, selection, padding)
    >>> planar = {name: getattr(ops, name) for name in MAPPED} | {"conv_valid": conv_valid}
    >>> table = dimension_generic(planar, np)
    >>> x, k = np.arange(5.0).reshape(1, 1, 5), np.array([[[1.0, -1.0]]])
    >>> table["conv_valid"](x, k).tolist(), calls    # conv([0..4], [1, -1], 'valid') as a row
    ([[[1.0, 1.0, 1.0, 1.0]]], [(1, 1, 1, 5)])
    """
    conv_valid2 = table["conv_valid"]
    conv_valid_activate2 = table.get("conv_valid_activate")
    conv_full2 = table["conv_full"]
    conv_kernel_grad2 = table["conv_kernel_grad"]
    conv_backward2 = table.get("conv_backward")
    subsample_backward2 = table.get("subsample_backward")
    subsample_forward2 = table.get("subsample_forward")
    sensitivity = table.get("sensitivity", _reference.sensitivity)
    activate = table.get("activate", _reference.activate)
    kron2, block_sum2 = table["kron_upsample"], table["block_sum"]
    block_mean2, decimate2 = table["block_mean"], table["decimate"]
    decimate_transpose2 = table["decimate_transpose"]

    def depth_padded(x: Any, pd: int) -> Any:
        if not pd:
            return x
        out = xp.zeros((*x.shape[:2], x.shape[2] + 2 * pd, *x.shape[3:]), dtype=x.dtype)
        out[:, :, pd : pd + x.shape[2]] = x
        return out

    def depth_major(a: Any) -> Any:
        """``(N, C, D, H, W)`` -> ``(N * D, C, H, W)``: the depth in the batch (a copy)."""
        n, c, d, h, w = a.shape
        return xp.ascontiguousarray(a.transpose(0, 2, 1, 3, 4)).reshape(n * d, c, h, w)

    def channel_major(planes: Any, n: int) -> Any:
        """``(N * D, C, H, W)`` -> ``(N, C, D, H, W)`` (a copy): :func:`depth_major` undone."""
        _, c, h, w = planes.shape
        return xp.ascontiguousarray(planes.reshape(n, -1, c, h, w).transpose(0, 2, 1, 3, 4))

    def depth_stacked(x: Any, kd: int) -> Any:
        """``X[(n, z), (a, i)] = x[n, i, z + a]``: ``(N od, kd C, H, W)``, the depth taps as input
        maps (Note [1-D and 3-D on the 2-D kernels])."""
        n, c, d, h, w = x.shape
        od = d - kd + 1
        out = xp.empty((n, od, kd, c, h, w), dtype=x.dtype)
        slices = x.transpose(0, 2, 1, 3, 4)  # (N, D, C, H, W), a view
        for a in range(kd):
            out[:, :, a] = slices[:, a : a + od]
        return out.reshape(n * od, kd * c, h, w)

    def stacked_kernel(kernel: Any) -> Any:
        """``K[j, (a, i)] = k[j, i, kd-1-a]``: ``(C_out, kd C_in, kh, kw)``."""
        o, c, kd, kh, kw = kernel.shape
        stack = xp.ascontiguousarray(kernel[:, :, ::-1].transpose(0, 2, 1, 3, 4))
        return stack.reshape(o, kd * c, kh, kw)

    def unstacked_grad(grad: Any, c: int) -> Any:
        """``dE/dK`` ``(C_out, kd C_in, kh, kw)`` -> ``dE/dk`` ``(C_out, C_in, kd, kh, kw)``."""
        o, _, kh, kw = grad.shape
        taps = grad.reshape(o, -1, c, kh, kw)[:, ::-1]  # tap a is kernel depth kd-1-a
        return xp.ascontiguousarray(taps.transpose(0, 2, 1, 3, 4))

    def tiled(selection: Any, reps: tuple[int, int]) -> Any:
        return None if selection is None else xp.tile(xp.asarray(selection, dtype=bool), reps)

    # --- convolutions ---------------------------------------------------------------------------
    def conv_valid(x, kernel, selection=None, padding=(0, 0)):
        if x.ndim == 4:
            return conv_valid2(x, kernel, selection, padding)
        if not _usable(x, kernel) or x.ndim not in (3, 5):
            return _reference.conv_valid(x, kernel, selection, padding)
        if x.ndim == 3:
            (p,) = _pads(padding, 1)
            u = conv_valid2(_row(x), _row(kernel), selection, (0, p) if p else (0, 0))
            return u.reshape(u.shape[0], u.shape[1], u.shape[3])
        return conv_valid3(x, kernel, selection, _pads(padding, 3))

    def conv_valid3(x, kernel, selection, pads, bias=None, activation=None):
        """The 3-D 'valid' convolution as one 2-D one (Note [1-D and 3-D on the 2-D kernels]);
        with ``bias`` and ``activation``, ``f(u + b)`` by the fused 2-D op."""
        x = depth_padded(x, pads[0])
        kd = kernel.shape[2]
        stacked = depth_stacked(x, kd)
        args = (stacked_kernel(kernel),)
        sel = tiled(selection, (1, kd))
        if activation is None:
            planes = conv_valid2(stacked, *args, sel, _planar(pads))
        else:
            planes = conv_valid_activate2(stacked, *args, bias, activation, sel, _planar(pads))
        return channel_major(planes, x.shape[0])

    def conv_valid_activate(x, kernel, bias, activation, selection=None, padding=(0, 0)):
        if x.ndim == 4 and conv_valid_activate2 is not None:
            return conv_valid_activate2(x, kernel, bias, activation, selection, padding)
        if not (_usable(x, kernel) and bias.dtype == x.dtype) or x.ndim not in (3, 5):
            return _reference.conv_valid_activate(x, kernel, bias, activation, selection, padding)
        if conv_valid_activate2 is None:
            u = conv_valid(x, kernel, selection, padding)
            u += bias.reshape((-1,) + (1,) * (u.ndim - 2))
            return activate(u, activation)
        if x.ndim == 3:
            (p,) = _pads(padding, 1)
            y = conv_valid_activate2(
                _row(x), _row(kernel), bias, activation, selection, (0, p) if p else (0, 0)
            )
            return y.reshape(y.shape[0], y.shape[1], y.shape[3])
        return conv_valid3(x, kernel, selection, _pads(padding, 3), bias, activation)

    def conv_full(delta, kernel, selection=None, padding=(0, 0)):
        if delta.ndim == 4:
            return conv_full2(delta, kernel, selection, padding)
        if not _usable(delta, kernel) or delta.ndim not in (3, 5):
            return _reference.conv_full(delta, kernel, selection, padding)
        if delta.ndim == 3:
            (p,) = _pads(padding, 1)
            g = conv_full2(_row(delta), _row(kernel), selection, (0, p) if p else (0, 0))
            return g.reshape(g.shape[0], g.shape[1], g.shape[3])
        pads = _pads(padding, 3)
        n, _, od, _, _ = delta.shape
        _, c, kd, _, _ = kernel.shape
        # the adjoint of conv_valid3: the deltas against K into the kd C stacked input maps
        stack = stacked_kernel(kernel)
        planes = conv_full2(depth_major(delta), stack, tiled(selection, (1, kd)), _planar(pads))
        _, _, h, w = planes.shape
        planes = planes.reshape(n, od, kd, c, h, w)
        full = xp.zeros((n, c, od + kd - 1, h, w), dtype=delta.dtype)
        view = full.transpose(0, 2, 1, 3, 4)  # the sums go straight to (N, C_in, D, H, W)
        for a in range(kd):
            view[:, a : a + od] += planes[:, :, a]
        if pads[0]:  # Note [Zero padding]: the depth crop
            full = xp.ascontiguousarray(full[:, :, pads[0] : full.shape[2] - pads[0]])
        return full

    def conv_kernel_grad(x, delta, selection=None, padding=(0, 0)):
        if x.ndim == 4:
            return conv_kernel_grad2(x, delta, selection, padding)
        if not _usable(x, delta) or x.ndim not in (3, 5):
            return _reference.conv_kernel_grad(x, delta, selection, padding)
        if x.ndim == 3:
            (p,) = _pads(padding, 1)
            g = conv_kernel_grad2(_row(x), _row(delta), selection, (0, p) if p else (0, 0))
            return g.reshape(g.shape[0], g.shape[1], g.shape[3])
        pads = _pads(padding, 3)
        x = depth_padded(x, pads[0])
        kd = x.shape[2] - delta.shape[2] + 1
        # eq. (7) once: the stacked input maps against the deltas in the same depth-major order
        grad = conv_kernel_grad2(
            depth_stacked(x, kd), depth_major(delta), tiled(selection, (1, kd)), _planar(pads)
        )
        return unstacked_grad(grad, x.shape[1])

    def conv_backward(x, dy, y, activation, selection=None, up=1, need_delta=True, padding=(0, 0)):
        if x.ndim == 4 and conv_backward2 is not None:
            return conv_backward2(x, dy, y, activation, selection, up, need_delta, padding)
        if not _usable(x, dy) or x.ndim not in (3, 5):
            return _reference.conv_backward(
                x, dy, y, activation, selection, up, need_delta, padding
            )
        if x.ndim == 3 and conv_backward2 is not None:
            # up(dy) along the signal here, not by the 2-D op: where that op up-samples a copy
            # (im2col + BLAS, CuPy's chain) it would up-sample the one row too, n times the rows
            # cropped back to one (a global mean, n = L, made that L^2: 56 ms a call on OSULeaf)
            if up > 1:
                dy = xp.ascontiguousarray(_reference.fit_maps(kron_upsample(dy, up), y.shape[2]))
            (p,) = _pads(padding, 1)
            grad, bias, delta = conv_backward2(
                _row(x), _row(dy), _row(y), activation, selection, 1, need_delta,
                (0, p) if p else (0, 0),
            )  # fmt: skip
            grad = grad.reshape(grad.shape[0], grad.shape[1], grad.shape[3])
            return grad, bias, None if delta is None else delta.reshape(y.shape)
        if conv_backward2 is None:
            if up > 1:  # up(dy) along every axis, fitted to y (a subsampling remainder)
                dy = xp.ascontiguousarray(_reference.fit_maps(kron_upsample(dy, up), *y.shape[2:]))
            delta = sensitivity(dy, y, activation)
            grad = conv_kernel_grad(x, delta, selection, padding)
            bias = delta.reshape(delta.shape[0], delta.shape[1], -1).sum(axis=2).sum(axis=0)
            return grad, bias, delta if need_delta else None
        # the fused 2-D op on the stacked maps (Note [1-D and 3-D on the 2-D kernels]): dy goes
        # depth-major, up-sampled along the depth in the same copy; rows and columns it
        # up-samples itself as it forms delta
        pads = _pads(padding, 3)
        x = depth_padded(x, pads[0])
        n, o, od = y.shape[:3]
        kd = x.shape[2] - od + 1
        dy_slices = dy.transpose(0, 2, 1, 3, 4)  # (N, D', O, h', w'), a view
        if up > 1:
            depth = xp.arange(od) // up  # output slice z takes dy's slice z // up ...
            depth = xp.minimum(depth, dy.shape[2] - 1)
            dy_major = xp.take(dy_slices, depth, axis=1)
            if od > dy.shape[2] * up:  # ... but past a dropped remainder, no delta
                dy_major[:, dy.shape[2] * up :] = 0
        else:
            dy_major = xp.ascontiguousarray(dy_slices)
        dy_major = dy_major.reshape(n * od, o, *dy.shape[3:])
        grad, bias, delta = conv_backward2(
            depth_stacked(x, kd), dy_major, depth_major(y), activation,
            tiled(selection, (1, kd)), up, need_delta, _planar(pads),
        )  # fmt: skip
        grad = unstacked_grad(grad, x.shape[1])
        return grad, bias, None if delta is None else channel_major(delta, n)

    def subsample_forward(x, n, mode, beta, bias, activation):
        if x.ndim == 4 and subsample_forward2 is not None:
            return subsample_forward2(x, n, mode, beta, bias, activation)
        # the chain on the mapped block sums (Note [Fused ops] in anycnn.ops)
        chain = types.SimpleNamespace(block_sum=block_sum, block_mean=block_mean, activate=activate)
        return _reference._subsample_forward(chain, x, n, mode, beta, bias, activation)

    def subsample_backward(dy, y, d, beta, activation, need_input_grad=True):
        if y.ndim == 4 and subsample_backward2 is not None:
            return subsample_backward2(dy, y, d, beta, activation, need_input_grad)
        if subsample_backward2 is None or y.ndim < 3 or dy.shape != y.shape or d.shape != y.shape:
            return _reference.subsample_backward(dy, y, d, beta, activation, need_input_grad)
        # per-map sums and products: the maps' shape does not matter (one row of all samples)
        grad_beta, grad_bias, scaled = subsample_backward2(
            _flat(dy), _flat(y), _flat(d), beta, activation, need_input_grad
        )
        return grad_beta, grad_bias, None if scaled is None else scaled.reshape(y.shape)

    # --- up- and down-sampling --------------------------------------------------------------
    def kron_upsample(x, n):
        if x.ndim == 4:
            return kron2(x, n)
        if n == 1:
            return x.copy()
        # axis by axis, the last first: each axis a copy into an (s, n) view of it, broadcast
        # along n (for a small n, n strided copies instead: the broadcast then runs a loop of n
        # elements per value)
        for axis in range(x.ndim - 1, 1, -1):
            shape = list(x.shape)
            shape[axis] *= n
            out = xp.empty(tuple(shape), dtype=x.dtype)
            if n <= 4:
                for k in range(n):
                    out[(slice(None),) * axis + (slice(k, None, n),)] = x
            else:
                view = out.reshape(*x.shape[: axis + 1], n, *x.shape[axis + 1 :])
                xp.copyto(view, xp.expand_dims(x, axis + 1))
            x = out
        return x

    def block_sums(x, n, scale):
        # axis by axis, the first (longest contiguous runs) first, each shrinking the data
        # n-fold: n strided adds for a small n, else a sum over the n axis of an (s, n) view
        for axis in range(2, x.ndim):
            index = (slice(None),) * axis
            if n <= 4:
                out = x[index + (slice(0, None, n),)].copy()
                for k in range(1, n):
                    out += x[index + (slice(k, None, n),)]
            else:
                view = x.reshape(*x.shape[:axis], x.shape[axis] // n, n, *x.shape[axis + 1 :])
                out = view.sum(axis=axis + 1)
            x = out
        if scale is not None:
            x *= scale
        return x

    def block_sum(x, n):
        if x.ndim == 4:
            return block_sum2(x, n)
        if x.ndim < 3 or any(s % n for s in x.shape[2:]):
            return _reference.block_sum(x, n)  # which says what is wrong
        if n == 1:
            return x.copy()
        return block_sums(x, n, None)

    def block_mean(x, n):
        if x.ndim == 4:
            return block_mean2(x, n)
        if x.dtype.kind != "f" or x.ndim < 3 or any(s % n for s in x.shape[2:]):
            return _reference.block_mean(x, n)
        if n == 1:
            return x.copy()
        return block_sums(x, n, 1.0 / n ** (x.ndim - 2))

    def decimate(x, n):
        if x.ndim == 4:
            return decimate2(x, n)
        return xp.ascontiguousarray(_reference.decimate(x, n))

    def decimate_transpose(delta, n):
        if delta.ndim == 4:
            return decimate_transpose2(delta, n)
        b, c, *sizes = delta.shape
        out = xp.zeros((b, c, *(s * n for s in sizes)), dtype=delta.dtype)
        out[(slice(None), slice(None), *(slice(None, None, n) for _ in sizes))] = delta
        return out

    mapped = {
        "conv_valid": conv_valid,
        "conv_valid_activate": conv_valid_activate,
        "conv_backward": conv_backward,
        "subsample_forward": subsample_forward,
        "subsample_backward": subsample_backward,
        "conv_full": conv_full,
        "conv_kernel_grad": conv_kernel_grad,
        "kron_upsample": kron_upsample,
        "block_sum": block_sum,
        "block_mean": block_mean,
        "decimate": decimate,
        "decimate_transpose": decimate_transpose,
    }
    for name, function in mapped.items():  # help() shows what the 2-D op computes
        function.__doc__ = getattr(table.get(name), "__doc__", None)
    return {name: mapped[name] if name in mapped else op for name, op in table.items()}
