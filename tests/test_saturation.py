"""Saturated units and extreme logits (issue 13, bug 8): no gradient leaks out of a saturated
tanh, and the cross-entropy stays finite when the logits' spread overflows float32.

A saturated ``a tanh(b u)`` unit has ``y = a`` to the last bit, so its slope ``f'`` must be
exactly 0, as plain ``tanh``'s is: ``(b / a)(a^2 - y^2)`` rounds ``a^2`` and ``y^2`` apart and
leaks ~1e-7 in float32, ``(b / a)(a - y)(a + y)`` does not (``a - y`` is exact, Sterbenz).
"""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import ops as reference
from anycnn.layers import Convolution, CrossEntropy, get_activation
from anycnn.network import Network

TANHS = ["tanh", "lecun_tanh", {"name": "tanh", "a": 1.5, "b": 0.5}]
SATURATING_U = np.array([-1e6, -1e4, -1e3, -200.0, 200.0, 1e3, 1e4, 1e6])


def _host(backend, a):
    if isinstance(a, int | float):
        return np.asarray(float(a))
    return np.array(backend.to_host(a), copy=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("spec", TANHS, ids=["tanh", "lecun_tanh", "tanh-a1.5-b0.5"])
def test_saturated_tanh_has_zero_slope(backend, spec, dtype):
    """f'(y) and f'(y) o dy are exactly 0 where y = f(u) saturates, in both dtypes."""
    act = get_activation(spec)
    y = act.forward(backend.asarray(SATURATING_U, dtype=dtype))
    assert np.all(np.abs(_host(backend, y)) == np.float64(np.asarray(act.a, dtype=dtype)))
    np.testing.assert_array_equal(_host(backend, act.derivative(y)), 0.0)
    dy = backend.asarray(np.full(SATURATING_U.shape, 3.0), dtype=dtype)
    np.testing.assert_array_equal(_host(backend, act.sensitivity(dy, y, backend.xp)), 0.0)
    # and the backend's fused op (compiled where the backend has one)
    fused = backend.ops.fused.get("sensitivity", reference.sensitivity)(dy, y, act)
    np.testing.assert_array_equal(_host(backend, fused), 0.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_saturated_lecun_tanh_convolution_passes_no_gradient(backend, dtype):
    """A float32 LeNet-style convolution layer whose units all saturate (huge bias) gets zero
    kernel and bias gradients through every backend's path (fused conv_backward included)."""
    net = Network(
        [Convolution(2, 3, activation="lecun_tanh")], input_shape=(1, 6, 6), dtype=dtype, seed=0
    )
    net.set_parameter("conv1.bias", backend.asarray(np.array([1e4, -1e4]), dtype=dtype))
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.uniform(0.0, 1.0, (2, 1, 6, 6)), dtype=dtype)
    y = net.forward(x)
    dy = backend.asarray(rng.standard_normal(tuple(y.shape)), dtype=dtype)
    net.backward(dy)
    for name, grad in net.gradients().items():
        np.testing.assert_array_equal(_host(backend, grad), 0.0, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cross_entropy_finite_when_logits_overflow(backend, dtype):
    """Logits 3e38 apart (their difference overflows float32 to -inf): the terms with t = 0
    are left out instead of giving 0 * -inf = NaN; loss and gradient are the exact limits."""
    loss = CrossEntropy()
    y = backend.asarray(np.array([[3e38, 0.0, -3e38, 0.0], [0.0, 1.0, 2.0, 3.0]]), dtype=dtype)
    t = backend.asarray(np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]), dtype=dtype)
    value = float(loss.value(y, t))
    second = np.log(np.exp(np.arange(4.0) - 3.0).sum())  # -log softmax(y_2)_4
    np.testing.assert_allclose(value, second / 2, rtol=1e-6)
    grad = _host(backend, loss.gradient(y, t))
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[0], 0.0)
