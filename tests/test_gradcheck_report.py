"""gradcheck's own arithmetic and report, against an independent finite-difference oracle
(issue 22: the mutation campaign's survivors in anycnn/gradcheck.py). The checks elsewhere only
ask whether a correct network passes and a wrong one fails; here each number the report holds
(entries, the sampled entries and the directional derivative, the two difference formulas, the
scale with its floor, the absolute error, the loss) and the table it prints are pinned."""

from __future__ import annotations

import numpy as np
import pytest

from anycnn.gradcheck import DEFAULT_TOLERANCE, GradcheckReport, ParameterCheck, gradcheck
from anycnn.layers import Flatten, FullyConnected
from anycnn.network import Network


def _net(dtype="float64"):
    net = Network([Flatten(), FullyConnected(3, activation="tanh")], (1, 2, 3), dtype=dtype, seed=1)
    rng = np.random.default_rng(5)
    x = net.backend.asarray(rng.standard_normal((4, 1, 2, 3)), dtype=dtype)
    t = net.backend.asarray(rng.uniform(-0.5, 0.5, (4, 3)), dtype=dtype)
    return net, x, t


def _oracle(net, x, t, *, eps, order, max_entries, seed, floor=1e-10):
    """The documented procedure, written again: per parameter, the entries (all, or a sample of
    ``max_entries`` drawn without replacement plus one unit direction, from one generator seeded
    with ``seed``), the central differences of E + Omega of the given order, and the errors
    relative to the largest of max |backprop|, max |numeric| and ``floor``."""
    be = net.backend
    net.compute_gradients(x, t)
    grads = {k: be.to_host(v).astype(np.float64) for k, v in net.gradients().items()}
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in net.parameters().items():
        base = be.to_host(value).astype(np.float64)

        def energy(w, name=name):
            net.set_parameter(name, be.asarray(w, dtype="float64"), check=False)
            return float(net.objective(net.forward(x), t))

        def slope(step, base=base, energy=energy):
            one = energy(base + step) - energy(base - step)
            if order == 2:
                return one / (2 * eps)
            two = energy(base + 2 * step) - energy(base - 2 * step)
            return (8 * one - two) / (12 * eps)

        if base.size <= max_entries:
            picks = range(base.size)
        else:
            picks = rng.choice(base.size, size=max_entries, replace=False)
        numeric, expected = [], []
        for i in picks:
            step = np.zeros(base.size)
            step[i] = eps
            numeric.append(slope(step.reshape(base.shape)))
            expected.append(grads[name].reshape(-1)[i])
        if base.size > max_entries:
            u = rng.standard_normal(base.shape)
            u /= np.linalg.norm(u)
            numeric.append(slope(eps * u))
            expected.append(float(np.sum(grads[name] * u)))
        net.set_parameter(name, be.asarray(base, dtype="float64"), check=False)
        numeric, expected = np.array(numeric), np.array(expected)
        scale = max(np.abs(grads[name]).max(), np.abs(numeric).max(), floor)
        abs_err = np.abs(numeric - expected).max()
        out[name] = (len(numeric), abs_err, scale)
    return out


@pytest.mark.parametrize("order", [2, 4])
@pytest.mark.parametrize("max_entries", [4, 40])
def test_every_number_of_the_report_against_the_procedure_written_again(order, max_entries):
    net, x, t = _net()
    eps = 1e-3
    report = gradcheck(net, x, t, eps=eps, order=order, max_entries=max_entries, seed=3)
    oracle = _oracle(net, x, t, eps=eps, order=order, max_entries=max_entries, seed=3)
    assert [c.name for c in report.checks] == list(oracle)
    for check in report.checks:
        entries, abs_err, scale = oracle[check.name]
        assert check.entries == entries, check.name
        assert check.max_abs_error == pytest.approx(abs_err, rel=1e-6, abs=1e-15), check.name
        assert check.scale == pytest.approx(scale, rel=1e-12), check.name
        assert check.max_relative_error == pytest.approx(abs_err / scale, rel=1e-6, abs=1e-15)
    # the sampled weight (18 entries) gets max_entries plus the direction; the bias (3) all
    assert [c.entries for c in report.checks] == [min(18, max_entries + 1), 3]
    # a step as large as 1e-3 leaves the second-order formula an error the fourth removes
    worst = max(c.max_abs_error for c in report.checks)
    assert (worst > 1e-9) if order == 2 else (worst < 1e-9)
    assert report.loss == pytest.approx(float(net.compute_gradients(x, t)), rel=1e-15)


def test_the_scale_floor_when_the_gradient_is_zero():
    net, x, t = _net()
    x = x * 0  # no input: the weights' gradient (x times the deltas) is exactly zero
    report = gradcheck(net, x, t, floor=0.25)
    weight, bias = report.checks
    assert weight.scale == 0.25 and weight.max_abs_error == 0.0
    assert bias.scale > 0.25 or bias.scale == 0.25


def test_the_default_tolerance_follows_the_dtype():
    assert DEFAULT_TOLERANCE == {"float64": 1e-6, "float32": 1e-4}
    net, x, t = _net("float32")
    report = gradcheck(net, x, t)
    assert report.tolerance == 1e-4 and report.passed
    # differences taken in float32 itself cannot check anything (Note [Float32 gradient checks])
    raw = gradcheck(net, x, t, numeric_dtype=None, eps=1e-4)
    assert raw.max_relative_error > 10 * report.max_relative_error
    assert gradcheck(net, x, t, tolerance=0.5).tolerance == 0.5


def test_the_table_and_the_verdict():
    checks = [
        ParameterCheck("conv1.kernel", 8, 2.5e-7, 1.25e-8, 0.05),
        ParameterCheck("fc2.bias", 2, 3e-6, 6e-9, 2e-3),
        ParameterCheck("fc2.weight", 12, 1e-6, 4e-9, 4e-3),  # exactly at the tolerance: passes
    ]
    report = GradcheckReport(checks=checks, tolerance=1e-6, loss=0.6931471805599453)
    assert str(report).splitlines() == [
        "parameter              entries   max rel err   max abs err",
        "conv1.kernel                 8     2.500e-07     1.250e-08",
        "fc2.bias                     2     3.000e-06     6.000e-09  FAIL",
        "fc2.weight                  12     1.000e-06     4.000e-09",
        "FAIL: max relative error 3.000e-06 (tolerance 1.0e-06), loss 0.693147",
    ]
    assert report.failures() == [checks[1]]
    assert not report.passed
    assert report.max_relative_error == 3e-6
    passing = GradcheckReport(checks=[checks[0], checks[2]], tolerance=1e-6, loss=2.0)
    assert passing.passed and passing.failures() == []
    assert str(passing).splitlines()[-1] == (
        "PASS: max relative error 1.000e-06 (tolerance 1.0e-06), loss 2"
    )
    empty = GradcheckReport()
    assert empty.passed and empty.max_relative_error == 0.0 and empty.tolerance == 1e-6
    assert str(empty).splitlines()[-1].startswith("PASS: max relative error 0.000e+00")


def test_the_documented_defaults_of_the_sample():
    """max_entries=40 (a 48-entry weight: 40 sampled plus the direction) and seed=0 (the same
    sample as seed=0 given, not seed=1's)."""
    net = Network(
        [Flatten(), FullyConnected(3, activation="tanh")], (1, 4, 4), dtype="float64", seed=2
    )
    rng = np.random.default_rng(6)
    x = net.backend.asarray(rng.standard_normal((2, 1, 4, 4)), dtype="float64")
    t = net.backend.asarray(rng.uniform(-0.5, 0.5, (2, 3)), dtype="float64")
    default = gradcheck(net, x, t, eps=1e-2, order=2)
    assert [c.entries for c in default.checks] == [41, 3]
    same = gradcheck(net, x, t, eps=1e-2, order=2, seed=0, max_entries=40)
    other = gradcheck(net, x, t, eps=1e-2, order=2, seed=1, max_entries=40)
    assert default.checks[0].max_abs_error == same.checks[0].max_abs_error
    assert default.checks[0].max_abs_error != other.checks[0].max_abs_error
