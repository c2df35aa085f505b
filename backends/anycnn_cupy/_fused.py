"""Fused elementwise kernels for the chains of the notes: one pass over the maps instead of several.

Section 3.4 of the notes names the bottlenecks of a convolutional network once the convolutions
are fast: down-sampling in the forward pass, up-sampling of the sensitivities in the backward
pass, and the activation and its derivative. Unfused, each of these is several array operations,
hence several kernel launches and passes over memory on a GPU; here each chain is one kernel:

* :func:`upsampled_sensitivity`: ``delta^l = beta (f'(u^l) o up(delta^{l+1}))`` (3.1.1);
* :func:`subsample_forward`: ``x^l = f(beta down(x^{l-1}) + b)``, also returning ``down(x)`` (3.2);
* :func:`bias_activation`, :func:`activation_and_derivative`, :func:`sensitivity`: ``f(u + b)``,
  ``f'`` from the saved output (3.4), and ``dE/dx o f'`` (eq. 4);
* :func:`subsample_sensitivity`: a subsampling layer's ``delta`` and ``beta delta`` (3.2.1);
* :func:`sgd_update_`, :func:`momentum_update_`: the parameter updates, in place.

Each takes the activation as an object with ``describe()`` (an :class:`anycnn.layers.Activation`),
a description (``("tanh", a, b)``) or ``None`` for the identity (Note [Activation codes] in
_sources.py); :func:`supports_activation` says whether the table of activations describes it
(identity, logistic, tanh ``a tanh(b u)`` and LeCun's, ReLU), and the caller keeps its unfused
code otherwise. NumPy twins of every function live in tests/test_cupy_backend.py, which checks them
against the layers of anycnn and runs these kernels' bodies on the CPU against them.

UNTESTED ON GPU HARDWARE (see anycnn_cupy._kernels).
"""

from __future__ import annotations

import math
from typing import Any

from anycnn_cupy._guard import require_cupy
from anycnn_cupy._sources import activation_code, supports_activation

cupy = require_cupy(__name__)

from anycnn_cupy._kernels import FLOAT_DTYPES, kernel, wide  # noqa: E402 - after the guard

Array = Any

__all__ = [
    "FUSED",
    "activation_and_derivative",
    "bias_activation",
    "momentum_update_",
    "sensitivity",
    "sgd_update_",
    "subsample_forward",
    "subsample_sensitivity",
    "supports_activation",
    "upsampled_sensitivity",
]

_MODES = ("sum", "mean", "decimate")


def _act(activation: Any, where: str) -> tuple[int, float, float]:
    code = activation_code(activation)
    if code is None:
        raise TypeError(
            f"{where}: no fused kernel for the activation {activation!r}; check "
            "anycnn_cupy.supports_activation(activation) first and keep the unfused path"
        )
    return code


def _arrays(where: str, **arrays: Any) -> Any:
    """Check that every given array is a CuPy float array of one dtype; return the dtype."""
    dtype = None
    for name, a in arrays.items():
        if a is None:
            continue
        if not isinstance(a, cupy.ndarray):
            raise TypeError(f"{where}: {name} must be a CuPy array, got {type(a).__name__}")
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{where}: {name} must be float32 or float64, got {a.dtype}")
        if dtype is None:
            dtype = a.dtype
        elif a.dtype != dtype:
            raise TypeError(f"{where}: {name} is {a.dtype} but the other arrays are {dtype}")
    return dtype


def _per_map(where: str, name: str, v: Any, c: int) -> Any:
    if v is not None and tuple(v.shape) != (c,):
        raise ValueError(f"{where}: {name} must have shape ({c},), got {tuple(v.shape)}")
    return None if v is None else cupy.ascontiguousarray(v)


def _i32(value: int) -> Any:
    import numpy

    return numpy.int32(value)


def upsampled_sensitivity(
    delta: Array,
    y: Array,
    n: int,
    beta: Array | None = None,
    *,
    activation: Any = None,
    mode: str = "sum",
) -> Array:
    """The sensitivities of a convolution layer under a subsampling layer, eq. of 3.1.1.

    Computes ``delta^l = beta_j (f'(u^l) o up(delta^{l+1}))`` in one kernel, where ``up`` is the
    adjoint of the subsampling layer's ``down``: kron up-sampling for ``mode="sum"``, the same
    divided by ``n^2`` for ``"mean"``, the adjoint of decimation for ``"decimate"``.

    Parameters
    ----------
    delta : array, shape (N, C, h, w)
        ``delta^{l+1}``, the subsampling layer's sensitivities ``dE/du^{l+1}``.
    y : array, shape (N, C, h n, w n)
        The convolution layer's saved output ``x^l = f(u^l)`` (f' is computed from it).
    n : int
        The subsampling factor.
    beta : array, shape (C,), optional
        The subsampling layer's multiplicative coefficients; 1 when omitted (no parameters).
    activation : Activation, description or None
        The convolution layer's ``f`` (None: the identity).
    mode : {"sum", "mean", "decimate"}

    Returns
    -------
    array, shape (N, C, h n, w n): ``delta^l = dE/du^l``.
    """
    where = "upsampled_sensitivity"
    dtype = _arrays(where, delta=delta, y=y, beta=beta)
    if mode not in _MODES:
        raise ValueError(f"{where}: mode must be one of {_MODES}, got {mode!r}")
    b, c, h, w = delta.shape
    if tuple(y.shape) != (b, c, h * n, w * n):
        raise ValueError(
            f"{where}: y must have shape (N, C, h n, w n) = {(b, c, h * n, w * n)} for delta "
            f"of shape {tuple(delta.shape)} and n = {n}, got {tuple(y.shape)}"
        )
    beta = _per_map(where, "beta", beta, c)
    code, p1, p2 = _act(activation, where)
    delta = cupy.ascontiguousarray(delta)
    scale = 1.0 / (n * n) if mode == "mean" else 1.0
    out = cupy.empty(y.shape, dtype=dtype)
    if out.size:
        t = dtype.type
        kernel("anycnn_upsampled_sensitivity", wide(out.size))(
            delta,
            y,
            delta if beta is None else beta,
            t(scale),
            _i32(n),
            _i32(c),
            _i32(h),
            _i32(w),
            _i32(beta is not None),
            _i32(mode == "decimate"),
            _i32(code),
            t(p1),
            t(p2),
            out,
        )
    return out


def subsample_forward(
    x: Array,
    n: int,
    beta: Array | None = None,
    bias: Array | None = None,
    *,
    activation: Any = None,
    mode: str = "sum",
) -> tuple[Array, Array]:
    """The forward pass of a subsampling layer, ``x_j = f(beta_j down(x_j) + b_j)`` (3.2).

    Parameters
    ----------
    x : array, shape (N, C, H, W)
        The layer's input maps; H and W multiples of n unless ``mode="decimate"``.
    n : int
    beta, bias : arrays, shape (C,), optional
        Both or neither; neither means ``x_j = f(down(x_j))`` (no parameters).
    activation : Activation, description or None
    mode : {"sum", "mean", "decimate"}

    Returns
    -------
    d : array, shape (N, C, H // n, W // n)
        ``down(x)``, which the gradient of beta needs (3.2.1).
    y : array, shape (N, C, H // n, W // n)
        The layer's output.
    """
    where = "subsample_forward"
    dtype = _arrays(where, x=x, beta=beta, bias=bias)
    if mode not in _MODES:
        raise ValueError(f"{where}: mode must be one of {_MODES}, got {mode!r}")
    if (beta is None) != (bias is None):
        raise ValueError(f"{where}: give both beta and bias, or neither")
    b, c, hh, ww = x.shape
    if mode != "decimate" and (hh % n or ww % n):
        raise ValueError(f"{where}: {hh}x{ww} maps are not divisible by n = {n}")
    beta, bias = _per_map(where, "beta", beta, c), _per_map(where, "bias", bias, c)
    code, p1, p2 = _act(activation, where)
    x = cupy.ascontiguousarray(x)
    h, w = hh // n, ww // n
    d = cupy.empty((b, c, h, w), dtype=dtype)
    y = cupy.empty((b, c, h, w), dtype=dtype)
    if d.size:
        t = dtype.type
        affine = beta is not None
        kernel("anycnn_subsample_forward", wide(x.size))(
            x,
            beta if affine else x,
            bias if affine else x,
            _i32(n),
            _i32(c),
            _i32(h),
            _i32(w),
            _i32(hh),
            _i32(ww),
            _i32(mode == "decimate"),
            t(1.0 / (n * n) if mode == "mean" else 1.0),
            _i32(affine),
            _i32(code),
            t(p1),
            t(p2),
            d,
            y,
        )
    return d, y


def _bias_layout(where: str, u: Any, bias: Any) -> tuple[int, int]:
    if u.ndim < 2:
        raise ValueError(f"{where}: u must be (N, C, ...) or (N, D), got shape {tuple(u.shape)}")
    c = u.shape[1]
    _per_map(where, "bias", bias, c)
    return c, math.prod(u.shape[2:])


def bias_activation(u: Array, bias: Array | None = None, *, activation: Any = None) -> Array:
    """``y = f(u + b)``: a convolution layer's output (3.1; b per map, ``u`` (N, C, H, W)) or a
    fully connected one's (eq. 2; b per unit, ``u`` (N, D))."""
    where = "bias_activation"
    dtype = _arrays(where, u=u, bias=bias)
    c, inner = _bias_layout(where, u, bias)
    code, p1, p2 = _act(activation, where)
    y = cupy.empty(u.shape, dtype=dtype)
    if y.size:
        t = dtype.type
        kernel("anycnn_bias_activation", wide(y.size))(
            u,
            u if bias is None else cupy.ascontiguousarray(bias),
            _i32(c),
            _i64(inner),
            _i32(bias is not None),
            _i32(code),
            t(p1),
            t(p2),
            y,
        )
    return y


def activation_and_derivative(
    u: Array, bias: Array | None = None, *, activation: Any = None
) -> tuple[Array, Array]:
    """``(f(u + b), f'(u + b))`` in one pass, the derivative computed from the output (3.4)."""
    where = "activation_and_derivative"
    dtype = _arrays(where, u=u, bias=bias)
    c, inner = _bias_layout(where, u, bias)
    code, p1, p2 = _act(activation, where)
    y = cupy.empty(u.shape, dtype=dtype)
    dy = cupy.empty(u.shape, dtype=dtype)
    if y.size:
        t = dtype.type
        kernel("anycnn_activation_and_derivative", wide(y.size))(
            u,
            u if bias is None else cupy.ascontiguousarray(bias),
            _i32(c),
            _i64(inner),
            _i32(bias is not None),
            _i32(code),
            t(p1),
            t(p2),
            y,
            dy,
        )
    return y, dy


def sensitivity(dy: Array, y: Array, *, activation: Any = None) -> Array:
    """``delta = dE/dx o f'(u)`` (eq. 4) with ``f'`` from the saved output ``y = f(u)``."""
    where = "sensitivity"
    dtype = _arrays(where, dy=dy, y=y)
    if tuple(dy.shape) != tuple(y.shape):
        raise ValueError(
            f"{where}: dy and y must have one shape, got {tuple(dy.shape)} and {tuple(y.shape)}"
        )
    code, p1, p2 = _act(activation, where)
    delta = cupy.empty(y.shape, dtype=dtype)
    if delta.size:
        t = dtype.type
        kernel("anycnn_sensitivity", wide(delta.size))(dy, y, _i32(code), t(p1), t(p2), delta)
    return delta


def subsample_sensitivity(
    dy: Array, y: Array, beta: Array, *, activation: Any = None
) -> tuple[Array, Array]:
    """``(delta, beta delta)`` of a trainable subsampling layer in one pass: ``delta = dE/dx o
    f'(u)`` (eq. 4, f' from the saved output ``y``) and ``beta_j delta_j`` (3.2.1)."""
    where = "subsample_sensitivity"
    dtype = _arrays(where, dy=dy, y=y, beta=beta)
    if tuple(dy.shape) != tuple(y.shape):
        raise ValueError(
            f"{where}: dy and y must have one shape, got {tuple(dy.shape)} and {tuple(y.shape)}"
        )
    c, inner = _bias_layout(where, y, beta)
    code, p1, p2 = _act(activation, where)
    delta = cupy.empty(y.shape, dtype=dtype)
    scaled = cupy.empty(y.shape, dtype=dtype)
    if delta.size:
        t = dtype.type
        kernel("anycnn_subsample_sensitivity", wide(delta.size))(
            dy,
            y,
            cupy.ascontiguousarray(beta),
            _i32(c),
            _i64(inner),
            _i32(code),
            t(p1),
            t(p2),
            delta,
            scaled,
        )
    return delta, scaled


def _rate(where: str, name: str, value: Any, dtype: Any) -> Any:
    """A scalar as the parameter's dtype, or a 0-d device array (for a rate a captured CUDA
    graph reads at each replay, so that a schedule needs no re-capture)."""
    if isinstance(value, cupy.ndarray):
        if value.ndim != 0:
            raise ValueError(f"{where}: {name} must be a scalar or a 0-d array, got {value.shape}")
        return value if value.dtype == dtype else value.astype(dtype)
    return dtype.type(value)


def _in_place(where: str, param: Any, **others: Any) -> Any:
    dtype = _arrays(where, param=param, **others)
    for name, a in others.items():
        if tuple(a.shape) != tuple(param.shape):
            raise ValueError(
                f"{where}: {name} must have the parameter's shape {tuple(param.shape)}, "
                f"got {tuple(a.shape)}"
            )
    return dtype


def sgd_update_(param: Array, grad: Array, lr: Any) -> Array:
    """``param -= lr * grad`` in place (one kernel); returns ``param``.

    ``lr`` is a number or a 0-d device array (read on the device at every launch)."""
    where = "sgd_update_"
    dtype = _in_place(where, param, grad=grad)
    if param.size:
        kernel("anycnn_sgd", wide(param.size))(grad, _rate(where, "lr", lr, dtype), param)
    return param


def momentum_update_(param: Array, grad: Array, velocity: Array, lr: Any, momentum: Any) -> Array:
    """``velocity = momentum velocity + lr grad; param -= velocity``, both in place, the heavy-ball
    momentum of :class:`anycnn.optim.Momentum` (same velocity, so checkpoints move between
    backends); returns ``param``. ``lr`` and ``momentum`` are numbers or 0-d device arrays."""
    where = "momentum_update_"
    dtype = _in_place(where, param, grad=grad, velocity=velocity)
    if param.size:
        kernel("anycnn_momentum", wide(param.size))(
            grad,
            _rate(where, "lr", lr, dtype),
            _rate(where, "momentum", momentum, dtype),
            param,
            velocity,
        )
    return param


def _i64(value: int) -> Any:
    import numpy

    return numpy.int64(value)


#: The fused operations by name: the table a backend hook would publish beside its hot ops.
FUSED = {
    "upsampled_sensitivity": upsampled_sensitivity,
    "subsample_forward": subsample_forward,
    "bias_activation": bias_activation,
    "activation_and_derivative": activation_and_derivative,
    "sensitivity": sensitivity,
    "subsample_sensitivity": subsample_sensitivity,
    "sgd_update_": sgd_update_,
    "momentum_update_": momentum_update_,
}
