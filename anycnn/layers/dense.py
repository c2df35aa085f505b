"""Fully connected layers (section 2) and the flattening of maps into one vector."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from anycnn.layers.activations import get_activation
from anycnn.layers.base import Array, BuildContext, Layer, Shape


class Flatten(Layer):
    """Concatenate all features of all output maps into one long vector (section 2).

    ``(N, C, H, W) -> (N, C*H*W)`` in C order (map by map, row by row).

    >>> import anycnn
    >>> net = anycnn.Network([Flatten()], (2, 3, 4))
    >>> net.output_shape
    (24,)
    """

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        return (math.prod(input_shape),)

    def forward(self, x: Array) -> Array:
        return self._xp.reshape(x, (x.shape[0], -1))

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        if not need_input_grad:
            return None
        assert self.input_shape is not None, "Flatten.backward before build"
        return self._xp.reshape(dy, (dy.shape[0], *self.input_shape))

    def curvature(self, d2y: Array, need_input_grad: bool = True) -> tuple[Array | None, dict]:
        """No parameters: the curvature is reshaped back into maps (:meth:`Layer.curvature`)."""
        xp = array_api_compat.array_namespace(d2y)
        assert self.input_shape is not None, f"{self.name}: curvature before build"
        return (xp.reshape(d2y, (d2y.shape[0], *self.input_shape)) if need_input_grad else None), {}


class FullyConnected(Layer):
    """``x^l = f(W^l x^{l-1} + b^l)`` (eq. 2), back-propagated by eqs. (3)-(6).

    Parameters
    ----------
    units : int
        Number of output units.
    activation : str or Activation
        ``f``; ``"sigmoid"`` by default.
    init : {"glorot", "lecun"}
        Uniform in ``+-sqrt(6 / (fan_in + fan_out))`` (DeepLearnToolbox) or in
        ``+-2.4 / fan_in`` (LeCun et al. 1998). Biases start at zero.

    Parameters of the layer: ``weight`` ``(units, fan_in)`` and ``bias`` ``(units,)``.

    >>> import anycnn
    >>> net = anycnn.Network([FullyConnected(3, activation="tanh")], (5,), dtype="float64")
    >>> {name: tuple(p.shape) for name, p in net.parameters().items()}
    {'fc1.weight': (3, 5), 'fc1.bias': (3,)}
    """

    kind = "fc"

    def __init__(
        self,
        units: int,
        activation: Any = "sigmoid",
        *,
        init: str = "glorot",
        name: str | None = None,
    ):
        super().__init__(name)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"FullyConnected: units must be a positive int, got {units!r}")
        if init not in ("glorot", "lecun"):
            raise ValueError(f"FullyConnected: init must be 'glorot' or 'lecun', got {init!r}")
        self.units = units
        self.activation = get_activation(activation)
        self.init = init

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        if len(input_shape) != 1:
            raise self.error(
                f"expects a vector input, got maps of shape {input_shape}; add Flatten() before it"
            )
        fan_in = input_shape[0]
        bound = math.sqrt(6.0 / (fan_in + self.units)) if self.init == "glorot" else 2.4 / fan_in
        self.params["weight"] = self._host_param(
            context, context.rng.uniform(-bound, bound, (self.units, fan_in))
        )
        self.params["bias"] = self._host_param(context, np.zeros(self.units))
        return (self.units,)

    def forward(self, x: Array) -> Array:
        self._x = x
        u = self._ops.fully_connected(x, self.params["weight"])  # eq. (2)
        u += self.params["bias"]  # u is ours: add the bias and f in place
        self._y = self._ops.activate(u, self.activation)
        return self._y

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        ops = self._ops
        delta = self._sensitivity(dy)  # eq. (4): (W^T d) o f'(u)
        self.grads["weight"] = ops.fully_connected_weight_grad(self._x, delta)  # eq. (5)
        self.grads["bias"] = self._xp.sum(delta, axis=0)  # eq. (3)
        if not need_input_grad:
            return None
        return ops.fully_connected_input_grad(delta, self.params["weight"])

    def curvature(self, d2y: Array, need_input_grad: bool = True) -> tuple[Array | None, dict]:
        """Eq. (2) with squares (:meth:`Layer.curvature`): ``h_W = d2u^T (x o x)``,
        ``h_b = sum d2u``, ``d2x = d2u (W o W)``."""
        xp = array_api_compat.array_namespace(d2y)
        d2u = self._squared_slope(d2y)
        x = self._x
        w = self.params["weight"]
        h = {"weight": xp.matmul(xp.matrix_transpose(d2u), x * x), "bias": xp.sum(d2u, axis=0)}
        return (xp.matmul(d2u, w * w) if need_input_grad else None), h

    def config(self) -> dict[str, Any]:
        return {"units": self.units, "activation": self.activation.config(), "init": self.init}

    def __repr__(self) -> str:
        return f"FullyConnected({self.units}, {self.activation.name})"
