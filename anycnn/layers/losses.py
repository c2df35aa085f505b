"""Loss functions: squared error (eq. 1) and softmax cross-entropy (section 4.3).

Both report the mean over the batch of the per-pattern error ``E^n`` (so a learning rate does not
depend on the batch size, as in DeepLearnToolbox), and return ``dE/dy`` for the output layer,
which multiplies it by ``f'(u^L)`` to get ``delta^L = f'(u^L) o (y - t)`` (section 2.2).
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

Array = Any


class Loss:
    """Base class of the losses: :meth:`value` (the batch mean of ``E^n``) and :meth:`gradient`
    (``dE/dy``); the network's last layer feeds them its outputs ``y`` and the targets ``t``.

    Examples
    --------
    A new loss gives both (here the mean absolute error):

    >>> import numpy as np, anycnn
    >>> from anycnn.layers import Loss
    >>> class AbsoluteError(Loss):
    ...     name = "absolute_error"
    ...     def value(self, y, t): return anycnn.get_backend().xp.sum(abs(y - t)) / y.shape[0]
    ...     def gradient(self, y, t): return anycnn.get_backend().xp.sign(y - t) / y.shape[0]
    >>> be = anycnn.get_backend()
    >>> y = be.asarray(np.array([[1.0, -1.0]]), "float64")
    >>> t = be.asarray(np.zeros((1, 2)), "float64")
    >>> float(AbsoluteError().value(y, t)), AbsoluteError()
    (2.0, AbsoluteError())
    """

    name = "loss"

    def value(self, y: Array, t: Array) -> Array:
        """The mean over the batch of ``E^n``, as a 0-d array of the backend (no host sync)."""
        raise NotImplementedError

    def gradient(self, y: Array, t: Array) -> Array:
        """``dE/dy`` for the mean error, shape of ``y``."""
        raise NotImplementedError

    def value_and_gradient(self, y: Array, t: Array) -> tuple[Array, Array]:
        """``(value(y, t), gradient(y, t))``, the same bits; a loss may share the work of the
        two (a training step needs both: ``Network.compute_gradients``), as long as neither
        method is replaced (:meth:`_shares`)."""
        return self.value(y, t), self.gradient(y, t)

    def _shares(self, cls: type) -> bool:
        """Whether ``value`` and ``gradient`` are ``cls``'s own, not a subclass's or an
        instance's replacement, whose results a shared computation would not give."""
        own = vars(self)
        return (
            type(self).value is cls.value
            and type(self).gradient is cls.gradient
            and "value" not in own
            and "gradient" not in own
        )

    def curvature(self, y: Array, t: Array) -> Array:
        """The diagonal of ``d^2 E^n / dy^2`` for each pattern, shape of ``y``: where LeCun's
        diagonal Gauss-Newton pass starts (``Note [Diagonal Gauss-Newton curvature]`` in
        :mod:`anycnn.training.optim`; SDLM needs it).

        Raises
        ------
        NotImplementedError
            In this base class: a loss without a second derivative (SDLM cannot use it).
        """
        raise NotImplementedError(
            f"diagonal_hessian: no second derivative for the loss {self.name!r}; give it a "
            "method curvature(y, t) -> the diagonal of d^2 E^n / dy^2 per pattern"
        )

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SquaredError(Loss):
    """``E^n = 1/2 sum_k (t_k^n - y_k^n)^2`` (eq. 1), averaged over the batch.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import SquaredError
    >>> be = anycnn.get_backend()
    >>> y = be.asarray(np.array([[1.0, 0.0], [0.0, 0.0]]), "float64")
    >>> t = be.asarray(np.array([[0.0, 0.0], [0.0, 2.0]]), "float64")
    >>> float(SquaredError().value(y, t))                    # (1/2 (1 + 4)) / 2 patterns
    1.25
    >>> be.to_host(SquaredError().gradient(y, t)).tolist()
    [[0.5, 0.0], [0.0, -1.0]]
    """

    name = "squared_error"

    def value(self, y: Array, t: Array) -> Array:
        xp = array_api_compat.array_namespace(y, t)
        e = y - t
        return xp.sum(e * e) * (0.5 / y.shape[0])

    def gradient(self, y: Array, t: Array) -> Array:
        return (y - t) * (1.0 / y.shape[0])

    def value_and_gradient(self, y: Array, t: Array) -> tuple[Array, Array]:
        if not self._shares(SquaredError):
            return super().value_and_gradient(y, t)
        xp = array_api_compat.array_namespace(y, t)
        e = y - t
        return xp.sum(e * e) * (0.5 / y.shape[0]), e * (1.0 / y.shape[0])

    def curvature(self, y: Array, t: Array) -> Array:
        """``d^2 E^n / dy_k^2 = 1``."""
        xp = array_api_compat.array_namespace(y, t)
        return xp.ones_like(y)


class CrossEntropy(Loss):
    """Softmax cross-entropy ``E^n = -sum_k t_k log softmax(y)_k`` (section 4.3), batch mean.

    Use it with a linear (identity) output layer: then ``delta^L = softmax(y) - t``. The
    log-softmax subtracts the row maximum, so large outputs do not overflow; where the logits'
    spread exceeds the dtype's range (``[3e38, 0, -3e38]`` in float32) a log-probability is
    ``-inf``, its probability exactly 0, and the terms with ``t_k = 0`` are left out of the sum
    (the limit ``0 log 0 = 0``) instead of giving ``0 x -inf = NaN``.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import CrossEntropy
    >>> be = anycnn.get_backend()
    >>> y = be.asarray(np.array([[0.0, 0.0]]), "float64")        # logits: softmax = (1/2, 1/2)
    >>> t = be.asarray(np.array([[1.0, 0.0]]), "float64")
    >>> round(float(CrossEntropy().value(y, t)), 6)          # log 2
    0.693147
    >>> be.to_host(CrossEntropy().gradient(y, t)).tolist()  # softmax(y) - t
    [[-0.5, 0.5]]
    """

    name = "cross_entropy"

    @staticmethod
    def _log_softmax(y: Array) -> Array:
        xp = array_api_compat.array_namespace(y)
        # y - max overflows to -inf when the spread passes the dtype's largest value: exp gives
        # 0, the right probability, so NumPy's warning for it is silenced.
        with np.errstate(over="ignore"):
            shifted = y - xp.max(y, axis=1, keepdims=True)
        return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))

    def value(self, y: Array, t: Array) -> Array:
        xp = array_api_compat.array_namespace(y, t)
        return self._value(xp, self._log_softmax(y), t)

    @staticmethod
    def _value(xp: Any, log_p: Array, t: Array) -> Array:
        log_p = xp.where(t != 0, log_p, xp.zeros_like(log_p))  # 0 log 0 = 0, never 0 x -inf
        return -xp.sum(t * log_p) * (1.0 / t.shape[0])

    def gradient(self, y: Array, t: Array) -> Array:
        xp = array_api_compat.array_namespace(y, t)
        return self._gradient(xp, self._log_softmax(y), t)

    @staticmethod
    def _gradient(xp: Any, log_p: Array, t: Array) -> Array:
        p = xp.exp(log_p)
        return (p * xp.sum(t, axis=1, keepdims=True) - t) * (1.0 / t.shape[0])

    def value_and_gradient(self, y: Array, t: Array) -> tuple[Array, Array]:
        """One log-softmax for both (the same bits as :meth:`value` and :meth:`gradient`)."""
        if not self._shares(CrossEntropy):
            return super().value_and_gradient(y, t)
        xp = array_api_compat.array_namespace(y, t)
        log_p = self._log_softmax(y)
        return self._value(xp, log_p, t), self._gradient(xp, log_p, t)

    def curvature(self, y: Array, t: Array) -> Array:
        """``(sum_k t_k) p (1 - p)`` with ``p = softmax(y)``: the diagonal of
        ``(sum_k t_k) (diag(p) - p p^T)``."""
        xp = array_api_compat.array_namespace(y, t)
        shifted = y - xp.max(y, axis=1, keepdims=True)
        p = xp.exp(shifted)
        p = p / xp.sum(p, axis=1, keepdims=True)
        return xp.sum(t, axis=1, keepdims=True) * (p * (1.0 - p))


LOSSES: dict[str, type[Loss]] = {
    "squared_error": SquaredError,
    "mse": SquaredError,
    "cross_entropy": CrossEntropy,
}


def get_loss(spec: str | Loss | dict[str, Any]) -> Loss:
    """A loss from a name (``"squared_error"``, ``"cross_entropy"``), config dict or instance.

    >>> get_loss("mse").name, get_loss({"name": "cross_entropy"}).name
    ('squared_error', 'cross_entropy')
    """
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, dict):
        spec = spec["name"]
    if isinstance(spec, str) and spec.lower() in LOSSES:
        return LOSSES[spec.lower()]()
    raise ValueError(f"unknown loss {spec!r}; known: squared_error, cross_entropy")
