"""Finite-difference checks of back-propagation (section 4.4 of the notes).

For one batch, every checked parameter entry ``w_i`` gets the central difference
``(E(w_i + eps) - E(w_i - eps)) / (2 eps)`` and is compared with the gradient that
back-propagation returns. Large tensors are checked on a random sample of entries plus one
directional derivative along a random unit vector, which touches every entry at once.

Note [Float32 gradient checks]: the differences are taken in float64 even for a float32
network. A difference quotient of float32 losses cannot check anything: ``E`` carries a
rounding error of about ``2^-24 |E|``, and dividing a difference of two such values by
``2 eps`` gives an error of about ``6e-8 |E| / eps`` -- for LeNet-5 (``E ~ 1``, gradients
~1e-3, ``eps = 1e-4``) more than the gradient itself, whatever the back-propagation does
(``anycnn gradcheck --model dlt --dtype float32`` reported 0.36 relative error although float32
back-propagation agrees with float64 to 4e-7). A larger step does not rescue it: the
fourth-order formula's best step for float32 is ``(2^-24)^(1/5) ~ 0.04``, where the truncation
error of a tanh network is already ~1e-4 relative and the rounding error still ~1e-5 / |g|.
So the check builds a float64 copy of the network with the float32 parameters converted
exactly, and differentiates that copy at the float32 point: the numeric side is then the true
derivative of the float32 network's function to ~1e-9, and what is left is the float32
back-propagation's own rounding, ~1e-6 relative. A float32 check therefore passes at
``tolerance = 1e-4`` (the CLI's float32 default) and still catches a 1% error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from anycnn.network import Network

#: The default tolerance by the network's dtype (Note [Float32 gradient checks]).
DEFAULT_TOLERANCE = {"float64": 1e-6, "float32": 1e-4}


@dataclass
class ParameterCheck:
    """The outcome for one parameter.

    ``max_relative_error`` is ``max_i |numeric_i - backprop_i| / scale`` over the checked entries
    and the directional derivative, with ``scale`` the largest of ``max |backprop|`` over the
    tensor, ``max |numeric|`` and ``floor``: relative to the tensor's own magnitude, so entries
    whose true gradient is ~0 do not divide by ~0.

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn import Convolution, Flatten, FullyConnected, Network
    >>> from anycnn.gradcheck import gradcheck
    >>> net = Network([Convolution(2, 2, activation="tanh"), Flatten(), FullyConnected(2)],
    ...               input_shape=(1, 3, 3), dtype="float64")
    >>> x = net.backend.asarray(np.linspace(-1, 1, 18).reshape(2, 1, 3, 3), dtype="float64")
    >>> t = net.backend.asarray(np.eye(2), dtype="float64")
    >>> report = gradcheck(net, x, t)
    >>> check = report.checks[0]
    >>> check.name, check.entries, check.max_relative_error < 1e-6
    ('conv1.kernel', 8, True)
    """

    name: str
    entries: int
    max_relative_error: float
    max_abs_error: float
    scale: float


@dataclass
class GradcheckReport:
    """What :func:`gradcheck` returns: one :class:`ParameterCheck` per parameter, the
    ``tolerance``, the ``loss`` at the checked point; ``passed``, ``failures()`` and a table
    (``print(report)``).

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> from anycnn.gradcheck import gradcheck
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")
    >>> x = net.backend.asarray(np.linspace(-1, 1, 8).reshape(2, 1, 2, 2), dtype="float64")
    >>> report = gradcheck(net, x, net.backend.asarray(np.eye(2), dtype="float64"))
    >>> report.passed, report.failures(), report.tolerance
    (True, [], 1e-06)
    >>> print(report)
    parameter  entries  max rel err  max abs err
    fc1.weight       8  ...
    fc1.bias         2  ...
    PASS: max relative error ... (tolerance 1.0e-06), loss ...
    """

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
    tolerance: float | None = None,
    seed: int = 0,
    floor: float = 1e-10,
    parameters: list[str] | None = None,
    numeric_dtype: str | None = "float64",
) -> GradcheckReport:
    """Check back-propagation against central differences for every parameter.

    Parameters
    ----------
    network : Network
        Its back-propagation is checked in its own dtype; the finite differences are taken in
        ``numeric_dtype``.
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
    tolerance : float, optional
        The largest relative error that passes; by default 1e-6 for a float64 network and
        1e-4 for a float32 one (its back-propagation rounds to ~1e-6 relative).
    parameters : list of str, optional
        Names to check; all by default.
    numeric_dtype : str or None, default "float64"
        The dtype of the finite differences. A network of another dtype (float32) is copied
        into this one (its parameters and ``x``, ``t`` converted exactly, on the same backend)
        and the copy is differentiated: Note [Float32 gradient checks]. None differentiates
        the network itself in its own dtype.

    Returns
    -------
    GradcheckReport
        Per-parameter maximum relative error; ``report.passed``; ``print(report)`` for a table.

    Examples
    --------
    A tiny network on the current backend, in float64:

    >>> import numpy as np
    >>> from anycnn import Convolution, Flatten, FullyConnected, Network
    >>> from anycnn.gradcheck import gradcheck
    >>> net = Network([Convolution(2, 2, activation="tanh"), Flatten(), FullyConnected(2)],
    ...               input_shape=(1, 3, 3), dtype="float64")
    >>> x = net.backend.asarray(np.linspace(-1, 1, 18).reshape(2, 1, 3, 3), dtype="float64")
    >>> t = net.backend.asarray(np.eye(2), dtype="float64")
    >>> report = gradcheck(net, x, t)
    >>> report.passed, [check.name for check in report.checks]
    (True, ['conv1.kernel', 'conv1.bias', 'fc2.weight', 'fc2.bias'])
    """
    if order not in (2, 4):
        raise ValueError(f"gradcheck: order must be 2 or 4, got {order!r}")
    backend = network.backend
    rng = np.random.default_rng(seed)
    loss = float(network.compute_gradients(x, t))
    analytic = {k: backend.to_host(v).astype(np.float64) for k, v in network.gradients().items()}
    names = list(network.parameters()) if parameters is None else parameters
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE.get(network.dtype_name, 1e-6)
    report = GradcheckReport(tolerance=tolerance, loss=loss)
    # Note [Float32 gradient checks]: the differences are taken on a float64 twin.
    probe, px, pt = network, x, t
    if numeric_dtype is not None and numeric_dtype != network.dtype_name:
        probe = Network.from_config(
            network.config(),
            extra_state=network.extra_state(),
            backend=backend,
            dtype=numeric_dtype,
        )
        for name, value in network.parameters().items():
            exact = backend.asarray(backend.to_host(value), dtype=numeric_dtype)
            probe.set_parameter(name, exact, check=False)
        px = backend.asarray(backend.to_host(x), dtype=numeric_dtype)
        pt = backend.asarray(backend.to_host(t), dtype=numeric_dtype)
    params = probe.parameters()

    def loss_at(name: str, value: np.ndarray) -> float:
        probe.set_parameter(name, backend.asarray(value, dtype=probe.dtype_name), check=False)
        return float(probe.objective(probe.forward(px, check=False), pt))  # E + Omega

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
            probe.set_parameter(name, original, check=False)
        numeric_a, expected_a = np.asarray(numeric), np.asarray(expected)
        scale = max(
            float(np.abs(grad).max(initial=0.0)), float(np.abs(numeric_a).max(initial=0.0)), floor
        )
        abs_err = float(np.abs(numeric_a - expected_a).max(initial=0.0))
        report.checks.append(ParameterCheck(name, len(numeric), abs_err / scale, abs_err, scale))
    return report
