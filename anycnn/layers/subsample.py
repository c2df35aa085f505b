"""Subsampling layers with a multiplicative beta and an additive b per map (section 3.2)."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from anycnn.layers.activations import get_activation
from anycnn.layers.base import Array, BuildContext, Layer, Shape, Upsampled
from anycnn.ops import fit_maps

MODES = ("sum", "mean", "decimate")
REMAINDERS = ("error", "drop", "pad")


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
    remainder : {"error", "drop", "pad"}
        What to do with the last rows and columns of maps whose size is not a multiple of ``n``
        (an ``H x W`` map, ``H = q n + r``). ``"drop"`` ignores them (PyTorch's pooling default):
        the output has ``q`` rows and their sensitivities are zero. ``"pad"`` keeps a last,
        partial block (PyTorch's ``ceil_mode=True``): the output has ``q + 1`` rows, and over
        that block ``"sum"`` adds the samples present, ``"mean"`` divides by their count (so its
        ``dE/dx`` is ``delta / count`` there, not ``delta / n^2``) and ``"decimate"`` keeps the
        first. ``"error"``, the default, refuses such maps when the network is built, naming
        both options: the notes' ``down`` covers a map with whole blocks, and either option
        changes what the layer computes on some pixels (drops data, or weights a border block
        differently), which a user should choose knowingly rather than find out later. Maps
        whose size is a multiple of ``n`` compute the same in every mode, bit for bit.

    Parameters of the layer: ``beta`` and ``bias``, ``(C,)`` each; ``beta`` starts at 1 (at
    ``1 / n^2`` for ``"sum"``, so the layer starts as a mean), ``bias`` at 0.
    Gradients (3.2.1): ``dE/db_j = sum delta_j`` and ``dE/dbeta_j = sum delta_j o d_j`` with
    ``d_j = down(x_j)`` saved by the forward pass; ``dE/dx_j = beta_j up(delta_j)`` with kron
    up-sampling (3.1.1), which the convolution below multiplies by its ``f'(u)``. With a
    remainder, ``down`` runs on the maps cropped (``"drop"``) or zero-padded (``"pad"``) at the
    bottom and right to a multiple of ``n`` (:func:`anycnn.ops.fit_maps`), and ``dE/dx`` is the
    adjoint: ``up(delta)`` zero-padded or cropped back to ``H x W``.

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn import Network, Subsampling
    >>> net = Network([Subsampling(2, mode="mean")], input_shape=(1, 4, 4), dtype="float64")
    >>> x = net.backend.asarray(np.arange(16.0).reshape(1, 1, 4, 4), dtype="float64")
    >>> net.backend.to_host(net.forward(x))[0, 0].tolist()   # beta = 1, bias = 0
    [[2.5, 4.5], [10.5, 12.5]]
    """

    kind = "sub"
    #: Note [Deferred up-sampling]: the layer below may form ``up(delta)`` itself.
    defers_upsampling = True

    def __init__(
        self,
        n: int = 2,
        mode: str = "sum",
        *,
        activation: Any = "identity",
        trainable: bool = True,
        remainder: str = "error",
        name: str | None = None,
    ):
        super().__init__(name)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Subsampling: the factor n must be a positive int, got {n!r}")
        if mode not in MODES:
            raise ValueError(f"Subsampling: mode must be one of {MODES}, got {mode!r}")
        if remainder not in REMAINDERS:
            raise ValueError(
                f"Subsampling: remainder must be one of {REMAINDERS}, got {remainder!r}"
            )
        self.n, self.mode, self.trainable = n, mode, bool(trainable)
        self.remainder = remainder
        self.activation = get_activation(activation)
        self._fit: tuple[int, int] | None = None  # maps cut or padded to this before down
        self._in_hw: tuple[int, int] = (0, 0)
        self._inv_counts: Array | None = None  # 1 / samples per block: a padded block mean

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        if len(input_shape) != 3:
            raise self.error(f"expects (C, H, W) maps, got input shape {input_shape}")
        c, h, w = input_shape
        n = self.n
        self._in_hw, self._fit, self._inv_counts = (h, w), None, None
        if h % n or w % n:
            drop, pad = (h // n, w // n), (-(-h // n), -(-w // n))
            if self.remainder == "error":
                raise self.error(
                    f"{h}x{w} maps are not divisible by {n}; pass remainder='drop' to ignore "
                    f"the last {h % n} row(s) and {w % n} column(s) ({drop[0]}x{drop[1]} output "
                    f"maps) or remainder='pad' to keep partial blocks ({pad[0]}x{pad[1]}), or "
                    f"give the network another input size"
                )
            oh, ow = drop if self.remainder == "drop" else pad
            if oh == 0 or ow == 0:
                raise self.error(
                    f"{h}x{w} maps are smaller than one {n}x{n} block: remainder='drop' "
                    f"leaves no output; use remainder='pad' or a smaller n"
                )
            self._fit = (oh * n, ow * n)
            if self.remainder == "pad" and self.mode == "mean":
                rows = np.minimum(n, h - n * np.arange(oh))
                cols = np.minimum(n, w - n * np.arange(ow))
                self._inv_counts = self._host_param(context, 1.0 / np.outer(rows, cols))
        else:
            oh, ow = h // n, w // n
        if self.trainable:
            beta0 = 1.0 / (n * n) if self.mode == "sum" else 1.0
            self.params["beta"] = self._host_param(context, np.full(c, beta0))
            self.params["bias"] = self._host_param(context, np.zeros(c))
        return (c, oh, ow)

    def _down(self, x: Array) -> Array:
        ops = self._ops
        if self._fit is not None:  # a remainder: crop or zero-pad to whole blocks first
            x = fit_maps(x, *self._fit)
            if self._inv_counts is not None:  # a padded mean: divide by the samples present
                return ops.block_sum(x, self.n) * self._inv_counts
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
            return self._unfit(ops.decimate_transpose(delta, self.n))
        if self._inv_counts is not None:
            delta = delta * self._inv_counts
        elif self.mode == "mean":
            delta = delta * (1.0 / (self.n * self.n))
        if defer and self.n > 1:  # the layer below fits up(delta) to its own output's size
            return Upsampled(delta, self.n)
        return self._unfit(ops.kron_upsample(delta, self.n))

    def _unfit(self, dx: Array) -> Array:
        """The adjoint of the forward pass's crop or zero padding: back to the input's size."""
        return dx if self._fit is None else fit_maps(dx, *self._in_hw)

    def forward(self, x: Array) -> Array:
        d = self._down(x)
        if self.trainable:
            self._d = d
            u = d * self.params["beta"][:, None, None]
            u += self.params["bias"][:, None, None]
            self._y = self._ops.activate(u, self.activation)
        elif self.mode == "decimate":  # d may be a view of x: leave its memory alone
            self._y = self.activation.forward(d)
        else:  # a fresh block sum that nobody else keeps: f may reuse its memory
            self._y = self._ops.activate(d, self.activation)
        return self._y

    def backward(
        self, dy: Array, need_input_grad: bool = True, *, defer_up: bool = False
    ) -> Array | Upsampled | None:
        """Fill the gradients of beta and b; return ``dE/dx = beta up(delta)``, or with
        ``defer_up`` the :class:`Upsampled` ``beta delta`` for a layer below that forms the
        up-sampling itself (Note [Deferred up-sampling]; :class:`anycnn.Network` asks for it)."""
        if self.trainable:  # Note [Fused ops] in anycnn.ops; beta delta before up-sampling
            self.grads["beta"], self.grads["bias"], delta = self._ops.subsample_backward(
                dy, self._y, self._d, self.params["beta"], self.activation, need_input_grad
            )
        else:
            delta = self._sensitivity(dy)
        if not need_input_grad:
            return None
        return self._up(delta, defer_up)

    def curvature(self, d2y: Array, need_input_grad: bool = True) -> tuple[Array | None, dict]:
        """Section 3.2 with squares (:meth:`Layer.curvature`): ``h_beta = sum_{u,v} d2u o d^2``
        with ``d = down(x)``, ``h_b = sum d2u``, ``d2x = beta^2 up(d2u)`` for block sums
        (``up(d2u) / n^4`` for block means, the transposed decimation for ``"decimate"``)."""
        xp = array_api_compat.array_namespace(d2y)
        ops = self._backend.ops
        d2u = self._squared_slope(d2y)
        h: dict[str, Array] = {}
        d2d = d2u
        if self.trainable:
            d = self._d
            h["beta"] = xp.sum(d2u * (d * d), axis=(0, 2, 3))
            h["bias"] = xp.sum(d2u, axis=(0, 2, 3))
            beta = self.params["beta"]
            d2d = d2u * xp.reshape(beta * beta, (1, beta.shape[0], 1, 1))
        if not need_input_grad:
            return None, h
        n = self.n
        if self.mode == "decimate":
            return self._unfit(ops.decimate_transpose(d2d, n)), h
        if self._inv_counts is not None:  # a padded block mean: (1 / count)^2 per block
            return self._unfit(ops.kron_upsample(d2d * (self._inv_counts**2), n)), h
        up = ops.kron_upsample(d2d, n)
        return self._unfit(up * (1.0 / float(n**4)) if self.mode == "mean" else up), h

    def config(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mode": self.mode,
            "activation": self.activation.config(),
            "trainable": self.trainable,
            "remainder": self.remainder,
        }

    def __repr__(self) -> str:
        extra = "" if self.trainable else ", fixed"
        if self.remainder != "error":
            extra += f", remainder={self.remainder}"
        return f"Subsampling({self.n}, {self.mode}, {self.activation.name}{extra})"
