"""The kernel gradient of eq. (7) on 2-D float32 maps with the output maps in the vector lanes:
the ``"blocked"`` path's ``"grad"`` op (Note [Blocked 2-D path] in ``_blocked``).

Note [Maps in lanes]
~~~~~~~~~~~~~~~~~~~~
``_volume``'s gradient kernel keeps grid positions in the lanes: per-lane partial sums for 3 taps
x 8 maps, three unaligned input loads and eight delta loads per 24 multiply-adds, over a grid
as wide as the input (``wp``), the columns past the output's computed on zero deltas. On
3-channel maps with 7 x 7 and 11 x 11 kernels that ran at 30-47 G multiply-adds/s on one core of
the Xeon (PyTorch's weight gradient 48-71), and on 28 px maps with 11 x 11 kernels 36% of its
grid was thrown-away columns. Here the lanes hold output maps instead:

* **Deltas transposed.** Each example's ``delta = f'(u) o up(dy)`` is formed (:func:`_deltas`,
  the formulas of ``_volume``'s, its bias sums) into ``dg[block, p, lane]``: block ``b`` of 16
  (or 32: two vectors) maps, output position ``p = y ow + x``, map ``b stride + lane`` in the
  lanes (maps past O are zeros). Only the output's positions: no thrown-away columns. By chunks
  of rows (:data:`TMP_BYTES`), each map's run of positions formed 16 lanes at a time, then
  transposed 16 maps x 16 positions at a time in registers (:func:`_transpose16`: four stages
  of two-row shuffles). Formed row by row over every map, or transposed element by element,
  this took as long as the multiply-adds on some shapes (64 streams of rows 22 long).
* **Taps in registers, one input value broadcast per tap.** A pass keeps 24 accumulators: 6
  "rows" of 4 taps x 16 maps, or 3 rows x 32 maps (two vectors). A row is one (input map,
  kernel row, 4 columns) triple, at one offset in the example: the triples of all input maps
  and column groups are numbered together (3 maps x 11 rows x 3 groups = 99 triples, 17 passes
  of 6, 3 of them padding; a signal's 31 taps: 8 triples), so neither the input maps nor the
  kernel rows each round up. Per output position a pass loads one (two) delta vectors and
  broadcasts 24 (12) input values, each a fused multiply-add's memory operand (every load
  aligned or a scalar: none straddles two cache lines; on the Xeon 80 G multiply-adds/s on one
  core, 3 -> 64 maps, 11 x 11, 128 px, the deltas aside). Taps past the kernel's (the last
  pass's and the last column group's padding) read real input and are thrown away.
* **Chunks of output rows** whose deltas fit in L1 (:data:`CHUNK_BYTES`): every pass of a
  chunk runs over them before the next chunk, each pass's sums starting from zero and added to
  the slice's partial sums once per chunk (a few hundred products per float32 sum).
* **Threads**: the batch slices of the direct kernels (``_threads.direct_bounds``, by
  multiply-adds: the shape decides), each with its own partial sums, added in slice order; one
  large example (from :data:`SPLIT_MACS`) is cut into two halves of the passes (disjoint sums)
  after its deltas are formed. The same bits on any number of threads.

Measured (``bench/paths.py --update ... --only grad-blocked``, 2 threads, the fused op with
tanh's f' as the layers call it; bench/results/paths-numpy-intel-xeon-2c.json): 3 -> 64 maps on
28 px at batch 64 took 6.5 ms with 11 x 11 kernels (``_volume``'s kernels 24.9, the FFT 10.2,
im2col 11.0, the direct kernels 18.4) and 5.3 ms with 7 x 7 (12.4, 10.6, 8.6, 9.0). Where this
path is taken is the cost model's call (``_plan.features``).

The input is read in place (a C-contiguous ``(N, C, H, W)``: the layer pads first); only the last
example is copied with a few zeros after it, which the padding taps of its last positions read.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from anycnn_numpy import _threads
from anycnn_numpy._vectors import LANES, VECTOR, cache_depends_on_vectors
from anycnn_numpy._vectors import vbroadcast as _broadcast
from anycnn_numpy._vectors import vfma as _fma
from anycnn_numpy._vectors import vload as _load
from anycnn_numpy._vectors import vmul as _vmul
from anycnn_numpy._vectors import vsplat as _splat
from anycnn_numpy._vectors import vstore as _store
from anycnn_numpy._vectors import vsum as _vsum

# the cache of this file's kernels is stamped with _vectors.py's content too
cache_depends_on_vectors(__file__)

#: columns of taps a pass keeps (constant offsets from a row pointer)
COLUMNS = 4
#: rows of taps (input map, kernel row pairs) a pass keeps, by vectors of maps (16 or 32 maps)
ROWS = {1: 6, 2: 3}
#: bytes of deltas one chunk of output rows holds (they stay in L1 through every tap group)
CHUNK_BYTES = 32768
#: multiply-adds from which one example's tap groups are cut in two for the pool (below, the
#: wake-up and the deltas formed on one thread cost more than the halves save)
SPLIT_MACS = 32_000_000
#: bytes of the deltas formed before they are transposed (a chunk of rows of every map, in L2)
TMP_BYTES = 262144
#: f' codes (``_volume``'s: ``sensitivity_code``)
GIVEN, LOGISTIC, TANH = 0, 1, 2


def _transpose_masks(step: int) -> tuple[list[int], list[int]]:
    """The shuffles of one stage of a 16 x 16 transpose: rows ``r`` and ``r + step`` (``r``
    without the bit ``step``) exchange their off-diagonal ``step x step`` blocks; the masks pick
    from the two rows laid end to end (0-15: row ``r``, 16-31: row ``r + step``)."""
    low, high = [], []
    for k in range(LANES):
        chunk, off = divmod(k, 2 * step)
        if off < step:
            low.append(chunk * 2 * step + off)
            high.append(chunk * 2 * step + step + off)
        else:
            low.append(LANES + chunk * 2 * step + off - step)
            high.append(LANES + chunk * 2 * step + off)
    return low, high


@intrinsic
def _transpose16(typingctx, src, s0, s_step, dst, d0, d_step):  # pragma: no cover - compiled
    """``dst[d0 + i d_step + k] = src[s0 + k s_step + i]`` for ``i, k < 16``: sixteen vector
    loads, four stages of sixteen two-row shuffles, sixteen vector stores (1-d float32 arrays, C
    order; no bounds check)."""
    arrays = (src, dst)
    if not all(isinstance(a, types.Array) and a.dtype == types.float32 for a in arrays):
        return None
    if not all(isinstance(i, types.Integer) for i in (s0, s_step, d0, d_step)):
        return None

    def codegen(context, builder, signature, args):
        source, first, step, target, start, stride = args
        views = [context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 3)]
        index = [
            context.cast(builder, args[i], signature.args[i], types.intp) for i in (1, 2, 4, 5)
        ]
        first, step, start, stride = index
        rows = []
        for k in range(LANES):
            at = builder.add(first, builder.mul(step, ir.Constant(step.type, k)))
            pointer = builder.bitcast(builder.gep(views[0].data, [at]), VECTOR.as_pointer())
            rows.append(builder.load(pointer, align=4))
        mask_type = ir.VectorType(ir.IntType(32), LANES)
        width = LANES // 2
        while width >= 1:
            low, high = _transpose_masks(width)
            new = list(rows)
            for r in range(LANES):
                if r & width:
                    continue
                a, b = rows[r], rows[r + width]
                new[r] = builder.shuffle_vector(a, b, ir.Constant(mask_type, low))
                new[r + width] = builder.shuffle_vector(a, b, ir.Constant(mask_type, high))
            rows = new
            width //= 2
        for i in range(LANES):
            at = builder.add(start, builder.mul(stride, ir.Constant(stride.type, i)))
            pointer = builder.bitcast(builder.gep(views[1].data, [at]), VECTOR.as_pointer())
            builder.store(rows[i], pointer, align=4)
        return context.get_dummy_value()

    return types.void(src, s0, s_step, dst, d0, d_step), codegen


@numba.njit(nogil=True, fastmath=True, cache=True)
def _taps_m1(
    xb, rows, base, w, ow, y0, y1, rg0, rg1, cgroups, dg, dbase, parts, p0
):  # pragma: no cover - compiled
    """Eq. (7) for 16 maps (1 vector of deltas) x 6 rows x 4 columns of taps in registers, over
    the output rows ``y0 <= y < y1``, for the groups ``rg0 <= rg < rg1`` of 6 (input map, kernel
    row) pairs (``rows``: their offsets in an example) and all ``cgroups`` groups of 4 columns:
    ``parts[p0 + ...] += sum_p dg[dbase + p 16 + lane] xb[base + row + p + column]``, ``p``
    the grid position ``y w + x`` in the input, ``p`` the output position in ``dg`` (Note [Maps in
    lanes])."""
    stride = 16
    one = _splat(np.float32(1.0))
    for rg in range(rg0, rg1):
        r0 = rows[rg * 6 + 0]
        r1 = rows[rg * 6 + 1]
        r2 = rows[rg * 6 + 2]
        r3 = rows[rg * 6 + 3]
        r4 = rows[rg * 6 + 4]
        r5 = rows[rg * 6 + 5]
        for cg in range(cgroups):
            a0_0_0 = _splat(np.float32(0.0))
            a0_1_0 = a0_2_0 = a0_3_0 = a1_0_0 = a1_1_0 = a1_2_0 = a1_3_0 = a2_0_0 = a0_0_0
            a2_1_0 = a2_2_0 = a2_3_0 = a3_0_0 = a3_1_0 = a3_2_0 = a3_3_0 = a4_0_0 = a0_0_0
            a4_1_0 = a4_2_0 = a4_3_0 = a5_0_0 = a5_1_0 = a5_2_0 = a5_3_0 = a0_0_0
            for yy in range(y0, y1):
                xrow = base + yy * w + cg * 4
                drow = dbase + yy * ow * stride
                for xx in range(ow):
                    q = xrow + xx
                    dp = drow + xx * stride
                    e0 = _load(dg, dp + 0)
                    v = _broadcast(xb, r0 + q + 0)
                    a0_0_0 = _fma(e0, v, a0_0_0)
                    v = _broadcast(xb, r0 + q + 1)
                    a0_1_0 = _fma(e0, v, a0_1_0)
                    v = _broadcast(xb, r0 + q + 2)
                    a0_2_0 = _fma(e0, v, a0_2_0)
                    v = _broadcast(xb, r0 + q + 3)
                    a0_3_0 = _fma(e0, v, a0_3_0)
                    v = _broadcast(xb, r1 + q + 0)
                    a1_0_0 = _fma(e0, v, a1_0_0)
                    v = _broadcast(xb, r1 + q + 1)
                    a1_1_0 = _fma(e0, v, a1_1_0)
                    v = _broadcast(xb, r1 + q + 2)
                    a1_2_0 = _fma(e0, v, a1_2_0)
                    v = _broadcast(xb, r1 + q + 3)
                    a1_3_0 = _fma(e0, v, a1_3_0)
                    v = _broadcast(xb, r2 + q + 0)
                    a2_0_0 = _fma(e0, v, a2_0_0)
                    v = _broadcast(xb, r2 + q + 1)
                    a2_1_0 = _fma(e0, v, a2_1_0)
                    v = _broadcast(xb, r2 + q + 2)
                    a2_2_0 = _fma(e0, v, a2_2_0)
                    v = _broadcast(xb, r2 + q + 3)
                    a2_3_0 = _fma(e0, v, a2_3_0)
                    v = _broadcast(xb, r3 + q + 0)
                    a3_0_0 = _fma(e0, v, a3_0_0)
                    v = _broadcast(xb, r3 + q + 1)
                    a3_1_0 = _fma(e0, v, a3_1_0)
                    v = _broadcast(xb, r3 + q + 2)
                    a3_2_0 = _fma(e0, v, a3_2_0)
                    v = _broadcast(xb, r3 + q + 3)
                    a3_3_0 = _fma(e0, v, a3_3_0)
                    v = _broadcast(xb, r4 + q + 0)
                    a4_0_0 = _fma(e0, v, a4_0_0)
                    v = _broadcast(xb, r4 + q + 1)
                    a4_1_0 = _fma(e0, v, a4_1_0)
                    v = _broadcast(xb, r4 + q + 2)
                    a4_2_0 = _fma(e0, v, a4_2_0)
                    v = _broadcast(xb, r4 + q + 3)
                    a4_3_0 = _fma(e0, v, a4_3_0)
                    v = _broadcast(xb, r5 + q + 0)
                    a5_0_0 = _fma(e0, v, a5_0_0)
                    v = _broadcast(xb, r5 + q + 1)
                    a5_1_0 = _fma(e0, v, a5_1_0)
                    v = _broadcast(xb, r5 + q + 2)
                    a5_2_0 = _fma(e0, v, a5_2_0)
                    v = _broadcast(xb, r5 + q + 3)
                    a5_3_0 = _fma(e0, v, a5_3_0)
            p = p0 + (rg * cgroups + cg) * 384
            _store(parts, p + 0, _fma(a0_0_0, one, _load(parts, p + 0)))
            _store(parts, p + 16, _fma(a0_1_0, one, _load(parts, p + 16)))
            _store(parts, p + 32, _fma(a0_2_0, one, _load(parts, p + 32)))
            _store(parts, p + 48, _fma(a0_3_0, one, _load(parts, p + 48)))
            _store(parts, p + 64, _fma(a1_0_0, one, _load(parts, p + 64)))
            _store(parts, p + 80, _fma(a1_1_0, one, _load(parts, p + 80)))
            _store(parts, p + 96, _fma(a1_2_0, one, _load(parts, p + 96)))
            _store(parts, p + 112, _fma(a1_3_0, one, _load(parts, p + 112)))
            _store(parts, p + 128, _fma(a2_0_0, one, _load(parts, p + 128)))
            _store(parts, p + 144, _fma(a2_1_0, one, _load(parts, p + 144)))
            _store(parts, p + 160, _fma(a2_2_0, one, _load(parts, p + 160)))
            _store(parts, p + 176, _fma(a2_3_0, one, _load(parts, p + 176)))
            _store(parts, p + 192, _fma(a3_0_0, one, _load(parts, p + 192)))
            _store(parts, p + 208, _fma(a3_1_0, one, _load(parts, p + 208)))
            _store(parts, p + 224, _fma(a3_2_0, one, _load(parts, p + 224)))
            _store(parts, p + 240, _fma(a3_3_0, one, _load(parts, p + 240)))
            _store(parts, p + 256, _fma(a4_0_0, one, _load(parts, p + 256)))
            _store(parts, p + 272, _fma(a4_1_0, one, _load(parts, p + 272)))
            _store(parts, p + 288, _fma(a4_2_0, one, _load(parts, p + 288)))
            _store(parts, p + 304, _fma(a4_3_0, one, _load(parts, p + 304)))
            _store(parts, p + 320, _fma(a5_0_0, one, _load(parts, p + 320)))
            _store(parts, p + 336, _fma(a5_1_0, one, _load(parts, p + 336)))
            _store(parts, p + 352, _fma(a5_2_0, one, _load(parts, p + 352)))
            _store(parts, p + 368, _fma(a5_3_0, one, _load(parts, p + 368)))


@numba.njit(nogil=True, fastmath=True, cache=True)
def _taps_m2(
    xb, rows, base, w, ow, y0, y1, rg0, rg1, cgroups, dg, dbase, parts, p0
):  # pragma: no cover - compiled
    """Eq. (7) for 32 maps (2 vectors of deltas) x 3 rows x 4 columns of taps in registers, over
    the output rows ``y0 <= y < y1``, for the groups ``rg0 <= rg < rg1`` of 3 (input map, kernel
    row) pairs (``rows``: their offsets in an example) and all ``cgroups`` groups of 4 columns:
    ``parts[p0 + ...] += sum_p dg[dbase + p 32 + lane] xb[base + row + p + column]``, ``p``
    the grid position ``y w + x`` in the input, ``p`` the output position in ``dg`` (Note [Maps in
    lanes])."""
    stride = 32
    one = _splat(np.float32(1.0))
    for rg in range(rg0, rg1):
        r0 = rows[rg * 3 + 0]
        r1 = rows[rg * 3 + 1]
        r2 = rows[rg * 3 + 2]
        for cg in range(cgroups):
            a0_0_0 = _splat(np.float32(0.0))
            a0_0_1 = a0_1_0 = a0_1_1 = a0_2_0 = a0_2_1 = a0_3_0 = a0_3_1 = a1_0_0 = a0_0_0
            a1_0_1 = a1_1_0 = a1_1_1 = a1_2_0 = a1_2_1 = a1_3_0 = a1_3_1 = a2_0_0 = a0_0_0
            a2_0_1 = a2_1_0 = a2_1_1 = a2_2_0 = a2_2_1 = a2_3_0 = a2_3_1 = a0_0_0
            for yy in range(y0, y1):
                xrow = base + yy * w + cg * 4
                drow = dbase + yy * ow * stride
                for xx in range(ow):
                    q = xrow + xx
                    dp = drow + xx * stride
                    e0 = _load(dg, dp + 0)
                    e1 = _load(dg, dp + 16)
                    v = _broadcast(xb, r0 + q + 0)
                    a0_0_0 = _fma(e0, v, a0_0_0)
                    a0_0_1 = _fma(e1, v, a0_0_1)
                    v = _broadcast(xb, r0 + q + 1)
                    a0_1_0 = _fma(e0, v, a0_1_0)
                    a0_1_1 = _fma(e1, v, a0_1_1)
                    v = _broadcast(xb, r0 + q + 2)
                    a0_2_0 = _fma(e0, v, a0_2_0)
                    a0_2_1 = _fma(e1, v, a0_2_1)
                    v = _broadcast(xb, r0 + q + 3)
                    a0_3_0 = _fma(e0, v, a0_3_0)
                    a0_3_1 = _fma(e1, v, a0_3_1)
                    v = _broadcast(xb, r1 + q + 0)
                    a1_0_0 = _fma(e0, v, a1_0_0)
                    a1_0_1 = _fma(e1, v, a1_0_1)
                    v = _broadcast(xb, r1 + q + 1)
                    a1_1_0 = _fma(e0, v, a1_1_0)
                    a1_1_1 = _fma(e1, v, a1_1_1)
                    v = _broadcast(xb, r1 + q + 2)
                    a1_2_0 = _fma(e0, v, a1_2_0)
                    a1_2_1 = _fma(e1, v, a1_2_1)
                    v = _broadcast(xb, r1 + q + 3)
                    a1_3_0 = _fma(e0, v, a1_3_0)
                    a1_3_1 = _fma(e1, v, a1_3_1)
                    v = _broadcast(xb, r2 + q + 0)
                    a2_0_0 = _fma(e0, v, a2_0_0)
                    a2_0_1 = _fma(e1, v, a2_0_1)
                    v = _broadcast(xb, r2 + q + 1)
                    a2_1_0 = _fma(e0, v, a2_1_0)
                    a2_1_1 = _fma(e1, v, a2_1_1)
                    v = _broadcast(xb, r2 + q + 2)
                    a2_2_0 = _fma(e0, v, a2_2_0)
                    a2_2_1 = _fma(e1, v, a2_2_1)
                    v = _broadcast(xb, r2 + q + 3)
                    a2_3_0 = _fma(e0, v, a2_3_0)
                    a2_3_1 = _fma(e1, v, a2_3_1)
            p = p0 + (rg * cgroups + cg) * 384
            _store(parts, p + 0, _fma(a0_0_0, one, _load(parts, p + 0)))
            _store(parts, p + 16, _fma(a0_0_1, one, _load(parts, p + 16)))
            _store(parts, p + 32, _fma(a0_1_0, one, _load(parts, p + 32)))
            _store(parts, p + 48, _fma(a0_1_1, one, _load(parts, p + 48)))
            _store(parts, p + 64, _fma(a0_2_0, one, _load(parts, p + 64)))
            _store(parts, p + 80, _fma(a0_2_1, one, _load(parts, p + 80)))
            _store(parts, p + 96, _fma(a0_3_0, one, _load(parts, p + 96)))
            _store(parts, p + 112, _fma(a0_3_1, one, _load(parts, p + 112)))
            _store(parts, p + 128, _fma(a1_0_0, one, _load(parts, p + 128)))
            _store(parts, p + 144, _fma(a1_0_1, one, _load(parts, p + 144)))
            _store(parts, p + 160, _fma(a1_1_0, one, _load(parts, p + 160)))
            _store(parts, p + 176, _fma(a1_1_1, one, _load(parts, p + 176)))
            _store(parts, p + 192, _fma(a1_2_0, one, _load(parts, p + 192)))
            _store(parts, p + 208, _fma(a1_2_1, one, _load(parts, p + 208)))
            _store(parts, p + 224, _fma(a1_3_0, one, _load(parts, p + 224)))
            _store(parts, p + 240, _fma(a1_3_1, one, _load(parts, p + 240)))
            _store(parts, p + 256, _fma(a2_0_0, one, _load(parts, p + 256)))
            _store(parts, p + 272, _fma(a2_0_1, one, _load(parts, p + 272)))
            _store(parts, p + 288, _fma(a2_1_0, one, _load(parts, p + 288)))
            _store(parts, p + 304, _fma(a2_1_1, one, _load(parts, p + 304)))
            _store(parts, p + 320, _fma(a2_2_0, one, _load(parts, p + 320)))
            _store(parts, p + 336, _fma(a2_2_1, one, _load(parts, p + 336)))
            _store(parts, p + 352, _fma(a2_3_0, one, _load(parts, p + 352)))
            _store(parts, p + 368, _fma(a2_3_1, one, _load(parts, p + 368)))


@numba.njit(inline="always", fastmath=True, cache=True)
def _slope(kind, v, p0, p1, scaled):  # pragma: no cover - compiled
    """f'(u) from f(u) = ``v`` (``_volume``'s formulas: Note [Sensitivity kernel] in _direct),
    for a float32 or a vector."""
    if kind == LOGISTIC:
        if scaled:
            return (v * (np.float32(1.0) - v)) * p0
        return v * (np.float32(1.0) - v)
    if kind == TANH:
        return ((p0 - v) * (v + p0)) * p1
    return v * np.float32(0.0) + np.float32(1.0)


@numba.njit(inline="always", fastmath=True, cache=True)
def _slope16(kind, v, p0, p1, scaled):  # pragma: no cover - compiled
    """:func:`_slope` of 16 lanes (``p0``, ``p1``: splats)."""
    one = _splat(np.float32(1.0))
    minus = _splat(np.float32(-1.0))
    if kind == LOGISTIC:
        s = _fma(_vmul(v, minus), v, v)  # v (1 - v)
        if scaled:
            return _vmul(s, p0)
        return s
    if kind == TANH:
        return _vmul(_vmul(_fma(v, minus, p0), _fma(v, one, p0)), p1)  # (p0 - v)(v + p0) p1
    return one


@numba.njit(nogil=True, fastmath=True, cache=True)
def _deltas(dy, y, n, up, sens, stride, chunk, dg, delta, bias, given, tmp):  # pragma: no cover
    """Example ``n``: ``dg[(b span + p) stride + lane] = f'(u) up(dy)`` for map ``b stride +
    lane`` and position ``p`` (zeros where a subsampling remainder has no delta), copied to
    ``delta`` (flat, like ``y``) when it is not empty, its sums added to ``bias`` (float64; a
    float32 sum per map and example and chunk). ``dy`` and ``y`` are the 4-D arrays flat.

    By chunks of ``chunk`` output rows, whose positions are one run in every map: ``given``
    gets the chunk's up-sampled ``dy`` (zeros where no delta), then each map's run is formed in
    its row of ``tmp`` (``(maps, cap)``, 16 lanes at a time), then the chunk is transposed into
    ``dg`` 16 maps x 16 positions at a time (up to 15 positions past the chunk: the next
    chunk's, written after, or the block's spare ones). The rows of ``tmp`` for maps past O are
    zeros."""
    kind, p0, p1, scaled, o, oh, ow, dh, dw = sens
    positions = oh * ow
    span = positions + LANES
    blocks = -(-o // stride)
    cap = given.size
    keep = delta.size > 0
    zero = np.float32(0.0)
    covered = min(ow, dw * up)  # columns with a delta; a "drop" remainder gets none
    rows = min(oh, dh * up)
    v0, v1 = _splat(p0), _splat(p1)
    for y0 in range(0, oh, chunk):
        y1 = min(oh, y0 + chunk)
        run = (y1 - y0) * ow
        vectors = run // LANES
        for j in range(o):
            for yy in range(y0, y1):
                g0 = (yy - y0) * ow
                if yy >= rows:
                    for xx in range(ow):
                        given[g0 + xx] = zero
                    continue
                s0 = ((n * o + j) * dh + yy // up) * dw
                if up == 2:  # the common case: a shift, no division per column
                    for xx in range(covered):
                        given[g0 + xx] = dy[s0 + (xx >> 1)]
                elif up == 1:
                    for xx in range(covered):
                        given[g0 + xx] = dy[s0 + xx]
                else:
                    for xd in range(-(-covered // up)):
                        value = dy[s0 + xd]
                        for xx in range(xd * up, min(covered, xd * up + up)):
                            given[g0 + xx] = value
                for xx in range(covered, ow):
                    given[g0 + xx] = zero
            o0 = (n * o + j) * positions + y0 * ow
            r0 = j * cap
            acc = _splat(zero)
            for k in range(vectors):
                q = k * LANES
                d = _vmul(_slope16(kind, _load(y, o0 + q), v0, v1, scaled), _load(given, q))
                _store(tmp, r0 + q, d)
                acc = _fma(d, _splat(np.float32(1.0)), acc)
            total = _vsum(acc)
            for q in range(vectors * LANES, run):
                d0 = _slope(kind, y[o0 + q], p0, p1, scaled) * given[q]
                tmp[r0 + q] = d0
                total += d0
            bias[j] += total
            if keep:
                for q in range(run):
                    delta[o0 + q] = tmp[r0 + q]
        for b in range(blocks):  # 16 maps x 16 positions at a time (Note [Maps in lanes])
            t0 = (b * span + y0 * ow) * stride
            for m in range(stride // LANES):
                r0 = (b * stride + m * LANES) * cap
                for q in range(0, run, LANES):
                    _transpose16(tmp, r0 + q, cap, dg, t0 + q * stride + m * LANES, stride)


@numba.njit(nogil=True, fastmath=True, cache=True)
def correlate_grads(
    x, last, rows, w, dy, y, up, sens, vectors, start, stop, rg0, rg1, cgroups, chunk, form,
    parts, bias, delta, dg,
):  # pragma: no cover - compiled  # fmt: skip
    """Examples ``start <= n < stop``: their deltas formed into ``dg`` (when ``form``; else
    ``dg`` holds example ``start``'s) and the tap groups ``rg0 <= rg < rg1`` of eq. (7) added to
    ``parts`` (``(blocks, RG, CG, rows, 4, stride)`` flat). ``x`` is the batch flat, ``last``
    the last example with zeros after it."""
    o, oh, ow = y.shape[1], y.shape[2], y.shape[3]
    stride = LANES * vectors
    blocks = -(-o // stride)
    span = oh * ow + LANES  # a block's positions in dg, and the last row's spill
    size = x.size // y.shape[0]
    block_parts = rows.size * cgroups * COLUMNS * stride
    codes = (sens[0], sens[1], sens[2], sens[3], o, oh, ow, dy.shape[2], dy.shape[3])
    chunk_rows = max(1, min(oh, TMP_BYTES // (blocks * stride * ow * 4)))
    cap = -(-(chunk_rows * ow) // LANES) * LANES
    given = np.empty(cap, np.float32)
    tmp = np.zeros(blocks * stride * cap, np.float32)  # maps past O: zeros
    flat_dy, flat_y, flat_delta = dy.reshape(-1), y.reshape(-1), delta.reshape(-1)
    for n in range(start, stop):
        if form:
            _deltas(
                flat_dy, flat_y, n, up, codes, stride, chunk_rows, dg, flat_delta, bias, given, tmp
            )
        if n == y.shape[0] - 1:
            xb, base = last, 0
        else:
            xb, base = x, n * size
        for y0 in range(0, oh, chunk):
            y1 = min(oh, y0 + chunk)
            for b in range(blocks):
                if vectors == 1:
                    _taps_m1(
                        xb, rows, base, w, ow, y0, y1, rg0, rg1, cgroups, dg,
                        b * span * stride, parts, b * block_parts,
                    )  # fmt: skip
                else:
                    _taps_m2(
                        xb, rows, base, w, ow, y0, y1, rg0, rg1, cgroups, dg,
                        b * span * stride, parts, b * block_parts,
                    )  # fmt: skip


def backward(x, dy, y, sens, selection=None, up=1, need_delta=True):
    """The fused ``conv_backward`` on already padded float32 maps ``x``: ``(kernel_grad,
    bias_grad, delta or None)`` with ``delta = f'(u) o up(dy)`` (``sens``:
    ``_volume.sensitivity_code``), eq. (7) in conv2's orientation (Note [Maps in lanes])."""
    n, c, h, w = x.shape
    _, o, oh, ow = y.shape
    kh, kw = h - oh + 1, w - ow + 1
    vectors = 1 if o <= LANES else 2
    stride = LANES * vectors
    blocks = -(-o // stride)
    per_group = ROWS[vectors]
    cgroups = -(-kw // COLUMNS)
    triples = c * kh * cgroups  # (input map, kernel row, 4 columns): the kernels' "rows"
    rgroups = -(-triples // per_group)
    rows = np.zeros(rgroups * per_group, np.int64)
    starts = (np.arange(c)[:, None] * h + np.arange(kh)[None, :]) * w
    rows[:triples] = (starts[:, :, None] + COLUMNS * np.arange(cgroups)).reshape(-1)
    x = np.ascontiguousarray(x, np.float32)
    flat = x.reshape(-1)
    last = np.zeros(c * h * w + COLUMNS * cgroups, np.float32)
    last[: c * h * w] = x[n - 1].reshape(-1)
    dy = np.ascontiguousarray(dy, np.float32)
    y = np.ascontiguousarray(y, np.float32)
    delta = np.empty((n, o, oh, ow) if need_delta else (0, 0, 0, 0), np.float32)
    positions = oh * ow
    chunk = max(1, CHUNK_BYTES // (ow * stride * 4))
    size = blocks * rgroups * per_group * COLUMNS * stride

    def args(start, stop, rg0, rg1, form, part, bias, dg):
        return (
            flat, last, rows, w, dy, y, up, sens, vectors, start, stop, rg0, rg1, 1,
            chunk, form, part, bias, delta, dg,
        )  # fmt: skip

    macs = blocks * stride * rgroups * per_group * COLUMNS * positions
    parts: dict = {}
    sums: dict = {}
    if n == 1 and rgroups > 1 and macs >= SPLIT_MACS:
        dg = np.empty(blocks * (positions + LANES) * stride, np.float32)
        bias = np.zeros(o)
        part = np.zeros(size, np.float32)
        correlate_grads(*args(0, 1, 0, 0, True, part, bias, dg))  # the deltas only
        half = rgroups // 2

        def halves(index, rg0, rg1):  # disjoint tap groups: disjoint sums
            correlate_grads(*args(0, 1, rg0, rg1, False, part, bias, dg))

        _threads._pool.run(halves, [(0, half), (half, rgroups)])
        parts[0], sums[0] = part, bias
    else:

        def work(index, start, stop):
            dg = np.empty(blocks * (positions + LANES) * stride, np.float32)
            part = np.zeros(size, np.float32)
            bias = np.zeros(o)  # float64 sums
            correlate_grads(*args(start, stop, 0, rgroups, True, part, bias, dg))
            parts[index], sums[index] = part, bias

        _threads.run_direct(work, n, macs)
    summed = _threads.sum_in_order(parts).reshape(blocks, rgroups * per_group, COLUMNS, stride)
    corr = (
        summed[:, :triples]
        .reshape(blocks, c * kh, cgroups * COLUMNS, stride)
        .transpose(0, 3, 1, 2)
        .reshape(blocks * stride, c * kh, cgroups * COLUMNS)[:o, :, :kw]
    )
    grad = np.ascontiguousarray(corr.reshape(o, c, kh, kw)[:, :, ::-1, ::-1])  # conv2's
    if selection is not None:
        grad *= np.asarray(selection, dtype=bool)[:, :, None, None]
    bias_grad = _threads.sum_in_order(sums).astype(np.float32)
    return grad, bias_grad, delta if need_delta else None
