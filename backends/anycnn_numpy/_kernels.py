"""The NumPy backend's compiled loops, through Numba: the kernel gradient as dot products, the
block sums and kron up-sampling, and the pool's spin-wait. (The direct convolutions and the
compiled f' are in ``_direct``.) Module-level functions, compiled lazily at their first
call for each signature and cached on disk by Numba; imported only through ``_jit``, which
leaves them out with ``ANYCNN_NUMBA=0`` or without Numba.

Note [Kernel gradient as dot products]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Eq. (7)'s kernel gradient is, per example, ``D @ C.T`` with ``D`` the layer's deltas
``(C_out, P)`` and ``C`` the im2col columns ``(C_in kh kw, P)``: a product whose *result* is tiny
(6 x 25 for DLT's and LeNet-5's C1) and whose inner dimension is long (672, 896). OpenBLAS's
SGEMM is blocked for large results: on a 6 x 25 result it pads the register tiles and repacks
both operands at every call, far from its peak. :func:`kernel_grad_sum` computes the same sums
as dot products along P, 3 delta rows x 2 columns at a time (six accumulators, each vectorised
along P by LLVM), which was 3-4x faster on the C1 shapes of one machine and 1.2-1.4x on the C3
ones of another, where BLAS won on C1 (bench/results/numpy-notes.md, "Kernel gradient as dot
products"; ``python bench/ops.py`` measures the float32 cases again, interleaved). With
Numba installed the direct convolutions (``_direct``) take these layers first: the kernel serves
the layers they do not take. Sums are taken in another order than BLAS's: results agree to
rounding.

Note [Resampling kernels]
~~~~~~~~~~~~~~~~~~~~~~~~~
The block sums of down-sampling and the kron up-sampling of 3.1.1 are a few additions or copies
per pixel; in NumPy they are strided slice operations, two to four calls per batch slice, each
short enough that threads mostly trade the GIL. One compiled loop per batch slice, run without
the GIL, does them in one pass, about twice as fast (bench/results/numpy-notes.md, "Resampling
kernels"). The sums are taken in the NumPy
op's order (no fastmath), so both paths give the same bits (tested).
"""

from __future__ import annotations

import platform

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.core.extending import intrinsic


@numba.njit(fastmath=True, nogil=True, cache=True)
def kernel_grad_sum(d, c):  # pragma: no cover - compiled; tested through conv_kernel_grad
    m, o, p = d.shape
    k = c.shape[1]
    out = np.zeros((o, k), d.dtype)
    zero = d.dtype.type(0)
    for n in range(m):
        i = 0
        while i < o:
            rows = min(3, o - i)
            j = 0
            while j < k:
                if rows == 3 and j + 1 < k:
                    d0, d1, d2 = d[n, i], d[n, i + 1], d[n, i + 2]
                    c0, c1 = c[n, j], c[n, j + 1]
                    a00 = a01 = a10 = a11 = a20 = a21 = zero
                    for t in range(p):
                        x0, x1 = c0[t], c1[t]
                        a00 += d0[t] * x0
                        a01 += d0[t] * x1
                        a10 += d1[t] * x0
                        a11 += d1[t] * x1
                        a20 += d2[t] * x0
                        a21 += d2[t] * x1
                    out[i, j] += a00
                    out[i, j + 1] += a01
                    out[i + 1, j] += a10
                    out[i + 1, j + 1] += a11
                    out[i + 2, j] += a20
                    out[i + 2, j + 1] += a21
                    j += 2
                else:
                    c0 = c[n, j]
                    for r in range(i, i + rows):
                        d0 = d[n, r]
                        a = zero
                        for t in range(p):
                            a += d0[t] * c0[t]
                        out[r, j] += a
                    j += 1
            i += rows
    return out


# Note [Resampling kernels]: no fastmath, so the sums are taken in exactly the order of
# the NumPy op they stand in for (the n rows of a block first, then its columns, then the
# scale); the kron up-sampling is a copy.
@numba.njit(nogil=True, cache=True)
def block_sum_into(x, n, scale, out, start, stop):  # pragma: no cover - compiled
    _, c, h, w = out.shape
    if n == 2:  # the common case, unrolled: LLVM vectorises it
        for b in range(start, stop):
            for ch in range(c):
                for i in range(h):
                    top, bottom, target = x[b, ch, 2 * i], x[b, ch, 2 * i + 1], out[b, ch, i]
                    for j in range(w):
                        left = top[2 * j] + bottom[2 * j]
                        right = top[2 * j + 1] + bottom[2 * j + 1]
                        target[j] = (left + right) * scale
        return out
    tall = np.empty(w * n, x.dtype)
    for b in range(start, stop):
        for ch in range(c):
            for i in range(h):
                top = x[b, ch, i * n]
                for j in range(w * n):
                    tall[j] = top[j]
                for r in range(1, n):
                    row = x[b, ch, i * n + r]
                    for j in range(w * n):
                        tall[j] += row[j]
                target = out[b, ch, i]
                for j in range(w):
                    s = tall[j * n]
                    for e in range(1, n):
                        s += tall[j * n + e]
                    target[j] = s * scale
    return out


@numba.njit(nogil=True, cache=True)
def kron_into(x, n, out, start, stop):  # pragma: no cover - compiled
    _, c, h, w = x.shape
    if n == 2:  # the common case, unrolled
        for b in range(start, stop):
            for ch in range(c):
                for i in range(h):
                    source, top, bottom = x[b, ch, i], out[b, ch, 2 * i], out[b, ch, 2 * i + 1]
                    for j in range(w):
                        v = source[j]
                        top[2 * j] = v
                        top[2 * j + 1] = v
                        bottom[2 * j] = v
                        bottom[2 * j + 1] = v
        return out
    for b in range(start, stop):
        for ch in range(c):
            for i in range(h):
                source = x[b, ch, i]
                first = out[b, ch, i * n]
                for j in range(w):
                    v = source[j]
                    for e in range(n):
                        first[j * n + e] = v
                for r in range(1, n):
                    row = out[b, ch, i * n + r]
                    for j in range(w * n):
                        row[j] = first[j]
    return out


# Note [Spinning helpers] in _threads: the spin-wait's two intrinsics. They are module globals,
# not closures, so that Numba's on-disk cache recognises the kernel that uses them in the next
# process (with closures every process added a cache entry).
_X86 = platform.machine().lower() in ("x86_64", "amd64")


@intrinsic
def _load_relaxed(typingctx, array, index):  # pragma: no cover - compiled
    """An atomic (relaxed) load of ``array[index]``: a plain one would be hoisted out of the spin
    loop by LLVM, which may assume no other thread writes the array."""

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]])
        return builder.load_atomic(pointer, "monotonic", array_type.dtype.bitwidth // 8)

    return array.dtype(array, index), codegen


@intrinsic
def _pause(typingctx):  # pragma: no cover - compiled
    """x86's PAUSE (a no-op elsewhere), which tells the core that it spins."""

    def codegen(context, builder, signature, args):
        if _X86:
            function_type = ir.FunctionType(ir.VoidType(), [])
            name = "llvm.x86.sse2.pause"
            builder.call(cgutils.get_or_insert_function(builder.module, function_type, name), [])
        return context.get_dummy_value()

    return types.void(), codegen


@numba.njit(nogil=True, cache=True)
def spin_while(flag, index, value, limit):  # pragma: no cover - compiled
    """Loops while ``flag[index] == value``, at most ``limit`` times, without the GIL; True when
    the value changed (Note [Spinning helpers] in _threads)."""
    for _ in range(limit):
        if _load_relaxed(flag, index) != value:
            return True
        _pause()
    return False


# Note [Slices taken in compiled code] in _direct: the block sums as a compiled job. The job
# record's functions come from _direct (Numba keys its on-disk cache on this file only: after
# editing them there, touch this file so that this driver is compiled again).
from anycnn_numpy._direct import (  # noqa: E402
    DONE,
    IDENTITY,
    NEXT,
    _activate_run_of,
    _close,
    _fetch_add,
    _join,
)


@numba.njit(nogil=True, cache=True)
def block_sum_sliced(x, n, scale, out, bounds, ctrl, board, role, limit):  # pragma: no cover
    """:func:`block_sum_into` over the slices ``bounds[i] : bounds[i + 1]`` this thread takes;
    False if the job was closed before it joined."""
    if not _join(ctrl, board, role):
        return False
    count = bounds.size - 1
    while True:
        i = _fetch_add(ctrl, NEXT, 1)
        if i >= count:
            break
        block_sum_into(x, n, scale, out, bounds[i], bounds[i + 1])
        _fetch_add(ctrl, DONE, 1)
    _close(ctrl, count, role, limit)
    return True


# Note [Fused subsampling]
# ~~~~~~~~~~~~~~~~~~~~~~~~
# A trainable subsampling layer's forward pass, ``d = down(x)``, ``y = f(beta d + b)``, was a
# compiled block-sum job and then three NumPy passes over the output (``d beta``, ``+ b``, f):
# 1.07 ms at LeNet-5's S2, batch 256, of which the block sums took 0.14 (bench/layers.py and a
# timing of the pieces). The fused op (``subsample_forward``, Note [Fused ops] in anycnn.ops)
# takes each batch slice through all of it while it is in cache: the block sums as
# :func:`block_sum_into` takes them (``d``'s bits), ``beta d + b`` as two roundings, no
# multiply-add contracted (the chain's ``u`` bit for bit), and f by the direct kernels'
# 16-lane activation (Note [Compiled activations] in _direct: float32, to within a few ulp of
# NumPy's). The slices are those of the block sums (the shape only): the same bits on any
# number of threads. Other dtypes and activations take the chain.
@numba.njit(nogil=True, cache=True)
def _affine_maps(x, n, scale, beta, bias, d, y, b):  # pragma: no cover - compiled
    """Example ``b``: ``d = scale * block sums of x`` (:func:`block_sum_into`'s order and bits)
    and ``y = d beta + bias`` per map, a product and then a sum (no fastmath: nothing
    contracted, the chain's bits), row by row while the row is in registers."""
    _, c, h, w = d.shape
    if n != 2:
        block_sum_into(x, n, scale, d, b, b + 1)
    for j in range(c):
        factor, shift = beta[j], bias[j]
        for i in range(h):
            sums, target = d[b, j, i], y[b, j, i]
            if n == 2:
                top, bottom = x[b, j, 2 * i], x[b, j, 2 * i + 1]
                for s in range(w):
                    left = top[2 * s] + bottom[2 * s]
                    right = top[2 * s + 1] + bottom[2 * s + 1]
                    v = (left + right) * scale
                    sums[s] = v
                    target[s] = v * factor + shift
            else:
                for s in range(w):
                    target[s] = sums[s] * factor + shift


@numba.njit(nogil=True, cache=True)
def subsample_forward_sliced(
    x, n, scale, beta, bias, act, d, y, bounds, ctrl, board, role, limit
):  # pragma: no cover - compiled
    """Note [Fused subsampling] over the slices ``bounds[i] : bounds[i + 1]`` this thread takes
    (Note [Slices taken in compiled code] in _direct): ``d = scale * block sums of x`` and
    ``y = f(beta d + bias)``, ``act = (kind, p0, p1)``; False if the job was closed before it
    joined."""
    if not _join(ctrl, board, role):
        return False
    count = bounds.size - 1
    kind, p0, p1 = act
    size = y.shape[1] * y.shape[2] * y.shape[3]
    while True:
        i = _fetch_add(ctrl, NEXT, 1)
        if i >= count:
            break
        start, stop = bounds[i], bounds[i + 1]
        for b in range(start, stop):  # one example's maps at a time: they stay in L1
            _affine_maps(x, n, scale, beta, bias, d, y, b)
            if kind != IDENTITY:
                _activate_run_of(y[b].reshape(size), kind, p0, p1)
        _fetch_add(ctrl, DONE, 1)
    _close(ctrl, count, role, limit)
    return True
