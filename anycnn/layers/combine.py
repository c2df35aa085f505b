"""Learned combinations of feature maps (section 3.3 of the notes), optionally sparse (3.3.1).

Instead of a hand-made input-map table ``M_j`` (section 3.1), every output map ``j`` mixes all
input maps with learned weights ``alpha_ij`` that are a softmax over unconstrained ``c_ij``, and a
penalty ``Omega(alpha)`` added to the error can push each mixture towards a few input maps. A
learned mixture can be frozen into an explicit table with :func:`to_selection` and retrained with
a plain :class:`~anycnn.layers.Convolution`.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat
import numpy as np

from anycnn.layers.activations import get_activation
from anycnn.layers.base import Array, BuildContext, Layer, Shape
from anycnn.layers.conv import check_dims, kernel_sizes, sizes_str, spatial_dims

KERNELS = ("per_input", "per_pair")
SPARSITY = ("l1", "entropy")

# Note [The L1 penalty of 3.3.1 is constant]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The softmax makes every column alpha_:j non-negative with sum one, so the notes' penalty
# lambda sum_ij |alpha_ij| (eq. 11) equals lambda * C_out whatever c is, and its gradient by
# eq. (14), lambda (|alpha_i| - alpha_i sum_k |alpha_k|) = lambda (alpha_i - alpha_i * 1), is zero
# up to rounding. The layer implements eqs. (11)-(14) exactly as written (sparsity="l1", the
# default) and reports this value; it cannot make alpha sparser. sparsity="entropy" is NOT from
# the notes: lambda times the entropy -sum_i alpha_ij log alpha_ij of each column, which is zero
# exactly at a one-hot column, pushed through the softmax by the same chain rule, eq. (13).


def softmax_alpha(c: Array) -> Array:
    """``alpha_ij = exp(c_ij) / sum_k exp(c_kj)``: the softmax of section 3.3 over input maps.

    ``c`` is laid out ``(C_out, C_in)``, so the softmax runs along axis 1 (the input maps ``i``
    of each output map ``j``); the row maximum is subtracted first, so it never overflows.

    >>> import numpy as np
    >>> softmax_alpha(np.zeros((2, 4))).tolist()     # c = 0: every input map weighs 1/4
    [[0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]]
    """
    xp = array_api_compat.array_namespace(c)
    e = xp.exp(c - xp.max(c, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def to_selection(
    alphas: Any,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    shape: tuple[int, int] | None = None,
    where: str = "to_selection",
) -> np.ndarray:
    """Freeze learned mixing weights into a boolean input-map table ``M_j`` (section 3.1).

    Output map ``j`` keeps input map ``i`` when ``alphas[j, i] > threshold`` and, with ``top_k``,
    when ``i`` is among the ``top_k`` largest ``alphas[j, :]`` (ties go to the lower index); with
    both, both conditions hold. The result is what ``Convolution(maps, k, selection=table)``
    accepts, so a learned connectivity can be retrained as a fixed one.

    Parameters
    ----------
    alphas : array_like, shape (C_out, C_in)
        ``alpha`` laid out as the layer's ``c`` (:meth:`LearnedCombination.alpha`); NumPy or any
        backend's array (copied to the host).
    threshold : float in [0, 1), optional
    top_k : int in [1, C_in], optional
        At least one of ``threshold`` and ``top_k`` is required.
    shape : (int, int), optional
        The expected ``(C_out, C_in)``; checked when given.

    Returns
    -------
    numpy.ndarray of bool, shape (C_out, C_in)

    Raises
    ------
    ValueError
        ``alphas`` not 2-D, not of ``shape``, or not finite; neither ``threshold`` nor ``top_k``;
        either out of range; or a threshold that leaves output map(s) with no input map (the
        message names them and their largest alpha).

    >>> to_selection([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45]], threshold=0.3).astype(int)
    array([[1, 0, 0],
           [0, 1, 1]])
    """
    if array_api_compat.is_array_api_obj(alphas) and not isinstance(alphas, np.ndarray):
        from anycnn.backend import backend_of  # any backend's array: a host copy

        alphas = backend_of(alphas).to_host(alphas)  # one array: it cannot raise
    table = np.asarray(alphas, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"{where}: alphas must be a (C_out, C_in) table, got shape {table.shape}")
    if shape is not None and table.shape != tuple(shape):
        raise ValueError(
            f"{where}: alphas must have shape (C_out, C_in) = {tuple(shape)}, got {table.shape}"
        )
    if not np.isfinite(table).all():
        raise ValueError(f"{where}: alphas must be finite")
    if threshold is None and top_k is None:
        raise ValueError(f"{where}: give a threshold, a top_k, or both")
    c_out, c_in = table.shape
    keep = np.ones(table.shape, dtype=bool)
    if top_k is not None:
        if (
            isinstance(top_k, bool)
            or not isinstance(top_k, int | np.integer)
            or not (1 <= top_k <= c_in)
        ):
            raise ValueError(f"{where}: top_k must be an int in [1, {c_in}], got {top_k!r}")
        order = np.argsort(-table, kind="stable")[:, :top_k]  # along each row
        keep = np.zeros(table.shape, dtype=bool)
        np.put_along_axis(keep, order, True, axis=1)
    if threshold is not None:
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"{where}: threshold must be in [0, 1), got {threshold!r}")
        keep &= table > threshold
    empty = np.flatnonzero(~keep.any(axis=1))
    if empty.size:
        largest = ", ".join(f"{j}: {table[j].max():.3g}" for j in empty[:8])
        raise ValueError(
            f"{where}: threshold {threshold} leaves output map(s) {empty.tolist()} with no input "
            f"map (their largest alpha: {largest}); lower the threshold or use top_k"
        )
    return keep


class LearnedCombination(Layer):
    """``x_j = f(sum_i alpha_ij (x_i * k_i) + b_j)`` with ``alpha_:j = softmax(c_:j)`` (3.3).

    Every output map ``j`` is a convex combination, learned, of the 'valid' convolutions of all
    input maps. With ``lam > 0`` the error gets a sparsity penalty (section 3.3.1, eq. 11):
    ``E~ = E + Omega(alpha)``; :meth:`penalty` returns ``Omega`` and :meth:`backward` adds its
    gradient to ``dE/dc`` (the network's ``objective`` and ``compute_gradients`` report the
    total; ``loss_value`` stays the data term ``E``).

    Parameters
    ----------
    maps : int
        Number of output maps ``C_out``.
    kernel_size : int or (int, int)
        One int per spatial axis in 1-D and 3-D (an int: the same along every axis).
    kernels : {"per_input", "per_pair"}
        One kernel ``k_i`` per input map, shared by all output maps (the notes, 3.3), or one
        kernel ``k_ij`` per pair (as a convolution of 3.1, e.g. LeNet-5's C3).
    lam : float
        ``lambda`` of eq. (11), ``>= 0``; 0 (no penalty) by default.
    sparsity : {"l1", "entropy"}
        ``"l1"``: the notes' ``Omega = lambda sum_ij |alpha_ij|`` (eq. 11), with the gradient of
        eq. (14). It is constant on the softmax's simplex, so its gradient vanishes
        (``Note [The L1 penalty of 3.3.1 is constant]``). ``"entropy"`` (not in the notes):
        ``Omega = -lambda sum_ij alpha_ij log alpha_ij``, which does favour few input maps.
    activation : str or Activation
    init : {"glorot", "lecun"}
        Kernels uniform in ``+-sqrt(6 / (2 kh kw))`` or ``+-2.4 / (kh kw)``: the rules of
        :class:`~anycnn.layers.Convolution` for a convolution with one input and one output map,
        since ``alpha_:j`` sums to one and a unit sees a weighted *average* of single-map
        convolutions, not a sum. ``c`` starts at zero (``alpha = 1 / C_in``), ``b`` at zero.
    dims : {None, 1, 2, 3}
        The number of spatial axes; None takes it from the input shape (``(C, L)``,
        ``(C, H, W)`` or ``(C, D, H, W)``), as :class:`~anycnn.layers.Convolution` does.

    Parameters of the layer: ``c`` ``(C_out, C_in)`` (``c[j, i]`` is the notes' ``c_ij``: the
    table layout of :func:`~anycnn.layers.selection_table`); ``kernel`` ``(C_in, kh, kw)`` per
    input, ``(C_out, C_in, kh, kw)`` per pair, MATLAB ``conv2`` (flipped) orientation; ``bias``
    ``(C_out,)``.

    Computation: the convolutions ``x_i * k_i`` are never formed one by one. The layer is a
    convolution of 3.1 with the effective kernel ``K[j, i] = alpha_ij k_ij`` (``k_i`` per
    input), so the forward pass is one ``conv_valid`` and back-propagation one
    ``conv_kernel_grad`` (eq. 7: ``G = dE/dK``) and one ``conv_full`` (3.2.1: ``dE/dx``). Then

    * ``dE/dalpha_ij = sum_{u,v} (delta_j o (x_i * k_ij))_{uv} = <G[j, i], k_ij>`` (the formula of
      3.3 before eq. 9, evaluated through the adjoint identity
      ``<conv_valid(x, K), delta> = <K, conv_kernel_grad(x, delta)>``);
    * ``dE/dc_ij = alpha_ij (dE/dalpha_ij - sum_k dE/dalpha_kj alpha_kj)`` (eq. 10, from eqs. 8-9);
    * ``dE/dk_ij = alpha_ij G[j, i]``; per input ``dE/dk_i = sum_j alpha_ij G[j, i]``;
    * ``dE/db_j = sum_{u,v} (delta_j)_{uv}``; ``delta = f'(u) o dE/dy``;
    * with ``lam > 0``, ``dOmega/dc_ij = lambda (|alpha_ij| - alpha_ij sum_k |alpha_kj|)``
      (eq. 14, from eqs. 12-13) is added to ``dE/dc`` (3.3.1); for ``"entropy"``, eq. (13) with
      ``dOmega/dalpha = -lambda (log alpha + 1)`` gives
      ``-lambda alpha_ij (log alpha_ij - sum_k alpha_kj log alpha_kj)``.

    Raises
    ------
    ValueError
        A negative or non-finite ``lam`` (the message names lambda), an unknown ``kernels``,
        ``sparsity`` or ``init``; :class:`~anycnn.layers.LayerError` at build for an input that
        is not ``(C, H, W)`` maps or is smaller than the kernel.

    Examples
    --------
    >>> import anycnn
    >>> net = anycnn.Network([LearnedCombination(4, 3)], (2, 8, 8), dtype="float64")
    >>> alpha = net.layers[0].alpha()          # softmax(c) over the 2 input maps, per output
    >>> tuple(alpha.shape), float(alpha[0, 0])
    ((4, 2), 0.5)
    """

    kind = "conv"
    #: the number of input maps, known once built
    c_in: int

    def __init__(
        self,
        maps: int,
        kernel_size: int | tuple[int, ...],
        *,
        kernels: str = "per_input",
        lam: float = 0.0,
        sparsity: str = "l1",
        activation: Any = "sigmoid",
        init: str = "glorot",
        dims: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name)
        where = "LearnedCombination"
        if isinstance(maps, bool) or not isinstance(maps, int) or maps < 1:
            raise ValueError(f"{where}: maps must be a positive int, got {maps!r}")
        self.dims = check_dims(dims, where)
        self._kernel_spec = kernel_size
        sizes = kernel_sizes(kernel_size, self.dims, where)
        if kernels not in KERNELS:
            raise ValueError(f"{where}: kernels must be one of {KERNELS}, got {kernels!r}")
        if sparsity not in SPARSITY:
            raise ValueError(f"{where}: sparsity must be one of {SPARSITY}, got {sparsity!r}")
        if init not in ("glorot", "lecun"):
            raise ValueError(f"{where}: init must be 'glorot' or 'lecun', got {init!r}")
        if (
            isinstance(lam, bool)
            or not isinstance(lam, int | float)
            or not math.isfinite(lam)
            or lam < 0
        ):
            raise ValueError(
                f"{where}: the penalty weight lambda (lam) must be a finite number >= 0, "
                f"got {lam!r}"
            )
        self.maps, self.kernel_size = maps, sizes
        self.kernels, self.lam, self.sparsity = kernels, float(lam), sparsity
        self.activation = get_activation(activation)
        self.init = init

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        d = spatial_dims(self, input_shape, self.dims)
        c_in, *sizes = input_shape
        if len(self.kernel_size) != d:  # an int kernel size: one per axis of this input
            try:
                self.kernel_size = kernel_sizes(self._kernel_spec, d, "LearnedCombination")
            except ValueError as error:
                raise self.error(str(error).split(": ", 1)[-1]) from None
        ks = self.kernel_size
        if any(k > s for k, s in zip(ks, sizes, strict=True)):
            raise self.error(
                f"kernel {sizes_str(ks)} is larger than the {sizes_str(sizes)} input maps"
            )
        self.c_in = c_in
        self._ones = (1,) * d
        self._kernel_axes = tuple(range(2, 2 + d))
        volume = math.prod(ks)
        if self.init == "glorot":
            bound = math.sqrt(6.0 / (2 * volume))
        else:
            bound = 2.4 / volume
        shape = (c_in, *ks) if self.kernels == "per_input" else (self.maps, c_in, *ks)
        self.params["c"] = self._host_param(context, np.zeros((self.maps, c_in)))
        self.params["kernel"] = self._host_param(context, context.rng.uniform(-bound, bound, shape))
        self.params["bias"] = self._host_param(context, np.zeros(self.maps))
        return (self.maps, *(s - k + 1 for s, k in zip(sizes, ks, strict=True)))

    # -- the mixture ---------------------------------------------------------------------------
    def alpha(self) -> Array:
        """The current ``alpha`` ``(C_out, C_in)``, a backend array: ``softmax(c)`` per row."""
        return softmax_alpha(self.params["c"])

    def effective_kernel(self, alpha: Array | None = None) -> Array:
        """``K[j, i] = alpha_ij k_ij`` (``k_i`` per input): the layer as a 3.1 convolution."""
        xp = array_api_compat.array_namespace(self.params["kernel"])
        alpha = self.alpha() if alpha is None else alpha
        # per input, the kernels (C_in, *k) broadcast over the output maps like (1, C_in, *k)
        return xp.reshape(alpha, (*alpha.shape, *self._ones)) * self.params["kernel"]

    def selection(self, *, threshold: float | None = None, top_k: int | None = None) -> np.ndarray:
        """:func:`to_selection` of this layer's current ``alpha``: a ``(C_out, C_in)`` table."""
        return to_selection(
            self.alpha(),
            threshold=threshold,
            top_k=top_k,
            shape=(self.maps, self.c_in),
            where=self.describe(),
        )

    def penalty(self) -> Array:
        """``Omega(alpha)`` of eq. (11) as a 0-d backend array: ``lambda sum_ij |alpha_ij|``
        (``"l1"``, always ``lambda C_out``) or ``-lambda sum_ij alpha_ij log alpha_ij``."""
        xp = array_api_compat.array_namespace(self.params["c"])
        if self.sparsity == "l1":
            return self.lam * xp.sum(xp.abs(self.alpha()))
        log_alpha = self._log_alpha()
        return -self.lam * xp.sum(xp.exp(log_alpha) * log_alpha)

    def _log_alpha(self) -> Array:
        xp = array_api_compat.array_namespace(self.params["c"])
        shifted = self.params["c"] - xp.max(self.params["c"], axis=1, keepdims=True)
        return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))

    def _penalty_grad(self, alpha: Array) -> Array:
        """``dOmega/dc`` (C_out, C_in): eq. (14) for "l1", eq. (13) for "entropy"."""
        xp = array_api_compat.array_namespace(alpha)
        if self.sparsity == "l1":
            magnitude = xp.abs(alpha)  # eq. (12): dOmega/dalpha = lambda sign(alpha)
            return self.lam * (magnitude - alpha * xp.sum(magnitude, axis=1, keepdims=True))
        log_alpha = self._log_alpha()
        mean_log = xp.sum(alpha * log_alpha, axis=1, keepdims=True)
        return -self.lam * alpha * (log_alpha - mean_log)

    # -- computing -----------------------------------------------------------------------------
    def forward(self, x: Array) -> Array:
        xp = array_api_compat.array_namespace(x)
        self._x = x
        self._alpha = self.alpha()
        self._kernel = self.effective_kernel(self._alpha)
        assert self._backend is not None, f"{self.describe()}: build the layer first"
        u = self._backend.ops.conv_valid(x, self._kernel)
        u = u + xp.reshape(self.params["bias"], (1, self.maps, *self._ones))
        self._y = self.activation.forward(u)
        return self._y

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        xp = array_api_compat.array_namespace(dy)
        assert self._backend is not None, f"{self.describe()}: build the layer first"
        ops = self._backend.ops
        alpha, kernel = self._alpha, self.params["kernel"]
        delta = dy * self.activation.derivative(self._y)
        grad_k = ops.conv_kernel_grad(self._x, delta)  # dE/dK, eq. (7)
        axes, ones = self._kernel_axes, self._ones
        if self.kernels == "per_input":
            grad_alpha = xp.sum(grad_k * xp.reshape(kernel, (1, *kernel.shape)), axis=axes)
            weighted = grad_k * xp.reshape(alpha, (*alpha.shape, *ones))
            self.grads["kernel"] = xp.sum(weighted, axis=0)
        else:
            grad_alpha = xp.sum(grad_k * kernel, axis=axes)
            self.grads["kernel"] = grad_k * xp.reshape(alpha, (*alpha.shape, *ones))
        # eq. (10): softmax Jacobian (eq. 8) applied per output map, i.e. along axis 1.
        mean = xp.sum(grad_alpha * alpha, axis=1, keepdims=True)
        grad_c = alpha * (grad_alpha - mean)
        if self.lam:  # >= 0 (the constructor's check); 0: no penalty
            grad_c = grad_c + self._penalty_grad(alpha)  # 3.3.1: dE~/dc = dE/dc + dOmega/dc
        self.grads["c"] = grad_c
        self.grads["bias"] = xp.sum(delta, axis=(0, *axes))
        if not need_input_grad:
            return None
        return ops.conv_full(delta, self._kernel)  # 3.2.1 with the effective kernel

    def curvature(self, d2y: Array, need_input_grad: bool = True) -> tuple[Array | None, dict]:
        """Section 3.3 with squares (:meth:`Layer.curvature`): the effective kernel
        ``K = alpha k`` is a convolution, so ``h_K = conv_kernel_grad(x o x, d2u)``,
        ``h_k = sum_j alpha_ij^2 h_K[j, i]`` (per input) or ``alpha^2 h_K`` (per pair), and
        ``h_c[j, i] = sum d2u_j (du_j/dc_ij)^2`` with ``du_j/dc_ij = alpha_ij (x_i * k_ij -
        sum_m alpha_mj x_m * k_mj)`` (eqs. 8-10); the penalty ``Omega`` of 3.3.1 is left out."""
        xp = array_api_compat.array_namespace(d2y)
        assert self._backend is not None, f"{self.describe()}: build the layer first"
        ops = self._backend.ops
        d2u = self._squared_slope(d2y)
        x, alpha, kernel = self._x, self._alpha, self.params["kernel"]
        c_out, c_in = alpha.shape
        ones = (1,) * (x.ndim - 2)  # one per spatial axis (issue 18)
        spatial = tuple(range(2, x.ndim))
        alpha2 = xp.reshape(alpha * alpha, (c_out, c_in, *ones))
        h_eff = ops.conv_kernel_grad(x * x, d2u)  # (C_out, C_in, kh, kw), curvature of K = alpha k
        h: dict[str, Array] = {"bias": xp.sum(d2u, axis=(0, *spatial))}
        device = array_api_compat.device(x)
        if self.kernels == "per_input":
            h["kernel"] = xp.sum(alpha2 * h_eff, axis=0)
            # z_i = x_i * k_i, one map per input: a convolution with a diagonal input-map table.
            eye = xp.eye(c_in, dtype=xp.bool, device=device)
            diagonal = xp.reshape(kernel, (c_in, 1, *kernel.shape[1:])) * xp.ones(
                (1, c_in, *ones), dtype=kernel.dtype, device=device
            )
            z = ops.conv_valid(x, diagonal, eye)  # (N, C_in, oh, ow)
            v = ops.conv_valid(x, self._kernel)  # (N, C_out, oh, ow) = sum_i alpha_ij z_i
            a = xp.tensordot(d2u, z * z, axes=([0, *spatial], [0, *spatial]))  # (C_out, C_in)
            b = xp.tensordot(d2u * v, z, axes=([0, *spatial], [0, *spatial]))
            c = xp.sum(d2u * v * v, axis=(0, *spatial))[:, None]
        else:
            h["kernel"] = alpha2 * h_eff
            # z_ji = x_i * k_ji for every pair: C_out * C_in maps.
            expand = xp.reshape(kernel, (c_out * c_in, 1, *kernel.shape[2:])) * xp.ones(
                (1, c_in, *ones), dtype=kernel.dtype, device=device
            )
            eye = xp.eye(c_in, dtype=xp.bool, device=device)
            table = xp.reshape(
                xp.broadcast_to(eye[None, :, :], (c_out, c_in, c_in)), (c_out * c_in, c_in)
            )
            z = ops.conv_valid(x, expand, table)  # (N, C_out*C_in, oh, ow)
            z = xp.reshape(z, (z.shape[0], c_out, c_in, *z.shape[2:]))
            v = xp.expand_dims(ops.conv_valid(x, self._kernel), axis=2)
            d = xp.expand_dims(d2u, axis=2)
            a = xp.sum(d * z * z, axis=(0, *range(3, 3 + len(ones))))
            b = xp.sum(d * v * z, axis=(0, *range(3, 3 + len(ones))))
            c = xp.sum(d * v * v, axis=(0, *range(3, 3 + len(ones))))
        # (du_j/dc_ij)^2 = alpha_ij^2 (z_ij - v_j)^2 = alpha^2 (z^2 - 2 z v + v^2), times d2u_j
        h["c"] = (alpha * alpha) * (a - 2.0 * b + c)
        kernel_eff = self._kernel
        return (ops.conv_full(d2u, kernel_eff * kernel_eff) if need_input_grad else None), h

    # -- description ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        config = {
            "maps": self.maps,
            "kernel_size": list(self.kernel_size),
            "kernels": self.kernels,
            "lam": self.lam,
            "sparsity": self.sparsity,
            "activation": self.activation.config(),
            "init": self.init,
        }
        if self.dims is not None:
            config["dims"] = self.dims
        return config

    def __repr__(self) -> str:
        penalty = f", {self.sparsity} lambda={self.lam:g}" if self.lam else ""
        return (
            f"LearnedCombination({self.maps}@{sizes_str(self.kernel_size)}, {self.kernels}"
            f"{penalty}, {self.activation.name})"
        )


__all__ = ["KERNELS", "SPARSITY", "LearnedCombination", "softmax_alpha", "to_selection"]
