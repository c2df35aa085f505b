"""The NumPy backend's fully connected layers (3.1.2, 3.2.2): BLAS products, split over the
pool's threads by rows, the weight gradient by slices of the batch summed in order.

Note [Outer products]
~~~~~~~~~~~~~~~~~~~~~
At batch 1 the weight gradient ``delta^T x`` is an outer product, a GEMM with an inner
dimension of 1, and OpenBLAS's SGEMM takes 67 us for LeNet-5's C5-sized one (120 x 400) where
NumPy's broadcast multiply takes 24 (one thread, CPU time; bench/results/numpy-notes.md,
"Outer products"). Each entry is one product either way (rounded once, times alpha = 1, plus
beta = 0), so both give the same bits: online training (batch 1) takes the multiply.
"""

from __future__ import annotations

import numpy as np

from anycnn import ops as _reference
from anycnn_numpy import _jit, _threads
from anycnn_numpy._activation import activate, compiled_activation, sensitivity
from anycnn_numpy._im2col import gemm, gemm_sum, masked, usable


def fully_connected(x, weight):
    if not usable(x, weight):
        return _reference.fully_connected(x, weight)
    return gemm(x, weight.T)


def fully_connected_weight_grad(x, delta):
    if not usable(x, delta):
        return _reference.fully_connected_weight_grad(x, delta)
    if x.shape[0] == 1:  # Note [Outer products]
        return np.multiply.outer(delta[0], x[0])
    return gemm_sum(delta.T, x)


def fully_connected_input_grad(delta, weight):
    if not usable(delta, weight):
        return _reference.fully_connected_input_grad(delta, weight)
    return gemm(delta, weight)


# Note [Convolutions that cover the map]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A convolution whose kernel is as large as its input maps (LeNet-5's C5: 16 maps of 5 x 5 in,
# 120 maps of 1 x 1 out) is a fully connected layer on the flattened maps: ``u = X K'^T`` with
# ``X`` the (N, C kh kw) inputs as they lie in memory and ``K'`` the (O, C kh kw) correlation
# weights (conv2's kernel flipped), eq. (7)'s kernel gradient is ``delta^T X`` flipped back, and
# 3.2.1's 'full' convolution of the 1 x 1 deltas, ``conv2(delta, rot180(k), 'full')``, is
# ``delta K'``. The
# im2col path computed the same GEMMs, but copied the windows first, ran the products on one
# thread (a single slice of scratch by its bytes, BLAS held to one thread) and the bias and f
# as NumPy passes: LeNet-5's C5 took 0.18 + 0.25 ms of a 1.9 ms step at batch 16 and
# 0.54 + 0.87 ms of an 11 ms one at batch 256 (bench/layers.py). Here the products read the
# arrays in place and the bias and a logistic or tanh f are applied by the direct kernels'
# compiled activation (Note [Compiled activations] in _direct) as the rows leave BLAS. They run
# on the calling thread with BLAS held to one thread: cut into two batch slices for the pool,
# the slices of a step ran one after the other (the second ~100 us after the first began, the
# helper not taking it: timestamps inside a LeNet-5 step at batch 256), and BLAS's own threads
# made C5 faster but the step 1.6x slower (they spin on the cores the next op's helpers need:
# Note [Small jobs alone] in _threads). One product, one thread: the bits do not depend on the
# thread count. conv2's flip is a copy: of the inputs or of the kernel, whichever holds
# fewer numbers (:func:`_flip_inputs`), the products then read the other as it is; at batch 1
# the kernel gradient is an outer product (Note [Outer products]). float32 only: float64 keeps
# the im2col path and its bits (.ci/bitexact.py).


def _flip_inputs(n: int, o: int) -> bool:  # pragma: no mutate block (speed only)
    """Whether conv2's flip is a copy of the N inputs rather than of the O kernels (Note
    [Convolutions that cover the map]): whichever is smaller. LeNet-5's C5 (O = 120) at batch
    16 and 64: 0.08 + 0.11 and 0.15 + 0.20 ms against 0.12 + 0.14 and 0.18 + 0.22 with the
    kernels flipped; at batch 256 0.45 + 0.58 against 0.36 + 0.53 (bench/layers.py, loaded)."""
    return n < o


def covers(x, kernel, padding=(0, 0)) -> bool:
    """Whether the convolution of maps ``x`` with ``kernel`` is one of Note [Convolutions that
    cover the map]: float32 4-d arrays, no padding, kernels the size of the C-contiguous maps."""
    return (  # the cheapest test that fails for other layers first (batch 1 pays each call)
        x.shape[1:] == kernel.shape[1:]
        and x.ndim == 4
        and x.dtype == np.float32
        and kernel.dtype == np.float32
        and not any(padding)
        and x.flags.c_contiguous
    )


def covered_backward(x, dy, y, up: int, padding=(0, 0)) -> bool:
    """Whether conv_backward's arrays are those of a convolution that covers ``x``'s maps
    (float32, one-pixel outputs, no up-sampling or padding)."""
    return (
        y.shape[2:] == (1, 1)
        and up == 1
        and x.dtype == dy.dtype == y.dtype == np.float32
        and x.ndim == 4
        and y.ndim == 4
        and dy.shape == y.shape
        and x.shape[0] == y.shape[0]
        and not any(padding)
        and x.flags.c_contiguous
    )


def covered_full(delta, kernel, padding=(0, 0)) -> bool:
    """Whether conv_full's deltas are one pixel (float32, no padding): ``delta K'``."""
    return (
        delta.shape[2:] == (1, 1)
        and delta.dtype == kernel.dtype == np.float32
        and delta.ndim == 4
        and kernel.ndim == 4
        and delta.shape[1] == kernel.shape[0]
        and not any(padding)
    )


def _one_thread(work, macs: int) -> None:
    """``work()`` on the calling thread, BLAS held to one thread above its own split size
    (Note [Convolutions that cover the map]: the pool's slices of these products ran one
    after the other)."""
    _threads._pool.run(lambda index, start, stop: work(), [(0, 1)], macs)


def _flipped_rows(a) -> np.ndarray:
    """(M, C, kh, kw) -> (M, C kh kw) with each map's taps in reverse order (conv2's rot180)."""
    m, c = a.shape[0], a.shape[1]
    return np.ascontiguousarray(a.reshape(m, c, -1)[:, :, ::-1]).reshape(m, -1)


def conv_covering(x, kernel, selection=None, bias=None, activation=None):
    """``f(conv_valid(x, kernel) + bias)`` as one GEMM (Note [Convolutions that cover the
    map]); no bias and the identity without them. (N, O, 1, 1)."""
    n, o = x.shape[0], kernel.shape[0]
    out = np.empty((n, o), np.float32)
    compiled = None if activation is None else compiled_activation(activation, out.dtype)
    run_activation = _jit.activate_run

    def work():
        if _flip_inputs(n, o):  # the inputs flipped: u^T = K X'^T
            weights = masked(kernel, selection).reshape(o, -1)
            np.copyto(out, (weights @ _flipped_rows(x).T).T)
        else:  # the kernel flipped: u = X K'^T
            np.matmul(x.reshape(n, -1), _flipped_rows(masked(kernel, selection)).T, out=out)
        if bias is not None:
            out[...] += bias
        if activation is None:
            return
        if compiled is not None and run_activation is not None:
            run_activation(out.reshape(-1), *compiled)
            return
        y = activate(out, activation)
        if y is not out:
            np.copyto(out, y)

    _one_thread(work, n * kernel.size)
    return out.reshape(n, o, 1, 1)


def conv_covering_backward(x, dy, y, activation, selection=None, need_delta=True):
    """conv_backward of Note [Convolutions that cover the map]: ``delta = f'(u) o dy`` (the
    ``sensitivity`` op's bits), ``(dE/dk, dE/db, delta or None)``, the kernel gradient
    ``delta^T X`` in conv2's orientation (X's taps flipped, or the product's)."""
    n, o = y.shape[0], y.shape[1]
    delta = np.ascontiguousarray(sensitivity(dy, y, activation)).reshape(n, o)
    shape = (o, *x.shape[1:])
    result = {}

    def work():
        if n == 1:  # pragma: no mutate (an outer product, Note [Outer products]: the same bits)
            grad = np.multiply.outer(delta[0], _flipped_rows(x)[0])
        elif _flip_inputs(n, o):
            grad = delta.T @ _flipped_rows(x)
        else:
            grad = _flipped_rows((delta.T @ x.reshape(n, -1)).reshape(shape))
        result["grad"] = grad.reshape(shape)

    _one_thread(work, n * o * x[0].size)
    grad = result["grad"]
    if selection is not None:
        grad *= selection[:, :, None, None]
    bias = np.sum(delta, axis=0)
    return grad, bias, delta.reshape(n, o, 1, 1) if need_delta else None


def conv_covering_full(delta, kernel, selection=None):
    """3.2.1's 'full' convolution of (N, O, 1, 1) deltas with kernels (O, C, kh, kw): ``delta K'``
    (Note [Convolutions that cover the map]), (N, C, kh, kw)."""
    n, o = delta.shape[0], kernel.shape[0]
    flat = np.ascontiguousarray(delta).reshape(n, o)
    result = {}

    def work():
        if _flip_inputs(n, o):  # the product's taps flipped
            product = flat @ masked(kernel, selection).reshape(o, -1)
            result["out"] = _flipped_rows(product.reshape(n, *kernel.shape[1:]))
        else:
            result["out"] = flat @ _flipped_rows(masked(kernel, selection))

    _one_thread(work, n * kernel.size)
    return result["out"].reshape(n, *kernel.shape[1:])
