"""Convolutions as im2col + BLAS, the NumPy backend's path without Numba (and for the layers
the direct kernels leave out: LeNet-5's C5, more than 512 map pairs), and the BLAS products of
the fully connected layers.

Convolutions are im2col plus BLAS: a strided window view of the input is copied into a
GEMM-friendly scratch buffer (``_memory``), then one matrix product per example
(``np.matmul``), on batch slices run by the pool (``_threads``). What makes them fast:

* **No flips, no padding copies.** conv2 flips the kernel; instead of flipping it, the window
  view reads the input backwards (negative strides), so the kernel is used as it is, and the
  kernel gradient comes out in kernel order. :func:`conv_full` pads into a scratch buffer whose
  zero border is written once.
* **Wide columns** where rows are short (``Note [Wide columns]``), and the kernel gradient as
  compiled dot products where its result is tiny (``Note [Kernel gradient as dot products]``
  in ``_kernels``).
* **Little Python per call.** At batch 1 a step is dominated by interpreter overhead, so the
  views are built with the ``ndarray`` constructor rather than ``sliding_window_view``.

Results are the reference's up to float rounding (sums are taken in another order); partial
sums of the kernel gradient are added in slice order, so results do not depend on the thread
count or timing.
"""

from __future__ import annotations

import numpy as np

from anycnn_numpy import _jit
from anycnn_numpy._memory import scratch, zero_bordered
from anycnn_numpy._threads import run, sum_in_order


def windows(x: np.ndarray, kh: int, kw: int, oh: int, ow: int) -> np.ndarray:
    """A view of shape (N, C, kh, kw, oh, ow) with ``[n, c, a, b, y, x] = x[n, c, y+a', x+b']``,
    ``a' = kh-1-a``, ``b' = kw-1-b``: conv2's rot180, read as negative strides."""
    sn, sc, sh, sw = x.strides
    offset = (kh - 1) * sh + (kw - 1) * sw
    strides = (sn, sc, -sh, -sw, sh, sw)
    shape = (x.shape[0], x.shape[1], kh, kw, oh, ow)
    if x.flags.c_contiguous:
        return np.ndarray(shape, x.dtype, x, offset, strides)
    return np.lib.stride_tricks.as_strided(
        x[:, :, kh - 1 :, kw - 1 :], shape, strides, writeable=False
    )


def wide_windows(x: np.ndarray, kh: int, kw: int, oh: int) -> np.ndarray | None:
    """Windows as whole rows (``Note [Wide columns]``): a view of shape (N, C, kh, kw, span).

    ``[n, c, a, b, q] = x[n, c].flat[(kh-1-a) w + (kw-1-b) + q]`` for ``q < span = (oh-1) w + ow``:
    read as ``q = y w + x'``, it is the flipped window at output ``(y, x')`` for ``x' < ow`` and
    a few pixels of no interest for ``x' >= ow``. None when x's rows are not contiguous.

    Note [Wide columns]
    ~~~~~~~~~~~~~~~~~~~
    im2col copies, for every tap (c, a, b), an ``oh x ow`` window: rows of ``ow`` contiguous
    pixels, 8 for DLT's C3, and NumPy's copy loop pays per row. Computing the convolution on a
    grid as wide as the input (``oh x w``, the outputs at ``x' >= ow`` thrown away) makes every
    tap's window one contiguous run of ``span`` pixels of the input, so the copy moves runs of 92
    instead of 8. The GEMM grows by ``w / ow`` (1.5x for C3, 1.17x for C1), the copy shrinks
    3-4x, and copy + GEMM together shrink (bench/results/numpy-notes.md, "Wide columns").
    The last ``w - ow`` entries of a row of columns are never written: the buffer keeps them
    zero (:func:`_memory.zero_bordered`), so the GEMM never reads uninitialised memory.
    """
    n, c, h, w = x.shape
    item = x.itemsize
    sn, sc, sh, sw = x.strides
    if sw != item or sh != w * item:
        return None
    ow = w - kw + 1
    span = (oh - 1) * w + ow
    offset = ((kh - 1) * w + (kw - 1)) * item
    return np.ndarray((n, c, kh, kw, span), x.dtype, x, offset, (sn, sc, -sh, -sw, sw))


def wide_columns(wide: np.ndarray, start: int, stop: int, q: int) -> np.ndarray:
    """Examples ``start:stop`` of :func:`wide_windows` copied into a per-thread buffer of rows of
    ``q = oh w`` entries, whose last ``q - span`` entries stay zero (never written)."""
    _, c, kh, kw, span = wide.shape
    columns = zero_bordered("wide", (stop - start, c, kh, kw, q), wide.dtype, (span,))
    np.copyto(columns[..., :span], wide[start:stop])
    return columns


def use_wide(w: int, ow: int) -> bool:  # pragma: no mutate block
    """Wide columns pay when the rows are short and the GEMM grows little (Note [Wide columns]),
    for batches of more than one example (one LeNet-5 C3 example is faster plain: ibid.)."""
    return ow < w and ow <= 32 and 2 * w <= 3 * ow


def usable(a, b) -> bool:
    """Float arrays of one dtype: what the fast paths handle; the rest goes to the reference."""
    return a.dtype == b.dtype and a.dtype.kind == "f"


def masked(kernel: np.ndarray, selection) -> np.ndarray:
    if selection is None:
        return kernel
    return kernel * selection[:, :, None, None]


def gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-d arrays of one dtype, split over row slices of ``a`` on the pool's
    threads."""
    m, k = a.shape
    n = b.shape[1]
    out = np.empty((m, n), dtype=a.dtype)

    def work(index, start, stop):
        np.matmul(a[start:stop], b, out=out[start:stop])

    run(work, m, (k + n) * a.dtype.itemsize, k * n)
    return out


def gemm_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-d arrays, the inner dimension split into slices summed in order."""
    m, k = a.shape
    n = b.shape[1]
    partial = {}

    def work(index, start, stop):
        partial[index] = a[:, start:stop] @ b[start:stop]

    run(work, k, (m + n) * a.dtype.itemsize, m * n)
    return sum_in_order(partial)


def padded(x: np.ndarray, padding) -> np.ndarray:
    """``x`` with ``padding = (ph, pw)`` zero rows and columns on each side (a new array), or
    ``x`` itself without padding: for the paths that cannot pad as they read (Note [Zero
    padding] in anycnn.ops)."""
    ph, pw = padding
    if not (ph or pw):
        return x
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    out[:, :, ph : ph + h, pw : pw + w] = x
    return out


def with_bias(epilogue, bias):
    """``epilogue`` after adding ``bias`` (C_out,) to every map of the slice."""
    shift = bias[:, None, None]

    def biased(u):
        u += shift
        if epilogue is not None:
            epilogue(u)

    return biased


def conv_valid(x, kernel, selection, epilogue=None, padding=(0, 0)):
    """conv_valid with ``epilogue(out_slice)`` applied in place to every batch slice (a layer's
    bias and f, while the slice is in cache); pads a copy of ``x`` (Note [Zero padding] in
    anycnn.ops)."""
    ph, pw = padding
    n, c, h, w = x.shape
    o, _, kh, kw = kernel.shape
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    ck, p = c * kh * kw, oh * ow
    dtype = x.dtype
    # conv2 flips the kernel: the windows read the input backwards instead.
    weights = masked(kernel, selection).reshape(o, ck)
    if ph or pw:
        x = padded(x, padding)
        h, w = x.shape[2:]
    # the kernel covers the maps (LeNet-5's C5): one GEMM for the whole batch
    if p == 1:  # pragma: no mutate (a path to the same result)
        columns = scratch("columns", (n, c, kh, kw, 1, 1), dtype)
        np.copyto(columns, windows(x, kh, kw, oh, ow))
        out = gemm(columns.reshape(n, ck), weights.T).reshape(n, o, 1, 1)
        if epilogue is not None:
            epilogue(out)
        return out
    out = np.empty((n, o, oh, ow), dtype=dtype)
    wide = None
    if n > 1 and use_wide(w, ow):  # pragma: no mutate (a path to the same result)
        wide = wide_windows(x, kh, kw, oh)  # pragma: no mutate (a path to the same result)
    if wide is not None:  # Note [Wide columns]
        q = oh * w

        def work_wide(index, start, stop):
            m = stop - start
            columns = wide_columns(wide, start, stop, q)
            grid = scratch("grid", (m, o, oh, w), dtype)
            np.matmul(weights, columns.reshape(m, ck, q), out=grid.reshape(m, o, q))
            np.copyto(out[start:stop], grid[..., :ow])
            if epilogue is not None:
                epilogue(out[start:stop])

        run(work_wide, n, ck * q * dtype.itemsize, o * ck * q)
        return out
    view = windows(x, kh, kw, oh, ow)
    flat = out.reshape(n, o, p)

    def work(index, start, stop):
        m = stop - start
        columns = scratch("columns", (m, c, kh, kw, oh, ow), dtype)
        np.copyto(columns, view[start:stop])
        np.matmul(weights, columns.reshape(m, ck, p), out=flat[start:stop])
        if epilogue is not None:
            epilogue(out[start:stop])

    run(work, n, ck * p * dtype.itemsize, o * ck * p)
    return out


def conv_kernel_grad(x, delta, selection=None):
    """conv_kernel_grad of eq. (7) on maps ``x`` already padded."""
    n, c, h, w = x.shape
    _, o, dh, dw = delta.shape
    kh, kw = h - dh + 1, w - dw + 1
    ck = c * kh * kw
    dtype = x.dtype
    # Eq. (7): dE/dk[j,i] = rot180(sum_n conv2(x_i, rot180(delta_j), 'valid')); with the windows
    # read backwards, the columns of the forward pass give the gradient in kernel order.
    partial = {}
    # the paths (compiled dot products or BLAS, wide or plain columns) give the same result
    dots = _dots(o * ck, dh * dw)  # pragma: no mutate (a path to the same result)
    wide = None
    if n > 1 and dh * dw >= 16 and use_wide(w, dw):  # pragma: no mutate (a path to the same result)
        wide = wide_windows(x, kh, kw, dh)  # pragma: no mutate (a path to the same result)
    if wide is not None:  # Note [Wide columns]; the deltas get zeros at the unwanted outputs
        q = dh * w

        def work_wide(index, start, stop):
            m = stop - start
            columns = wide_columns(wide, start, stop, q)
            grid = zero_bordered("dgrid", (m, o, dh, w), dtype, (dw,))
            np.copyto(grid[..., :dw], delta[start:stop])
            # Note [Kernel gradient as dot products]
            if dots is not None:  # pragma: no mutate (a path to the same result)
                partial[index] = dots(grid.reshape(m, o, q), columns.reshape(m, ck, q))
                return
            columns = columns.reshape(m, ck, q).transpose(0, 2, 1)
            partial[index] = np.matmul(grid.reshape(m, o, q), columns).sum(axis=0)

        run(work_wide, n, (ck + o) * q * dtype.itemsize, o * ck * q)
    else:
        _kernel_grad_columns(x, delta, kh, kw, partial, dots)
    grad = sum_in_order(partial).reshape(o, c, kh, kw)
    if selection is not None:
        grad *= selection[:, :, None, None]
    return grad


def _dots(result_size: int, length: int):  # pragma: no mutate block
    """The compiled kernel-gradient sum when it is the faster way, else None (BLAS)."""
    if _jit.kernel_grad_sum is None or result_size > _jit.MAX_RESULT or length < _jit.MIN_LENGTH:
        return None
    return _jit.kernel_grad_sum


def _kernel_grad_columns(x, delta, kh, kw, partial, dots) -> None:
    """conv_kernel_grad's partial sums, one per batch slice, by plain im2col."""
    n, c, h, w = x.shape
    _, o, dh, dw = delta.shape
    ck, p = c * kh * kw, dh * dw
    dtype = x.dtype
    view = windows(x, kh, kw, dh, dw)
    deltas = delta.reshape(n, o, p)

    def work(index, start, stop):
        m = stop - start
        columns = scratch("columns", (m, c, kh, kw, dh, dw), dtype)
        np.copyto(columns, view[start:stop])
        columns = columns.reshape(m, ck, p)
        # Note [Kernel gradient as dot products]
        if dots is not None:  # pragma: no mutate (a path to the same result)
            partial[index] = dots(np.ascontiguousarray(deltas[start:stop]), columns)
        # an outer product (LeNet-5's C5 online): Note [Outer products]
        elif m == 1 and p == 1:  # pragma: no mutate (a path to the same result)
            partial[index] = np.multiply.outer(deltas[start, :, 0], columns[0, :, 0])
        elif m == 1:  # pragma: no mutate (a path to the same result)
            partial[index] = deltas[start] @ columns[0].T
        elif p >= 16:  # pragma: no mutate (a path to the same result)
            # One small GEMM per example, summed: OpenBLAS runs products this small without
            # its buffer lock, so the pool's threads run them side by side; one long-K GEMM
            # per slice is as fast alone but serialises across threads (no gain on 2 threads:
            # bench/results/numpy-notes.md, "Helpers on a busy machine").
            partial[index] = np.matmul(deltas[start:stop], columns.transpose(0, 2, 1)).sum(axis=0)
        else:  # maps of a few pixels (LeNet-5's C5): per-example products would be outer ones
            d = np.ascontiguousarray(deltas[start:stop].transpose(1, 0, 2)).reshape(o, m * p)
            cols = np.ascontiguousarray(columns.transpose(1, 0, 2)).reshape(ck, m * p)
            partial[index] = d @ cols.T

    run(work, n, (ck + o) * p * dtype.itemsize, o * ck * p)


def conv_full(delta, kernel, selection=None):
    """conv_full of 3.2.1 (no padding: the caller crops the 'full' result for a layer's)."""
    n, o, h, w = delta.shape
    _, c, kh, kw = kernel.shape
    oh, ow = h + kh - 1, w + kw - 1
    taps = kh * kw
    dtype = delta.dtype
    # g[n, i] = sum_j conv2(delta_j, rot180(k_ji), 'full'), i.e.
    #   g[i, Y, X] = sum_{a, b} sum_j k[j, i, a', b'] delta[j, Y - a, X - b]   (a' = kh-1-a, ...)
    # (the 'full' convolution of the notes reads the kernel backwards), in two halves:
    # * the sum over b and j is one GEMM on horizontally shifted copies of delta,
    #     D[(j, b), (y, X)] = delta[j, y, X - b] (zero outside),  (kw copies of delta)
    #     T[(i, a), (y, X)] = sum_{j, b} k[j, i, a', b'] D[(j, b), (y, X)];
    # * the sum over a is col2im over whole rows: g[i] = sum_a T[(i, a)] shifted down a rows,
    #   a flat offset of a * ow, so each plane is one contiguous copy.
    # That costs the exact convolution's multiplications (im2col of the zero-padded delta costs
    # (h+kh-1)/h times more) and moves kh planes of g's size where a spread over all kh*kw taps
    # moved kh*kw (bench/results/numpy-notes.md, "conv_full in two halves").
    weights = masked(kernel, selection)[:, :, ::-1, ::-1]
    # nothing to shift (LeNet-5's C5): g[i, a, b] = sum_j k' delta
    if h == 1 and w == 1:  # pragma: no mutate (a path to the same result)
        spread = np.ascontiguousarray(weights.transpose(1, 2, 3, 0)).reshape(c * taps, o)
        return gemm(delta.reshape(n, o), spread.T).reshape(n, c, kh, kw)
    weights = np.ascontiguousarray(weights.transpose(1, 2, 0, 3)).reshape(c * kh, o * kw)
    padded_w = w + 2 * (kw - 1)
    rows = h * ow
    size = oh * ow
    item = dtype.itemsize
    out = np.empty((n, c, oh, ow), dtype=dtype)
    flat = out.reshape(n, c, size)

    def work(index, start, stop):
        m = stop - start
        # delta with kw-1 zero columns either side; D reads it at column X - b + kw - 1.
        padded = zero_bordered("padded", (m, o, h, padded_w), dtype, (kw, w))
        padded[..., kw - 1 : kw - 1 + w] = delta[start:stop]
        pm, po, ph, _ = padded.strides
        shifts = np.ndarray(
            (m, o, kw, h, ow), dtype, padded, (kw - 1) * item, (pm, po, -item, ph, item)
        )
        columns = scratch("shifts", (m, o, kw, h, ow), dtype)
        np.copyto(columns, shifts)
        t = scratch("rows", (m, c, kh, rows), dtype)
        np.matmul(weights, columns.reshape(m, o * kw, rows), out=t.reshape(m, c * kh, rows))
        # Plane a goes to flat offset a * ow of a buffer of kh zeroed planes of g's size (the
        # zeros outside the copied rows are written once per buffer), summed by one reduction.
        planes = zero_bordered("planes", (m, c, kh, size), dtype, (kh, ow, rows))
        sm, sc, st, _ = planes.strides
        np.copyto(np.ndarray((m, c, kh, rows), dtype, planes, 0, (sm, sc, st + ow * item, item)), t)
        np.sum(planes, axis=2, out=flat[start:stop])

    run(work, n, (o * kw * rows + c * kh * (rows + size)) * item, c * kh * o * kw * rows)
    return out
