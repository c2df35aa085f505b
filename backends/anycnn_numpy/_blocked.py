"""2-D convolutions on the register-blocked kernels of ``_volume``: the cost model's
``"blocked"`` path (Note [Choosing a path] in ``_plan``).

Note [Blocked 2-D path]
~~~~~~~~~~~~~~~~~~~~~~~
The direct kernels of ``_direct`` keep their sums in memory: each pass adds five taps of one
kernel row for two output maps to a grid it loads and stores (Note [Direct convolutions]), and
a 7- or 11-tap row ends in one-tap passes that load and store the grid for two multiply-adds
each. On large maps and kernels that is memory-bound: 49 GFLOP/s for 256 x 256 maps, 11 x 11,
3 -> 16, at batch 1 on one core of the Xeon, where PyTorch's convolution runs at ~74. The 3-D
kernels of ``_volume`` (Note [Direct volumes]) keep 48 positions x 8 output maps in sixteen
16-lane registers through every tap and input map instead, and a 2-D map is a volume one voxel
deep: ``(N, C, H, W)`` as ``(N, C, 1, H, W)``, a view. On that shape their forward convolution
took 5.3 ms where the direct kernels took 12.6 (2.2-2.8x faster on 3 -> 16 and 3 -> 64 maps,
7 x 7 and 11 x 11 kernels, 28 to 256 px, batches 1 and 8; bench/results/numpy-notes.md,
"Blocked 2-D path"); their kernel gradient was about as fast as the direct one, faster on some
shapes, slower on others. Which shapes take them is the cost model's call, op by op, like any
other path (``_costs``, fitted by bench/paths.py).

What the path does around the kernels: the bias is added by the forward kernel as each slice
leaves the registers; f, where the direct kernels compile it (logistic, tanh: Note [Compiled
activations] in ``_direct``), runs over each batch slice of the output afterwards, on the
pool's threads; other activations are the backend's ``activate`` (the layer's epilogue). The
fused backward forms ``delta = f'(u) o up(dy)`` on its grid, sums the bias gradient there and
writes delta only when asked (``_volume.backward``). float32 only, no 'full' convolution (the
volume kernels have neither a float64 form nor a 3.2.1 one): those keep the other paths. The
batch is cut into the direct kernels' slices (``_threads.direct_bounds``: by multiply-adds, the
count depending on the shape only; ``_volume``'s own cut, made for volumes, kept a zoo-sized
layer on one thread), and the kernel gradient's partial sums are added in slice order: the same
bits on any number of threads.
"""

from __future__ import annotations

import numpy as np

from anycnn_numpy import _jit, _threads
from anycnn_numpy._threads import run_direct


def available(dtype) -> bool:
    """Whether the blocked kernels can take maps of ``dtype``: float32, with Numba."""
    return _jit.correlate_into is not None and np.dtype(dtype) == np.float32


def conv_valid(x, kernel, shift, compiled, epilogue, selection=None, padding=(0, 0)):
    """``conv_valid(x, kernel) + shift`` (``shift`` (C_out,) or None), then f: ``compiled`` (the
    direct kernels' ``(kind, p0, p1)``) over each batch slice, else ``epilogue(out)`` in place
    when given. float32 ``(N, C, H, W)`` maps, ``(C_out, C, kh, kw)`` kernels."""
    from anycnn_numpy import _volume

    n, c, h, w = x.shape
    o, _, kh, kw = kernel.shape
    ph, pw = padding
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = hp - kh + 1, wp - kw + 1
    xb = _volume._flat_examples(x.reshape(n, c, 1, h, w), (0, ph, pw), kw)
    wts, blocks = _volume._weights(kernel.reshape(o, c, 1, kh, kw), selection)
    bias = np.zeros(o, np.float32) if shift is None else np.ascontiguousarray(shift, np.float32)
    out = np.empty((n, o, 1, oh, ow), np.float32)
    geometry = (c, 1, hp, wp, 1, kh, kw)
    span = _volume._span(oh, wp)

    def work(index, start, stop):
        _volume.correlate_volumes(xb, geometry, wts, blocks, bias, out, start, stop, span)

    macs = blocks * _volume.MAPS * c * kh * kw * span
    if (halves := _block_halves(n, blocks, macs)) is not None:
        per_block = wts.reshape(blocks, -1)

        def work_blocks(index, b0, b1):
            j0, j1 = b0 * _volume.MAPS, min(b1 * _volume.MAPS, o)
            _volume.correlate_volumes(
                xb, geometry, per_block[b0:b1].reshape(-1), b1 - b0, bias[j0:j1], out[:, j0:j1],
                0, 1, span,
            )  # fmt: skip

        _threads._pool.run(work_blocks, halves)
    else:
        run_direct(work, n, macs)
    out = out.reshape(n, o, oh, ow)
    if compiled is not None:
        _activate(out, compiled)
    elif epilogue is not None:
        epilogue(out)
    return out


def _activate(out: np.ndarray, compiled: tuple) -> None:
    """The direct kernels' compiled f in place, by batch slices on the pool's threads."""
    from anycnn_numpy import _direct
    from anycnn_numpy._threads import run

    kind, p0, p1 = compiled
    if kind == _direct.IDENTITY:
        return
    flat = out.reshape(out.shape[0], -1)

    def work(index, start, stop):
        _direct._activate_run32(flat[start:stop].reshape(-1), kind, p0, p1)

    run(work, flat.shape[0], flat.shape[1] * 4, 0)


def backward(x, dy, y, sens, selection=None, up=1, need_delta=True):
    """The fused ``conv_backward`` on already padded maps ``x``: ``(kernel_grad, bias_grad,
    delta or None)`` with ``delta = f'(u) o up(dy)`` (``sens``: ``_volume.sensitivity_code``),
    on the maps-in-lanes kernels of ``_wgrad`` (Note [Maps in lanes] there)."""
    from anycnn_numpy import _wgrad

    return _wgrad.backward(x, dy, y, sens, selection, up, need_delta)


def _block_halves(n: int, blocks: int, macs: int) -> list | None:  # pragma: no mutate block
    """The two ranges of 8-map blocks one large example is cut into (Note [One example on two
    cores] in _conv, on the blocked kernels), or None: the blocks are independent (their sums,
    partial sums and deltas), so each map is computed as uncut, the same bits on any number of
    threads."""
    if n != 1 or blocks < 2 or macs < _threads.DIRECT_PARALLEL_MACS:
        return None
    half = blocks // 2
    return [(0, half), (half, blocks)]


def kernel_grad(x, delta, selection=None):
    """Eq. (7) alone on already padded maps ``x``: the fused pass with f' = 1 (``delta`` as
    given), its bias sums dropped."""
    from anycnn_numpy import _volume

    sens = (_volume.GIVEN, np.float32(0), np.float32(0), False)
    return backward(x, delta, delta, sens, selection, 1, False)[0]
