"""Subsampling layers with a multiplicative beta and an additive b per map (section 3.2)."""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat
import numpy as np

from anycnn.layers.activations import get_activation
from anycnn.layers.base import Array, BuildContext, Layer, Shape, Upsampled
from anycnn.layers.conv import check_dims, sizes_str, spatial_dims
from anycnn.ops import fit_maps

MODES = ("sum", "mean", "decimate")
REMAINDERS = ("error", "drop", "pad")


class Subsampling(Layer):
    """``x_j = f(beta_j down(x_j) + b_j)`` (section 3.2).

    Parameters
    ----------
    n : int
        The subsampling factor: maps shrink n times along each spatial axis (signals ``(C, L)``
        and volumes ``(C, D, H, W)`` too: blocks of ``n`` or ``n^3`` samples).
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
    dims : {None, 1, 2, 3}
        The number of spatial axes; None (the default) takes it from the input shape
        (:class:`~anycnn.layers.Convolution`'s rule). :func:`Subsampling1D` and friends pin it.

    Parameters of the layer: ``beta`` and ``bias``, ``(C,)`` each; ``beta`` starts at 1 (at
    ``1 / n^2`` for ``"sum"``, so the layer starts as a mean; ``1 / n^d`` in d spatial
    dimensions), ``bias`` at 0.
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
        dims: int | None = None,
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
        self.dims = check_dims(dims, "Subsampling")
        self.activation = get_activation(activation)
        self._fit: tuple[int, ...] | None = None  # maps cut or padded to this before down
        self._in_hw: tuple[int, ...] = (0, 0)  # the input's spatial sizes
        self._inv_counts: Array | None = None  # 1 / samples per block: a padded block mean

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        d = spatial_dims(self, input_shape, self.dims)
        c, *sizes = input_shape
        n = self.n
        self._in_hw, self._fit, self._inv_counts = tuple(sizes), None, None
        self._map_shape = (1, -1, *((1,) * d))  # a (C,) vector over (N, C, *spatial)
        if any(s % n for s in sizes):
            drop = tuple(s // n for s in sizes)
            pad = tuple(-(-s // n) for s in sizes)
            if self.remainder == "error":
                if d == 2:
                    h, w = sizes
                    what = f"the last {h % n} row(s) and {w % n} column(s)"
                else:
                    what = "the last " + " / ".join(f"{s % n}" for s in sizes) + " sample(s)"
                raise self.error(
                    f"{sizes_str(sizes)} maps are not divisible by {n}; pass remainder='drop' to "
                    f"ignore {what} ({sizes_str(drop)} output maps) or remainder='pad' to keep "
                    f"partial blocks ({sizes_str(pad)}), or give the network another input size"
                )
            outs = drop if self.remainder == "drop" else pad
            if min(outs) == 0:
                raise self.error(
                    f"{sizes_str(sizes)} maps are smaller than one {sizes_str((n,) * d)} block: "
                    f"remainder='drop' leaves no output; use remainder='pad' or a smaller n"
                )
            self._fit = tuple(o * n for o in outs)
            if self.remainder == "pad" and self.mode == "mean":
                counts = [
                    np.minimum(n, s - n * np.arange(o)) for s, o in zip(sizes, outs, strict=True)
                ]
                samples = functools.reduce(np.multiply.outer, counts)
                self._inv_counts = self._host_param(context, 1.0 / samples)
        else:
            outs = tuple(s // n for s in sizes)
        if self.trainable:
            beta0 = 1.0 / n**d if self.mode == "sum" else 1.0
            self.params["beta"] = self._host_param(context, np.full(c, beta0))
            self.params["bias"] = self._host_param(context, np.zeros(c))
        return (c, *outs)

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
            delta = delta * (1.0 / self.n ** (len(self._in_hw)))
        if defer and self.n > 1:  # the layer below fits up(delta) to its own output's size
            return Upsampled(delta, self.n)
        return self._unfit(ops.kron_upsample(delta, self.n))

    def _unfit(self, dx: Array) -> Array:
        """The adjoint of the forward pass's crop or zero padding: back to the input's size."""
        return fit_maps(dx, *self._in_hw)  # dx itself when nothing was cut or padded

    def forward(self, x: Array) -> Array:
        if self.trainable and self._fit is None and self.mode != "decimate":
            # down, beta d + b and f in one op (Note [Fused ops] in anycnn.ops)
            self._y, self._d = self._ops.subsample_forward(
                x, self.n, self.mode, self.params["beta"], self.params["bias"], self.activation
            )
            return self._y
        d = self._down(x)
        if self.trainable:
            self._d = d
            xp = self._xp
            u = d * xp.reshape(self.params["beta"], self._map_shape)
            u += xp.reshape(self.params["bias"], self._map_shape)
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
        assert self._backend is not None, f"{self.name}: curvature before build"
        ops = self._backend.ops
        d2u = self._squared_slope(d2y)
        h: dict[str, Array] = {}
        d2d = d2u
        if self.trainable:
            d = self._d
            summed = (0, *range(2, d2u.ndim))  # every spatial axis (issue 18)
            h["beta"] = xp.sum(d2u * (d * d), axis=summed)
            h["bias"] = xp.sum(d2u, axis=summed)
            beta = self.params["beta"]
            d2d = d2u * xp.reshape(beta * beta, (1, beta.shape[0], *((1,) * (d2u.ndim - 2))))
        if not need_input_grad:
            return None, h
        n = self.n
        if self.mode == "decimate":
            return self._unfit(ops.decimate_transpose(d2d, n)), h
        if self._inv_counts is not None:  # a padded block mean: (1 / count)^2 per block
            return self._unfit(ops.kron_upsample(d2d * (self._inv_counts**2), n)), h
        up = ops.kron_upsample(d2d, n)
        scale = 1.0 / float(n ** (2 * (d2d.ndim - 2)))  # the mean's (1 / n^d)^2 (issue 18)
        return self._unfit(up * scale if self.mode == "mean" else up), h

    def config(self) -> dict[str, Any]:
        config = {
            "n": self.n,
            "mode": self.mode,
            "activation": self.activation.config(),
            "trainable": self.trainable,
            "remainder": self.remainder,
        }
        if self.dims is not None:  # pinned (Subsampling1D, ...): kept through checkpoints
            config["dims"] = self.dims
        return config

    def __repr__(self) -> str:
        extra = "" if self.trainable else ", fixed"
        if self.remainder != "error":
            extra += f", remainder={self.remainder}"
        return f"Subsampling({self.n}, {self.mode}, {self.activation.name}{extra})"


def Subsampling1D(n: int = 2, mode: str = "sum", **options: Any) -> Subsampling:  # noqa: N802
    """A :class:`Subsampling` over ``(C, L)`` signals only: ``Subsampling(..., dims=1)``.

    Examples
    --------
    >>> from anycnn import Network
    >>> Network([Subsampling1D(3)], input_shape=(2, 12)).output_shape
    (2, 4)
    """
    return Subsampling(n, mode, dims=1, **options)


def Subsampling2D(n: int = 2, mode: str = "sum", **options: Any) -> Subsampling:  # noqa: N802
    """A :class:`Subsampling` over ``(C, H, W)`` maps only: ``Subsampling(..., dims=2)``.

    Examples
    --------
    >>> Subsampling2D(2, "mean")
    Subsampling(2, mean, identity)
    """
    return Subsampling(n, mode, dims=2, **options)


def Subsampling3D(n: int = 2, mode: str = "sum", **options: Any) -> Subsampling:  # noqa: N802
    """A :class:`Subsampling` over ``(C, D, H, W)`` volumes only: ``Subsampling(..., dims=3)``.

    Examples
    --------
    >>> from anycnn import Network
    >>> Network([Subsampling3D(2)], input_shape=(1, 4, 6, 8)).output_shape
    (1, 2, 3, 4)
    """
    return Subsampling(n, mode, dims=3, **options)
