"""What the NumPy plugin's activation ops promise (issue 22: survivors of the mutation campaigns
in backends/anycnn_numpy/_activation.py, tests/MUTATION.md): the bits of the activation's own
methods for every constant of its description (the in-place programs skip only a product by
exactly 1, which is exact), and an activation without a description runs its own methods."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _activation  # noqa: E402

from anycnn.layers.activations import ReLU, Sigmoid, Tanh  # noqa: E402

# constants of 1 (skipped: exact), 2 and 0.5 (not skipped: a product that changes the bits
# of nothing but a power of two would still change the values)
ACTIVATIONS = [
    Sigmoid(1.0),
    Sigmoid(2.0),
    Sigmoid(0.5),
    Tanh(1.0, 1.0),
    Tanh(2.0, 0.5),
    Tanh(0.5, 2.0),
    Tanh(1.7159, 2.0 / 3.0),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=repr)
def test_f_in_place_is_the_activations_own_bits_for_every_constant(activation, dtype):
    rng = np.random.default_rng(0)
    u = (3 * rng.standard_normal((2, 3, 5, 4))).astype(dtype)
    want = activation.apply(u.copy(), np)
    got = _activation.activate(u.copy(), activation)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=repr)
def test_the_slope_in_place_is_the_activations_own_bits_for_every_constant(activation, dtype):
    rng = np.random.default_rng(1)
    y = activation.apply((3 * rng.standard_normal((2, 3, 5, 4))).astype(dtype), np)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = activation.sensitivity(dy, y, np)
    got = _activation._slope_times(dy, y, activation)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    # a strided layout: the compiled kernel does not take it, the slope in place does
    strided = _activation.sensitivity(dy[:, :, ::2], y[:, :, ::2], activation)
    np.testing.assert_array_equal(strided, activation.sensitivity(dy[:, :, ::2], y[:, :, ::2], np))
    # deltas of another dtype: the activation's own method and its promotion, by either op
    other = dy.astype(np.float32 if dtype == np.float64 else np.float64)
    want = activation.sensitivity(other, y, np)
    for op in (_activation.sensitivity, _activation._slope_times):
        got = op(other, y, activation)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


_Softsign = oracles.Softsign  # no description: every backend calls its own methods.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_activation_without_a_description_runs_its_own_methods(dtype):
    rng = np.random.default_rng(2)
    act = _Softsign()
    assert act.describe() is None
    u = (3 * rng.standard_normal((2, 3, 4, 4))).astype(dtype)
    y = act.apply(u, np)
    np.testing.assert_array_equal(_activation.activate(u.copy(), act), y)
    dy = rng.standard_normal(y.shape).astype(dtype)
    want = act.sensitivity(dy, y, np)
    np.testing.assert_array_equal(_activation.sensitivity(dy, y, act), want)
    np.testing.assert_array_equal(_activation._slope_times(dy, y, act), want)
    assert _activation.compiled_activation(act, np.dtype(np.float32)) is None
    assert _activation.sensitivity_formula(act, y) is None


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_described_activations_run_on_the_plugins_own_code(monkeypatch, dtype):
    """Note [Activation descriptions]: for a described activation on float arrays of one dtype
    the plugin computes f and f' itself (in place, or compiled), never through the layer's
    Array API methods (which make a new array per operation)."""
    rng = np.random.default_rng(3)
    u = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    for activation in (Sigmoid(2.0), Tanh(1.7159, 2.0 / 3.0)):
        y = activation.apply(u.copy(), np)
        dy = rng.standard_normal(y.shape).astype(dtype)
        want_f, want_s = y.copy(), activation.sensitivity(dy, y, np)

        def refused(*args, **kwargs):
            raise AssertionError("the layer's own method was called")

        with monkeypatch.context() as patch:
            for name in ("apply", "sensitivity", "forward", "derivative"):
                patch.setattr(type(activation), name, refused)
            got_f = _activation.activate(u.copy(), activation)
            got_s = [
                _activation.sensitivity(dy, y, activation),
                _activation._slope_times(dy, y, activation),
                _activation.sensitivity(dy[:, :, ::2], y[:, :, ::2], activation),
            ]
        np.testing.assert_array_equal(got_f, want_f)
        np.testing.assert_array_equal(got_s[1], want_s)
        np.testing.assert_array_equal(got_s[2], want_s[:, :, ::2])
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(got_s[0], want_s, rtol=tol, atol=tol)


@pytest.mark.parametrize("activation", ACTIVATIONS[:2] + [_Softsign()], ids=repr)
def test_f_of_an_array_it_cannot_write_is_the_activations_own(activation):
    """``activate`` works in place only in writable float arrays: a read-only one, or integers,
    take the activation's own method (a new array), and the input is left as it was."""
    rng = np.random.default_rng(4)
    u = (3 * rng.standard_normal((2, 3, 4))).astype(np.float32)
    frozen = u.copy()
    frozen.flags.writeable = False
    for a in (frozen, (10 * u).astype(np.int64)):
        before = a.copy()
        got = _activation.activate(a, activation)
        np.testing.assert_array_equal(got, activation.apply(a, np))
        np.testing.assert_array_equal(a, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deltas_that_broadcast_give_the_activations_own_result(dtype):
    """The compiled sensitivity pass takes deltas shaped like the outputs only; deltas that
    broadcast against them (one example's, one map's) give the activation's own result."""
    rng = np.random.default_rng(5)
    act = Tanh(1.7159, 2.0 / 3.0)
    y = act.apply(rng.standard_normal((3, 2, 4, 5)).astype(dtype), np)
    for shape in ((1, 2, 4, 5), (3, 1, 4, 5), (5,)):
        dy = rng.standard_normal(shape).astype(dtype)
        want = act.sensitivity(dy, y, np)
        got = _activation.sensitivity(dy, y, act)
        assert got.shape == want.shape == y.shape
        np.testing.assert_array_equal(got, want)


def test_the_slope_of_relu_on_deltas_of_another_dtype_is_its_own():
    """The activation's own method, with the namespace the plugin passes (ReLU's slope casts
    ``y > 0`` with it)."""
    rng = np.random.default_rng(6)
    y = np.maximum(rng.standard_normal((2, 3, 4)), 0).astype(np.float32)
    dy = rng.standard_normal(y.shape)  # float64
    want = ReLU().sensitivity(dy, y, np)
    for op in (_activation.sensitivity, _activation._slope_times):
        got = op(dy, y, ReLU())
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_relu_of_negative_zero_is_the_references_positive_zero():
    """max(u, 0) in the reference's order: -0.0 becomes +0.0 (NumPy's maximum returns its second
    argument when the two compare equal), bit for bit."""
    u = np.array([-0.0, 0.0, -1.5, 2.0, -0.0], np.float32)
    want = ReLU().apply(u.copy(), np)
    got = _activation.activate(u.copy(), ReLU())
    assert got.tobytes() == want.tobytes()
    assert not np.signbit(got).any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("gain", [0.5, 1.0, 2.0])
def test_the_compiled_logistic_slope_takes_every_gain(dtype, gain):
    """The compiled pass multiplies by the gain exactly when it is not 1 (``scaled``)."""
    rng = np.random.default_rng(7)
    act = Sigmoid(gain)
    y = act.apply(rng.standard_normal((2, 3, 4, 5)).astype(dtype), np)
    dy = rng.standard_normal(y.shape).astype(dtype)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    want = act.sensitivity(dy, y, np)
    np.testing.assert_allclose(_activation.sensitivity(dy, y, act), want, rtol=tol, atol=tol)
