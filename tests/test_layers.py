"""Layers of the notes one at a time, on every backend: activations and their derivatives from
saved outputs (2.1, 3.4), the two losses (eq. 1, 4.3), input-map tables (3.1), the forward
passes against NumPy / SciPy, and the sensitivity recurrences of 2.2, 3.1.1 and 3.2.1 written
out literally with ``np.kron`` and ``scipy.signal.convolve2d``."""

from __future__ import annotations

import numpy as np
import oracles
import pytest
from scipy import special
from scipy.signal import convolve2d

from anycnn.layers import (
    Convolution,
    CrossEntropy,
    Flatten,
    FullyConnected,
    SquaredError,
    Subsampling,
    get_activation,
    get_loss,
    lenet5_table,
    selection_table,
)
from anycnn.network import Network
from anycnn.testing import assert_close

LECUN_A, LECUN_B = 1.7159, 2.0 / 3.0

# name -> (activation spec, f(u) in NumPy, f'(u) in NumPy); every formula is overflow-free.
ACTIVATIONS = {
    "sigmoid": ("sigmoid", special.expit, lambda u: special.expit(u) * special.expit(-u)),
    "sigmoid-gain2.5": (
        {"name": "sigmoid", "gain": 2.5},
        lambda u: special.expit(2.5 * u),
        lambda u: 2.5 * special.expit(2.5 * u) * special.expit(-2.5 * u),
    ),
    "tanh": ("tanh", np.tanh, lambda u: 1.0 - np.tanh(u) ** 2),
    "tanh-a1.5-b0.5": (
        {"name": "tanh", "a": 1.5, "b": 0.5},
        lambda u: 1.5 * np.tanh(0.5 * u),
        lambda u: 0.75 * (1.0 - np.tanh(0.5 * u) ** 2),
    ),
    "lecun_tanh": (
        "lecun_tanh",
        lambda u: LECUN_A * np.tanh(LECUN_B * u),
        lambda u: LECUN_A * LECUN_B * (1.0 - np.tanh(LECUN_B * u) ** 2),
    ),
    "relu": ("relu", lambda u: np.maximum(u, 0.0), lambda u: (u > 0).astype(u.dtype)),
    "identity": ("identity", lambda u: u, np.ones_like),
}
# Includes |u| = 1e4 (and beyond): exp(1e4) overflows, so a naive formula warns (an error here).
EXTREME_U = np.array([-1e6, -1e4, -1e3, -50.0, -3.0, -0.5, 0.0, 0.5, 3.0, 50.0, 1e3, 1e4, 1e6])


def _host(backend, a):
    """A NumPy copy of a backend array, or of the Python scalar an identity derivative is."""
    if isinstance(a, int | float):
        return np.asarray(float(a))
    return np.array(backend.to_host(a), copy=True)


# --- activations -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_values_and_stability(backend, name, dtype):
    """f and f' (from the saved output y) match NumPy formulas for |u| up to 1e6, with no
    overflow warning (pytest turns RuntimeWarning into an error) and nothing non-finite."""
    spec, f, df = ACTIVATIONS[name]
    act = get_activation(spec)
    u = backend.asarray(EXTREME_U, dtype=dtype)
    y = act.forward(u)
    expected = f(EXTREME_U).astype(dtype)
    assert_close(y, expected, backend=backend, atol=0.0 if dtype == "float64" else 1e-6)
    slope = _host(backend, act.derivative(y, u))
    assert np.all(np.isfinite(slope))
    np.testing.assert_allclose(
        np.broadcast_to(slope, EXTREME_U.shape), df(EXTREME_U), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_derivative_matches_finite_differences(backend, name, rng):
    """f'(u), computed from the saved output y = f(u) as section 3.4 advises, equals the central
    difference of f itself (float64). u keeps 0.05 away from 0, where relu has its kink."""
    spec, _, _ = ACTIVATIONS[name]
    act = get_activation(spec)
    u_host = rng.uniform(0.05, 4.0, size=(3, 7)) * rng.choice([-1.0, 1.0], size=(3, 7))
    u = backend.asarray(u_host, dtype="float64")
    h = 1e-6
    plus = _host(backend, act.forward(backend.asarray(u_host + h, dtype="float64")))
    minus = _host(backend, act.forward(backend.asarray(u_host - h, dtype="float64")))
    numeric = (plus - minus) / (2 * h)
    slope = _host(backend, act.derivative(act.forward(u), u))
    np.testing.assert_allclose(np.broadcast_to(slope, u_host.shape), numeric, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_config_round_trip(name):
    act = get_activation(ACTIVATIONS[name][0])
    again = get_activation(act.config())
    assert type(again) is type(act)
    assert again.config() == act.config()


def test_lecun_tanh_constants():
    """LeCun's a = 1.7159, b = 2/3 put the maximum curvature at f(+-1) = +-1 (section 2.1)."""
    act = get_activation("lecun_tanh")
    assert (act.a, act.b) == (LECUN_A, LECUN_B)
    np.testing.assert_allclose(act.forward(np.array([-1.0, 1.0])), [-1.0, 1.0], atol=2e-4)


# --- losses ------------------------------------------------------------------------------------
def _one_hot(labels, classes):
    return np.eye(classes)[labels]


def test_squared_error_is_eq1_averaged_over_the_batch(backend, rng):
    y_host, t_host = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
    per_pattern = [
        0.5 * sum((t_host[n, k] - y_host[n, k]) ** 2 for k in range(4)) for n in range(5)
    ]
    loss = SquaredError()
    y, t = backend.asarray(y_host, dtype="float64"), backend.asarray(t_host, dtype="float64")
    assert_close(loss.value(y, t), np.asarray(np.mean(per_pattern)), backend=backend)
    # delta^L = f'(u^L) o (y - t) starts from dE/dy = (y - t) / N for the batch mean.
    assert_close(loss.gradient(y, t), (y_host - t_host) / 5, backend=backend)


@pytest.mark.parametrize("scale", [1.0, 1e4], ids=["moderate", "outputs-1e4"])
def test_cross_entropy_is_mean_negative_log_softmax(backend, rng, scale):
    """-mean_n log softmax(y^n)_label, stable for outputs of 1e4 (exp(1e4) would overflow)."""
    y_host = rng.standard_normal((4, 5)) * scale
    labels = np.array([0, 3, 4, 1])
    t_host = _one_hot(labels, 5)
    loss = CrossEntropy()
    y, t = backend.asarray(y_host, dtype="float64"), backend.asarray(t_host, dtype="float64")
    log_p = special.log_softmax(y_host, axis=1)
    expected = -np.mean(log_p[np.arange(4), labels])
    value = loss.value(y, t)
    assert_close(value, np.asarray(expected), backend=backend, rtol=1e-12, atol=1e-12)
    assert np.isfinite(float(value))
    grad = loss.gradient(y, t)
    assert_close(grad, (special.softmax(y_host, axis=1) - t_host) / 4, backend=backend)


@pytest.mark.parametrize("name", ["squared_error", "cross_entropy"])
def test_loss_gradient_matches_finite_differences(backend, rng, name):
    loss = get_loss(name)
    y_host = rng.standard_normal((3, 4))
    t_host = _one_hot(np.array([2, 0, 3]), 4)
    t = backend.asarray(t_host, dtype="float64")
    grad = _host(backend, loss.gradient(backend.asarray(y_host, dtype="float64"), t))
    h = 1e-6
    numeric = np.zeros_like(y_host)
    for index in np.ndindex(*y_host.shape):
        step = np.zeros_like(y_host)
        step[index] = h
        plus = float(loss.value(backend.asarray(y_host + step, dtype="float64"), t))
        minus = float(loss.value(backend.asarray(y_host - step, dtype="float64"), t))
        numeric[index] = (plus - minus) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-7, atol=1e-9)


def test_get_loss_names():
    assert isinstance(get_loss("squared_error"), SquaredError)
    assert isinstance(get_loss({"name": "cross_entropy"}), CrossEntropy)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")


# --- input-map tables (3.1) --------------------------------------------------------------------
def test_lenet5_table_is_table_one():
    """LeCun et al. 1998, Table I: C3 maps 0-5 take 3 contiguous S2 maps, 6-14 take 4, 15 all 6."""
    table = lenet5_table()
    assert table.shape == (16, 6) and table.dtype == bool
    assert table.sum(axis=1).tolist() == [3] * 6 + [4] * 9 + [6]
    for j in range(6):
        assert sorted(np.flatnonzero(table[j])) == sorted({j % 6, (j + 1) % 6, (j + 2) % 6})
    assert table.sum() == 60  # the paper's 60 connections


@pytest.mark.parametrize(
    ("spec", "size"), [("pairs", 2), ("triplets", 3)], ids=["pairs", "triplets"]
)
def test_pairs_and_triplets_tables(spec, size):
    table = selection_table(spec, 7, 4)
    assert table.shape == (7, 4)
    assert (table.sum(axis=1) == size).all()
    rows = [tuple(np.flatnonzero(r)) for r in table]
    combos = 6 if spec == "pairs" else 4
    assert len(set(rows[:combos])) == combos  # every combination once before cycling
    assert rows[combos] == rows[0]


def test_random_table_is_seeded():
    a = selection_table("random", 6, 5, inputs_per_map=2, seed=7)
    assert (a.sum(axis=1) == 2).all()
    np.testing.assert_array_equal(a, selection_table("random", 6, 5, inputs_per_map=2, seed=7))
    assert not all(
        np.array_equal(a, selection_table("random", 6, 5, inputs_per_map=2, seed=s))
        for s in range(8, 12)
    )


def test_explicit_table_accepts_zero_one():
    table = selection_table([[1, 0, 1], [0, 1, 0]], 2, 3)
    assert table.dtype == bool
    np.testing.assert_array_equal(table, [[True, False, True], [False, True, False]])


def test_kernels_outside_the_selection_stay_zero(backend, rng):
    """Unselected kernels are not parameters: they start at zero, get exactly zero gradient, and
    so stay exactly zero through gradient steps."""
    table = np.array([[True, False, True], [False, True, False], [True, True, False]])
    net = Network(
        [
            Convolution(3, 3, selection=table, activation="tanh"),
            Convolution(2, 2, selection="pairs", activation="tanh"),
            Flatten(),
            FullyConnected(2),
        ],
        (3, 6, 6),
        dtype="float64",
        seed=1,
    )
    x = backend.asarray(rng.standard_normal((2, 3, 6, 6)), dtype="float64")
    t = backend.asarray(rng.uniform(0.1, 0.9, (2, 2)), dtype="float64")
    tables = {"conv1.kernel": table, "conv2.kernel": selection_table("pairs", 2, 3)}
    for name, tab in tables.items():
        assert (_host(backend, net.parameters()[name])[~tab] == 0.0).all()
    for _ in range(3):
        net.compute_gradients(x, t)
        grads = net.gradients()
        for name, tab in tables.items():
            grad = _host(backend, grads[name])
            assert (grad[~tab] == 0.0).all(), name
            assert (grad[tab] != 0.0).any(), name
        for name, value in net.parameters().items():
            net.set_parameter(name, value - 0.5 * grads[name])
    for name, tab in tables.items():
        kernel = _host(backend, net.parameters()[name])
        assert (kernel[~tab] == 0.0).all(), name


# --- forward passes against NumPy / SciPy ------------------------------------------------------
def _single(backend, layer, input_shape, seed=0):
    net = Network([layer], input_shape, dtype="float64", seed=seed)
    return net, layer


def _randomise(backend, net, rng, *names):
    """Give named parameters random values (biases start at zero, beta at a constant)."""
    for name in names:
        shape = tuple(net.parameters()[name].shape)
        net.set_parameter(name, backend.asarray(rng.uniform(-1.0, 1.0, shape), dtype="float64"))


@pytest.mark.jax  # in the default suite on JAX (tests/conftest.py SUBSET_VARIANTS)
def test_convolution_forward(backend, rng):
    table = np.array([[True, False], [True, True], [False, True]])
    net, layer = _single(
        backend, Convolution(3, (3, 2), selection=table, activation="tanh"), (2, 7, 6)
    )
    _randomise(backend, net, rng, "conv1.bias")
    x_host = rng.standard_normal((2, 2, 7, 6))
    y = net.forward(backend.asarray(x_host, dtype="float64"))
    k = _host(backend, net.parameters()["conv1.kernel"])
    b = _host(backend, net.parameters()["conv1.bias"])
    expected = np.tanh(oracles.conv_valid(x_host, k, table) + b[None, :, None, None])
    assert_close(y, expected, backend=backend)
    assert net.output_shape == (3, 5, 5)


@pytest.mark.jax  # in the default suite on JAX (tests/conftest.py SUBSET_VARIANTS)
@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "fixed"])
@pytest.mark.parametrize("mode", ["sum", "mean", "decimate"])
def test_subsampling_forward(backend, rng, mode, trainable):
    """x_j = f(beta_j down(x_j) + b_j), down = block sum / block mean / decimation (3.2)."""
    net, layer = _single(
        backend, Subsampling(3, mode, activation="sigmoid", trainable=trainable), (2, 6, 9)
    )
    x_host = rng.standard_normal((2, 2, 6, 9))
    down = {"sum": oracles.block_sum, "mean": oracles.block_mean, "decimate": oracles.decimate}
    d = down[mode](x_host, 3)
    if trainable:
        beta0 = 1.0 / 9 if mode == "sum" else 1.0  # starts as a mean
        assert_close(net.parameters()["sub1.beta"], np.full(2, beta0), backend=backend)
        _randomise(backend, net, rng, "sub1.beta", "sub1.bias")
        beta = _host(backend, net.parameters()["sub1.beta"])[None, :, None, None]
        bias = _host(backend, net.parameters()["sub1.bias"])[None, :, None, None]
        u = beta * d + bias
    else:
        assert net.parameters() == {}
        u = d
    y = net.forward(backend.asarray(x_host, dtype="float64"))
    assert_close(y, special.expit(u), backend=backend)


def test_flatten_and_fully_connected_forward(backend, rng):
    """Maps are concatenated in C order into one vector (section 2), then u = W x + b (eq. 2)."""
    net = Network([Flatten(), FullyConnected(4, activation="tanh")], (2, 3, 2), dtype="float64")
    _randomise(backend, net, rng, "fc1.bias")
    x_host = rng.standard_normal((3, 2, 3, 2))
    y = net.forward(backend.asarray(x_host, dtype="float64"))
    w = _host(backend, net.parameters()["fc1.weight"])
    b = _host(backend, net.parameters()["fc1.bias"])
    assert w.shape == (4, 12)
    assert_close(y, np.tanh(x_host.reshape(3, 12) @ w.T + b), backend=backend)
    dy = rng.standard_normal((3, 12))
    flatten = net.layers[0]
    assert_close(
        flatten.backward(backend.asarray(dy, dtype="float64")),
        dy.reshape(3, 2, 3, 2),
        backend=backend,
    )


# --- the sensitivity recurrences, literally ----------------------------------------------------
def test_fully_connected_recurrences(backend, rng):
    """delta = f'(u) o dE/dy (eq. 4), dE/dW = delta x^T summed over the batch (eq. 5),
    dE/db = sum delta (eq. 3), dE/dx = W^T delta."""
    net = Network([FullyConnected(3, activation="sigmoid")], (5,), dtype="float64")
    _randomise(backend, net, rng, "fc1.bias")
    layer = net.layers[0]
    x_host, dy_host = rng.standard_normal((4, 5)), rng.standard_normal((4, 3))
    y = _host(backend, layer.forward(backend.asarray(x_host, dtype="float64")))
    dx = layer.backward(backend.asarray(dy_host, dtype="float64"))
    delta = dy_host * y * (1.0 - y)
    w = _host(backend, layer.params["weight"])
    expected_w = sum(np.outer(delta[n], x_host[n]) for n in range(4))
    assert_close(layer.grads["weight"], expected_w, backend=backend)
    assert_close(layer.grads["bias"], delta.sum(axis=0), backend=backend)
    assert_close(dx, delta @ w, backend=backend)


def test_convolution_then_subsampling_recurrences(backend, rng):
    """Section 3.1.1 and 3.2.1 by hand: for a convolution (sigmoid) below a trainable sum
    subsampling (tanh),

    * the subsampling layer's dE/dx is ``beta_j kron(delta_sub_j, ones(n, n))``,
    * the convolution's sensitivity is ``beta_j (f'(u_j) o up(delta_sub_j))``,
    * its kernel gradient is eq. (7), its bias gradient ``sum delta_j``,
    * its dE/dx is ``sum_j conv2(delta_j, rot180(k_ij), 'full')`` (SciPy's convolve2d),
    * and the subsampling gradients are ``sum delta o down(x)`` and ``sum delta``.
    """
    n = 2
    table = np.array(
        [[True, True, False], [False, True, True], [True, False, True], [True, True, True]]
    )
    net = Network(
        [
            Convolution(4, 3, selection=table, activation="sigmoid"),
            Subsampling(n, "sum", activation="tanh"),
        ],
        (3, 8, 8),
        dtype="float64",
    )
    _randomise(backend, net, rng, "conv1.bias", "sub2.beta", "sub2.bias")
    conv, sub = net.layers
    x_host = rng.standard_normal((2, 3, 8, 8))
    y_sub = _host(backend, net.forward(backend.asarray(x_host, dtype="float64")))
    dy_host = rng.standard_normal(y_sub.shape)

    dx_sub = sub.backward(backend.asarray(dy_host, dtype="float64"))
    delta_sub = dy_host * (1.0 - y_sub**2)  # tanh: f' = 1 - y^2
    beta = _host(backend, net.parameters()["sub2.beta"])
    expected_dx_sub = np.stack(
        [
            np.stack([beta[j] * np.kron(delta_sub[b, j], np.ones((n, n))) for j in range(4)])
            for b in range(2)
        ]
    )
    assert_close(dx_sub, expected_dx_sub, backend=backend)
    y_conv = _host(backend, conv.forward(backend.asarray(x_host, dtype="float64")))
    assert_close(
        sub.grads["beta"],
        (delta_sub * oracles.block_sum(y_conv, n)).sum(axis=(0, 2, 3)),
        backend=backend,
    )
    assert_close(sub.grads["bias"], delta_sub.sum(axis=(0, 2, 3)), backend=backend)

    dx_conv = conv.backward(dx_sub)
    up = np.kron(delta_sub, np.ones((1, 1, n, n)))
    delta = beta[None, :, None, None] * (y_conv * (1.0 - y_conv) * up)  # 3.1.1
    kernel = _host(backend, conv.params["kernel"])
    expected_dx = np.zeros_like(x_host)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                if table[j, i]:
                    expected_dx[b, i] += convolve2d(
                        delta[b, j], np.rot90(kernel[j, i], 2), mode="full"
                    )
    assert_close(dx_conv, expected_dx, backend=backend)
    assert_close(dx_conv, oracles.conv_full(delta, kernel, table), backend=backend)
    assert_close(
        conv.grads["kernel"], oracles.conv_kernel_grad(x_host, delta, table), backend=backend
    )
    assert_close(conv.grads["bias"], delta.sum(axis=(0, 2, 3)), backend=backend)


@pytest.mark.parametrize("mode", ["mean", "decimate"])
def test_subsampling_input_gradient_is_the_adjoint_of_down(backend, rng, mode):
    """For the other modes dE/dx is beta up(delta) with the adjoint of down: kron / n^2 for the
    mean, a value at each block's top-left corner for decimation."""
    n = 3
    net = Network([Subsampling(n, mode)], (2, 6, 6), dtype="float64")
    _randomise(backend, net, rng, "sub1.beta")
    layer = net.layers[0]
    layer.forward(backend.asarray(rng.standard_normal((2, 2, 6, 6)), dtype="float64"))
    dy = rng.standard_normal((2, 2, 2, 2))
    dx = layer.backward(backend.asarray(dy, dtype="float64"))
    scaled = dy * _host(backend, net.parameters()["sub1.beta"])[None, :, None, None]
    if mode == "mean":
        expected = np.kron(scaled, np.ones((1, 1, n, n))) / (n * n)
    else:
        expected = np.zeros((2, 2, 6, 6))
        expected[:, :, ::n, ::n] = scaled
    assert_close(dx, expected, backend=backend)


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_apply_gives_the_bits_of_forward_at_extreme_inputs(backend, name, dtype):
    """The in-place form the layers call equals forward() bit for bit, for |u| up to 1e6,
    without an overflow warning on any backend (array-api-strict computes with NumPy)."""
    act = get_activation(ACTIVATIONS[name][0])
    want = _host(backend, act.forward(backend.asarray(EXTREME_U, dtype=dtype)))
    got = _host(backend, act.apply(backend.asarray(EXTREME_U, dtype=dtype), backend.xp))
    np.testing.assert_array_equal(got, np.broadcast_to(want, EXTREME_U.shape))
