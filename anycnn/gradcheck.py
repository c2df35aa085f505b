"""Finite-difference checks of back-propagation (section 4.4 of the notes).

For one batch, every checked parameter entry ``w_i`` gets the central difference
``(E(w_i + eps) - E(w_i - eps)) / (2 eps)`` and is compared with the gradient that
back-propagation returns. Large tensors are checked on a random sample of entries plus one
directional derivative along a random unit vector, which touches every entry at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anycnn.network import Network


@dataclass
class ParameterCheck:
    """The outcome for one parameter.

    ``max_relative_error`` is ``max_i |numeric_i - backprop_i| / scale`` over the checked entries
    and the directional derivative, with ``scale`` the largest of ``max |backprop|`` over the
    tensor, ``max |numeric|`` and ``floor``: relative to the tensor's own magnitude, so entries
    whose true gradient is ~0 do not divide by ~0.
    """

    name: str
    entries: int
    max_relative_error: float
    max_abs_error: float
    scale: float


@dataclass
class GradcheckReport:
    checks: list[ParameterCheck] = field(default_factory=list)
    tolerance: float = 1e-6
    loss: float = float("nan")

    @property
    def max_relative_error(self) -> float:
        return max((c.max_relative_error for c in self.checks), default=0.0)

    @property
    def passed(self) -> bool:
        return all(c.max_relative_error <= self.tolerance for c in self.checks)

    def failures(self) -> list[ParameterCheck]:
        return [c for c in self.checks if c.max_relative_error > self.tolerance]

    def __str__(self) -> str:
        lines = [f"{'parameter':<22}{'entries':>8}{'max rel err':>14}{'max abs err':>14}"]
        for c in self.checks:
            flag = "" if c.max_relative_error <= self.tolerance else "  FAIL"
            lines.append(
                f"{c.name:<22}{c.entries:>8}{c.max_relative_error:>14.3e}"
                f"{c.max_abs_error:>14.3e}{flag}"
            )
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{verdict}: max relative error {self.max_relative_error:.3e} "
            f"(tolerance {self.tolerance:.1e}), loss {self.loss:.6g}"
        )
        return "\n".join(lines)


def gradcheck(
    network: Network,
    x: Any,
    t: Any,
    *,
    eps: float = 1e-4,
    order: int = 4,
    max_entries: int = 40,
    tolerance: float = 1e-6,
    seed: int = 0,
    floor: float = 1e-10,
    parameters: list[str] | None = None,
) -> GradcheckReport:
    """Check back-propagation against central differences for every parameter.

    Parameters
    ----------
    network : Network
        Best in float64: float32 rounding swamps differences of size ``eps``.
    x, t : arrays of the network's backend
        One batch and its targets.
    eps : float
        The step.
    order : {2, 4}
        2 is the notes' formula ``(E(w + eps) - E(w - eps)) / (2 eps)``, whose truncation error
        ``O(eps^2)`` forces a small step and so a rounding error ``O(1e-16 E / eps)`` that is
        already ~1e-6 relative for LeNet-5's small gradients at ``eps = 1e-6``. 4 (default) is
        the fourth-order central difference
        ``(-E(w + 2 eps) + 8 E(w + eps) - 8 E(w - eps) + E(w - 2 eps)) / (12 eps)``: truncation
        ``O(eps^4)`` allows ``eps = 1e-4`` and leaves ~1e-9 relative error in float64.
    max_entries : int
        Entries checked per parameter; tensors with more are sampled at random (with ``seed``).
    tolerance : float
        The largest relative error that passes.
    parameters : list of str, optional
        Names to check; all by default.

    Returns
    -------
    GradcheckReport
        Per-parameter maximum relative error; ``report.passed``; ``print(report)`` for a table.
    """
    if order not in (2, 4):
        raise ValueError(f"gradcheck: order must be 2 or 4, got {order!r}")
    backend = network.backend
    rng = np.random.default_rng(seed)
    loss = float(network.compute_gradients(x, t))
    analytic = {k: backend.to_host(v).astype(np.float64) for k, v in network.gradients().items()}
    params = network.parameters()
    names = list(params) if parameters is None else parameters
    report = GradcheckReport(tolerance=tolerance, loss=loss)

    def loss_at(name: str, value: np.ndarray) -> float:
        network.set_parameter(name, backend.asarray(value, dtype=network.dtype_name), check=False)
        return float(network.objective(network.forward(x, check=False), t))  # E + Omega

    def derivative(name: str, base: np.ndarray, step: np.ndarray) -> float:
        """Central difference of E along ``step`` (whose norm is eps)."""
        first = loss_at(name, base + step) - loss_at(name, base - step)
        if order == 2:
            return first / (2 * eps)
        second = loss_at(name, base + 2 * step) - loss_at(name, base - 2 * step)
        return (8 * first - second) / (12 * eps)

    for name in names:
        if name not in params:
            raise KeyError(f"gradcheck: no parameter {name!r}; parameters: {', '.join(params)}")
        original = params[name]
        base = backend.to_host(original).astype(np.float64)
        grad = analytic[name]
        flat_size = base.size
        picks = (
            np.arange(flat_size)
            if flat_size <= max_entries
            else rng.choice(flat_size, size=max_entries, replace=False)
        )
        numeric, expected = [], []
        try:
            for index in picks:
                step = np.zeros(flat_size)
                step[index] = eps
                step = step.reshape(base.shape)
                numeric.append(derivative(name, base, step))
                expected.append(grad.reshape(-1)[index])
            if flat_size > max_entries:  # one directional derivative covers every entry
                direction = rng.standard_normal(base.shape)
                direction /= np.linalg.norm(direction)
                numeric.append(derivative(name, base, eps * direction))
                expected.append(float(np.sum(grad * direction)))
        finally:
            network.set_parameter(name, original, check=False)
        numeric_a, expected_a = np.asarray(numeric), np.asarray(expected)
        scale = max(
            float(np.abs(grad).max(initial=0.0)), float(np.abs(numeric_a).max(initial=0.0)), floor
        )
        abs_err = float(np.abs(numeric_a - expected_a).max(initial=0.0))
        report.checks.append(ParameterCheck(name, len(numeric), abs_err / scale, abs_err, scale))
    return report
