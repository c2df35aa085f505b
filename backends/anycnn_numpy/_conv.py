"""The NumPy backend's convolution ops: the three convolutions of the notes and the fused ops
built on them, each sent to the path the cost model chooses for its shape (Note [Choosing a
path] in ``_plan``): the compiled direct kernels (``Note [Direct convolutions]`` in
``_direct``), im2col + BLAS (``_im2col``), products of spectra (``Note [Convolutions by the
FFT]`` in ``_fft``) or, for float32 forward passes and kernel gradients, the register-blocked
kernels of ``_volume`` (``Note [Blocked 2-D path]`` in ``_blocked``).

The direct kernels take C-contiguous float32/float64 maps. They also apply float32 logistic and
tanh layers' f as they write their output (``conv_valid_activate``) and, as the fused
``conv_backward``, form a layer's sensitivity, kernel and bias gradients in one pass; on the
other paths those are the chain of backend ops.
"""

from __future__ import annotations

import functools

import numpy as np

from anycnn import ops as _reference
from anycnn_numpy import _blocked, _dense, _fft, _im2col, _jit, _plan, _threads
from anycnn_numpy._activation import (
    IDENTITY_FORMULA,
    activate,
    compiled_activation,
    no_activation,
    sensitivity,
    sensitivity_formula,
)
from anycnn_numpy._im2col import masked, padded, usable
from anycnn_numpy._resample import kron_upsample
from anycnn_numpy._threads import run_direct, sum_in_order


def _direct(x: np.ndarray, other: np.ndarray) -> bool:
    """Whether the compiled direct convolutions can take ``x`` with ``other`` (kernel or
    deltas): both C-contiguous float32/float64 of one dtype."""
    return (
        _jit.correlate_into is not None
        and other.dtype == x.dtype
        and _jit.compiled_layout(x)
        and _jit.compiled_layout(other)
    )


#: The paths available, by (direct kernels usable, FFT usable): Note [Choosing a path].
_AVAILABLE = {
    (True, True): ("direct", "im2col", "fft"),
    (True, False): ("direct", "im2col"),
    (False, True): ("im2col", "fft"),
    (False, False): ("im2col",),
}


def _path(op, direct, dtype, n, c, o, h, w, kh, kw, ph, pw, blocked) -> str:
    """The path of ``op`` for the forward geometry (Note [Choosing a path] in _plan);
    ``blocked``: whether the arrays suit the blocked kernels (Note [Blocked 2-D path] in
    _blocked: float32, not the 'full' convolution)."""
    fft = dtype in _jit.COMPILED_DTYPES and ph < kh and pw < kw and _fft.available()
    available = _AVAILABLE[direct, fft]
    if blocked and _blocked.available(dtype):
        available = (*available, "blocked")
    return _plan.choose(op, n, c, o, h, w, kh, kw, ph, pw, available)


@functools.lru_cache(maxsize=1024)
def _chunk(rows: int, width: int, dtype, n: int, macs: int) -> int:
    """Examples per interleaved chunk of the direct kernels (``_jit.direct_chunk``: by the grid's
    bytes), at most the longest batch slice they will be given (``_threads.direct_bounds``; one
    example for Note [One example on two cores]'s halves). Their scratch (the interleaved input,
    the grid) is sized for a chunk: a batch-1 step of 1 -> 64 maps on 28 px allocated five
    examples' grids, 0.9 MiB of its 1.3 MiB peak. A slice shorter than the chunk is one chunk
    either way (``m = stop - start``), so the sums and their bits are the same. Cached: the
    slices' bounds cost a few microseconds a call, 2-3% of a zoo step at batch 64."""
    bounds = _threads.direct_bounds(n, macs)
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    return max(1, min(_jit.direct_chunk(rows, width, dtype.itemsize), longest))


def _map_halves(n: int, maps: int, macs: int) -> list | None:  # pragma: no mutate block
    """The two ranges of output maps one example's direct convolution is cut into, or None.

    Note [One example on two cores]
    ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    The pool cuts the direct convolutions into batch slices; one example is one slice, so a
    large map at batch 1 ran on one core while im2col's GEMM ran on all of them (256 x 256
    maps, 3 -> 64, 7 x 7 kernels: 48 ms direct against 29 ms im2col on 2 cores). At batch 1,
    from DIRECT_PARALLEL_MACS multiply-adds on, the output maps are cut in two at an even map
    (the kernels compute maps in pairs) and the halves run side by side. Each map is computed
    as before, and the cut depends on the shape only: the same bits on any number of threads.
    """
    if n != 1 or maps < 4 or macs < _threads.DIRECT_PARALLEL_MACS:
        return None
    half = 2 * -(-maps // 4)
    return [(0, half), (half, maps)]


def _active(selection, o: int, c: int) -> np.ndarray:
    """The (C_out, C_in) bool table of the pairs to compute: the selection, or all of them."""
    if selection is None:
        return _ones_table(o, c)
    return np.ascontiguousarray(selection, dtype=bool)


# Note [One type per kernel argument]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# Numba compiles a kernel once per argument *type*, and a read-only array is another type than
# a writable one. The tables and biases the direct kernels only read came read-only from the
# caches below (all pairs, zero biases) and writable from a layer (a selection, a bias), so
# correlate_into and its driver were compiled four times each on a cold cache, correlate_grad
# and its driver twice (the README's first command paid ~40% of its compile time for nothing).
# The cached arrays are therefore writable, like the layers' own; no kernel writes them.
@functools.lru_cache(maxsize=64)
def _ones_table(o: int, c: int) -> np.ndarray:
    return np.ones((o, c), dtype=bool)


@functools.lru_cache(maxsize=64)
def _zeros(size: int, dtype: np.dtype) -> np.ndarray:
    return np.zeros(size, dtype=dtype)


def conv_valid(x, kernel, selection=None, padding=(0, 0)):
    if not usable(x, kernel):
        return _reference.conv_valid(x, kernel, selection, padding)
    if _dense.covers(x, kernel, padding):  # Note [Convolutions that cover the map] in _dense
        return _dense.conv_covering(x, kernel, selection)
    return _conv_valid(x, kernel, selection, None, padding=padding)


def conv_valid_activate(x, kernel, bias, activation, selection=None, padding=(0, 0)):
    """Fused ``f(conv_valid(x, kernel) + bias)`` (``Note [Fused ops]`` in anycnn.ops).

    On the direct convolutions, float32 logistic and tanh layers get f as each map leaves the
    grid (Note [Compiled activations] in _direct: to float32 rounding of the chain, not its
    bits); otherwise the bias and f (the ``activate`` op) run on each batch slice of the output
    right after it is computed, while it is in cache, on the pool's threads (the chain's bits).
    """
    if not (usable(x, kernel) and bias.dtype == x.dtype):
        return _reference.conv_valid_activate(x, kernel, bias, activation, selection, padding)
    if _dense.covers(x, kernel, padding):  # Note [Convolutions that cover the map] in _dense
        return _dense.conv_covering(x, kernel, selection, bias, activation)

    def epilogue(u):
        y = activate(u, activation)
        if y is not u:
            np.copyto(u, y)

    compiled = compiled_activation(activation, x.dtype)
    return _conv_valid(x, kernel, selection, epilogue, bias, compiled, padding)


def _conv_valid(x, kernel, selection, epilogue, shift=None, compiled=None, padding=(0, 0)):
    """conv_valid (plus ``shift[j]`` on map j when given), with ``epilogue(out_slice)`` applied
    in place to every batch slice; ``compiled`` is a direct kernel's activation code (
    used instead of the epilogue when the direct kernels take the layer). The direct kernels
    pad as they interleave rows (Note [Zero padding] in anycnn.ops); BLAS pads a copy."""
    ph, pw = padding
    n, c, h, w = x.shape
    o, _, kh, kw = kernel.shape
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    blocked = kernel.dtype == x.dtype
    path = _path("valid", _direct(x, kernel), x.dtype, n, c, o, h, w, kh, kw, ph, pw, blocked)
    if path == "blocked":  # Note [Blocked 2-D path] in _blocked
        return _blocked.conv_valid(x, kernel, shift, compiled, epilogue, selection, padding)
    if path != "direct":
        if shift is not None:  # the BLAS and FFT paths add the bias in the epilogue
            epilogue = _im2col.with_bias(epilogue, shift)
        if path == "fft":  # Note [Convolutions by the FFT] in _fft
            active = _active(selection, o, c)
            return _fft.conv_valid(x, masked(kernel, selection), active, epilogue, padding)
        return _im2col.conv_valid(x, kernel, selection, epilogue, padding)
    # Note [Direct convolutions] in _direct
    dtype = x.dtype
    out = np.empty((n, o, oh, ow), dtype=dtype)
    flipped = np.ascontiguousarray(masked(kernel, selection)[:, :, ::-1, ::-1])  # a correlation
    bias = _zeros(o, dtype) if shift is None else np.ascontiguousarray(shift)
    active = _active(selection, o, c)
    chunk = _chunk(oh, w + pw, dtype, n, o * c * kh * kw * oh * ow)
    act = compiled or no_activation(dtype)
    if compiled is not None:
        epilogue = None

    def work_direct(index, start, stop):
        _jit.correlate_into(x, ph, pw, flipped, bias, active, act, out, start, stop, chunk)
        if epilogue is not None:
            epilogue(out[start:stop])

    # Note [One example on two cores]
    if (halves := _map_halves(n, o, o * c * kh * kw * oh * ow)) is not None:

        def work_maps(index, j0, j1):
            _jit.correlate_into(
                x, ph, pw, flipped[j0:j1], bias[j0:j1], active[j0:j1], act, out[:, j0:j1],
                0, 1, chunk,
            )  # fmt: skip

        _threads._pool.run(work_maps, halves)
        if epilogue is not None:
            epilogue(out)
        return out
    bounds = _threads.direct_bounds(n, o * c * kh * kw * oh * ow)
    driver = _jit.correlate_into_sliced
    # Note [Slices taken in compiled code] in _direct (the pool's slices give the same bits)
    if len(bounds) > 2 and epilogue is None and driver is not None:  # pragma: no mutate
        args = (x, ph, pw, flipped, bias, active, act, out, chunk)
        _threads.run_compiled(driver, args, bounds)
        return out
    run_direct(work_direct, n, o * c * kh * kw * oh * ow)
    return out


def conv_kernel_grad(x, delta, selection=None, padding=(0, 0)):
    if not usable(x, delta):
        return _reference.conv_kernel_grad(x, delta, selection, padding)
    x = padded(x, padding)  # eq. (7) on the padded maps (Note [Zero padding] in anycnn.ops)
    path = _grad_path(x, delta)
    if path == "direct":  # Note [Direct convolutions] in _direct
        return _direct_backward(x, delta, delta, IDENTITY_FORMULA, selection, 1, False)[0]
    if path == "fft":  # Note [Convolutions by the FFT] in _fft
        return _fft.conv_kernel_grad(x, delta, _active(selection, delta.shape[1], x.shape[1]))
    if path == "blocked":  # Note [Blocked 2-D path] in _blocked
        return _blocked.kernel_grad(x, delta, selection)
    return _im2col.conv_kernel_grad(x, delta, selection)


def _grad_path(x, delta) -> str:
    """The path of eq. (7) on padded maps ``x`` (its forward geometry: no padding left)."""
    n, c, h, w = x.shape
    o, dh, dw = delta.shape[1:]
    kh, kw, blocked = h - dh + 1, w - dw + 1, delta.dtype == x.dtype
    return _path("grad", _direct(x, delta), x.dtype, n, c, o, h, w, kh, kw, 0, 0, blocked)


def conv_backward(x, dy, y, activation, selection=None, up=1, need_delta=True, padding=(0, 0)):
    """Fused parameter gradients of a convolution layer (``Note [Fused ops]`` in anycnn.ops):
    on the direct kernels, ``delta = f'(u) o up(dy)`` is formed as it is copied onto the
    kernel-gradient grid, the bias gradient summed there, and delta written out only when
    asked for (Note [Direct convolutions] in _direct); otherwise the chain of backend ops.
    With ``padding``, eq. (7) runs on a zero-padded copy of ``x`` (Note [Zero padding])."""
    if not usable(x, dy):
        return _reference.conv_backward(x, dy, y, activation, selection, up, need_delta, padding)
    if _dense.covered_backward(x, dy, y, up, padding):  # Note [Convolutions that cover the map]
        return _dense.conv_covering_backward(x, dy, y, activation, selection, need_delta)
    x = padded(x, padding)
    formula = sensitivity_formula(activation, y)
    if (
        formula is not None
        and usable(x, dy)
        and dy.dtype == y.dtype
        and dy.shape[:2] == y.shape[:2]
        and _fits_up(dy.shape[2], up, y.shape[2])
        and _fits_up(dy.shape[3], up, y.shape[3])
        and _jit.compiled_layout(y)
        and _jit.compiled_layout(dy)
        and _grad_path(x, y) == "direct"
    ):
        return _direct_backward(x, dy, y, formula, selection, up, need_delta)
    if (
        formula is not None
        and dy.dtype == y.dtype == x.dtype
        and dy.shape[:2] == y.shape[:2]
        and _fits_up(dy.shape[2], up, y.shape[2])
        and _fits_up(dy.shape[3], up, y.shape[3])
        and _grad_path(x, y) == "blocked"
    ):  # Note [Blocked 2-D path] in _blocked
        from anycnn_numpy import _volume

        sens = _volume.sensitivity_code(activation, y)
        return _blocked.backward(x, dy, y, sens, selection, up, need_delta)
    if up > 1:
        dy = np.ascontiguousarray(_reference.fit_maps(kron_upsample(dy, up), *y.shape[2:]))
    delta = sensitivity(dy, y, activation)
    grad = conv_kernel_grad(x, delta, selection)
    return grad, np.sum(delta, axis=(0, 2, 3)), delta if need_delta else None


def _fits_up(small: int, up: int, size: int) -> bool:
    """Whether ``up(dy)`` along an axis of ``small`` deltas covers ``size`` outputs up to a
    subsampling remainder: ``size // up`` deltas ("drop") or ``ceil(size / up)`` ("pad")."""
    return size // up <= small <= -(-size // up) and small > 0


def _direct_backward(x, dy, y, formula, selection, up, need_delta):
    """conv_backward on the direct kernels: ``(kernel_grad, bias_grad, delta or None)``."""
    n, c, h, w = x.shape
    _, o, dh, dw = y.shape
    kh, kw = h - dh + 1, w - dw + 1
    dtype = x.dtype
    name, p0, p1, scaled = formula
    codes = _jit.direct_sensitivities
    t = dtype.type
    sens = (codes[name], t(p0), t(p1), scaled)
    active = _active(selection, o, c)
    chunk = _chunk(dh, w, dtype, n, o * c * kh * kw * dh * dw)
    delta = np.empty(y.shape, dtype) if need_delta else np.empty((0, 0, 0, 0), dtype)
    partial, bias = {}, {}

    def work(index, start, stop):
        partial[index], bias[index] = _jit.correlate_grad(
            x, dy, y, sens, up, active, start, stop, chunk, delta
        )

    # Note [One example on two cores] (each half its maps' sums)
    if (halves := _map_halves(n, o, o * c * kh * kw * dh * dw)) is not None:

        def work_maps(index, j0, j1):
            part = delta[:, j0:j1] if need_delta else delta
            partial[index], bias[index] = _jit.correlate_grad(
                x, dy[:, j0:j1], y[:, j0:j1], sens, up, active[j0:j1], 0, 1, chunk, part
            )

        _threads._pool.run(work_maps, halves)
        partial = {0: np.concatenate([partial[0], partial[1]])}
        bias = {0: np.concatenate([bias[0], bias[1]])}
    else:
        bounds = _threads.direct_bounds(n, o * c * kh * kw * dh * dw)
        driver = _jit.correlate_grad_sliced
        if len(bounds) > 2 and driver is not None:  # pragma: no mutate (a path to the same result)
            # Note [Slices taken in compiled code] in _direct: slice i's sums in row i
            count = len(bounds) - 1
            grads = np.empty((count, o, c, kh, kw), dtype)
            biases = np.empty((count, o))  # float64 sums
            args = (x, dy, y, sens, up, active, chunk, delta, grads, biases)
            _threads.run_compiled(driver, args, bounds)
            partial = {i: grads[i] for i in range(count)}
            bias = {i: biases[i] for i in range(count)}
        else:
            run_direct(work, n, o * c * kh * kw * dh * dw)
    grad = sum_in_order(partial)[:, :, ::-1, ::-1]  # correlation -> conv2 orientation
    if selection is not None:
        grad = grad * selection[:, :, None, None]
    return (
        np.ascontiguousarray(grad),
        sum_in_order(bias).astype(dtype),
        delta if need_delta else None,
    )


def conv_full(delta, kernel, selection=None, padding=(0, 0)):
    if not usable(delta, kernel):
        return _reference.conv_full(delta, kernel, selection, padding)
    if _dense.covered_full(delta, kernel, padding):  # Note [Convolutions that cover the map]
        return _dense.conv_covering_full(delta, kernel, selection)
    ph, pw = padding
    n, o, h, w = delta.shape
    _, c, kh, kw = kernel.shape
    gh, gw = h + kh - 1 - 2 * ph, w + kw - 1 - 2 * pw  # the forward input's size
    path = "im2col"
    if gh > 0 and gw > 0:
        usable_direct = _direct(delta, kernel)  # (the blocked kernels have no 'full' one)
        path = _path("full", usable_direct, delta.dtype, n, c, o, gh, gw, kh, kw, ph, pw, False)
    if path == "fft":  # Note [Convolutions by the FFT] in _fft
        active = _active(None if selection is None else selection.T, c, o)
        return _fft.conv_full(delta, masked(kernel, selection), active, padding)
    direct = path == "direct"
    if (ph or pw) and not (ph < kh and pw < kw and direct):
        # Note [Zero padding] in anycnn.ops: the 'full' convolution, cropped back
        full = conv_full(delta, kernel, selection)
        return np.ascontiguousarray(full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw])
    if not direct:
        return _im2col.conv_full(delta, kernel, selection)
    # Note [Direct convolutions] in _direct: g[i] = sum_j corr(pad(delta_j), k_ji), the kernels
    # transposed, not flipped; a layer's (ph, pw) padding crops the result, i.e. pads delta by
    # (ph, pw) less.
    oh, ow = h + kh - 1 - 2 * ph, w + kw - 1 - 2 * pw
    dtype = delta.dtype
    weights = np.ascontiguousarray(masked(kernel, selection).transpose(1, 0, 2, 3))
    active = _active(None if selection is None else selection.T, c, o)
    chunk = _chunk(oh, w + kw - 1 - pw, dtype, n, o * c * kh * kw * h * w)
    identity = no_activation(dtype)
    out = np.empty((n, c, oh, ow), dtype=dtype)

    def work_direct(index, start, stop):
        _jit.correlate_into(
            delta,
            kh - 1 - ph,
            kw - 1 - pw,
            weights,
            _zeros(c, dtype),
            active,
            identity,
            out,
            start,
            stop,
            chunk,
        )

    # Note [One example on two cores]
    if (halves := _map_halves(n, c, o * c * kh * kw * h * w)) is not None:

        def work_maps(index, i0, i1):
            _jit.correlate_into(
                delta, kh - 1 - ph, kw - 1 - pw, weights[i0:i1], _zeros(c, dtype)[i0:i1],
                active[i0:i1], identity, out[:, i0:i1], 0, 1, chunk,
            )  # fmt: skip

        _threads._pool.run(work_maps, halves)
        return out
    bounds = _threads.direct_bounds(n, o * c * kh * kw * h * w)
    driver = _jit.correlate_into_sliced  # pragma: no mutate (a path to the same result)
    # Note [Slices taken in compiled code] in _direct
    if len(bounds) > 2 and driver is not None:  # pragma: no mutate (a path to the same result)
        args = (delta, kh - 1 - ph, kw - 1 - pw, weights, _zeros(c, dtype), active, identity, out)
        _threads.run_compiled(driver, (*args, chunk), bounds)
        return out
    run_direct(work_direct, n, o * c * kh * kw * h * w)
    return out
