"""Fast hot ops for CuPy: the same names, signatures and meaning as :mod:`anycnn.ops`.

Convolutions are im2col plus one GEMM (CuPy 14 has no cuDNN): an elementwise im2col kernel
writes the columns, zero padding included (the 'full' convolution never materialises a padded
copy), and its taps run backwards where MATLAB's conv2 flips the kernel, so neither the kernels
nor the kernel gradient are ever flipped or copied. The GEMM is cuBLAS (``cupy.matmul``), or the
elementwise GEMM while a CUDA graph is captured (Note [GEMM inside a graph] in _kernels.py).
Up- and down-sampling and decimation are one elementwise kernel each (section 3.4 of the notes).

Float32 and float64 CuPy arrays take the fast path; anything else (integers, say) goes to the
reference op, which runs on CuPy through array-api-compat.

UNTESTED ON GPU HARDWARE (see anycnn_cupy._kernels): the same code ran on the CPU through a NumPy
stand-in for CuPy and host-compiled kernel bodies, against anycnn.ops and SciPy.
"""

from __future__ import annotations

import types
from typing import Any

from anycnn import ops as _reference
from anycnn_cupy._guard import require_cupy

cupy = require_cupy(__name__)

from anycnn_cupy import _fused  # noqa: E402
from anycnn_cupy import _kernels as K  # noqa: E402 - after the guard, for its message
from anycnn_cupy._sources import supports_activation  # noqa: E402

Array = Any


def _masked(kernel: Any, selection: Any) -> Any:
    if selection is None:
        return kernel
    return kernel * selection[:, :, None, None].astype(kernel.dtype, copy=False)


def _fast(*arrays: Any) -> bool:
    return K.is_float(*arrays) and all(a.ndim == 4 for a in arrays)


def conv_valid(
    x: Array, kernel: Array, selection: Array | None = None, padding: tuple[int, int] = (0, 0)
) -> Array:
    """``u[n, j] = sum_{i in M_j} conv2(x[n, i], kernel[j, i], 'valid')`` (section 3.1):
    im2col with flipped taps, then one batched GEMM with the kernels as stored. ``padding``
    is im2col's (Note [Zero padding] in anycnn.ops): no padded copy."""
    if not _fast(x, kernel):
        return _reference.conv_valid(x, kernel, selection, padding)
    n, c_in, h, w = x.shape
    c_out, _, kh, kw = kernel.shape
    ph, pw = padding
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    cols = K.im2col(x, kh, kw, oh, ow, pad=(ph, pw), flip=True)  # (N, C_in kh kw, oh ow)
    weights = _masked(kernel, selection).reshape(c_out, c_in * kh * kw)
    return K.matmul(weights, cols).reshape(n, c_out, oh, ow)


def conv_valid_activate(
    x: Array,
    kernel: Array,
    bias: Array,
    activation: Any,
    selection: Array | None = None,
    padding: tuple[int, int] = (0, 0),
) -> Array:
    """``f(conv_valid(x, kernel) + bias)`` (``Note [Fused ops]`` in anycnn.ops): the GEMM, then
    one elementwise kernel for the bias and f (``anycnn_cupy._fused.bias_activation``) instead of
    the chain's separate passes. Activations without a fused kernel take the chain."""
    u = conv_valid(x, kernel, selection, padding)
    if _fast(x, kernel) and bias.dtype == u.dtype and supports_activation(activation):
        return _fused.bias_activation(u, bias, activation=activation)
    u += bias[:, None, None]
    return activate(u, activation)


def activate(u: Array, activation: Any) -> Array:
    """``f(u)`` (``Note [Fused ops]`` in anycnn.ops) in one elementwise kernel
    (``anycnn_cupy._fused.bias_activation`` without a bias); activations the table of activations
    does not describe take their own ``apply``."""
    if K.is_float(u) and u.ndim >= 2 and supports_activation(activation):
        return _fused.bias_activation(u, None, activation=activation)
    return _reference.activate(u, activation)


def sensitivity(dy: Array, y: Array, activation: Any) -> Array:
    """``f'(u) o dy`` (``Note [Fused ops]`` in anycnn.ops) in one elementwise kernel
    (``anycnn_cupy._fused.sensitivity``) instead of the activation's separate passes.
    Activations without a fused kernel, and mixed dtypes or shapes, take the chain."""
    if (
        K.is_float(dy, y)
        and dy.dtype == y.dtype
        and tuple(dy.shape) == tuple(y.shape)
        and supports_activation(activation)
    ):
        return _fused.sensitivity(dy, y, activation=activation)
    return _reference.sensitivity(dy, y, activation)


def conv_backward(
    x: Array,
    dy: Array,
    y: Array,
    activation: Any,
    selection: Array | None = None,
    up: int = 1,
    need_delta: bool = True,
    padding: tuple[int, int] = (0, 0),
) -> tuple[Array, Array, Array | None]:
    """The gradients of a convolution layer (``Note [Fused ops]`` in anycnn.ops): ``delta =
    f'(u) o up(dy)`` in one elementwise kernel (``anycnn_cupy._fused.upsampled_sensitivity``,
    Note [Deferred up-sampling] in anycnn.layers.base), eq. (7) as one GEMM, the bias sums. A
    subsampling remainder, an activation without a kernel or other dtypes take the chain."""
    if (
        _fast(x, dy, y)
        and x.dtype == dy.dtype == y.dtype
        and supports_activation(activation)
        and tuple(y.shape) == (*dy.shape[:2], dy.shape[2] * up, dy.shape[3] * up)
    ):
        if up > 1:
            delta = _fused.upsampled_sensitivity(dy, y, up, activation=activation)
        else:
            delta = _fused.sensitivity(dy, y, activation=activation)
        grad = conv_kernel_grad(x, delta, selection, padding)
        return grad, delta.sum(axis=(0, 2, 3)), delta if need_delta else None
    return _CHAIN["conv_backward"](x, dy, y, activation, selection, up, need_delta, padding)


def subsample_forward(
    x: Array, n: int, mode: str, beta: Array, bias: Array, activation: Any
) -> tuple[Array, Array]:
    """The forward pass of a trainable subsampling layer (section 3.2; ``Note [Fused ops]`` in
    anycnn.ops): the chain of this backend's own block-sum kernel, ``beta d + b`` and
    :func:`activate` (no kernel of its own yet)."""
    return _CHAIN["subsample_forward"](x, n, mode, beta, bias, activation)


def subsample_backward(
    dy: Array, y: Array, d: Array, beta: Array, activation: Any, need_input_grad: bool = True
) -> tuple[Array, Array, Array | None]:
    """The gradients of a trainable subsampling layer (3.2.1; ``Note [Fused ops]`` in
    anycnn.ops): ``delta`` and ``beta delta`` in one elementwise kernel
    (``anycnn_cupy._fused.subsample_sensitivity``), then the two sums per map."""
    if (
        _fast(dy, y, d)
        and dy.dtype == y.dtype == d.dtype == beta.dtype
        and tuple(dy.shape) == tuple(y.shape) == tuple(d.shape)
        and tuple(beta.shape) == (y.shape[1],)
        and supports_activation(activation)
    ):
        delta, scaled = _fused.subsample_sensitivity(dy, y, beta, activation=activation)
        grad_beta = (delta * d).sum(axis=(0, 2, 3))
        return grad_beta, delta.sum(axis=(0, 2, 3)), scaled if need_input_grad else None
    return _CHAIN["subsample_backward"](dy, y, d, beta, activation, need_input_grad)


def conv_full(
    delta: Array, kernel: Array, selection: Array | None = None, padding: tuple[int, int] = (0, 0)
) -> Array:
    """``g[n, i] = sum_j conv2(delta[n, j], rot180(kernel[j, i]), 'full')`` (section 3.2.1):
    im2col of delta zero-padded by (kh - 1, kw - 1) inside the kernel, then one batched GEMM;
    a layer's ``padding`` crops it (Note [Zero padding] in anycnn.ops), i.e. pads delta by
    (ph, pw) less (a negative im2col padding crops: its bounds check does it)."""
    if not _fast(delta, kernel):
        return _reference.conv_full(delta, kernel, selection, padding)
    n, c_out, h, w = delta.shape
    _, c_in, kh, kw = kernel.shape
    ph, pw = padding
    oh, ow = h + kh - 1 - 2 * ph, w + kw - 1 - 2 * pw
    cols = K.im2col(delta, kh, kw, oh, ow, pad=(kh - 1 - ph, kw - 1 - pw))  # (N, O kh kw, oh ow)
    weights = cupy.ascontiguousarray(_masked(kernel, selection).transpose(1, 0, 2, 3))
    return K.matmul(weights.reshape(c_in, c_out * kh * kw), cols).reshape(n, c_in, oh, ow)


def conv_kernel_grad(
    x: Array, delta: Array, selection: Array | None = None, padding: tuple[int, int] = (0, 0)
) -> Array:
    """``dE/dk[j, i] = sum_n rot180(conv2(x[n, i], rot180(delta[n, j]), 'valid'))``, eq. (7):
    im2col of x with flipped taps (so the result needs no rot180) and one GEMM whose inner
    dimension runs over the batch and the output pixels; ``padding`` is im2col's."""
    if not _fast(x, delta):
        return _reference.conv_kernel_grad(x, delta, selection, padding)
    n, c_in, h_in, w_in = x.shape
    _, c_out, h, w = delta.shape
    ph, pw = padding
    kh, kw = h_in + 2 * ph - h + 1, w_in + 2 * pw - w + 1
    cols = K.im2col(x, kh, kw, h, w, pad=(ph, pw), flip=True, layout="npk")  # (N h w, C kh kw)
    deltas = cupy.ascontiguousarray(delta.transpose(1, 0, 2, 3)).reshape(c_out, n * h * w)
    grad = K.matmul(deltas, cols).reshape(c_out, c_in, kh, kw)
    return _masked(grad, selection)


def kron_upsample(x: Array, n: int) -> Array:
    """``up(x) = x (kron) 1_{n x n}`` (section 3.1.1) in one elementwise kernel."""
    if not _fast(x):
        return _reference.kron_upsample(x, n)
    return K.kron_upsample(x, n)


def block_sum(x: Array, n: int) -> Array:
    """The sum over each distinct n x n block (section 3.2) in one elementwise kernel."""
    if not _fast(x) or x.shape[2] % n or x.shape[3] % n:
        return _reference.block_sum(x, n)  # the reference raises for sizes not divisible by n
    return K.block_sum(x, n)


def block_mean(x: Array, n: int) -> Array:
    """The mean over each distinct n x n block (DeepLearnToolbox's subsampling)."""
    if not _fast(x) or x.shape[2] % n or x.shape[3] % n:
        return _reference.block_mean(x, n)
    return K.block_sum(x, n, 1.0 / (n * n))


def decimate(x: Array, n: int) -> Array:
    """Keep every n-th sample along rows and columns (section 3.2)."""
    if not _fast(x):
        return _reference.decimate(x, n)
    return K.decimate(x, n)


def decimate_transpose(delta: Array, n: int) -> Array:
    """The adjoint of :func:`decimate`: each value to the top-left of an n x n block."""
    if not _fast(delta):
        return _reference.decimate_transpose(delta, n)
    return K.decimate_transpose(delta, n)


def fully_connected(x: Array, weight: Array) -> Array:
    """``u = x @ weight^T`` (eq. 2) on :func:`anycnn_cupy._kernels.matmul`: cuBLAS, or the
    elementwise GEMM while a CUDA graph is captured (Note [GEMM inside a graph])."""
    if not K.is_float(x, weight):
        return _reference.fully_connected(x, weight)
    return K.matmul(x, weight.T)


def fully_connected_weight_grad(x: Array, delta: Array) -> Array:
    """``dE/dW = delta^T @ x`` (eq. 5), batch summed, on :func:`anycnn_cupy._kernels.matmul`."""
    if not K.is_float(x, delta):
        return _reference.fully_connected_weight_grad(x, delta)
    return K.matmul(delta.T, x)


def fully_connected_input_grad(delta: Array, weight: Array) -> Array:
    """``delta @ W`` (eq. 3) on :func:`anycnn_cupy._kernels.matmul`."""
    if not K.is_float(delta, weight):
        return _reference.fully_connected_input_grad(delta, weight)
    return K.matmul(delta, weight)


def sgd_update_(param: Array, grad: Array, lr: float) -> Array:
    """``param -= lr grad`` in one kernel (``Note [Fused updates]`` in anycnn.ops)."""
    if not (K.is_float(param, grad) and param.dtype == grad.dtype):
        return _reference.sgd_update_(param, grad, lr)
    return _fused.sgd_update_(param, grad, lr)


def momentum_update_(
    param: Array, grad: Array, velocity: Array, lr: float, momentum: float
) -> Array:
    """``velocity = momentum velocity + lr grad; param -= velocity`` in one kernel."""
    if not (K.is_float(param, grad, velocity) and param.dtype == grad.dtype == velocity.dtype):
        return _reference.momentum_update_(param, grad, velocity, lr, momentum)
    return _fused.momentum_update_(param, grad, velocity, lr, momentum)


OPS = {
    "conv_valid": conv_valid,
    "conv_valid_activate": conv_valid_activate,
    "conv_backward": conv_backward,
    "subsample_forward": subsample_forward,
    "subsample_backward": subsample_backward,
    "activate": activate,
    "sensitivity": sensitivity,
    "conv_full": conv_full,
    "conv_kernel_grad": conv_kernel_grad,
    "kron_upsample": kron_upsample,
    "block_sum": block_sum,
    "block_mean": block_mean,
    "decimate": decimate,
    "decimate_transpose": decimate_transpose,
    "fully_connected": fully_connected,
    "fully_connected_weight_grad": fully_connected_weight_grad,
    "fully_connected_input_grad": fully_connected_input_grad,
    "sgd_update_": sgd_update_,
    "momentum_update_": momentum_update_,
}

# The chains of Note [Fused ops] on this backend's own ops: what the fused ops above fall back to.
_CHAIN = _reference.compose_fused(types.SimpleNamespace(**OPS))
