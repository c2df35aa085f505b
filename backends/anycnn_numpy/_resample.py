"""The NumPy backend's up- and down-sampling (3.1.1, 3.2.1): block sums and means, kron
up-sampling, decimation, and the fused gradients of a trainable subsampling layer.

With Numba, the block sums, the kron up-sampling and the subsampling layer's sums are compiled
loops, one call per batch slice without the GIL (``Note [Resampling kernels]`` in ``_jit``);
without it, strided NumPy slices. Both give the same bits (tested).
"""

from __future__ import annotations

import types

import numpy as np

from anycnn import ops as _reference
from anycnn_numpy import _jit, _threads
from anycnn_numpy._activation import (
    activate,
    compiled_activation,
    sensitivity,
    sensitivity_formula,
)
from anycnn_numpy._threads import run, sum_in_order


def kron_upsample(x, n):
    b, c, h, w = x.shape
    if n == 1:
        return x.copy()
    out = np.empty((b, c, h * n, w * n), dtype=x.dtype)
    kron_into = _jit.kron_into  # pragma: no mutate (a path to the same result)
    if kron_into is not None and _jit.compiled_layout(x):  # Note [Resampling kernels] in _kernels

        def work_compiled(index, start, stop):
            kron_into(x, n, out, start, stop)

        run(work_compiled, b, c * h * w * n * n * x.dtype.itemsize, 0)
        return out
    # Fill the first row of every n x n block column by column, then copy that row down:
    # strided writes along one axis at a time instead of a broadcast with a length-n inner loop.
    rows = out.reshape(b, c, h, n, w * n)

    def work(index, start, stop):
        first = rows[start:stop, :, :, 0, :]
        for j in range(n):
            first[..., j::n] = x[start:stop]
        for i in range(1, n):
            rows[start:stop, :, :, i, :] = first

    run(work, b, c * h * w * n * n * x.dtype.itemsize, 0)
    return out


def _block_sum(x, n, scale):
    b, c, h, w = x.shape
    # Sum the n rows of each block (contiguous rows), then the n columns (strided reads);
    # a reshape and a sum over two short axes is an order of magnitude slower in NumPy.
    out = np.empty((b, c, h // n, w // n), dtype=x.dtype)
    block_sum_into = _jit.block_sum_into  # pragma: no mutate (a path to the same result)
    if block_sum_into is not None and _jit.compiled_layout(
        x
    ):  # Note [Resampling kernels] in _kernels
        factor = x.dtype.type(1 if scale is None else scale)
        # the pool's work size and its compiled driver: how fast, not what (the same bits)
        item_bytes = c * h * w * x.dtype.itemsize  # pragma: no mutate
        driver = _jit.block_sum_sliced  # pragma: no mutate
        if driver is not None and b * item_bytes > _threads._SLICE_BYTES:  # pragma: no mutate
            # Note [Slices taken in compiled code] in _direct
            bounds = [start for start, _ in _threads.slices(b, item_bytes)] + [b]
            _threads.run_compiled(driver, (x, n, factor, out), bounds)
            return out

        def work_compiled(index, start, stop):
            block_sum_into(x, n, factor, out, start, stop)

        run(work_compiled, b, item_bytes, 0)
        return out
    rows = x.reshape(b, c, h // n, n, w)

    def work(index, start, stop):
        tall = np.add(rows[start:stop, :, :, 0, :], rows[start:stop, :, :, 1, :])
        for i in range(2, n):
            tall += rows[start:stop, :, :, i, :]
        part = out[start:stop]
        np.add(tall[..., 0::n], tall[..., 1::n], out=part)
        for j in range(2, n):
            part += tall[..., j::n]
        if scale is not None:
            part *= scale

    run(work, b, c * h * w * x.dtype.itemsize, 0)
    return out


def block_sum(x, n):
    if n == 1:
        return x.copy()
    return _block_sum(x, n, None)


def block_mean(x, n):
    if x.dtype.kind != "f":
        return _reference.block_mean(x, n)
    if n == 1:
        return x.copy()
    return _block_sum(x, n, 1.0 / (n * n))


def decimate(x, n):
    b, c, h, w = x.shape
    return np.ascontiguousarray(x[:, :, : h - h % n : n, : w - w % n : n])


def decimate_transpose(delta, n):
    b, c, h, w = delta.shape
    out = np.zeros((b, c, h * n, w * n), dtype=delta.dtype)
    out[:, :, ::n, ::n] = delta
    return out


def subsample_forward(x, n, mode, beta, bias, activation):
    """Fused forward pass of a trainable subsampling layer (``Note [Fused ops]`` in anycnn.ops):
    for float32 maps and a logistic or tanh f, one compiled job (Note [Fused subsampling] in
    _kernels: ``d``'s and ``beta d + b``'s bits, f to float32 rounding); otherwise the chain of
    this backend's ops (its bits)."""
    compiled = compiled_activation(activation, x.dtype)
    driver = _jit.subsample_forward_sliced
    if (
        driver is None
        or compiled is None
        or x.ndim != 4
        or mode not in ("sum", "mean")
        or n < 1
        or x.shape[2] % n
        or x.shape[3] % n
        or not _jit.compiled_layout(x)
        or beta.dtype != x.dtype
        or bias.dtype != x.dtype
        or beta.shape != (x.shape[1],)
        or bias.shape != (x.shape[1],)
    ):
        return _reference._subsample_forward(_CHAIN, x, n, mode, beta, bias, activation)
    b, c, h, w = x.shape
    d = np.empty((b, c, h // n, w // n), dtype=x.dtype)
    y = np.empty_like(d)
    scale = x.dtype.type(1 if mode == "sum" else 1.0 / (n * n))
    item_bytes = c * h * w * x.dtype.itemsize
    bounds = [start for start, _ in _threads.slices(b, item_bytes)] + [b]
    args = (x, n, scale, np.ascontiguousarray(beta), np.ascontiguousarray(bias), compiled, d, y)
    _threads.run_compiled(driver, args, bounds)
    return y, d


def subsample_backward(dy, y, d, beta, activation, need_input_grad=True):
    """Fused gradients of a trainable subsampling layer: ``delta = f'(u) o dy`` by the
    ``sensitivity`` op (the chain's bits), then the sums of ``delta o d`` and ``delta`` per map
    and ``beta delta`` in one compiled pass per batch slice (``beta delta`` the chain's bits,
    the sums to rounding: taken in another order)."""
    kernel = _jit.subsample_sums_into
    if (
        kernel is None
        or any(
            a.dtype != y.dtype or a.shape != y.shape or not _jit.compiled_layout(a) for a in (dy, d)
        )
        or beta.dtype != y.dtype
        or not _jit.compiled_layout(y)
    ):
        return _reference.subsample_backward(dy, y, d, beta, activation, need_input_grad)
    n, item_bytes = y.shape[0], 3 * y[0].size * y.itemsize
    driver, formula = _jit.subsample_backward_sliced, sensitivity_formula(activation, y)
    if (
        driver is not None
        and formula is not None
        and formula[0] != "identity"
        and n * item_bytes > _threads._SLICE_BYTES  # pragma: no mutate (the same bits)
    ):  # Note [Slices taken in compiled code] in _direct: f' and the sums, one job
        name, p0, p1, scaled = formula
        t = y.dtype.type
        sens = (_jit.direct_sensitivities[name], t(p0), t(p1), scaled)
        bounds = [start for start, _ in _threads.slices(n, item_bytes)] + [n]
        count = len(bounds) - 1
        delta = np.empty_like(y)
        out = np.empty_like(y) if need_input_grad else np.empty((0, 0, 0, 0), y.dtype)
        betas, biases = np.empty((count, y.shape[1])), np.empty((count, y.shape[1]))
        rows = (dy.reshape(n, -1), y.reshape(n, -1), sens, d, beta, delta.reshape(n, -1), out)
        _threads.run_compiled(driver, (*rows, betas, biases), bounds)
        grad_beta = sum_in_order({i: betas[i] for i in range(count)}).astype(y.dtype)
        grad_bias = sum_in_order({i: biases[i] for i in range(count)}).astype(y.dtype)
        return grad_beta, grad_bias, out if need_input_grad else None
    delta = sensitivity(dy, y, activation)
    if not (_jit.compiled_layout(delta) and delta.dtype == y.dtype):
        return _reference.subsample_backward(dy, y, d, beta, activation, need_input_grad)
    out = np.empty_like(y) if need_input_grad else np.empty((0, 0, 0, 0), y.dtype)
    betas, biases = {}, {}

    def work(index, start, stop):
        betas[index], biases[index] = kernel(delta, d, beta, out, start, stop)

    run(work, y.shape[0], 3 * y[0].size * y.itemsize, 0)
    grad_beta = sum_in_order(betas).astype(y.dtype)
    grad_bias = sum_in_order(biases).astype(y.dtype)
    return grad_beta, grad_bias, out if need_input_grad else None


#: The plain ops the chain of subsample_forward runs on (Note [Fused ops] in anycnn.ops).
_CHAIN = types.SimpleNamespace(block_sum=block_sum, block_mean=block_mean, activate=activate)
