"""Direct 3-D convolutions of the NumPy backend on 16-lane float32 vectors, compiled by Numba.

Imported by ``_nd`` only when Numba is there (``_jit.correlate_into`` is not None). Implements
the notes' forward convolution (section 3.1) and eq. (7) in three dimensions, conv2's flipped
kernels (the kernels are flipped into correlation weights here).

Note [Direct volumes]
~~~~~~~~~~~~~~~~~~~~~
The 3-D stage of bench/nd.py on the 2-D kernels (Note [1-D and 3-D on the 2-D kernels] in
anycnn.backend.planar: the kernel's depth taps as input maps) copies the input ``kd`` times into
depth-stacked maps, twice per step, moves outputs and deltas between depth-major and
channel-major order, and runs the 2-D kernels' 3-tap rows (their loops add five taps of a row
at a time): on the 32^3, 3x3x3, 8 -> 16 row that was 0.65x PyTorch (quiet, one thread). Here the
volume is convolved where it lies:

* **One flat volume per example.** Example ``n`` is copied once (zero-padded when the layer
  pads) into a flat run ``(C, Dp, Hp, Wp)`` with a few zeros after it; an output voxel ``(z, y,
  x)`` is grid position ``q = y Wp + x`` of depth ``z``, and tap ``(a, b, e)`` of input map ``i``
  reads ``xb[i Dp Hp Wp + (z + a) Hp Wp + b Wp + e + q]``: one offset per tap for the whole
  depth slice. The grid's columns ``x >= ow`` (and its last positions, up to a multiple of 32)
  are computed and thrown away, as the 2-D kernels throw away theirs (Note [Direct
  convolutions] in ``_direct``).
* **Forward: 32 positions x 8 output maps in registers.** Sixteen 16-lane accumulators; each
  tap loads two vectors of the input and eight weights (stored contiguously, broadcast), and
  does sixteen fused multiply-adds. The bias is added as the slice leaves the grid, f (the
  direct kernels' compiled logistic or tanh, ``_direct._activate_run32``) runs over each
  example's output after it.
* **Kernel gradient (eq. 7): 3 taps x 8 output maps in registers.** Twenty-four accumulators
  run along the depth slice's grid, eight delta vectors and three input vectors per step; they
  are per-lane partial sums kept in memory between slices, summed over the lanes at the end.
  The deltas are formed on a grid of the same layout (zeros in the thrown-away columns) by the
  fused ``delta = f'(u) o up(dy)`` (up-sampling along all three axes, a subsampling remainder
  getting no delta), summing the bias gradient as they go.
* **Threads** take an even number of ranges of (example, output depth) pairs sized by
  multiply-adds (:func:`_run`, on the backend's pool): the cut depends on the shape only, and the
  kernel gradient's per-range partial sums are added in range order, so the bits do not depend
  on the thread count.
* **Signals** ``(N, C, L)`` are volumes one voxel deep and high, ``(N, C, 1, 1, L)`` (a view):
  the same kernels, the grid one row long.

float32 only (the vectors are float32; float64 keeps the 2-D mappings and their bits). The 'full'
convolution of 3.2.1 keeps the 2-D mappings too (bench/nd.py's stage does not need it; a network
of several 1-D or 3-D layers does). Which shapes come here: Note [Choosing an N-D path] in
``_nd``.

The vector type and its operations are ``_vectors``' (Note [Explicit vectors] there), shared with
``_direct``'s kernels.
"""

from __future__ import annotations

import numba
import numpy as np

from anycnn_numpy._vectors import LANES, cache_depends_on_vectors
from anycnn_numpy._vectors import vbroadcast as _broadcast
from anycnn_numpy._vectors import vfma as _fma
from anycnn_numpy._vectors import vload as _load
from anycnn_numpy._vectors import vsplat as _splat
from anycnn_numpy._vectors import vstore as _store

# the cache of this file's kernels is stamped with _vectors.py's content too
cache_depends_on_vectors(__file__)

#: output maps computed together by the forward and gradient kernels
MAPS = 8
#: grid positions computed together by the forward kernel (three vectors)
BLOCK = 3 * LANES
#: taps accumulated together by the gradient kernel
GRAD_TAPS = 3
#: grid positions the gradient kernel runs over before the next taps (8 maps' deltas: 16 KiB)
GRAD_CHUNK = 512


@numba.njit(nogil=True, fastmath=True, cache=True)
def _forward_depth(xb, c, dp, hp, wp, z, wts, kd, kh, kw, blocks, span, g):  # pragma: no cover
    """``g[j span + q]`` = the correlation at grid position ``q`` of output depth ``z`` for the
    ``8 blocks`` maps of ``wts`` (``(blocks, C, kd, kh, kw, 8)`` flat): 48 positions (three
    vectors) x 8 maps in 24 accumulators, each tap three input loads and eight broadcasts."""
    plane = hp * wp
    volume = dp * plane
    taps = c * kd * kh * kw * MAPS
    for qb in range(0, span, BLOCK):
        for jb in range(blocks):
            a0 = _splat(np.float32(0.0))
            a1 = a2 = a3 = a4 = a5 = a6 = a7 = a0
            b0 = b1 = b2 = b3 = b4 = b5 = b6 = b7 = a0
            c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = a0
            w = jb * taps
            for i in range(c):
                for a in range(kd):
                    for b in range(kh):
                        base = i * volume + (z + a) * plane + b * wp + qb
                        for e in range(kw):
                            x0 = _load(xb, base + e)
                            x1 = _load(xb, base + e + LANES)
                            x2 = _load(xb, base + e + 2 * LANES)
                            v = _broadcast(wts, w)
                            a0 = _fma(x0, v, a0)
                            b0 = _fma(x1, v, b0)
                            c0 = _fma(x2, v, c0)
                            v = _broadcast(wts, w + 1)
                            a1 = _fma(x0, v, a1)
                            b1 = _fma(x1, v, b1)
                            c1 = _fma(x2, v, c1)
                            v = _broadcast(wts, w + 2)
                            a2 = _fma(x0, v, a2)
                            b2 = _fma(x1, v, b2)
                            c2 = _fma(x2, v, c2)
                            v = _broadcast(wts, w + 3)
                            a3 = _fma(x0, v, a3)
                            b3 = _fma(x1, v, b3)
                            c3 = _fma(x2, v, c3)
                            v = _broadcast(wts, w + 4)
                            a4 = _fma(x0, v, a4)
                            b4 = _fma(x1, v, b4)
                            c4 = _fma(x2, v, c4)
                            v = _broadcast(wts, w + 5)
                            a5 = _fma(x0, v, a5)
                            b5 = _fma(x1, v, b5)
                            c5 = _fma(x2, v, c5)
                            v = _broadcast(wts, w + 6)
                            a6 = _fma(x0, v, a6)
                            b6 = _fma(x1, v, b6)
                            c6 = _fma(x2, v, c6)
                            v = _broadcast(wts, w + 7)
                            a7 = _fma(x0, v, a7)
                            b7 = _fma(x1, v, b7)
                            c7 = _fma(x2, v, c7)
                            w += MAPS
            r = jb * MAPS * span + qb
            _store(g, r, a0)
            _store(g, r + LANES, b0)
            _store(g, r + 2 * LANES, c0)
            _store(g, r + 1 * span, a1)
            _store(g, r + 1 * span + LANES, b1)
            _store(g, r + 1 * span + 2 * LANES, c1)
            _store(g, r + 2 * span, a2)
            _store(g, r + 2 * span + LANES, b2)
            _store(g, r + 2 * span + 2 * LANES, c2)
            _store(g, r + 3 * span, a3)
            _store(g, r + 3 * span + LANES, b3)
            _store(g, r + 3 * span + 2 * LANES, c3)
            _store(g, r + 4 * span, a4)
            _store(g, r + 4 * span + LANES, b4)
            _store(g, r + 4 * span + 2 * LANES, c4)
            _store(g, r + 5 * span, a5)
            _store(g, r + 5 * span + LANES, b5)
            _store(g, r + 5 * span + 2 * LANES, c5)
            _store(g, r + 6 * span, a6)
            _store(g, r + 6 * span + LANES, b6)
            _store(g, r + 6 * span + 2 * LANES, c6)
            _store(g, r + 7 * span, a7)
            _store(g, r + 7 * span + LANES, b7)
            _store(g, r + 7 * span + 2 * LANES, c7)


@numba.njit(nogil=True, fastmath=True, cache=True)
def correlate_volumes(
    xb, geometry, wts, blocks, bias, out, start, stop, span
):  # pragma: no cover - compiled
    """``out[n, j, z] = sum_i corr(x[n, i], wts[j, i], 'valid')[z] + bias[j]`` for the (example,
    output depth) pairs ``start <= n od + z < stop``. ``xb`` holds the padded examples flat
    (:func:`flatten_examples`), ``geometry = (C, Dp, Hp, Wp, kd, kh, kw)``."""
    c, dp, hp, wp, kd, kh, kw = geometry
    o, od, oh, ow = out.shape[1], out.shape[2], out.shape[3], out.shape[4]
    g = np.empty(blocks * MAPS * span, np.float32)
    for item in range(start, stop):
        n, z = item // od, item % od
        _forward_depth(xb[n], c, dp, hp, wp, z, wts, kd, kh, kw, blocks, span, g)
        for j in range(o):
            beta = bias[j]
            for y in range(oh):
                row = out[n, j, z, y]
                r = j * span + y * wp
                for s in range(ow):
                    row[s] = g[r + s] + beta
    return out


#: f' codes of :func:`deltas_on_grid` (Note [Sensitivity kernel] in _direct: the same formulas)
GIVEN, LOGISTIC, TANH = 0, 1, 2


@numba.njit(nogil=True, fastmath=True, cache=True)
def _delta_depth(dy, y, shapes, n, z, up, kind, p0, p1, scaled, wp, span, dg, delta, bias, given):
    """Output depth ``z`` of example ``n``: ``dg[j span + yy wp + xx] = f'(u) up(dy)`` (zeros in
    the thrown-away columns), copied to ``delta`` (flat like ``y``) when it is not empty, its
    sums added to ``bias`` (float64). ``dy`` and ``y`` are flat, ``shapes = (O, od, oh, ow, dz,
    dh, dw)``; ``given`` is scratch for one up-sampled row (``dw up`` long). Flat offsets, no
    views: a view per row cost ~100 ns, more than its 14-30 numbers."""  # pragma: no cover
    o, od, oh, ow, dz, dh, dw = shapes
    zero = np.float32(0.0)
    one = np.float32(1.0)
    keep = delta.size > 0
    zz = z // up
    covered = min(ow, dw * up)  # columns with a delta; a "drop" remainder gets none
    rows = min(oh, dh * up)
    for j in range(o):
        g0 = j * span
        for q in range(g0, g0 + span):
            dg[q] = zero
        y0 = ((n * o + j) * od + z) * oh * ow
        if zz >= dz:
            if keep:
                for q in range(y0, y0 + oh * ow):
                    delta[q] = zero
            continue
        d0 = ((n * o + j) * dz + zz) * dh * dw
        total = np.float32(0.0)
        for yy in range(rows):
            if yy % up == 0:
                s0 = d0 + (yy // up) * dw
                for xd in range(dw):
                    value = dy[s0 + xd]
                    for r in range(up):
                        given[xd * up + r] = value
            t0 = g0 + yy * wp
            o0 = y0 + yy * ow
            if kind == LOGISTIC:
                if scaled:
                    for xx in range(covered):
                        v = y[o0 + xx]
                        dg[t0 + xx] = (v * (one - v)) * p0 * given[xx]
                else:
                    for xx in range(covered):
                        v = y[o0 + xx]
                        dg[t0 + xx] = (v * (one - v)) * given[xx]
            elif kind == TANH:
                for xx in range(covered):
                    v = y[o0 + xx]
                    dg[t0 + xx] = ((p0 - v) * (v + p0)) * p1 * given[xx]
            else:
                for xx in range(covered):
                    dg[t0 + xx] = given[xx]
            for xx in range(covered):
                total += dg[t0 + xx]
        bias[j] += total
        if keep:
            for yy in range(oh):
                for xx in range(ow):
                    delta[y0 + yy * ow + xx] = dg[g0 + yy * wp + xx]


@numba.njit(nogil=True, fastmath=True, cache=True)
def _grad_depth(xb, c, dp, hp, wp, z, offsets, dg, blocks, span, parts):  # pragma: no cover
    """``parts[((jb C + i) T + t) 8 + k, lane] += sum_q dg[(8 jb + k) span + q] xb[...]``: per-lane
    partial sums of eq. (7) for the taps ``3t .. 3t + 2`` (``offsets``, padded to a multiple of
    3) over grid depth ``z``."""
    plane = hp * wp
    volume = dp * plane
    groups = offsets.size // GRAD_TAPS
    for jb in range(blocks):
        d = jb * MAPS * span
        for q0 in range(0, span, GRAD_CHUNK):  # L1-sized runs of the deltas, read by every tap
            q1 = min(span, q0 + GRAD_CHUNK)
            for i in range(c):
                base = i * volume + z * plane
                for t in range(groups):
                    o0 = base + offsets[GRAD_TAPS * t]
                    o1 = base + offsets[GRAD_TAPS * t + 1]
                    o2 = base + offsets[GRAD_TAPS * t + 2]
                    p = (((jb * c + i) * groups + t) * GRAD_TAPS) * MAPS * LANES
                    s = MAPS * LANES
                    a0, a1, a2, a3 = (
                        _load(parts, p),
                        _load(parts, p + 16),
                        _load(parts, p + 32),
                        _load(parts, p + 48),
                    )
                    a4, a5, a6, a7 = (
                        _load(parts, p + 64),
                        _load(parts, p + 80),
                        _load(parts, p + 96),
                        _load(parts, p + 112),
                    )
                    b0, b1, b2, b3 = (
                        _load(parts, p + s),
                        _load(parts, p + s + 16),
                        _load(parts, p + s + 32),
                        _load(parts, p + s + 48),
                    )
                    b4, b5, b6, b7 = (
                        _load(parts, p + s + 64),
                        _load(parts, p + s + 80),
                        _load(parts, p + s + 96),
                        _load(parts, p + s + 112),
                    )
                    c0, c1, c2, c3 = (
                        _load(parts, p + 2 * s),
                        _load(parts, p + 2 * s + 16),
                        _load(parts, p + 2 * s + 32),
                        _load(parts, p + 2 * s + 48),
                    )
                    c4, c5, c6, c7 = (
                        _load(parts, p + 2 * s + 64),
                        _load(parts, p + 2 * s + 80),
                        _load(parts, p + 2 * s + 96),
                        _load(parts, p + 2 * s + 112),
                    )
                    for q in range(q0, q1, LANES):
                        x0 = _load(xb, o0 + q)
                        x1 = _load(xb, o1 + q)
                        x2 = _load(xb, o2 + q)
                        v = _load(dg, d + q)
                        a0, b0, c0 = _fma(v, x0, a0), _fma(v, x1, b0), _fma(v, x2, c0)
                        v = _load(dg, d + span + q)
                        a1, b1, c1 = _fma(v, x0, a1), _fma(v, x1, b1), _fma(v, x2, c1)
                        v = _load(dg, d + 2 * span + q)
                        a2, b2, c2 = _fma(v, x0, a2), _fma(v, x1, b2), _fma(v, x2, c2)
                        v = _load(dg, d + 3 * span + q)
                        a3, b3, c3 = _fma(v, x0, a3), _fma(v, x1, b3), _fma(v, x2, c3)
                        v = _load(dg, d + 4 * span + q)
                        a4, b4, c4 = _fma(v, x0, a4), _fma(v, x1, b4), _fma(v, x2, c4)
                        v = _load(dg, d + 5 * span + q)
                        a5, b5, c5 = _fma(v, x0, a5), _fma(v, x1, b5), _fma(v, x2, c5)
                        v = _load(dg, d + 6 * span + q)
                        a6, b6, c6 = _fma(v, x0, a6), _fma(v, x1, b6), _fma(v, x2, c6)
                        v = _load(dg, d + 7 * span + q)
                        a7, b7, c7 = _fma(v, x0, a7), _fma(v, x1, b7), _fma(v, x2, c7)
                    _store(parts, p, a0)
                    _store(parts, p + 16, a1)
                    _store(parts, p + 32, a2)
                    _store(parts, p + 48, a3)
                    _store(parts, p + 64, a4)
                    _store(parts, p + 80, a5)
                    _store(parts, p + 96, a6)
                    _store(parts, p + 112, a7)
                    _store(parts, p + s, b0)
                    _store(parts, p + s + 16, b1)
                    _store(parts, p + s + 32, b2)
                    _store(parts, p + s + 48, b3)
                    _store(parts, p + s + 64, b4)
                    _store(parts, p + s + 80, b5)
                    _store(parts, p + s + 96, b6)
                    _store(parts, p + s + 112, b7)
                    _store(parts, p + 2 * s, c0)
                    _store(parts, p + 2 * s + 16, c1)
                    _store(parts, p + 2 * s + 32, c2)
                    _store(parts, p + 2 * s + 48, c3)
                    _store(parts, p + 2 * s + 64, c4)
                    _store(parts, p + 2 * s + 80, c5)
                    _store(parts, p + 2 * s + 96, c6)
                    _store(parts, p + 2 * s + 112, c7)


@numba.njit(nogil=True, fastmath=True, cache=True)
def correlate_grads(
    xb, geometry, dy, y, up, sens, offsets, blocks, span, start, stop, parts, bias, delta
):  # pragma: no cover - compiled
    """The fused backward pass over the (example, output depth) pairs ``start <= n od + z <
    stop``: ``delta = f'(u) o up(dy)`` on a grid (written to ``delta`` when it has a batch), its
    sums added to ``bias``, and eq. (7)'s per-lane partial sums added to ``parts``."""
    c, dp, hp, wp = geometry[0], geometry[1], geometry[2], geometry[3]
    kind, p0, p1, scaled = sens
    od = y.shape[2]
    dg = np.zeros(blocks * MAPS * span, np.float32)
    given = np.empty(dy.shape[4] * up, np.float32)
    shapes = (y.shape[1], od, y.shape[3], y.shape[4], dy.shape[2], dy.shape[3], dy.shape[4])
    flat_dy, flat_y, flat_delta = dy.reshape(-1), y.reshape(-1), delta.reshape(-1)
    for item in range(start, stop):
        n, z = item // od, item % od
        _delta_depth(
            flat_dy,
            flat_y,
            shapes,
            n,
            z,
            up,
            kind,
            p0,
            p1,
            scaled,
            wp,
            span,
            dg,
            flat_delta,
            bias,
            given,
        )
        _grad_depth(xb[n], c, dp, hp, wp, z, offsets, dg, blocks, span, parts)


# --- the ops ------------------------------------------------------------------------------------
def _span(oh: int, wp: int) -> int:
    """Grid positions of one output depth, up to a multiple of BLOCK."""
    return -(-(oh * wp) // BLOCK) * BLOCK


def _flat_examples(x: np.ndarray, pads: tuple[int, int, int], kw: int) -> np.ndarray:
    """Each example of ``x`` zero-padded by ``pads`` on each side, flat, then ``kw + BLOCK``
    zeros (the thrown-away positions read up to that far past the last map)."""
    n, c, d, h, w = x.shape
    pd, ph, pw = pads
    dp, hp, wp = d + 2 * pd, h + 2 * ph, w + 2 * pw
    size = c * dp * hp * wp
    out = np.empty((n, size + kw + BLOCK), np.float32)
    out[:, size:] = 0
    if not any(pads):
        out[:, :size] = x.reshape(n, size)
        return out
    volumes = out[:, :size].reshape(n, c, dp, hp, wp)
    volumes[...] = 0
    volumes[:, :, pd : pd + d, ph : ph + h, pw : pw + w] = x
    return out


#: multiply-adds of one slice of (example, depth) pairs for the pool; the cut depends on the
#: shape only (a few slices: each slice of the gradient sums its own partial sums)
SLICE_MACS = 256_000_000


def _slice_count(items: int, macs_per_item: int) -> int:  # pragma: no mutate block
    """How many ranges the pool cuts the ``items`` (example, output depth) pairs into: an even
    number sized by multiply-adds, one below SLICE_MACS (a work size: how fast, not what; the
    mutation campaigns leave it alone, issue 22)."""
    total = items * macs_per_item
    if items == 1 or total < SLICE_MACS:
        return 1
    return min(items, 2 * -(-total // (2 * SLICE_MACS)))


def _run(work, items: int, macs_per_item: int) -> None:
    """``work(index, start, stop)`` over consecutive ranges that cover the ``items`` once, in
    order (:func:`_slice_count` of them)."""
    from anycnn_numpy import _threads

    count = _slice_count(items, macs_per_item)
    if count == 1:
        work(0, 0, items)
        return
    bounds = [items * i // count for i in range(count + 1)]
    _threads._pool.run(work, [(bounds[i], bounds[i + 1]) for i in range(count)])


def _weights(kernel: np.ndarray, selection) -> tuple[np.ndarray, int]:
    """Correlation weights ``(blocks, C, kd, kh, kw, 8)`` flat (zeros for the maps past O and the
    pairs outside the selection) and the number of blocks."""
    o = kernel.shape[0]
    blocks = -(-o // MAPS)
    corr = kernel[:, :, ::-1, ::-1, ::-1]
    if selection is not None:
        corr = corr * np.asarray(selection, dtype=bool)[:, :, None, None, None]
    padded = np.zeros((blocks * MAPS, *kernel.shape[1:]), np.float32)
    padded[:o] = corr
    wts = padded.reshape(blocks, MAPS, *kernel.shape[1:]).transpose(0, 2, 3, 4, 5, 1)
    return np.ascontiguousarray(wts).reshape(-1), blocks


def fits(dy_shape, y_shape, up: int) -> bool:
    """Whether ``up(dy)`` covers ``y`` up to a subsampling remainder on every axis (``size //
    up`` deltas for "drop", ``ceil(size / up)`` for "pad")."""
    return tuple(dy_shape[:2]) == tuple(y_shape[:2]) and all(
        0 < small and size // up <= small <= -(-size // up)
        for small, size in zip(dy_shape[2:], y_shape[2:], strict=True)
    )


def conv_valid(x, kernel, bias=None, padding=(0, 0, 0), selection=None):
    """``sum_i x_i * k_ij + b_j`` (the 3-D 'valid' convolution of 3.1, conv2's flipped kernel,
    plus the bias when given) for float32 ``x`` (N, C, D, H, W) and ``kernel`` (O, C, kd, kh,
    kw), zero-padded by ``padding`` (Note [Direct volumes])."""
    n, c, d, h, w = x.shape
    o, _, kd, kh, kw = kernel.shape
    pd, ph, pw = padding
    dp, hp, wp = d + 2 * pd, h + 2 * ph, w + 2 * pw
    od, oh, ow = dp - kd + 1, hp - kh + 1, wp - kw + 1
    xb = _flat_examples(x, (pd, ph, pw), kw)
    wts, blocks = _weights(kernel, selection)
    shift = np.zeros(o, np.float32) if bias is None else np.ascontiguousarray(bias, np.float32)
    out = np.empty((n, o, od, oh, ow), np.float32)
    geometry = (c, dp, hp, wp, kd, kh, kw)
    span = _span(oh, wp)

    def work(index, start, stop):
        correlate_volumes(xb, geometry, wts, blocks, shift, out, start, stop, span)

    macs = blocks * MAPS * c * kd * kh * kw * span  # pragma: no mutate (the pool's work size)
    _run(work, n * od, macs)
    return out


def apply_activation(out: np.ndarray, activation) -> np.ndarray:
    """``f(out)`` in place where the direct kernels compile f (the logistic, the scaled tanh),
    else the backend's ``activate`` (a new array when f makes one)."""
    from anycnn_numpy import _activation, _direct
    from anycnn_numpy._threads import run

    compiled = _activation.compiled_activation(activation, out.dtype)
    if compiled is None:
        return _activation.activate(out, activation)
    kind, p0, p1 = compiled
    if kind == _direct.IDENTITY:
        return out

    def work(index, start, stop):
        _direct._activate_run32(out[start:stop].ravel(), kind, p0, p1)  # in place: a view

    run(work, len(out), out[0].size * 4, 0)
    return out


def sensitivity_code(activation, y) -> tuple | None:
    """``(kind, p0, p1, scaled)`` of :func:`correlate_grads`' f' for ``activation``, or None
    where it has no compiled form (the formulas of ``_activation.sensitivity_formula``)."""
    from anycnn_numpy._activation import sensitivity_formula

    formula = sensitivity_formula(activation, y)
    if formula is None:
        return None
    name, p0, p1, scaled = formula
    kind = {"identity": GIVEN, "logistic": LOGISTIC, "tanh": TANH}[name]
    return (kind, np.float32(p0), np.float32(p1), bool(scaled))


def backward(x, dy, y, sens, selection, up, need_delta, padding):
    """The fused backward pass of a 3-D convolution layer (``conv_backward``, Note [Fused ops] in
    anycnn.ops): ``delta = f'(u) o up(dy)`` (``sens``: :func:`sensitivity_code`), eq. (7)'s
    kernel gradient in conv2's orientation, the bias gradient, and delta when asked for."""
    n, c, d, h, w = x.shape
    _, o, od, oh, ow = y.shape
    pd, ph, pw = padding
    dp, hp, wp = d + 2 * pd, h + 2 * ph, w + 2 * pw
    kd, kh, kw = dp - od + 1, hp - oh + 1, wp - ow + 1
    xb = _flat_examples(x, (pd, ph, pw), kw)
    blocks = -(-o // MAPS)
    plane = hp * wp
    taps = [a * plane + b * wp + e for a in range(kd) for b in range(kh) for e in range(kw)]
    groups = -(-len(taps) // GRAD_TAPS)
    offsets = np.zeros(groups * GRAD_TAPS, np.int64)
    offsets[: len(taps)] = taps
    span = _span(oh, wp)
    geometry = (c, dp, hp, wp)
    delta = np.empty(y.shape if need_delta else (0, 0, 0, 0, 0), np.float32)
    dy, y = np.ascontiguousarray(dy), np.ascontiguousarray(y)
    parts: dict = {}
    sums: dict = {}

    def work(index, start, stop):
        part = np.zeros(blocks * c * groups * GRAD_TAPS * MAPS * LANES, np.float32)
        bias = np.zeros(o)  # float64 sums
        correlate_grads(
            xb, geometry, dy, y, up, sens, offsets, blocks, span, start, stop, part, bias, delta
        )
        parts[index], sums[index] = part, bias

    macs = blocks * MAPS * c * kd * kh * kw * span  # pragma: no mutate (the pool's work size)
    _run(work, n * od, macs)
    from anycnn_numpy._threads import sum_in_order

    lanes = sum_in_order(parts).reshape(blocks, c, groups * GRAD_TAPS, MAPS, LANES).sum(axis=4)
    corr = lanes[:, :, : len(taps)].transpose(0, 3, 1, 2).reshape(blocks * MAPS, c, kd, kh, kw)
    grad = np.ascontiguousarray(corr[:o, :, ::-1, ::-1, ::-1])
    if selection is not None:
        grad *= np.asarray(selection, dtype=bool)[:, :, None, None, None]
    return grad, sum_in_order(sums).astype(np.float32), delta if need_delta else None
