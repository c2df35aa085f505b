"""Direct convolution kernels of the NumPy backend, compiled by Numba (a regular dependency
where it has wheels; see ``_jit``).

Imported by ``_jit`` only when Numba is there; ``_conv`` and ``_resample`` call them through
``_jit``.

Note [Direct convolutions]
~~~~~~~~~~~~~~~~~~~~~~~~~~
im2col + GEMM spends most of its time moving data, not multiplying (on DLT's C1 the im2col copy
and the copy off the wide grid took more than the GEMM: bench/results/numpy-notes.md, "Direct
convolutions"), and the GEMMs of these layers are too small for BLAS to run near its peak. The
kernels here compute the three convolutions of the notes directly, as correlations, on a layout
that makes every inner loop long and contiguous:

* **Interleaved rows.** A chunk of ``m`` examples is copied into ``t[i, r, e, s]`` (map, row,
  example, column): for a fixed input map, row ``r`` of all ``m`` examples lies side by side, so
  the whole chunk of map ``i`` is one run of ``H * m * W`` numbers. An output pixel ``(y, x)``
  of example ``e`` sits at ``q = y (m W) + e W + x`` on a grid of the same layout, and tap
  ``(a, b)`` of the kernel reads ``t[i].flat[q + a (m W) + b]``: one offset for the whole grid.
  The grid's columns ``x >= ow`` are computed and thrown away (``W / ow`` more work: 1.17 for
  C1, 1.5 for C3), which is what buys the long runs (~2,700 numbers for C1 at ``m = 4``).
* **Five taps, two maps per pass.** The innermost loop runs along ``q`` and adds five taps of
  one kernel row for two output maps: five loads of ``t`` feed ten multiply-adds, and each
  grid entry is loaded and stored once per five taps. LLVM vectorises it (8 float32 lanes on
  AVX2/AVX-512 machines), near the core's peak (ibid.).
* **Chunks sized for L1.** ``m`` is chosen so that the two grid maps a pass updates take about
  12 KiB.
* **16 lanes in float32.** The float32 five-tap loops (forward and kernel gradient) are written
  on explicit 16-lane vectors (Note [Explicit vectors] in ``_vectors``: LLVM's vectoriser gives
  only 8 lanes on AVX-512 cores); float64 keeps the vectorised loops, and their bits.

``correlate_into`` is the forward 'valid' convolution (the kernel flipped into correlation
weights) and, on the deltas zero-padded by ``kh - 1``, ``kw - 1`` with the kernels transposed
(not flipped: conv2 of ``rot180(k)`` is a correlation with ``k``), the 'full' convolution of
3.2.1; there the zero columns between two examples serve both (no grid column is thrown away)
and the zero rows are not stored, the taps that would read them skipped. The same padding
serves a layer's ``padding`` (Note [Zero padding] in anycnn.ops): ``(ph, pw)`` in the forward
convolution, ``(kh - 1 - ph, kw - 1 - pw)`` in the 'full' one (its crop). ``correlate_grad`` is
eq. (7)'s kernel gradient as dot products along the same grid, delta copied onto it with zeros
in the thrown-away columns; it also forms delta itself, ``f'(u) o up(dy)``, map by map as it
copies it (the fused ``conv_backward``, Note [Deferred up-sampling]), and sums the bias gradient
there. Input-map selections are honoured by skipping pairs of maps outside ``M_j`` (the kernels
there are zero).
Sums are taken in another order than im2col + BLAS (and reassociated: ``fastmath``): results
agree with the reference to rounding, and depend on the batch slicing only, never on threads.
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from anycnn.backend.activations import KINDS

# The 16-lane float32 vectors (Note [Explicit vectors] in _vectors, shared with _volume's
# kernels): the cache of this file's kernels is stamped with _vectors.py's content too.
from anycnn_numpy._vectors import (
    LANES,
    cache_depends_on_vectors,
    float32x16,
    vadd,
    vfma,
    vload,
    vmul,
    vsplat,
    vstore,
    vsum,
    vtranspose16,
    vzeros,
)
from anycnn_numpy._vectors import VECTOR as _VECTOR
from anycnn_numpy._vectors import splat as _splat

cache_depends_on_vectors(__file__)


# Note [Compiled activations] in _direct, on 16 lanes: the same algorithms, the same float32
# constants, the same order of operations, the multiply-adds written as fused ones (where the
# scalar code lets LLVM contract them). No branches: both sides of tanh's are computed and one
# is selected per lane. NaN stays NaN (comparisons with NaN are false, so no clamp applies).
def _constant(value: float) -> ir.Constant:
    return ir.Constant(_VECTOR, [value] * LANES)


def _fma(builder, a, b, c):
    function_type = ir.FunctionType(_VECTOR, [_VECTOR] * 3)
    fma = cgutils.get_or_insert_function(builder.module, function_type, "llvm.fma.v16f32")
    return builder.call(fma, [a, b, c])


def _exp(builder, x):
    """``_exp32`` of every lane."""
    x = builder.select(builder.fcmp_ordered("<", x, _constant(-86.0)), _constant(-86.0), x)
    x = builder.select(builder.fcmp_ordered(">", x, _constant(88.8)), _constant(88.8), x)
    t = builder.fmul(x, _constant(1.4426950408889634))
    half = builder.select(
        builder.fcmp_ordered(">=", t, _constant(0.0)), _constant(0.5), _constant(-0.5)
    )
    integers = ir.VectorType(ir.IntType(32), LANES)
    k = builder.fptosi(builder.fadd(t, half), integers)
    kf = builder.sitofp(k, _VECTOR)
    r = _fma(builder, kf, _constant(-0.693359375), x)
    r = _fma(builder, kf, _constant(2.12194440e-4), r)
    p = _constant(1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        p = _fma(builder, p, r, _constant(c))
    e = builder.fadd(_fma(builder, builder.fmul(p, r), r, r), _constant(1.0))
    bits = builder.shl(
        builder.add(k, ir.Constant(integers, [126] * LANES)), ir.Constant(integers, [23] * LANES)
    )
    return builder.fmul(builder.fmul(e, builder.bitcast(bits, _VECTOR)), _constant(2.0))


@intrinsic
def vlogistic(typingctx, u, gain):  # pragma: no cover - compiled
    """``1 / (e^(-gain u) + 1)`` of every lane (``_logistic32``), ``gain`` a float32."""
    if not (u == float32x16 and gain == types.float32):
        return None

    def codegen(context, builder, signature, args):
        splat = _splat(builder, args[1])
        e = _exp(builder, builder.fmul(args[0], builder.fneg(splat)))
        return builder.fdiv(_constant(1.0), builder.fadd(e, _constant(1.0)))

    return float32x16(u, gain), codegen


@intrinsic
def vtanh(typingctx, z):  # pragma: no cover - compiled
    """``tanh`` of every lane (``_tanh32``, Cephes' tanhf)."""
    if z != float32x16:
        return None

    def codegen(context, builder, signature, args):
        z = args[0]
        fabs = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_VECTOR, [_VECTOR]), "llvm.fabs.v16f32"
        )
        az = builder.call(fabs, [z])
        zz = builder.fmul(z, z)
        p = _constant(-5.70498872745e-3)
        for c in (2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1):
            p = _fma(builder, p, zz, _constant(c))
        small = _fma(builder, builder.fmul(p, zz), z, z)
        e = _exp(builder, builder.fadd(az, az))
        big = builder.fsub(
            _constant(1.0), builder.fdiv(_constant(2.0), builder.fadd(e, _constant(1.0)))
        )
        signed = builder.select(
            builder.fcmp_ordered(">=", z, _constant(0.0)), big, builder.fneg(big)
        )
        return builder.select(builder.fcmp_ordered("<", az, _constant(0.625)), small, signed)

    return float32x16(z), codegen


#: Bytes of one grid map a pass updates (two per pass): see Note [Direct convolutions].
GRID_BYTES = 12 << 10


def chunk_size(rows: int, width: int, itemsize: int) -> int:
    """Examples per interleaved chunk: two grid maps of about GRID_BYTES."""
    return max(1, GRID_BYTES // (rows * width * itemsize))


@numba.njit(nogil=True, cache=True)
def _interleave(x, n0, m, pad, t):  # pragma: no cover - compiled
    """Examples ``n0 : n0 + m`` of ``x`` on interleaved rows, ``pad`` zero columns between them.

    ``t[i, r]`` is row ``r`` of map ``i`` of every example side by side, each preceded by ``pad``
    zeros and the last followed by ``pad`` more: example ``e``'s pixel ``(r, s)`` is at
    ``t[i, r, pad + e (w + pad) + s]``, and a row is ``m (w + pad) + pad`` long. The zeros between
    two examples are the right padding of one and the left padding of the next.
    """
    _, c, h, w = x.shape
    stride = w + pad
    rw = m * stride + pad
    zero = t.dtype.type(0)
    for i in range(c):
        for r in range(h):
            row = t[(i * h + r) * rw : (i * h + r + 1) * rw]
            for s in range(pad):
                row[s] = zero
            for e in range(m):
                target = row[pad + e * stride : (e + 1) * stride + pad]
                source = x[n0 + e, i, r]
                for s in range(w):
                    target[s] = source[s]
                for s in range(pad):
                    target[w + s] = zero


@numba.njit(nogil=True, fastmath=True, cache=True)
def _correlate_pair(t, plane, rw, wts, active, j0, j1, g0, g1, pad_h, h):  # pragma: no cover
    """``g[q] += sum_i sum_{a,b} wts[j, i, a, b] t[i plane + a rw + b + q]`` for maps j0, j1.

    ``t`` holds the ``h`` rows of data only: the zero rows of a ``pad_h`` padding above and below
    are not stored, and the grid rows ``y`` whose tap row ``y + a - pad_h`` would fall on them
    are skipped (for a given ``a`` the others are one run of ``q``)."""
    c, kh, kw = wts.shape[1], wts.shape[2], wts.shape[3]
    total = g0.shape[0]
    for i in range(c):
        if not (active[j0, i] or active[j1, i]):
            continue
        for a in range(kh):
            q0 = max(0, pad_h - a) * rw
            span = min((pad_h + h - a) * rw, total) - q0
            if span <= 0:
                continue
            base = i * plane + (a - pad_h) * rw + q0
            b = 0
            while b < kw:
                o = base + b
                w0 = wts[j0, i, a]
                w1 = wts[j1, i, a]
                if kw - b >= 5:
                    p0, p1, p2, p3, p4 = w0[b], w0[b + 1], w0[b + 2], w0[b + 3], w0[b + 4]
                    r0, r1, r2, r3, r4 = w1[b], w1[b + 1], w1[b + 2], w1[b + 3], w1[b + 4]
                    x0, x1, x2 = t[o : o + span], t[o + 1 : o + 1 + span], t[o + 2 : o + 2 + span]
                    x3, x4 = t[o + 3 : o + 3 + span], t[o + 4 : o + 4 + span]
                    h0, h1 = g0[q0 : q0 + span], g1[q0 : q0 + span]
                    for q in range(span):
                        e0, e1, e2, e3, e4 = x0[q], x1[q], x2[q], x3[q], x4[q]
                        h0[q] += p0 * e0 + p1 * e1 + p2 * e2 + p3 * e3 + p4 * e4
                        h1[q] += r0 * e0 + r1 * e1 + r2 * e2 + r3 * e3 + r4 * e4
                    b += 5
                elif kw - b >= 3:
                    p0, p1, p2 = w0[b], w0[b + 1], w0[b + 2]
                    r0, r1, r2 = w1[b], w1[b + 1], w1[b + 2]
                    x0, x1, x2 = t[o : o + span], t[o + 1 : o + 1 + span], t[o + 2 : o + 2 + span]
                    h0, h1 = g0[q0 : q0 + span], g1[q0 : q0 + span]
                    for q in range(span):
                        e0, e1, e2 = x0[q], x1[q], x2[q]
                        h0[q] += p0 * e0 + p1 * e1 + p2 * e2
                        h1[q] += r0 * e0 + r1 * e1 + r2 * e2
                    b += 3
                else:
                    p0, r0 = w0[b], w1[b]
                    x0, h0, h1 = t[o : o + span], g0[q0 : q0 + span], g1[q0 : q0 + span]
                    for q in range(span):
                        e0 = x0[q]
                        h0[q] += p0 * e0
                        h1[q] += r0 * e0
                    b += 1


@numba.njit(nogil=True, fastmath=True, cache=True)
def _correlate_pair32(t, plane, rw, wts, active, j0, j1, g0, g1, pad_h, h):  # pragma: no cover
    """:func:`_correlate_pair` for float32 on explicit 16-lane vectors (Note [Explicit
    vectors]): the five-tap blocks run 16 grid entries at a time, their last ``span % 16``
    entries and the three- and one-tap blocks as in :func:`_correlate_pair`."""
    c, kh, kw = wts.shape[1], wts.shape[2], wts.shape[3]
    total = g0.shape[0]
    for i in range(c):
        on0, on1 = active[j0, i], active[j1, i]
        if not (on0 or on1):
            continue
        # One map of the two takes input map i (a selection, or j0 == j1): its taps alone.
        single = j0 == j1 or not (on0 and on1)
        js, gs = (j0, g0) if on0 else (j1, g1)
        for a in range(kh):
            q0 = max(0, pad_h - a) * rw
            span = min((pad_h + h - a) * rw, total) - q0
            if span <= 0:
                continue
            base = i * plane + (a - pad_h) * rw + q0
            vend = span - span % LANES
            b = 0
            while b < kw:
                o = base + b
                w0 = wts[j0, i, a]
                w1 = wts[j1, i, a]
                if kw - b >= 5 and single:
                    ws = wts[js, i, a]
                    p0, p1, p2, p3, p4 = ws[b], ws[b + 1], ws[b + 2], ws[b + 3], ws[b + 4]
                    v0, v1, v2, v3, v4 = vsplat(p0), vsplat(p1), vsplat(p2), vsplat(p3), vsplat(p4)
                    for q in range(0, vend, LANES):
                        u0 = vload(gs, q0 + q)
                        u0 = vfma(v0, vload(t, o + q), u0)
                        u0 = vfma(v1, vload(t, o + 1 + q), u0)
                        u0 = vfma(v2, vload(t, o + 2 + q), u0)
                        u0 = vfma(v3, vload(t, o + 3 + q), u0)
                        u0 = vfma(v4, vload(t, o + 4 + q), u0)
                        vstore(gs, q0 + q, u0)
                    for q in range(vend, span):
                        e0, e1, e2 = t[o + q], t[o + 1 + q], t[o + 2 + q]
                        e3, e4 = t[o + 3 + q], t[o + 4 + q]
                        gs[q0 + q] += p0 * e0 + p1 * e1 + p2 * e2 + p3 * e3 + p4 * e4
                    b += 5
                elif kw - b >= 5:
                    p0, p1, p2, p3, p4 = w0[b], w0[b + 1], w0[b + 2], w0[b + 3], w0[b + 4]
                    r0, r1, r2, r3, r4 = w1[b], w1[b + 1], w1[b + 2], w1[b + 3], w1[b + 4]
                    v0, v1, v2, v3, v4 = vsplat(p0), vsplat(p1), vsplat(p2), vsplat(p3), vsplat(p4)
                    s0, s1, s2, s3, s4 = vsplat(r0), vsplat(r1), vsplat(r2), vsplat(r3), vsplat(r4)
                    for q in range(0, vend, LANES):
                        e0, e1, e2 = vload(t, o + q), vload(t, o + 1 + q), vload(t, o + 2 + q)
                        e3, e4 = vload(t, o + 3 + q), vload(t, o + 4 + q)
                        u0, u1 = vload(g0, q0 + q), vload(g1, q0 + q)
                        u0 = vfma(v0, e0, u0)
                        u1 = vfma(s0, e0, u1)
                        u0 = vfma(v1, e1, u0)
                        u1 = vfma(s1, e1, u1)
                        u0 = vfma(v2, e2, u0)
                        u1 = vfma(s2, e2, u1)
                        u0 = vfma(v3, e3, u0)
                        u1 = vfma(s3, e3, u1)
                        u0 = vfma(v4, e4, u0)
                        u1 = vfma(s4, e4, u1)
                        vstore(g0, q0 + q, u0)
                        vstore(g1, q0 + q, u1)
                    for q in range(vend, span):
                        e0, e1, e2 = t[o + q], t[o + 1 + q], t[o + 2 + q]
                        e3, e4 = t[o + 3 + q], t[o + 4 + q]
                        g0[q0 + q] += p0 * e0 + p1 * e1 + p2 * e2 + p3 * e3 + p4 * e4
                        g1[q0 + q] += r0 * e0 + r1 * e1 + r2 * e2 + r3 * e3 + r4 * e4
                    b += 5
                elif kw - b >= 3:
                    p0, p1, p2 = w0[b], w0[b + 1], w0[b + 2]
                    r0, r1, r2 = w1[b], w1[b + 1], w1[b + 2]
                    x0, x1, x2 = t[o : o + span], t[o + 1 : o + 1 + span], t[o + 2 : o + 2 + span]
                    h0, h1 = g0[q0 : q0 + span], g1[q0 : q0 + span]
                    for q in range(span):
                        e0, e1, e2 = x0[q], x1[q], x2[q]
                        h0[q] += p0 * e0 + p1 * e1 + p2 * e2
                        h1[q] += r0 * e0 + r1 * e1 + r2 * e2
                    b += 3
                else:
                    p0, r0 = w0[b], w1[b]
                    x0, h0, h1 = t[o : o + span], g0[q0 : q0 + span], g1[q0 : q0 + span]
                    for q in range(span):
                        e0 = x0[q]
                        h0[q] += p0 * e0
                        h1[q] += r0 * e0
                    b += 1


def _correlate_pair_of(t, plane, rw, wts, active, j0, j1, g0, g1, pad_h, h):
    """:func:`_correlate_pair`, or :func:`_correlate_pair32` for float32 (chosen when the
    caller is compiled, by the dtype)."""


@overload(_correlate_pair_of, jit_options={"nogil": True, "fastmath": True})
def _correlate_pair_of_dtype(t, plane, rw, wts, active, j0, j1, g0, g1, pad_h, h):
    if t.dtype == types.float32:
        return lambda t, plane, rw, wts, active, j0, j1, g0, g1, pad_h, h: _correlate_pair32(
            t, plane, rw, wts, active, j0, j1, g0, g1, pad_h, h
        )
    return lambda t, plane, rw, wts, active, j0, j1, g0, g1, pad_h, h: _correlate_pair(
        t, plane, rw, wts, active, j0, j1, g0, g1, pad_h, h
    )


# Note [Compiled activations]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~
# In NumPy, ``f(u + b)`` over a convolution's output is four or five more passes over maps that
# are the largest arrays of a step (DLT's C1 at batch 256: 3.5 MB). For float32 the direct
# convolutions apply the logistic and the scaled tanh as they copy each map off the grid, while
# it is in L1: ``exp`` by Cody and Waite's reduction ``x = k ln 2 + r`` with Cephes' degree-6
# polynomial for ``e^r`` and ``2^k`` built from its bits, and tanh by Cephes' odd polynomial for
# ``|z| < 0.625``, ``1 - 2 / (e^{2|z|} + 1)`` beyond; LLVM vectorises both (2.5x faster than
# NumPy's passes: bench/results/numpy-notes.md, "Compiled activations"). They are within a few
# ulp of NumPy's (tested: at most 4 ulp on values from -100 to 100, NaN stays NaN, ``e^x``
# overflows to the logistic's 0 exactly as NumPy's does), not its bits: the fused op computes its
# chain to float32 rounding. Float64 keeps NumPy's functions and their bits. No reassociation
# (Cody-Waite needs its two-part ln 2 kept apart) and no "no NaNs" assumption: only multiply-adds
# are contracted.
_ACTIVATION_MATH = {"contract"}


@numba.extending.intrinsic
def _float32_from_bits(typingctx, bits):  # pragma: no cover - compiled
    """The float32 whose IEEE bits are the int32 ``bits``."""
    from llvmlite import ir

    if bits != numba.types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return numba.types.float32(bits), codegen


@numba.njit(fastmath=_ACTIVATION_MATH, error_model="numpy", cache=True)
def _exp32(x):  # pragma: no cover - compiled
    """``e^x`` for float32 ``x`` (Note [Compiled activations]); inf above 88.72, NaN stays NaN."""
    x = np.float32(-86.0) if x < np.float32(-86.0) else x  # e^-86 + 1 == 1 in float32
    x = np.float32(88.8) if x > np.float32(88.8) else x  # past the overflow at 88.72
    t = x * np.float32(1.4426950408889634)
    k = np.int32(t + (np.float32(0.5) if t >= np.float32(0) else np.float32(-0.5)))
    kf = np.float32(k)
    r = x - kf * np.float32(0.693359375) - kf * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    e = p * r * r + r + np.float32(1.0)
    # 2^k as 2^(k-1) * 2, so that k = 128 (x in (88.38, 88.8]) gives inf, not a NaN pattern.
    return e * _float32_from_bits(np.int32((k + 126) << 23)) * np.float32(2.0)


@numba.njit(fastmath=_ACTIVATION_MATH, error_model="numpy", cache=True)
def _logistic32(u, gain):  # pragma: no cover - compiled
    """``1 / (1 + e^(-gain u))`` in Sigmoid.apply's order of operations."""
    return np.float32(1.0) / (_exp32(u * -gain) + np.float32(1.0))


@numba.njit(fastmath=_ACTIVATION_MATH, error_model="numpy", cache=True)
def _tanh32(z):  # pragma: no cover - compiled
    """``tanh(z)`` for float32 ``z`` (Cephes' tanhf)."""
    az = abs(z)
    zz = z * z
    small = (
        (
            (
                (np.float32(-5.70498872745e-3) * zz + np.float32(2.06390887954e-2)) * zz
                - np.float32(5.37397155531e-2)
            )
            * zz
            + np.float32(1.33314422036e-1)
        )
        * zz
        - np.float32(3.33332819422e-1)
    ) * zz * z + z
    big = np.float32(1.0) - np.float32(2.0) / (_exp32(az + az) + np.float32(1.0))
    if az < np.float32(0.625):
        return small
    return big if z >= np.float32(0) else -big


#: Activation codes of :func:`_extract`, :func:`correlate_grad` and :func:`sensitivity_into`: the
#: codes of the table of activations (Note [Activation descriptions] in
#: anycnn.backend.activations) for the map as it is, the logistic and the scaled tanh.
IDENTITY, LOGISTIC, TANH = (KINDS[name].code for name in ("identity", "logistic", "tanh"))


@numba.njit(nogil=True, fastmath=_ACTIVATION_MATH, error_model="numpy", cache=True)
def _extract(g, base, rw, bias, kind, p0, p1, out_map):  # pragma: no cover - compiled
    """``out_map[y, x] = g[base + y rw + x] + bias``: one example's map off the grid (``kind``,
    ``p0``, ``p1`` are :func:`_activate_run`'s, applied to a whole chunk afterwards)."""
    oh, ow = out_map.shape
    for y in range(oh):
        row = out_map[y]
        source = g[base + y * rw : base + y * rw + ow]
        for s in range(ow):
            row[s] = source[s] + bias


@numba.njit(nogil=True, fastmath=_ACTIVATION_MATH, error_model="numpy", cache=True)
def _activate_run(v, kind, p0, p1):  # pragma: no cover - compiled
    """``v = f(v)`` in place over a 1-d run, f the logistic of gain ``p0`` or ``p0 tanh(p1 u)``
    (float32 only), nothing for the identity. One long loop over a chunk's whole output (Note
    [Compiled activations]: map rows are 8-28 numbers, too short for the vectorised loop to pay)."""
    if kind == LOGISTIC:
        for s in range(v.size):
            v[s] = _logistic32(v[s], p0)
    elif kind == TANH:
        for s in range(v.size):
            v[s] = _tanh32(v[s] * p1) * p0


@numba.njit(nogil=True, fastmath=_ACTIVATION_MATH, error_model="numpy", cache=True)
def _activate_run32(v, kind, p0, p1):  # pragma: no cover - compiled
    """:func:`_activate_run` on 16-lane vectors (Note [Explicit vectors]: the same
    algorithms, lanes selected instead of branches), the last ``size % 16`` numbers one by
    one."""
    size = v.size
    vend = size - size % LANES
    if kind == LOGISTIC:
        for q in range(0, vend, LANES):
            vstore(v, q, vlogistic(vload(v, q), p0))
        for s in range(vend, size):
            v[s] = _logistic32(v[s], p0)
    elif kind == TANH:
        a, b = vsplat(p0), vsplat(p1)
        for q in range(0, vend, LANES):
            vstore(v, q, vmul(vtanh(vmul(vload(v, q), b)), a))
        for s in range(vend, size):
            v[s] = _tanh32(v[s] * p1) * p0


def _activate_run_of(v, kind, p0, p1):
    """:func:`_activate_run32` for float32 (the only dtype the kernels apply f for), else
    :func:`_activate_run`; chosen when the caller is compiled."""


@overload(_activate_run_of, jit_options={"nogil": True})
def _activate_run_of_dtype(v, kind, p0, p1):
    if v.dtype == types.float32:
        return lambda v, kind, p0, p1: _activate_run32(v, kind, p0, p1)
    return lambda v, kind, p0, p1: _activate_run(v, kind, p0, p1)


# Note [Examples on the lanes]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The interleaved rows of Note [Direct convolutions] put an example's row beside the next
# example's, so a 16-lane vector of the grid holds neighbouring columns: every grid column
# x >= ow is computed and thrown away (1.5x the work on DLT's C3, 12 -> 8 columns), four of the
# five tap loads of a pass straddle two cache lines, and the sums go through memory, a load and
# a store of the grid per five taps. A float32 chunk of 16 examples is laid out the other way
# round instead, ``t[i, r, s, e]`` (map, row, column, example: the example is the vector's lane),
# so a vector holds one pixel of 16 examples: a tap is one aligned load whatever its offset, no
# column is computed that is not kept, and a block of 4 output columns x 2 output maps keeps its
# eight sums in registers through every input map and tap (per tap: 4 loads and 2 broadcast
# weights feed 8 multiply-adds), leaving them once, at the end. The price is a transposition on
# the way in (each input number stored once into its lane) and on the way out (each output
# number read off its lane), which costs about what one tap does. Each example's sums are taken
# in its own lane in one order (input map, kernel row, kernel column), whatever the other lanes
# hold and whichever chunk it is in: the bits depend on the batch slicing only, as before (a
# chunk of fewer than lanes_min() examples, the end of a slice, runs on the interleaved rows).
# On the zoo models at batch 256 (/tmp A/B in one process, trees alternated, the fastest of
# several runs on a loaded machine; bench/results/issue16-speed.md has the step figures) DLT's
# C3 forward took 0.41 ms against 0.72 on the rows, its fused backward 0.64 against 0.97, its
# 'full' convolution 0.55 against 0.73, C1 forward 0.70 against 0.81 and backward 0.81 against
# 0.93. The 16 x 16 transpositions are what made the lanes pay: done a number at a time, each
# store to another cache line, they cost more than the sums saved (vtranspose16 in _vectors:
# 16 loads, 64 shuffles, 16 stores for 256 numbers). The kernel gradient sums 2 maps x 5 taps in
# ten registers over the output pixels, one load of delta per map and of x per tap, each lane
# over its own examples and chunks, the lanes added as a tree at the end; delta itself and its
# bias sums are formed example by example exactly as on the rows (their bits), then moved onto
# the lanes. :func:`on_lanes` says which convolutions take the lanes.
# Rows of a padding (the 'full' convolution's kh - 1) are not stored and their taps skipped;
# the columns of a padding are stored as zeros.

#: The fewest examples of a chunk on the lanes (Note [Examples on the lanes]); fewer run on the
#: interleaved rows, where a chunk of one example wastes nothing (on the lanes a chunk of 12
#: computes 16, what the rows' 1.33 throws away on maps that take the lanes).
LANES_MIN = 12


@numba.njit(nogil=True, cache=True)
def lanes_min(w, pad_w, ow):  # pragma: no cover - compiled
    """The fewest examples of a chunk on the lanes for maps of ``w`` columns (``ow`` kept): 9,
    more than half the lanes, where the interleaved rows throw away a quarter of their grid
    columns or more (``(w + pad_w) / ow >= 1.25``: DLT's C3, 12 for 8; LeNet-5's C3, 14 for 10),
    where a chunk of 9 on the lanes (a slice of 25 at batch 50: 16 + 9) beat the rows (DLT's C3
    at batch 50: backward 0.215 -> 0.174 ms, forward 0.168 -> 0.134) and one of 8 did not
    (LeNet-5's C3 forward at batch 16, two slices of 8: 0.196 ms on the rows, 0.217 on the
    lanes); else LANES_MIN (DLT's C1 forward at batch 50 took 0.21 ms with its 9 on the lanes
    against 0.17 on the rows)."""
    return 9 if 4 * (w + pad_w) >= 5 * ow else LANES_MIN


#: The most bytes of 16 examples' input and output maps on the lanes: an L2 (the lanes' buffers
#: are that big; larger ones were not measured).
LANES_BYTES = 1 << 20


@numba.njit(nogil=True, cache=True)
def on_lanes(c, h, w, pad_w, o, oh, ow, kh, kw):  # pragma: no cover - compiled
    """Whether a convolution's float32 chunks take the lanes (Note [Examples on the lanes]):
    kernels of up to 5 x 5 whose 16 examples' input maps (C, H, W + 2 pad_w) and output maps
    (O, oh, ow) take LANES_BYTES or less: the zoo models' layers (DLT's C1 and C3, LeNet-5's C1
    and C3, forward, 'full' and kernel gradient) and the like, where the lanes were measured
    faster. Larger kernels and maps keep the interleaved rows, whose timings the cost model
    (``_costs``) was fitted on."""
    size = c * h * (w + 2 * pad_w) + o * oh * ow
    return kh <= 5 and kw <= 5 and LANES * size * 4 <= LANES_BYTES


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def _lanes_in(x, n0, m, t, pad_w):  # pragma: no cover - compiled
    """Examples ``n0 : n0 + m`` of ``x`` (N, C, H, W) onto the lanes: ``t[((i H + r) wp + pad_w
    + s) LANES + e] = x[n0 + e, i, r, s]``, ``wp = W + 2 pad_w`` (Note [Examples on the lanes]).
    Row by row, the examples innermost: the 16 lanes of a pixel, one cache line, are filled
    together, and a chunk larger than L1 is not written line by line again for every example."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    lane_row = (w + 2 * pad_w) * LANES
    for i in range(c):
        for r in range(h):
            base = (i * h + r) * lane_row + pad_w * LANES
            for e in range(m):
                row, target = x[n0 + e, i, r], t[base + e :]
                for s in range(w):
                    target[s * LANES] = row[s]


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def _fill_lanes(source, at, stride, count, t):  # pragma: no cover - compiled
    """``t[p LANES + e] = source[at + e stride + p]`` for p < count, e < 16: 16 runs of
    ``count`` numbers (16 examples' maps, unpadded) onto the lanes, 16 x 16 blocks transposed
    in registers (:func:`vtranspose16`), the last ``count % 16`` numbers one by one."""
    end = count - count % LANES
    for p in range(0, end, LANES):
        vtranspose16(source, at + p, stride, t, p * LANES, LANES)
    for p in range(end, count):
        for e in range(LANES):
            t[p * LANES + e] = source[at + e * stride + p]


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def _drain_lanes(g, count, m, target, at, stride):  # pragma: no cover - compiled
    """``target[at + e stride + p] = g[p LANES + e]`` for p < count, e < m: lanes back to runs
    (the inverse of :func:`_fill_lanes`), by 16 x 16 blocks when all 16 lanes are examples."""
    end = count - count % LANES if m == LANES else 0
    for p in range(0, end, LANES):
        vtranspose16(g, p * LANES, LANES, target, at + p, stride)
    for e in range(m):
        lane, run = g[e:], target[at + e * stride :]
        for p in range(end, count):
            run[p] = lane[p * LANES]


@numba.njit(inline="always")
def _put(g, at, sums, bias):  # pragma: no cover - compiled
    """``g[at : at + 16] = sums + bias``: the bias last, as a separate ``u += b`` would add it."""
    vstore(g, at, vadd(sums, bias))


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def _lanes_into(x, pad_h, pad_w, wts, bias, active, kind, p0, p1, out, start, stop):
    """:func:`correlate_into` for float32 on chunks of 16 examples, one per lane (Note [Examples
    on the lanes]), from ``start`` while at least :func:`lanes_min` examples are left; returns
    the first example it did not compute."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    o, kh, kw = wts.shape[0], wts.shape[2], wts.shape[3]
    oh, ow = out.shape[2], out.shape[3]
    fewest = lanes_min(w, pad_w, ow)
    if stop - start < fewest or not on_lanes(c, h, w, pad_w, o, oh, ow, kh, kw):
        return start
    wp = w + 2 * pad_w
    lane_row = wp * LANES  # one stored row of a map: wp pixels of 16 examples
    t = np.zeros(c * h * lane_row, np.float32)  # the padding's columns stay zero
    size = o * oh * ow  # one example's output
    g = np.empty(size * LANES, np.float32)  # the chunk's output on the lanes
    source, flat = x.reshape(x.size), out.reshape(out.size)
    packed = np.empty(c * h * w * LANES if pad_w else 0, np.float32)
    n0 = start
    while stop - n0 >= fewest:
        m = min(LANES, stop - n0)
        if m == LANES and pad_w == 0:
            _fill_lanes(source, n0 * c * h * w, c * h * w, c * h * w, t)
        elif m == LANES:  # onto unpadded lanes, then row by row between the zero columns
            _fill_lanes(source, n0 * c * h * w, c * h * w, c * h * w, packed)
            for r in range(c * h):
                row, target = packed[r * w * LANES :], t[r * lane_row + pad_w * LANES :]
                for s in range(w * LANES):
                    target[s] = row[s]
        else:  # (the lanes past m keep the last chunk's numbers: their sums are not read)
            _lanes_in(x, n0, m, t, pad_w)
        for y in range(oh):
            a0, a1 = max(0, pad_h - y), min(kh, h + pad_h - y)  # taps on stored rows only
            for j in range(0, o, 2):
                j1 = min(j + 1, o - 1)
                bias0, bias1 = vsplat(bias[j]), vsplat(bias[j1])
                x0 = 0
                while x0 < ow:
                    at0, at1 = ((j * oh + y) * ow + x0) * LANES, ((j1 * oh + y) * ow + x0) * LANES
                    if ow - x0 >= 4:
                        s0 = s1 = s2 = s3 = vzeros()
                        u0 = u1 = u2 = u3 = vzeros()
                        for i in range(c):
                            if not (active[j, i] or active[j1, i]):
                                continue
                            for a in range(a0, a1):
                                q = (i * h + y + a - pad_h) * lane_row + x0 * LANES
                                wa, wb = wts[j, i, a], wts[j1, i, a]
                                for b in range(kw):
                                    p, r = vsplat(wa[b]), vsplat(wb[b])
                                    e0, e1 = vload(t, q), vload(t, q + LANES)
                                    e2, e3 = vload(t, q + 2 * LANES), vload(t, q + 3 * LANES)
                                    s0 = vfma(p, e0, s0)
                                    s1 = vfma(p, e1, s1)
                                    s2 = vfma(p, e2, s2)
                                    s3 = vfma(p, e3, s3)
                                    u0 = vfma(r, e0, u0)
                                    u1 = vfma(r, e1, u1)
                                    u2 = vfma(r, e2, u2)
                                    u3 = vfma(r, e3, u3)
                                    q += LANES
                        _put(g, at0, s0, bias0)
                        _put(g, at0 + LANES, s1, bias0)
                        _put(g, at0 + 2 * LANES, s2, bias0)
                        _put(g, at0 + 3 * LANES, s3, bias0)
                        if j1 != j:
                            _put(g, at1, u0, bias1)
                            _put(g, at1 + LANES, u1, bias1)
                            _put(g, at1 + 2 * LANES, u2, bias1)
                            _put(g, at1 + 3 * LANES, u3, bias1)
                        x0 += 4
                    elif ow - x0 >= 2:
                        s0 = s1 = u0 = u1 = vzeros()
                        for i in range(c):
                            if not (active[j, i] or active[j1, i]):
                                continue
                            for a in range(a0, a1):
                                q = (i * h + y + a - pad_h) * lane_row + x0 * LANES
                                wa, wb = wts[j, i, a], wts[j1, i, a]
                                for b in range(kw):
                                    p, r = vsplat(wa[b]), vsplat(wb[b])
                                    e0, e1 = vload(t, q), vload(t, q + LANES)
                                    s0 = vfma(p, e0, s0)
                                    s1 = vfma(p, e1, s1)
                                    u0 = vfma(r, e0, u0)
                                    u1 = vfma(r, e1, u1)
                                    q += LANES
                        _put(g, at0, s0, bias0)
                        _put(g, at0 + LANES, s1, bias0)
                        if j1 != j:
                            _put(g, at1, u0, bias1)
                            _put(g, at1 + LANES, u1, bias1)
                        x0 += 2
                    else:
                        s0 = u0 = vzeros()
                        for i in range(c):
                            if not (active[j, i] or active[j1, i]):
                                continue
                            for a in range(a0, a1):
                                q = (i * h + y + a - pad_h) * lane_row + x0 * LANES
                                wa, wb = wts[j, i, a], wts[j1, i, a]
                                for b in range(kw):
                                    e0 = vload(t, q)
                                    s0 = vfma(vsplat(wa[b]), e0, s0)
                                    u0 = vfma(vsplat(wb[b]), e0, u0)
                                    q += LANES
                        _put(g, at0, s0, bias0)
                        if j1 != j:
                            _put(g, at1, u0, bias1)
                        x0 += 1
        if kind != IDENTITY:  # f over the chunk's sums while they are in cache, on the lanes
            _activate_run32(g, kind, p0, p1)
        _drain_lanes(g, size, m, flat, n0 * size, size)
        n0 += m
    return n0


def _lanes_of(x, pad_h, pad_w, wts, bias, active, kind, p0, p1, out, start, stop):
    """:func:`_lanes_into` for float32; for float64 ``start`` (nothing done: the interleaved
    rows keep float64's bits). Chosen by the dtype when the caller is compiled."""


@overload(_lanes_of, jit_options={"nogil": True})
def _lanes_of_dtype(x, pad_h, pad_w, wts, bias, active, kind, p0, p1, out, start, stop):
    if x.dtype == types.float32:
        return lambda x, pad_h, pad_w, wts, bias, active, kind, p0, p1, out, start, stop: (
            _lanes_into(x, pad_h, pad_w, wts, bias, active, kind, p0, p1, out, start, stop)
        )
    return lambda x, pad_h, pad_w, wts, bias, active, kind, p0, p1, out, start, stop: start


@numba.njit(nogil=True, fastmath=True, cache=True)
def correlate_into(
    x, pad_h, pad_w, wts, bias, active, act, out, start, stop, chunk
):  # pragma: no cover - compiled
    """``out[n, j] = f(sum_i corr(pad(x[n, i]), wts[j, i], 'valid') + bias[j])``, start <= n < stop.

    ``x`` (N, C, H, W), ``wts`` (O, C, kh, kw) correlation weights, ``active`` (O, C) bool,
    ``out`` (N, O, H + 2 pad_h - kh + 1, W + 2 pad_w - kw + 1); all C-contiguous, one dtype.
    ``act = (kind, p0, p1)`` chooses f (:func:`_extract`; float32 only unless the identity).
    """
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    o = wts.shape[0]
    oh, ow = out.shape[2], out.shape[3]
    kind, p0, p1 = act
    # Note [Examples on the lanes]: float32 chunks of lanes_min() or more examples
    start = _lanes_of(x, pad_h, pad_w, wts, bias, active, kind, p0, p1, out, start, stop)
    if start >= stop:
        return out
    stride = w + pad_w  # of one example along an interleaved row
    # kw more: the last taps of the last map read up to kw - 1 numbers past its rows for grid
    # columns that are thrown away; they must stay inside the buffer.
    used = c * h * (chunk * stride + pad_w)
    t = np.empty(used + wts.shape[3], x.dtype)
    t[used:] = 0
    grid = np.empty((2, oh * (chunk * stride + pad_w)), x.dtype)
    for n0 in range(start, stop, chunk):
        m = min(chunk, stop - n0)
        _interleave(x, n0, m, pad_w, t)
        rw = m * stride + pad_w
        span = (oh - 1) * rw + (m - 1) * stride + ow
        for j in range(0, o, 2):
            j1 = min(j + 1, o - 1)
            g0, g1 = grid[0, :span], grid[1, :span]
            g0[:] = 0
            g1[:] = 0
            _correlate_pair_of(t, h * rw, rw, wts, active, j, j1, g0, g1, pad_h, h)
            for e in range(m):  # the bias last, as a separate ``u += b`` would add it
                _extract(g0, e * stride, rw, bias[j], kind, p0, p1, out[n0 + e, j])
                if j1 != j:
                    _extract(g1, e * stride, rw, bias[j1], kind, p0, p1, out[n0 + e, j1])
        if kind != IDENTITY:
            _activate_run_of(out[n0 : n0 + m].reshape(m * o * oh * ow), kind, p0, p1)
    return out


@numba.njit(nogil=True, fastmath=True, cache=True)
def _grad_pair(t, plane, rw, active, j0, j1, d0, d1, span, out):  # pragma: no cover
    """``out[j, i, a, b] += sum_q d_j[q] t[i plane + a rw + b + q]`` for j0, j1 (once if equal)."""
    c, kh, kw = out.shape[1], out.shape[2], out.shape[3]
    zero = t.dtype.type(0)
    for i in range(c):
        if not (active[j0, i] or active[j1, i]):
            continue
        for a in range(kh):
            base = i * plane + a * rw
            b = 0
            while b < kw:
                o = base + b
                k0, k1 = out[j0, i, a], out[j1, i, a]
                if kw - b >= 5:
                    x0, x1, x2 = t[o : o + span], t[o + 1 : o + 1 + span], t[o + 2 : o + 2 + span]
                    x3, x4 = t[o + 3 : o + 3 + span], t[o + 4 : o + 4 + span]
                    s0 = s1 = s2 = s3 = s4 = zero
                    u0 = u1 = u2 = u3 = u4 = zero
                    for q in range(span):
                        e0, e1, e2, e3, e4 = x0[q], x1[q], x2[q], x3[q], x4[q]
                        f, g = d0[q], d1[q]
                        s0 += f * e0
                        s1 += f * e1
                        s2 += f * e2
                        s3 += f * e3
                        s4 += f * e4
                        u0 += g * e0
                        u1 += g * e1
                        u2 += g * e2
                        u3 += g * e3
                        u4 += g * e4
                    k0[b] += s0
                    k0[b + 1] += s1
                    k0[b + 2] += s2
                    k0[b + 3] += s3
                    k0[b + 4] += s4
                    if j1 != j0:
                        k1[b] += u0
                        k1[b + 1] += u1
                        k1[b + 2] += u2
                        k1[b + 3] += u3
                        k1[b + 4] += u4
                    b += 5
                else:
                    x0 = t[o : o + span]
                    s0 = u0 = zero
                    for q in range(span):
                        e0 = x0[q]
                        s0 += d0[q] * e0
                        u0 += d1[q] * e0
                    k0[b] += s0
                    if j1 != j0:
                        k1[b] += u0
                    b += 1


@numba.njit(nogil=True, fastmath=True, cache=True)
def _grad_pair32(t, plane, rw, active, j0, j1, d0, d1, span, out):  # pragma: no cover
    """:func:`_grad_pair` for float32 on explicit 16-lane vectors (Note [Explicit
    vectors]): per lane partial sums over 16 grid entries at a time, summed as a tree at the end
    of each run, the last ``span % 16`` entries added one by one."""
    c, kh, kw = out.shape[1], out.shape[2], out.shape[3]
    zero = np.float32(0)
    vend = span - span % LANES
    for i in range(c):
        on0, on1 = active[j0, i], active[j1, i]
        if not (on0 or on1):
            continue
        # One map of the two takes input map i (a selection, or j0 == j1): its sums alone; the
        # other's stay zero (the selection zeroes them anyway).
        single = j0 == j1 or not (on0 and on1)
        js, ds = (j0, d0) if on0 else (j1, d1)
        for a in range(kh):
            base = i * plane + a * rw
            b = 0
            while b < kw:
                o = base + b
                k0, k1 = out[j0, i, a], out[j1, i, a]
                if kw - b >= 5 and single:
                    a0 = a1 = a2 = a3 = a4 = vzeros()
                    for q in range(0, vend, LANES):
                        f = vload(ds, q)
                        a0 = vfma(f, vload(t, o + q), a0)
                        a1 = vfma(f, vload(t, o + 1 + q), a1)
                        a2 = vfma(f, vload(t, o + 2 + q), a2)
                        a3 = vfma(f, vload(t, o + 3 + q), a3)
                        a4 = vfma(f, vload(t, o + 4 + q), a4)
                    s0, s1, s2, s3, s4 = vsum(a0), vsum(a1), vsum(a2), vsum(a3), vsum(a4)
                    for q in range(vend, span):
                        f = ds[q]
                        s0 += f * t[o + q]
                        s1 += f * t[o + 1 + q]
                        s2 += f * t[o + 2 + q]
                        s3 += f * t[o + 3 + q]
                        s4 += f * t[o + 4 + q]
                    ks = out[js, i, a]
                    ks[b] += s0
                    ks[b + 1] += s1
                    ks[b + 2] += s2
                    ks[b + 3] += s3
                    ks[b + 4] += s4
                    b += 5
                elif kw - b >= 5:
                    a0 = a1 = a2 = a3 = a4 = vzeros()
                    c0 = c1 = c2 = c3 = c4 = vzeros()
                    for q in range(0, vend, LANES):
                        e0, e1, e2 = vload(t, o + q), vload(t, o + 1 + q), vload(t, o + 2 + q)
                        e3, e4 = vload(t, o + 3 + q), vload(t, o + 4 + q)
                        f, g = vload(d0, q), vload(d1, q)
                        a0 = vfma(f, e0, a0)
                        a1 = vfma(f, e1, a1)
                        a2 = vfma(f, e2, a2)
                        a3 = vfma(f, e3, a3)
                        a4 = vfma(f, e4, a4)
                        c0 = vfma(g, e0, c0)
                        c1 = vfma(g, e1, c1)
                        c2 = vfma(g, e2, c2)
                        c3 = vfma(g, e3, c3)
                        c4 = vfma(g, e4, c4)
                    s0, s1, s2, s3, s4 = vsum(a0), vsum(a1), vsum(a2), vsum(a3), vsum(a4)
                    u0, u1, u2, u3, u4 = vsum(c0), vsum(c1), vsum(c2), vsum(c3), vsum(c4)
                    for q in range(vend, span):
                        e0, e1, e2 = t[o + q], t[o + 1 + q], t[o + 2 + q]
                        e3, e4 = t[o + 3 + q], t[o + 4 + q]
                        f, g = d0[q], d1[q]
                        s0 += f * e0
                        s1 += f * e1
                        s2 += f * e2
                        s3 += f * e3
                        s4 += f * e4
                        u0 += g * e0
                        u1 += g * e1
                        u2 += g * e2
                        u3 += g * e3
                        u4 += g * e4
                    k0[b] += s0
                    k0[b + 1] += s1
                    k0[b + 2] += s2
                    k0[b + 3] += s3
                    k0[b + 4] += s4
                    if j1 != j0:
                        k1[b] += u0
                        k1[b + 1] += u1
                        k1[b + 2] += u2
                        k1[b + 3] += u3
                        k1[b + 4] += u4
                    b += 5
                else:
                    x0 = t[o : o + span]
                    s0 = u0 = zero
                    for q in range(span):
                        e0 = x0[q]
                        s0 += d0[q] * e0
                        u0 += d1[q] * e0
                    if on0:
                        k0[b] += s0
                    if on1 and j1 != j0:
                        k1[b] += u0
                    b += 1


def _grad_pair_of(t, plane, rw, active, j0, j1, d0, d1, span, out):
    """:func:`_grad_pair`, or :func:`_grad_pair32` for float32 (chosen by the dtype when the
    caller is compiled)."""


@overload(_grad_pair_of, jit_options={"nogil": True, "fastmath": True})
def _grad_pair_of_dtype(t, plane, rw, active, j0, j1, d0, d1, span, out):
    if t.dtype == types.float32:
        return lambda t, plane, rw, active, j0, j1, d0, d1, span, out: _grad_pair32(
            t, plane, rw, active, j0, j1, d0, d1, span, out
        )
    return lambda t, plane, rw, active, j0, j1, d0, d1, span, out: _grad_pair(
        t, plane, rw, active, j0, j1, d0, d1, span, out
    )


@numba.njit(nogil=True, cache=True)
def _fit_upsampled(dy, up, maps, target, dh, dw):  # pragma: no cover - compiled
    """``target = fit(kron(dy_j, 1_{up x up}), (dh, dw)).ravel()`` for each of ``maps`` maps
    stacked along ``dy``'s rows: up-sampled, then cut at or zero-padded to ``dh x dw``."""
    sh, sw = dy.shape[0] // maps, dy.shape[1]
    zero = target.dtype.type(0)
    for j in range(maps):
        for r in range(dh):
            row = target[(j * dh + r) * dw : (j * dh + r + 1) * dw]
            if r // up >= sh:
                for s in range(dw):
                    row[s] = zero
                continue
            source = dy[j * sh + r // up]
            for s in range(dw):
                row[s] = source[s // up] if s // up < sw else zero


#: Sensitivity codes of :func:`correlate_grad` and :func:`sensitivity_into` (Note [Sensitivity
#: kernel]): ``delta = dy``, the logistic's ``p0 y (1 - y) dy`` and the scaled tanh's
#: ``((p0 - y)(y + p0)) p1 dy`` (``p0 = a``, ``p1 = b / a``); the table's codes.
GIVEN, LOGISTIC_SENSITIVITY, TANH_SENSITIVITY = IDENTITY, LOGISTIC, TANH


# Note [Sensitivity kernel]
# ~~~~~~~~~~~~~~~~~~~~~~~~~
# delta = f'(u) o dy from the saved output y (eqs. 3-4, section 3.4), one compiled pass where the
# reference takes one per step of the table's slope program (anycnn.backend.activations). The
# two functions below are the only place this backend's compiled code writes f': the logistic's
# (1 - y) y gain and the scaled tanh's ((a - y)(y + a))(b / a), in the table's order. They are
# inlined into their callers (Numba IR), so each caller's float flags apply: sensitivity_into
# has none (no reordering, no fused multiply-adds: the reference's bits), _sensitivity_map
# contracts multiply-adds (to rounding; these products have none to contract).
@numba.njit(inline="always")
def _logistic_slope(one, y, gain, scaled):  # pragma: no cover - compiled
    t = (one - y) * y
    if scaled:
        t = t * gain
    return t


@numba.njit(inline="always")
def _tanh_slope(y, a, b_over_a):  # pragma: no cover - compiled
    return ((a - y) * (y + a)) * b_over_a


@numba.njit(nogil=True, cache=True)
def sensitivity_into(dy, y, kind, p0, p1, scaled, out, start, stop):  # pragma: no cover
    """Rows ``start:stop`` of the 2-d ``out = f'(u) o dy`` (Note [Sensitivity kernel]) for the
    logistic (``kind`` LOGISTIC_SENSITIVITY, gain ``p0``) or the scaled tanh (``p0 = a``,
    ``p1 = b / a``)."""
    one = y.dtype.type(1)
    size = y.shape[1]
    for b in range(start, stop):
        d, v, target = dy[b], y[b], out[b]
        if kind == LOGISTIC_SENSITIVITY:
            if scaled:
                for i in range(size):
                    target[i] = _logistic_slope(one, v[i], p0, True) * d[i]
            else:
                for i in range(size):
                    target[i] = _logistic_slope(one, v[i], p0, False) * d[i]
        else:
            for i in range(size):
                target[i] = _tanh_slope(v[i], p0, p1) * d[i]
    return out


# Multiply-adds contracted, nothing reassociated. Without any fastmath flag here (under a caller
# with fastmath=True) LeNet-5's gradients came out with other bits from a fresh compile than
# from Numba's on-disk cache; with the flags spelled out they agree (tested).
@numba.njit(nogil=True, fastmath=_ACTIVATION_MATH, error_model="numpy", cache=True)
def _sensitivity_map(dy, up, y, maps, kind, p0, p1, scaled, target):  # pragma: no cover
    """``target = (f'(u) o up(dy)).ravel()`` for (rows, dw) maps from their output ``y``, in the
    order of operations of ``Activation.sensitivity`` (its multiply-adds fused: the same values
    to rounding); ``up(dy)`` is the kron up-sampling of 3.1.1 by ``up`` (``rows`` divisible by
    ``up``; ``maps`` maps stacked along the rows). When ``dy`` has not ``rows / up`` rows of
    ``dw / up`` (a subsampling layer's remainder), ``up(dy)`` is fitted to each map's size
    (cropped, or zeros past its end: ``anycnn.ops.fit_maps``). One loop per case over whole
    maps, each vectorised (row by row, the calls cost more than the arithmetic)."""
    dh, dw = y.shape
    if up == 1:
        source = dy.ravel()
        for s in range(dh * dw):
            target[s] = source[s]
    elif dy.shape[0] * up != dh or dy.shape[1] * up != dw:  # a subsampling remainder
        _fit_upsampled(dy, up, maps, target, dh // maps, dw)
    elif up == 2 and dh % 2 == 0 and dw % 2 == 0:  # two target rows per row of dy, unrolled
        for r in range(dh >> 1):
            top, source = target[2 * r * dw : (2 * r + 1) * dw], dy[r]
            bottom = target[(2 * r + 1) * dw : (2 * r + 2) * dw]
            for s in range(dw >> 1):
                v = source[s]
                top[2 * s] = v
                top[2 * s + 1] = v
                bottom[2 * s] = v
                bottom[2 * s + 1] = v
    else:
        for r in range(dh):
            row, source = target[r * dw : (r + 1) * dw], dy[r // up]
            for s in range(dw):
                row[s] = source[s // up]
    v = y.ravel()
    one = target.dtype.type(1)
    if kind == LOGISTIC_SENSITIVITY:
        if scaled:
            for s in range(dh * dw):
                target[s] = _logistic_slope(one, v[s], p0, True) * target[s]
        else:
            for s in range(dh * dw):
                target[s] = _logistic_slope(one, v[s], p0, False) * target[s]
    elif kind == TANH_SENSITIVITY:
        for s in range(dh * dw):
            target[s] = _tanh_slope(v[s], p0, p1) * target[s]


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def _grad_lanes(x, dy, y, sens, up, active, start, stop, delta_out, out, bias):
    """:func:`correlate_grad` for float32 on chunks of 16 examples, one per lane (Note [Examples
    on the lanes]), from ``start`` while at least :func:`lanes_min` examples are left: adds the
    kernel gradient into ``out`` and the bias sums into ``bias`` and returns the first example
    it did not take. delta is formed and its bias sums taken example by example as on the
    interleaved rows (the same bits); the kernel sums run per lane over the chunks (10 of them
    in registers: 2 maps x 5 taps, one aligned load of delta per map and of x per tap), the
    lanes added as a tree at the end."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    o, dh, dw = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = out.shape[2], out.shape[3]
    fewest = lanes_min(w, 0, dw)
    if stop - start < fewest or not on_lanes(c, h, w, 0, o, dh, dw, kh, kw):
        return start
    keep = delta_out.shape[0] > 0
    size = dh * dw
    lane_row = w * LANES
    t = np.zeros(c * h * lane_row, np.float32)
    d = np.zeros(o * size * LANES, np.float32)
    sums = np.zeros(o * c * kh * kw * LANES, np.float32)  # per lane, over the chunks
    runs = np.zeros(LANES * o * size, np.float32)  # 16 examples' delta, one run each
    kind, p0, p1, scaled = sens
    zero = np.float32(0)
    chw = c * h * w
    source = x.reshape(x.size)
    n0 = start
    while stop - n0 >= fewest:
        m = min(LANES, stop - n0)
        if m == LANES:
            _fill_lanes(source, n0 * chw, chw, chw, t)
        else:  # x's unused lanes: zeros, so that they add nothing (whatever delta's hold)
            t[:] = 0
            _lanes_in(x, n0, m, t, 0)
        for e in range(m):  # delta and its bias sums as on the interleaved rows (their bits)
            delta = runs[e * o * size : (e + 1) * o * size]
            _sensitivity_map(
                dy[n0 + e].reshape(o * dy.shape[2], dy.shape[3]),
                up,
                y[n0 + e].reshape(o * dh, dw),
                o,
                kind,
                p0,
                p1,
                scaled,
                delta,
            )
            if keep:
                target = delta_out[n0 + e].ravel()
                for s in range(o * size):
                    target[s] = delta[s]
            for j in range(o):
                part = delta[j * size : (j + 1) * size]
                total = zero
                for s in range(size):
                    total += part[s]
                bias[j] += total
        _fill_lanes(runs, 0, o * size, o * size, d)
        for j in range(0, o, 2):
            j1 = min(j + 1, o - 1)
            for i in range(c):
                on0, on1 = active[j, i], active[j1, i]
                if not (on0 or on1):
                    continue
                for a in range(kh):
                    b = 0
                    while b < kw:
                        width = 5 if kw - b >= 5 else 1
                        a0 = a1 = a2 = a3 = a4 = vzeros()
                        c0 = c1 = c2 = c3 = c4 = vzeros()
                        for yy in range(dh):
                            q = (i * h + yy + a) * lane_row + b * LANES
                            f = (j * size + yy * dw) * LANES
                            g = (j1 * size + yy * dw) * LANES
                            if width == 5:
                                for _ in range(dw):
                                    e0, e1 = vload(t, q), vload(t, q + LANES)
                                    e2, e3 = vload(t, q + 2 * LANES), vload(t, q + 3 * LANES)
                                    e4 = vload(t, q + 4 * LANES)
                                    u, v = vload(d, f), vload(d, g)
                                    a0 = vfma(u, e0, a0)
                                    a1 = vfma(u, e1, a1)
                                    a2 = vfma(u, e2, a2)
                                    a3 = vfma(u, e3, a3)
                                    a4 = vfma(u, e4, a4)
                                    c0 = vfma(v, e0, c0)
                                    c1 = vfma(v, e1, c1)
                                    c2 = vfma(v, e2, c2)
                                    c3 = vfma(v, e3, c3)
                                    c4 = vfma(v, e4, c4)
                                    q += LANES
                                    f += LANES
                                    g += LANES
                            else:
                                for _ in range(dw):
                                    e0 = vload(t, q)
                                    a0 = vfma(vload(d, f), e0, a0)
                                    c0 = vfma(vload(d, g), e0, c0)
                                    q += LANES
                                    f += LANES
                                    g += LANES
                        k = ((j * c + i) * kh + a) * kw + b
                        if on0:
                            vstore(sums, k * LANES, vadd(vload(sums, k * LANES), a0))
                            if width == 5:
                                at = (k + 1) * LANES
                                vstore(sums, at, vadd(vload(sums, at), a1))
                                vstore(sums, at + LANES, vadd(vload(sums, at + LANES), a2))
                                at += 2 * LANES
                                vstore(sums, at, vadd(vload(sums, at), a3))
                                vstore(sums, at + LANES, vadd(vload(sums, at + LANES), a4))
                        if on1 and j1 != j:
                            k = ((j1 * c + i) * kh + a) * kw + b
                            vstore(sums, k * LANES, vadd(vload(sums, k * LANES), c0))
                            if width == 5:
                                at = (k + 1) * LANES
                                vstore(sums, at, vadd(vload(sums, at), c1))
                                vstore(sums, at + LANES, vadd(vload(sums, at + LANES), c2))
                                at += 2 * LANES
                                vstore(sums, at, vadd(vload(sums, at), c3))
                                vstore(sums, at + LANES, vadd(vload(sums, at + LANES), c4))
                        b += width
        n0 += m
    flat = out.reshape(out.size)
    for k in range(out.size):
        flat[k] += vsum(vload(sums, k * LANES))
    return n0


def _grad_lanes_of(x, dy, y, sens, up, active, start, stop, delta_out, out, bias):
    """:func:`_grad_lanes` for float32; for float64 ``start`` (nothing done: the interleaved
    rows keep float64's bits). Chosen by the dtype when the caller is compiled."""


@overload(_grad_lanes_of, jit_options={"nogil": True})
def _grad_lanes_of_dtype(x, dy, y, sens, up, active, start, stop, delta_out, out, bias):
    if x.dtype == types.float32:
        return lambda x, dy, y, sens, up, active, start, stop, delta_out, out, bias: _grad_lanes(
            x, dy, y, sens, up, active, start, stop, delta_out, out, bias
        )
    return lambda x, dy, y, sens, up, active, start, stop, delta_out, out, bias: start


@numba.njit(nogil=True, fastmath=True, cache=True)
def correlate_grad(
    x, dy, y, sens, up, active, start, stop, chunk, delta_out
):  # pragma: no cover - compiled
    """The kernel and bias gradients of a convolution layer over examples ``start:stop``.

    ``delta = f'(u) o up(dy)`` (``sens = (kind, p0, p1, scaled)``, :func:`_sensitivity_map`;
    ``y`` the layer's output, unused for GIVEN; ``up(dy)`` the kron up-sampling by ``up``, so
    ``dy`` is (N, O, dh / up, dw / up), or floor / ceil of those with a subsampling remainder,
    up(dy) then cut or zero-padded to (dh, dw)) is formed map by map as it is copied onto the
    grid, and written to ``delta_out`` when that is (N, O, dh, dw) (pass a (0, 0, 0, 0) array
    otherwise).
    Returns ``g[j, i, a, b] = sum_n sum_{y,x} delta[n, j, y, x] x[n, i, y+a, x+b]`` (eq. (7)
    before its rot180, for pairs in ``active`` (O, C) only, zero elsewhere) and the bias
    gradient ``sum_n sum_{y,x} delta[n, j, y, x]`` (per map, then in float64). ``x`` is
    (N, C, H, W) and ``y`` (N, O, dh, dw); all C-contiguous, one dtype.
    """
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    o, dh, dw = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = h - dh + 1, w - dw + 1
    kind, p0, p1, scaled = sens
    keep = delta_out.shape[0] > 0
    out = np.zeros((o, c, kh, kw), x.dtype)
    bias = np.zeros(o, np.float64)  # of per-map float32 sums
    # Note [Examples on the lanes]: float32 chunks of lanes_min() or more examples
    start = _grad_lanes_of(x, dy, y, sens, up, active, start, stop, delta_out, out, bias)
    zero = x.dtype.type(0)
    delta = np.empty(o * dh * dw, x.dtype)
    t = np.empty(c * h * chunk * w, x.dtype)
    grid = np.zeros((o, dh * chunk * w), x.dtype)  # columns x >= dw stay zero...
    for n0 in range(start, stop, chunk):
        m = min(chunk, stop - n0)
        if m != chunk and n0 != start:  # ...unless a shorter last chunk moves them
            grid[:] = 0
        _interleave(x, n0, m, 0, t)
        rw = m * w
        span = (dh - 1) * rw + (m - 1) * w + dw
        for e in range(m):  # all maps of an example at once: (O dh, dw) rows, kron intact
            _sensitivity_map(
                dy[n0 + e].reshape(o * dy.shape[2], dy.shape[3]),
                up,
                y[n0 + e].reshape(o * dh, dw),
                o,
                kind,
                p0,
                p1,
                scaled,
                delta,
            )
            if keep:
                target = delta_out[n0 + e].ravel()
                for s in range(o * dh * dw):
                    target[s] = delta[s]
            for j in range(o):
                part = delta[j * dh * dw : (j + 1) * dh * dw]
                total = zero
                for s in range(dh * dw):
                    total += part[s]
                bias[j] += total
                for r in range(dh):
                    row = grid[j, r * rw + e * w : r * rw + e * w + dw]
                    for s in range(dw):
                        row[s] = part[r * dw + s]
        for j in range(0, o, 2):
            j1 = min(j + 1, o - 1)
            _grad_pair_of(t, h * rw, rw, active, j, j1, grid[j, :span], grid[j1, :span], span, out)
    return out, bias


@numba.njit(nogil=True, fastmath=True, error_model="numpy", cache=True)
def subsample_sums_into(delta, d, beta, out, start, stop):  # pragma: no cover - compiled
    """A trainable subsampling layer's gradients over examples ``start:stop`` (3.2.1) from its
    sensitivity ``delta``: writes ``out = beta delta`` when ``out`` is (N, C, h, w) (a
    (0, 0, 0, 0) array otherwise; a product, so the chain's bits) and returns the partial
    ``(sum delta o d, sum delta)`` per map. Each example's maps are one run of ``C h w``
    numbers: the sums go into per-pixel accumulators (no reduction inside the loops) and are
    reduced per map once, at the end (reassociated: the chain's sums to rounding).
    """
    c, size = delta.shape[1], delta.shape[2] * delta.shape[3]
    total = c * size
    keep = out.shape[0] > 0
    factor = np.empty(total, delta.dtype)  # beta per pixel
    for ch in range(c):
        factor[ch * size : (ch + 1) * size] = beta[ch]
    with_d, plain = np.zeros(total, delta.dtype), np.zeros(total, delta.dtype)
    for b in range(start, stop):
        e, down = delta[b].ravel(), d[b].ravel()
        for s in range(total):
            with_d[s] += e[s] * down[s]
            plain[s] += e[s]
        if keep:
            target = out[b].ravel()
            for s in range(total):
                target[s] = e[s] * factor[s]
    grad_beta, grad_bias = np.zeros(c), np.zeros(c)
    for ch in range(c):
        for s in range(ch * size, (ch + 1) * size):
            grad_beta[ch] += with_d[s]
            grad_bias[ch] += plain[s]
    return grad_beta, grad_bias


# Note [Slices taken in compiled code]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The pool (``_threads``) once ran every batch slice through Python: a helper that saw a job
# posted took the GIL, popped the job, and called the compiled kernel for its slice. On the
# 2-core VM a job of two slices then took ~75 us more than one slice (the helper started its
# slice ~45 us after the post, the caller noticed the end ~35 us after the last slice), and
# two slices of 25 us took longer than one thread doing both: a thread that waits for the GIL
# sleeps, and a sleeping thread takes tens of microseconds to wake on a virtual machine.
# Training steps at batch 50-64 ran no faster on two threads than on one.
#
# The drivers below take a job's slices in compiled code, without the GIL: ``ctrl[NEXT]`` is
# the next slice (an atomic fetch-and-add, so slices are still taken, not assigned: a caller
# whose helper has no core does every slice itself, Note [Helpers on a busy machine]).
# What remains is ordered so that no thread waits for the GIL while another holds it:
#
# * the caller marks ``board[0]`` with the job's number once it is inside its driver (the GIL
#   released); a helper spins without the GIL (:func:`helper_wait`) until it sees that mark,
#   so when it takes the GIL to call its own driver, the GIL is free;
# * a helper joins the job (``ctrl[JOINED]``) inside its driver; when no slice is left the
#   caller closes the job to late helpers and waits, spinning, until the slices are done and
#   every helper that joined is back in :func:`helper_wait` (``ctrl[BACK]``): so when the
#   caller takes the GIL to return, the GIL is free.
#
# The jobs so run: the direct convolutions (:func:`correlate_into_sliced`, forward and 'full';
# :func:`correlate_grad_sliced`, eq. (7) fused), a trainable subsampling layer's backward
# (:func:`subsample_backward_sliced`) and the block sums (``_kernels.block_sum_sliced``); the
# rest (NumPy and BLAS slices, an epilogue in Python, one example cut by maps) go through the
# pool's Python jobs as before.
#
# Which slice a thread takes changes nothing but timing: slices write disjoint outputs, and
# partial sums go to per-slice rows added in slice order afterwards (the same bits on any
# number of threads). Atomics and the pause live in this module beside the drivers, whose
# on-disk cache is keyed on this file (Note [Explicit vectors]).
NEXT, DONE, JOINED, BACK, SEQ, WAITED = range(6)
CTRL_SIZE = 8
ALONE, CALLER, HELPER = 0, 1, 2
_CLOSED = 1 << 40


def _item_pointer(context, builder, array_type, array, index):
    view = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, view, [index])


def _int64_vector(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.int64 and array.ndim == 1


@intrinsic
def _fetch_add(typingctx, array, index, value):  # pragma: no cover - compiled
    """``array[index] += value`` atomically (sequentially consistent); the value before."""
    if not (
        _int64_vector(array)
        and isinstance(index, types.Integer)
        and isinstance(value, types.Integer)
    ):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = _item_pointer(context, builder, signature.args[0], args[0], index)
        amount = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", pointer, amount, "seq_cst")

    return types.int64(array, index, value), codegen


@intrinsic
def _load_acquire(typingctx, array, index):  # pragma: no cover - compiled
    """An atomic load of ``array[index]`` (never hoisted out of a spin loop)."""
    if not (_int64_vector(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = _item_pointer(context, builder, signature.args[0], args[0], index)
        return builder.load_atomic(pointer, "acquire", 8)

    return types.int64(array, index), codegen


@intrinsic
def _store_release(typingctx, array, index, value):  # pragma: no cover - compiled
    """An atomic store ``array[index] = value``."""
    if not (
        _int64_vector(array)
        and isinstance(index, types.Integer)
        and isinstance(value, types.Integer)
    ):
        return None

    def codegen(context, builder, signature, args):
        index = context.cast(builder, args[1], signature.args[1], types.intp)
        pointer = _item_pointer(context, builder, signature.args[0], args[0], index)
        amount = context.cast(builder, args[2], signature.args[2], types.int64)
        builder.store_atomic(amount, pointer, "release", 8)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


_X86 = platform.machine().lower() in ("x86_64", "amd64")


@intrinsic
def _spin_pause(typingctx):  # pragma: no cover - compiled
    """x86's PAUSE (a no-op elsewhere): tells the core that it spins."""

    def codegen(context, builder, signature, args):
        if _X86:
            function_type = ir.FunctionType(ir.VoidType(), [])
            pause = cgutils.get_or_insert_function(
                builder.module, function_type, "llvm.x86.sse2.pause"
            )
            builder.call(pause, [])
        return context.get_dummy_value()

    return types.void(), codegen


@numba.njit(nogil=True, cache=True)
def helper_wait(board, seen, limit, last, joined):  # pragma: no cover - compiled
    """A helper between jobs: first counts itself back from the job ``last`` (its ``ctrl``) when
    it ``joined`` it, then spins until ``board[0]`` is no longer ``seen`` (a caller is inside
    its driver, or a job of Python slices was posted), at most ``limit`` turns; True if so."""
    if joined:
        _fetch_add(last, BACK, 1)
    for _ in range(limit):
        if _load_acquire(board, 0) != seen:
            return True
        _spin_pause()
    return _load_acquire(board, 0) != seen


@numba.njit(nogil=True, cache=True)
def _join(ctrl, board, role):  # pragma: no cover - compiled
    """Whether this thread takes part in the job: the caller always (and marks the board), a
    helper if the caller has not closed the job yet."""
    if role == CALLER:
        _store_release(board, 0, ctrl[SEQ])
        return True
    if role == HELPER:
        return _fetch_add(ctrl, JOINED, 1) >= 0
    return True


@numba.njit(nogil=True, cache=True)
def _close(ctrl, count, role, limit):  # pragma: no cover - compiled
    """The caller, no slice left: close the job to late helpers, then spin (at most ``limit``
    turns) until all ``count`` slices are done, and then (at most ``limit // 64`` turns more:
    a helper preempted on a busy machine must not hold the caller) until every helper that
    joined is back in :func:`helper_wait`; the turns spun in ``ctrl[WAITED]``."""
    if role != CALLER:
        return
    joined = _fetch_add(ctrl, JOINED, -_CLOSED)
    turns = 0
    while turns < limit and _load_acquire(ctrl, DONE) != count:
        _spin_pause()
        turns += 1
    if turns < limit:
        back = 0
        while back < limit // 64 and _load_acquire(ctrl, BACK) != joined:
            _spin_pause()
            back += 1
        turns += back
    ctrl[WAITED] = turns


@numba.njit(nogil=True, cache=True)
def _copy_into(target, source):  # pragma: no cover - compiled
    """``target[:] = source`` for 1-d arrays of one size, as a loop: Numba's array-to-array
    slice assignment checks the shapes and builds its error message (str.join, f-strings) in
    compiled code, several seconds of a cold compile per caller for a check this needs not."""
    for s in range(source.size):
        target[s] = source[s]


@numba.njit(nogil=True, cache=True)
def correlate_into_sliced(
    x, pad_h, pad_w, wts, bias, active, act, out, chunk, bounds, ctrl, board, role, limit
):  # pragma: no cover - compiled
    """:func:`correlate_into` over the slices ``bounds[i] : bounds[i + 1]`` this thread takes
    (Note [Slices taken in compiled code]); False if the job was closed before it joined."""
    if not _join(ctrl, board, role):
        return False
    count = bounds.size - 1
    while True:
        i = _fetch_add(ctrl, NEXT, 1)
        if i >= count:
            break
        correlate_into(
            x, pad_h, pad_w, wts, bias, active, act, out, bounds[i], bounds[i + 1], chunk
        )
        _fetch_add(ctrl, DONE, 1)
    _close(ctrl, count, role, limit)
    return True


@numba.njit(nogil=True, cache=True)
def correlate_grad_sliced(
    x, dy, y, sens, up, active, chunk, delta_out, grads, biases, bounds, ctrl, board, role, limit
):  # pragma: no cover - compiled
    """:func:`correlate_grad` over the slices this thread takes, slice ``i``'s kernel and bias
    gradients into ``grads[i]``, ``biases[i]`` (Note [Slices taken in compiled code])."""
    if not _join(ctrl, board, role):
        return False
    count = bounds.size - 1
    while True:
        i = _fetch_add(ctrl, NEXT, 1)
        if i >= count:
            break
        grad, bias = correlate_grad(
            x, dy, y, sens, up, active, bounds[i], bounds[i + 1], chunk, delta_out
        )
        _copy_into(grads[i].reshape(grad.size), grad.reshape(grad.size))
        _copy_into(biases[i], bias)
        _fetch_add(ctrl, DONE, 1)
    _close(ctrl, count, role, limit)
    return True


@numba.njit(nogil=True, cache=True)
def subsample_backward_sliced(
    dy, y, sens, d, beta, delta, out, betas, biases, bounds, ctrl, board, role, limit
):  # pragma: no cover - compiled
    """A trainable subsampling layer's backward pass over the slices this thread takes:
    ``delta = f'(u) o dy`` (:func:`sensitivity_into`, ``sens = (kind, p0, p1, scaled)``; ``dy``,
    ``y`` and ``delta`` as (N, C h w) rows), then :func:`subsample_sums_into` on the same slice,
    its sums into ``betas[i]``, ``biases[i]`` (Note [Slices taken in compiled code])."""
    if not _join(ctrl, board, role):
        return False
    count = bounds.size - 1
    kind, p0, p1, scaled = sens
    maps = delta.reshape(d.shape)
    while True:
        i = _fetch_add(ctrl, NEXT, 1)
        if i >= count:
            break
        start, stop = bounds[i], bounds[i + 1]
        sensitivity_into(dy, y, kind, p0, p1, scaled, delta, start, stop)
        grad_beta, grad_bias = subsample_sums_into(maps, d, beta, out, start, stop)
        _copy_into(betas[i], grad_beta)
        _copy_into(biases[i], grad_bias)
        _fetch_add(ctrl, DONE, 1)
    _close(ctrl, count, role, limit)
    return True
