"""The NumPy backend's hot ops in 1 and 3 spatial dimensions, on top of its 2-D ones.

The mappings (1-D signals as maps one row high; 3-D volumes as one 2-D convolution whose input
maps are the kernel's depth taps) are :func:`anycnn.backend.planar.dimension_generic`'s, shared
with the CuPy backend: Note [1-D and 3-D on the 2-D kernels] there. Every 2-D call they make
takes the path the backend's cost model chooses for its shape (Note [Choosing a path] in
``_plan``).

On top of them, float32 signals and volumes take the direct volume kernels of ``_volume`` (Note
[Direct volumes]) for the forward convolution with its fused bias and f, eq. (7)'s kernel
gradient and the fused backward pass, where Note [Choosing an N-D path] says so.
"""

from __future__ import annotations

import contextlib

import numpy as np

from anycnn.backend import planar

# Note [Choosing an N-D path]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A float32 1-D or 3-D convolution runs either on the direct volume kernels of ``_volume``
# (Note [Direct volumes]; a signal is a volume one voxel deep and high) or on the 2-D ops
# through the mappings of anycnn.backend.planar. The rules below are a measurement: op by op,
# one thread, both paths interleaved in one process, on bench/nd.py's rows and on the layers of
# the 1-D zoo models (bench/results/numpy-notes.md, "Direct volumes"):
#
# * forward (``conv_valid``, fused bias and f): volumes always (1.4-4x faster on every 3-D row);
#   signals from ``C k >= 32`` multiply-adds per output (1.3-3.7x faster there; below, on one
#   or a few input maps, the 2-D kernels' interleaved rows are 10-40 % faster);
# * backward (fused ``conv_backward``, ``conv_kernel_grad``): the volume kernels' cost per
#   (example, depth) pair (the deltas formed row by row, partial sums loaded and stored per tap
#   group) is paid back from about 100k multiply-adds per pair for volumes (16^3, 3^3, 1 -> 8:
#   1.1x slower on the volume kernels; the other 3-D rows 1.1-2x faster) and from ``C k >= 200``
#   for signals (1024 samples, 15 taps, 16 -> 32: 1.15x faster; 427 samples, 7 taps, 8 -> 16 and
#   the zoo models' small layers: 1.1-2.4x slower).
#
# The choice depends on the shapes only: a shape always takes the same path (the paths round
# differently). float64 always keeps the mappings (and their bits).
#
# volume_forward and volume_backward are that choice and nothing else (both paths give the op's
# values to float32 rounding), so the mutation campaigns leave them alone (`# pragma: no mutate
# block`, issue 22); what the wrappers below promise about it (they ask the rule about the arrays
# they were given and take the path it names; only float32 arrays the kernels read take it,
# _takes) is tested in tests/test_numpy_nd_promises.py.
SIGNAL_FORWARD_MACS = 32
SIGNAL_BACKWARD_MACS = 200
VOLUME_BACKWARD_MACS = 100_000

_forced: bool | None = None


@contextlib.contextmanager
def forced(volume: bool | None):
    """Within the block every float32 1-D/3-D convolution takes the volume kernels (True) or the
    2-D mappings (False); None restores Note [Choosing an N-D path]'s rules (tests)."""
    global _forced
    before, _forced = _forced, volume
    try:
        yield
    finally:
        _forced = before


def _takes(x, other) -> bool:
    return (
        x.dtype == np.float32
        and other.dtype == np.float32
        and x.flags.c_contiguous
        and x.ndim in (3, 5)
    )


def volume_forward(x, kernel) -> bool:  # pragma: no mutate block
    """Whether the volume kernels take this forward convolution (Note [Choosing an N-D path])."""
    if not _takes(x, kernel):
        return False
    if _forced is not None:
        return _forced
    return x.ndim == 5 or kernel.shape[1] * kernel.shape[2] >= SIGNAL_FORWARD_MACS


def volume_backward(x, y) -> bool:  # pragma: no mutate block
    """Whether the volume kernels take eq. (7) and the fused backward pass for inputs ``x`` and
    outputs (or deltas) ``y`` (Note [Choosing an N-D path])."""
    if not _takes(x, y):
        return False
    if _forced is not None:
        return _forced
    c, o = x.shape[1], y.shape[1]
    if x.ndim == 3:
        return c * (x.shape[2] - y.shape[2] + 1) >= SIGNAL_BACKWARD_MACS
    taps = (
        (x.shape[2] - y.shape[2] + 1)
        * (x.shape[3] - y.shape[3] + 1)
        * (x.shape[4] - y.shape[4] + 1)
    )
    return -(-o // 8) * 8 * c * taps * y.shape[3] * x.shape[4] >= VOLUME_BACKWARD_MACS


def dimension_generic(table: dict) -> dict:
    """The backend's op table with every map op taking 1, 2 or 3 spatial axes: 2-D calls go to
    ``table``'s op (one ``ndim`` test more), 1-D and 3-D ones through the mappings of Note [1-D
    and 3-D on the 2-D kernels] onto those same 2-D ops, or to the direct volume kernels (Note
    [Direct volumes] in ``_volume``) where Note [Choosing an N-D path] says so. Other ops are
    left as they are."""
    generic = planar.dimension_generic(table, np)
    from anycnn_numpy import _jit

    if _jit.correlate_into is None:  # no Numba: the mappings alone
        return generic
    from anycnn_numpy import _volume

    conv_valid_mapped = generic["conv_valid"]
    conv_valid_activate_mapped = generic["conv_valid_activate"]
    conv_kernel_grad_mapped = generic["conv_kernel_grad"]
    conv_backward_mapped = generic["conv_backward"]
    given = (_volume.GIVEN, np.float32(0), np.float32(0), False)

    def volume(a):
        """``(N, C, L)`` -> ``(N, C, 1, 1, L)`` (a view); volumes as they are."""
        return a.reshape(a.shape[0], a.shape[1], 1, 1, a.shape[2]) if a.ndim == 3 else a

    def unvolume(a, ndim):
        return a.reshape(a.shape[0], a.shape[1], a.shape[4]) if ndim == 3 else a

    def pads3(padding, ndim):
        pads = planar._pads(padding, ndim - 2)
        return (0, 0, pads[0]) if ndim == 3 else pads

    def conv_valid(x, kernel, selection=None, padding=(0, 0)):
        if x.ndim == 4 or not volume_forward(x, kernel):
            return conv_valid_mapped(x, kernel, selection, padding)
        u = _volume.conv_valid(volume(x), volume(kernel), None, pads3(padding, x.ndim), selection)
        return unvolume(u, x.ndim)

    def conv_valid_activate(x, kernel, bias, activation, selection=None, padding=(0, 0)):
        if x.ndim == 4 or not (volume_forward(x, kernel) and bias.dtype == x.dtype):
            return conv_valid_activate_mapped(x, kernel, bias, activation, selection, padding)
        u = _volume.conv_valid(volume(x), volume(kernel), bias, pads3(padding, x.ndim), selection)
        return unvolume(_volume.apply_activation(u, activation), x.ndim)

    def conv_kernel_grad(x, delta, selection=None, padding=(0, 0)):
        if x.ndim == 4 or not volume_backward(x, delta):
            return conv_kernel_grad_mapped(x, delta, selection, padding)
        d = volume(np.ascontiguousarray(delta))
        grad = _volume.backward(volume(x), d, d, given, selection, 1, False, pads3(padding, x.ndim))
        return unvolume(grad[0], x.ndim)

    def conv_backward(x, dy, y, activation, selection=None, up=1, need_delta=True, padding=(0, 0)):
        code = None
        if x.ndim != 4 and volume_backward(x, y) and dy.dtype == y.dtype == np.float32:
            code = _volume.sensitivity_code(activation, y)
        if code is None or not _volume.fits(dy.shape, y.shape, up):
            return conv_backward_mapped(x, dy, y, activation, selection, up, need_delta, padding)
        grad, bias, delta = _volume.backward(
            volume(x), volume(dy), volume(y), code, selection, up, need_delta,
            pads3(padding, x.ndim),
        )  # fmt: skip
        return unvolume(grad, x.ndim), bias, None if delta is None else delta.reshape(y.shape)

    mapped = {
        "conv_valid": conv_valid,
        "conv_valid_activate": conv_valid_activate,
        "conv_kernel_grad": conv_kernel_grad,
        "conv_backward": conv_backward,
    }
    for name, function in mapped.items():
        function.__doc__ = generic[name].__doc__
    return {**generic, **mapped}
