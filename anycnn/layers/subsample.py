"""Subsampling layers with a multiplicative beta and an additive b per map (section 3.2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from anycnn.layers.activations import get_activation
from anycnn.layers.base import Array, BuildContext, Layer, Shape, Upsampled

MODES = ("sum", "mean", "decimate")


class Subsampling(Layer):
    """``x_j = f(beta_j down(x_j) + b_j)`` (section 3.2).

    Parameters
    ----------
    n : int
        The subsampling factor: maps shrink n times along each spatial axis.
    mode : {"sum", "mean", "decimate"}
        ``down``: the sum over each n x n block (the notes' default), the mean, or keeping every
        n-th sample (Simard et al., cited in 3.2).
    activation : str or Activation
        ``f``; identity by default.
    trainable : bool
        With ``False`` there are no parameters: ``x_j = f(down(x_j))`` (DeepLearnToolbox's mean
        pooling).

    Parameters of the layer: ``beta`` and ``bias``, ``(C,)`` each; ``beta`` starts at 1 (at
    ``1 / n^2`` for ``"sum"``, so the layer starts as a mean), ``bias`` at 0.
    Gradients (3.2.1): ``dE/db_j = sum delta_j`` and ``dE/dbeta_j = sum delta_j o d_j`` with
    ``d_j = down(x_j)`` saved by the forward pass; ``dE/dx_j = beta_j up(delta_j)`` with kron
    up-sampling (3.1.1), which the convolution below multiplies by its ``f'(u)``.
    """

    kind = "sub"

    def __init__(
        self,
        n: int = 2,
        mode: str = "sum",
        *,
        activation: Any = "identity",
        trainable: bool = True,
        name: str | None = None,
    ):
        super().__init__(name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Subsampling: the factor n must be a positive int, got {n!r}")
        if mode not in MODES:
            raise ValueError(f"Subsampling: mode must be one of {MODES}, got {mode!r}")
        self.n, self.mode, self.trainable = n, mode, bool(trainable)
        self.activation = get_activation(activation)

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        if len(input_shape) != 3:
            raise self.error(f"expects (C, H, W) maps, got input shape {input_shape}")
        c, h, w = input_shape
        if h % self.n or w % self.n:
            raise self.error(f"{h}x{w} maps are not divisible by {self.n}")
        if self.trainable:
            beta0 = 1.0 / (self.n * self.n) if self.mode == "sum" else 1.0
            self.params["beta"] = self._host_param(context, np.full(c, beta0))
            self.params["bias"] = self._host_param(context, np.zeros(c))
        return (c, h // self.n, w // self.n)

    def _down(self, x: Array) -> Array:
        ops = self._ops
        if self.mode == "sum":
            return ops.block_sum(x, self.n)
        if self.mode == "mean":
            return ops.block_mean(x, self.n)
        return ops.decimate(x, self.n)

    def _up(self, delta: Array, defer: bool) -> Array | Upsampled:
        """The adjoint of down: kron up-sampling (scaled by 1/n^2 for the mean), or with ``defer``
        that up-sampling left to the layer below (Note [Deferred up-sampling])."""
        ops = self._ops
        if self.mode == "decimate":
            return ops.decimate_transpose(delta, self.n)
        if self.mode == "mean":
            delta = delta * (1.0 / (self.n * self.n))
        if defer and self.n > 1:
            return Upsampled(delta, self.n)
        return ops.kron_upsample(delta, self.n)

    def _per_map(self, xp: Any, v: Array) -> Array:
        return xp.reshape(v, (1, v.shape[0], 1, 1))

    def forward(self, x: Array) -> Array:
        d = self._down(x)
        if self.trainable:
            self._d = d
            u = d * self.params["beta"][:, None, None]
            u += self.params["bias"][:, None, None]
            self._y = self.activation.apply(u, self._xp)
        elif self.mode == "decimate":  # d may be a view of x: leave its memory alone
            self._y = self.activation.forward(d)
        else:  # a fresh block sum that nobody else keeps: f may reuse its memory
            self._y = self.activation.apply(d, self._xp)
        return self._y

    def backward(
        self, dy: Array, need_input_grad: bool = True, *, defer_up: bool = False
    ) -> Array | Upsampled | None:
        """Fill the gradients of beta and b; return ``dE/dx = beta up(delta)``, or with
        ``defer_up`` the :class:`Upsampled` ``beta delta`` for a layer below that forms the
        up-sampling itself (Note [Deferred up-sampling]; :class:`anycnn.Network` asks for it)."""
        xp = self._xp
        fused = self._ops.fused.get("subsample_backward")  # Note [Fused ops] in anycnn.ops
        if self.trainable and fused is not None:  # beta delta: before up-sampling, n^2 x fewer
            beta = self.params["beta"]
            self.grads["beta"], self.grads["bias"], delta = fused(
                dy, self._y, self._d, beta, self.activation, need_input_grad
            )
        else:
            delta = self._sensitivity(dy)
            if self.trainable:
                self.grads["beta"] = xp.sum(delta * self._d, axis=(0, 2, 3))
                self.grads["bias"] = xp.sum(delta, axis=(0, 2, 3))
                if need_input_grad:
                    # beta before up-sampling: n^2 times fewer multiplications than after.
                    delta = delta * self.params["beta"][:, None, None]
        if not need_input_grad:
            return None
        return self._up(delta, defer_up)

    def config(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mode": self.mode,
            "activation": self.activation.config(),
            "trainable": self.trainable,
        }

    def __repr__(self) -> str:
        extra = "" if self.trainable else ", fixed"
        return f"Subsampling({self.n}, {self.mode}, {self.activation.name}{extra})"
