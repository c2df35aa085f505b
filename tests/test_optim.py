"""Optimizers, schedules and the diagonal Gauss-Newton curvature of SDLM.

Oracles are plain NumPy: updates computed by hand on host copies, and curvature from Jacobians
computed by central differences in float64 (never from the curvature code under test).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from anycnn import layers as L
from anycnn import models
from anycnn.network import Network
from anycnn.training import optim


def _tiny_fc(backend, dtype="float64", loss="cross_entropy", seed=0):
    return Network(
        [
            L.FullyConnected(5, activation="tanh"),
            L.FullyConnected(3, activation="identity" if loss == "cross_entropy" else "sigmoid"),
        ],
        (4,),
        loss=loss,
        dtype=dtype,
        backend=backend,
        seed=seed,
        name="tiny_fc",
    )


def _tiny_conv(backend, variant="sum", dtype="float64", seed=0):
    if variant == "sum":  # LeNet-like: trainable sum pooling, tanh, a selection table, CE
        layers = [
            L.Convolution(2, 3, activation="tanh"),
            L.Subsampling(2, "sum", activation="tanh"),
            L.Convolution(3, 2, selection="random", inputs_per_map=1, activation="tanh"),
            L.Flatten(),
            L.FullyConnected(3, activation="identity"),
        ]
        loss = "cross_entropy"
    elif variant == "mean":  # DLT-like: fixed mean pooling, sigmoid, squared error
        layers = [
            L.Convolution(2, 3, activation="sigmoid"),
            L.Subsampling(2, "mean", trainable=False),
            L.Convolution(3, 2, activation="sigmoid"),
            L.Flatten(),
            L.FullyConnected(3, activation="sigmoid"),
        ]
        loss = "squared_error"
    elif variant == "padded":  # issue 23: zero padding and both subsampling remainders
        layers = [
            L.Convolution(2, 3, padding="same", activation="tanh"),
            L.Subsampling(3, "mean", activation="identity", remainder="pad"),
            L.Convolution(3, 2, padding=(1, 0), activation="tanh"),
            L.Subsampling(2, "sum", trainable=False, remainder="drop"),
            L.Flatten(),
            L.FullyConnected(3, activation="identity"),
        ]
        loss = "cross_entropy"
    else:  # decimation with a trainable beta
        layers = [
            L.Convolution(2, 3, activation="tanh"),
            L.Subsampling(2, "decimate", activation="identity"),
            L.Flatten(),
            L.FullyConnected(3, activation="tanh"),
        ]
        loss = "squared_error"
    return Network(
        layers,
        (1, 8, 8),
        loss=loss,
        dtype=dtype,
        backend=backend,
        seed=seed,
        name=f"tiny_conv_{variant}",
    )


def _batch(net, rng, n=3):
    x = rng.standard_normal((n, *net.input_shape))
    labels = rng.integers(0, net.output_shape[0], n)
    t = np.eye(net.output_shape[0])[labels]
    if net.loss.name == "squared_error" and net.layers[-1].activation.name == "tanh":
        t = 2 * t - 1
    b = net.backend
    return b.asarray(x, dtype=net.dtype_name), b.asarray(t, dtype=net.dtype_name), x, t


def _randomize(net, rng):
    """Move every parameter off its initial value (biases start at 0, betas at 1/4)."""
    for name, p in net.parameters().items():
        host = np.array(net.backend.to_host(p), dtype=np.float64)
        if name.endswith(".kernel"):
            host = host + 0.3 * rng.standard_normal(host.shape) * (host != 0)
        else:
            host = host + 0.3 * rng.standard_normal(host.shape)
        net.set_parameter(name, net.backend.asarray(host, dtype=net.dtype_name))


def _host(net, arrays):
    """Host float64 copies (NumPy's to_host returns the live array, which steps update)."""
    return {
        k: np.array(net.backend.to_host(v), dtype=np.float64, copy=True) for k, v in arrays.items()
    }


# --------------------------------------------------------------------------------------------
# SGD, momentum, per-layer rates
# --------------------------------------------------------------------------------------------
@pytest.mark.jax  # in the default suite on JAX (tests/conftest.py SUBSET_VARIANTS)
def test_sgd_step_is_p_minus_lr_g_exactly(backend, rng):
    net = _tiny_fc(backend, dtype="float32")
    x, t, _, _ = _batch(net, rng)
    opt = optim.SGD(net, 0.05)
    net.compute_gradients(x, t)
    before = {k: np.array(v, copy=True) for k, v in _host(net, net.parameters()).items()}
    grads = {k: np.array(backend.to_host(v), copy=True) for k, v in net.gradients().items()}
    params32 = {k: np.array(backend.to_host(v), copy=True) for k, v in net.parameters().items()}
    opt.step()
    after = {k: np.asarray(backend.to_host(v)) for k, v in net.parameters().items()}
    for name in before:
        expected = params32[name] - np.float32(0.05) * grads[name]
        assert after[name].dtype == np.float32
        np.testing.assert_array_equal(after[name], expected, err_msg=name)
    assert opt.steps == 1


@pytest.mark.jax  # in the default suite on JAX (tests/conftest.py SUBSET_VARIANTS)
def test_momentum_two_steps(backend, rng):
    net = _tiny_fc(backend)
    x, t, _, _ = _batch(net, rng)
    opt = optim.Momentum(net, 0.1, momentum=0.5)
    p0 = _host(net, net.parameters())
    net.compute_gradients(x, t)
    g1 = _host(net, net.gradients())
    opt.step()
    net.compute_gradients(x, t)
    g2 = _host(net, net.gradients())
    opt.step()
    p2 = _host(net, net.parameters())
    for name in p0:
        v1 = 0.1 * g1[name]
        v2 = 0.5 * v1 + 0.1 * g2[name]
        np.testing.assert_allclose(p2[name], p0[name] - v1 - v2, rtol=1e-12, atol=1e-15)
    state = opt.state_dict()
    assert int(state["steps"]) == 2
    np.testing.assert_allclose(
        state["velocity/fc2.weight"],
        0.5 * 0.1 * g1["fc2.weight"] + 0.1 * g2["fc2.weight"],
        rtol=1e-12,
    )


def test_per_layer_rates_scale_the_right_layers(backend, rng):
    net = _tiny_fc(backend)
    x, t, _, _ = _batch(net, rng)
    opt = optim.SGD(net, 0.1, layer_rates={"fc1": 0.5, "fc2.bias": 0.0})
    p0 = _host(net, net.parameters())
    net.compute_gradients(x, t)
    g = _host(net, net.gradients())
    opt.step()
    p1 = _host(net, net.parameters())
    rates = {"fc1.weight": 0.05, "fc1.bias": 0.05, "fc2.weight": 0.1, "fc2.bias": 0.0}
    for name, rate in rates.items():
        assert opt.rate(name) == pytest.approx(rate)
        np.testing.assert_allclose(p1[name], p0[name] - rate * g[name], rtol=1e-14, atol=0)
    assert np.any(g["fc2.bias"] != 0)


def test_per_layer_rates_reject_unknown_names_and_bad_values(backend):
    net = _tiny_fc(backend)
    with pytest.raises(ValueError, match="'conv9' is neither a layer nor a parameter.*fc1, fc2"):
        optim.SGD(net, 0.1, layer_rates={"conv9": 0.5})
    with pytest.raises(ValueError, match="finite number >= 0"):
        optim.SGD(net, 0.1, layer_rates={"fc1": -1.0})
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="learning rate must be a finite number >= 0"):
            optim.SGD(net, bad)


def test_state_dict_round_trip_and_validation():
    net = _tiny_fc("numpy")
    opt = optim.Momentum(net, 0.1)
    rng = np.random.default_rng(0)
    x, t, _, _ = _batch(net, rng)
    net.compute_gradients(x, t)
    opt.step()
    state = opt.state_dict()
    other = optim.Momentum(_tiny_fc("numpy"), 0.1)
    other.load_state_dict(state)
    assert other.steps == 1
    np.testing.assert_array_equal(
        other.state_dict()["velocity/fc1.weight"], state["velocity/fc1.weight"]
    )
    bad = dict(state)
    bad["velocity/fc1.weight"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"velocity/fc1.weight.*shape \(5, 4\)"):
        other.load_state_dict(bad)
    bad = dict(state, **{"moment/fc1.weight": state["velocity/fc1.weight"]})
    with pytest.raises(ValueError, match="unexpected state 'moment/fc1.weight'"):
        other.load_state_dict(bad)


def test_config_round_trip():
    net = _tiny_fc("numpy")
    for opt in (
        optim.SGD(net, optim.Step(0.1, 2, 0.5), layer_rates={"fc1": 0.5}),
        optim.Momentum(net, 0.02, momentum=0.8),
        optim.SDLM(net, optim.lecun1998(2.0), mu=0.05, samples=100),
    ):
        again = optim.optimizer_from_config(net, opt.config())
        assert type(again) is type(opt)
        assert again.config() == opt.config()


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------
def test_schedules():
    assert [optim.Constant(0.3).rate(e) for e in (0, 7)] == [0.3, 0.3]
    step = optim.Step(1.0, every=2, gamma=0.1)
    assert [step.rate(e) for e in range(5)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    lecun = optim.lecun1998()
    expected = [5e-4] * 2 + [2e-4] * 3 + [1e-4] * 3 + [5e-5] * 4 + [1e-5] * 8
    assert [lecun.rate(e) for e in range(20)] == pytest.approx(expected)
    assert optim.lecun1998(2.0).rate(0) == pytest.approx(1e-3)
    assert optim.schedule_from_config(lecun.config()).rate(9) == lecun.rate(9)
    with pytest.raises(ValueError, match="one number of epochs per rate"):
        optim.Piecewise([0.1, 0.2], [1], 0.0)
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.schedule_from_config({"name": "cosine"})


def test_schedule_drives_the_optimizer_rate(backend):
    net = _tiny_fc(backend)
    opt = optim.SGD(net, optim.Step(0.1, every=1, gamma=0.5), layer_rates={"fc2": 2.0})
    opt.start_epoch(2)
    assert opt.lr == pytest.approx(0.025)
    assert opt.rate("fc2.weight") == pytest.approx(0.05)


# --------------------------------------------------------------------------------------------
# The diagonal Gauss-Newton curvature
# --------------------------------------------------------------------------------------------
def _jacobian(fn, value, eps=1e-6):
    """d fn(value) / d value by central differences: (out_size, value.size)."""
    flat = value.reshape(-1).copy()
    columns = []
    for i in range(flat.size):
        plus, minus = flat.copy(), flat.copy()
        plus[i] += eps
        minus[i] -= eps
        columns.append(
            (fn(plus.reshape(value.shape)) - fn(minus.reshape(value.shape))).reshape(-1) / (2 * eps)
        )
    return np.stack(columns, axis=1)


def _output_curvature(net, y, t):
    if net.loss.name == "squared_error":
        return np.ones_like(y)
    p = np.exp(y - y.max())
    p /= p.sum()
    return p * (1 - p)


def _squared_jacobian_oracle(net, x_host, t_host):
    """LeCun's approximation from brute-force layer Jacobians: for each pattern, propagate the
    output curvature through elementwise-squared Jacobians of each layer's output with respect to
    its input (g_{l-1} = (J_x o J_x)^T g_l) and to its parameters (h = (J_p o J_p)^T g_l)."""
    b = net.backend
    total = {name: 0.0 for name in net.parameters()}
    for n in range(x_host.shape[0]):
        inputs = []
        a = x_host[n : n + 1]
        for layer in net.layers:
            inputs.append(a)
            a = np.asarray(b.to_host(layer.forward(b.asarray(a, dtype="float64"))))
        g = _output_curvature(net, a[0], t_host[n]).reshape(-1)
        for index in range(len(net.layers) - 1, -1, -1):
            layer, xin = net.layers[index], inputs[index]

            def through(value, layer=layer):
                return np.asarray(b.to_host(layer.forward(b.asarray(value, dtype="float64"))))

            for role, p in list(layer.params.items()):
                original = p

                def by_param(value, layer=layer, role=role, xin=xin):
                    layer.params[role] = b.asarray(value, dtype="float64")
                    return through(xin)

                jp = _jacobian(by_param, np.asarray(b.to_host(original), dtype=np.float64))
                layer.params[role] = original
                total[f"{layer.name}.{role}"] = total[f"{layer.name}.{role}"] + (
                    (jp * jp).T @ g
                ).reshape(original.shape)
            jx = _jacobian(through, xin)
            g = (jx * jx).T @ g
    return {name: value / x_host.shape[0] for name, value in total.items()}


@pytest.mark.parametrize("make", ["fc", "conv-sum", "conv-mean", "conv-decimate", "conv-padded"])
def test_diagonal_hessian_matches_squared_jacobians(make):
    rng = np.random.default_rng(3)
    if make == "fc":
        net = _tiny_fc("numpy")
    else:
        net = _tiny_conv("numpy", make.split("-")[1])
    _randomize(net, rng)
    x, t, x_host, t_host = _batch(net, rng)
    got = _host(net, optim.diagonal_hessian(net, x, t))
    expected = _squared_jacobian_oracle(net, x_host, t_host)
    assert list(got) == list(net.parameters())
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        assert np.all(got[name] >= 0), name
        np.testing.assert_allclose(
            got[name],
            expected[name],
            rtol=1e-6,
            atol=1e-9 * np.abs(expected[name]).max(),
            err_msg=name,
        )


def test_diagonal_hessian_learned_combination():
    learned = getattr(L, "LearnedCombination", None)
    if learned is None:
        pytest.skip("anycnn.layers has no LearnedCombination")
    rng = np.random.default_rng(5)
    for kernels in ("per_input", "per_pair"):
        net = Network(
            [
                L.Convolution(3, 3, activation="tanh"),
                # (3, 2): a non-square kernel taller than 2, which broadcasting alone does not
                # reach (issue 22's mutants of the per-pair expansion survived a 2x2 one)
                learned(2, (3, 2), kernels=kernels, activation="tanh"),
                L.Flatten(),
                L.FullyConnected(3, activation="identity"),
            ],
            (1, 6, 6),
            loss="cross_entropy",
            dtype="float64",
            backend="numpy",
        )
        _randomize(net, rng)
        x, t, x_host, t_host = _batch(net, rng)
        got = _host(net, optim.diagonal_hessian(net, x, t))
        expected = _squared_jacobian_oracle(net, x_host, t_host)
        for name in expected:
            np.testing.assert_allclose(
                got[name],
                expected[name],
                rtol=1e-6,
                atol=1e-9 * np.abs(expected[name]).max(),
                err_msg=f"{kernels} {name}",
            )


@pytest.mark.parametrize("kernels", ["per_input", "per_pair"])
def test_diagonal_hessian_keeps_the_dtype(kernels):
    """float32 networks get float32 curvature for every parameter (no float64 temporary
    promotes it)."""
    rng = np.random.default_rng(2)
    net = Network(
        [
            L.Convolution(2, 3, activation="tanh"),
            L.Subsampling(2, "sum", activation="tanh"),
            L.LearnedCombination(2, (2, 1), kernels=kernels, activation="sigmoid"),
            L.Flatten(),
            L.FullyConnected(3, activation="identity"),
        ],
        (1, 10, 10),
        loss="cross_entropy",
        dtype="float32",
        backend="numpy",
    )
    x, t, _, _ = _batch(net, rng)
    h = optim.diagonal_hessian(net, x, t)
    assert sorted(h) == sorted(net.parameters())
    for name, value in h.items():
        assert value.dtype == np.float32, name
        assert tuple(value.shape) == tuple(net.parameters()[name].shape), name


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
def test_diagonal_hessian_is_the_exact_gauss_newton_diagonal_for_one_layer(loss):
    """For one layer, LeCun's approximation drops nothing: it equals diag(J^T H_E J), with J the
    Jacobian of the outputs by all parameters and H_E the exact Hessian of E^n in the outputs."""
    rng = np.random.default_rng(7)
    net = Network(
        [L.FullyConnected(3, activation="identity" if loss == "cross_entropy" else "sigmoid")],
        (4,),
        loss=loss,
        dtype="float64",
        backend="numpy",
    )
    _randomize(net, rng)
    x, t, x_host, t_host = _batch(net, rng, n=4)
    got = _host(net, optim.diagonal_hessian(net, x, t))
    names = list(net.parameters())
    flat0 = np.concatenate([np.asarray(net.parameters()[k]).reshape(-1) for k in names])
    sizes = [net.parameters()[k].size for k in names]
    shapes = [net.parameters()[k].shape for k in names]

    def outputs(flat, n):
        parts = np.split(flat, np.cumsum(sizes)[:-1])
        for k, part, shape in zip(names, parts, shapes, strict=True):
            net.set_parameter(k, part.reshape(shape).copy())
        return np.asarray(net.forward(x[n : n + 1]))[0]

    exact = np.zeros_like(flat0)
    for n in range(x_host.shape[0]):
        jac = _jacobian(lambda f, n=n: outputs(f, n), flat0)
        y = outputs(flat0, n)
        if loss == "squared_error":
            hess = np.eye(3)
        else:
            p = np.exp(y - y.max())
            p /= p.sum()
            hess = np.diag(p) - np.outer(p, p)
        exact += np.einsum("ok,op,pk->k", jac, hess, jac)
    exact /= x_host.shape[0]
    expected = dict(zip(names, np.split(exact, np.cumsum(sizes)[:-1]), strict=True))
    for k, shape in zip(names, shapes, strict=True):
        np.testing.assert_allclose(
            got[k], expected[k].reshape(shape), rtol=1e-6, atol=1e-12, err_msg=k
        )


def test_diagonal_hessian_rejects_unknown_layers():
    class Odd(L.Layer):
        def _build(self, input_shape, context):
            return input_shape

        def forward(self, x):
            return x

    net = Network([Odd(name="odd"), L.FullyConnected(2)], (3,), dtype="float64", backend="numpy")
    x = net.backend.asarray(np.ones((1, 3)))
    with pytest.raises(NotImplementedError, match="no curvature rule for .*odd"):
        optim.diagonal_hessian(net, x, net.backend.asarray(np.ones((1, 2))))


def test_curvature_rules_belong_to_layers_and_losses(rng):
    """Issue 19, item 5: diagonal_hessian runs each layer's and the loss's own rule, so a new
    layer or loss brings its own. A layer y = 2x with its rule d2x = 4 d2y must give fc1 the
    curvature of the same net without it whose last weights are doubled (the same function, the
    same bits: scaling by 2 is exact), and a loss whose rule doubles the squared error's must
    double every entry exactly."""

    class Twice(L.Layer):
        def _build(self, input_shape, context):
            return input_shape

        def forward(self, x):
            return x * 2.0

        def backward(self, dy, need_input_grad=True):
            return dy * 2.0

        def curvature(self, d2y, need_input_grad=True):
            return (d2y * 4.0 if need_input_grad else None), {}

    class DoubledError(L.SquaredError):
        def curvature(self, y, t):
            return super().curvature(y, t) * 2.0

    def build(extra, loss):
        net = Network(
            [
                L.FullyConnected(3, activation="tanh", name="fc1"),
                *extra,
                L.FullyConnected(2, name="out"),
            ],
            (4,),
            loss=loss,
            dtype="float64",
            backend="numpy",
            seed=3,
        )
        return net

    with_twice = build([Twice(name="twice")], "squared_error")
    plain = build([], "squared_error")
    doubled = build([], DoubledError())
    weight = with_twice.state_dict()["out.weight"]
    plain.set_parameter("out.weight", plain.backend.asarray(2.0 * weight))
    doubled.set_parameter("out.weight", doubled.backend.asarray(2.0 * weight))
    for name in ("fc1.weight", "fc1.bias", "out.bias"):
        plain.set_parameter(name, plain.backend.asarray(with_twice.state_dict()[name]))
        doubled.set_parameter(name, doubled.backend.asarray(with_twice.state_dict()[name]))
    x = rng.standard_normal((5, 4))
    t = np.eye(2)[rng.integers(0, 2, 5)]
    h_twice = _host(with_twice, optim.diagonal_hessian(with_twice, x, t))
    h_plain = _host(plain, optim.diagonal_hessian(plain, x, t))
    h_doubled = _host(doubled, optim.diagonal_hessian(doubled, x, t))
    for name in ("fc1.weight", "fc1.bias"):
        np.testing.assert_array_equal(h_twice[name], h_plain[name], err_msg=name)
    assert np.any(h_plain["fc1.weight"] > 0)
    for name, value in h_plain.items():
        np.testing.assert_array_equal(h_doubled[name], 2.0 * value, err_msg=name)


def test_diagonal_hessian_rejects_losses_without_a_rule():
    class Absolute(L.Loss):
        name = "absolute"

        def value(self, y, t):
            return abs(y - t).sum() / y.shape[0]

        def gradient(self, y, t):
            return np.sign(y - t) / y.shape[0]

    net = Network([L.FullyConnected(2)], (3,), loss=Absolute(), dtype="float64", backend="numpy")
    with pytest.raises(NotImplementedError, match="no second derivative for the loss 'absolute'"):
        optim.diagonal_hessian(net, np.ones((1, 3)), np.ones((1, 2)))


# --------------------------------------------------------------------------------------------
# SDLM
# --------------------------------------------------------------------------------------------
@pytest.mark.jax  # in the default suite on JAX (tests/conftest.py SUBSET_VARIANTS)
def test_sdlm_steps_are_positive_and_bounded(backend, rng):
    net = _tiny_conv(backend, "sum")
    x, t, _, _ = _batch(net, rng, n=8)
    opt = optim.SDLM(net, 0.01, mu=0.02, layer_rates={"conv1": 0.5})
    opt.start_epoch(0, [(x, t)])
    for name, eta in _host(net, opt.step_sizes()).items():
        rate = opt.rate(name)
        assert np.all(eta > 0), name
        assert np.all(eta <= rate / 0.02 * (1 + 1e-12)), name
        h = np.asarray(backend.to_host(opt._state["hessian"][name]), dtype=np.float64)
        np.testing.assert_allclose(eta, rate / (0.02 + h), rtol=1e-12)
    assert opt.rate("conv1.kernel") == pytest.approx(0.005)
    p0 = _host(net, net.parameters())
    net.compute_gradients(x, t)
    g = _host(net, net.gradients())
    opt.step()
    p1 = _host(net, net.parameters())
    eta = _host(net, opt.step_sizes())
    for name in p0:
        np.testing.assert_allclose(p1[name], p0[name] - eta[name] * g[name], rtol=1e-12, atol=1e-15)


def test_sdlm_needs_data_for_its_first_epoch():
    net = _tiny_fc("numpy")
    opt = optim.SDLM(net)
    with pytest.raises(ValueError, match="estimate the curvature"):
        opt.start_epoch(0)
    with pytest.raises(ValueError, match="mu must be > 0"):
        optim.SDLM(net, mu=0)
    # LeCun's schedule by default, scaled to start at the class's default rate
    assert opt.lr == optim.SDLM.default_lr == 0.003
    assert opt.schedule.config() == optim.lecun1998(0.003 / 0.0005).config()


def test_sdlm_reduces_the_loss():
    rng = np.random.default_rng(11)
    net = _tiny_conv("numpy", "sum")
    x, t, _, _ = _batch(net, rng, n=16)
    opt = optim.SDLM(net, 0.02)
    opt.start_epoch(0, [(x, t)])
    first = float(net.compute_gradients(x, t))
    for _ in range(30):
        net.compute_gradients(x, t)
        opt.step()
    assert float(net.loss_value(net.forward(x), t)) < 0.5 * first


@pytest.mark.parametrize("shape", [(2, 13), (1, 5, 6, 5)], ids=["1d", "3d"])
def test_diagonal_hessian_in_1d_and_3d(shape):
    """LeCun's curvature in 1-D and 3-D (issue 18): every layer kind against squared Jacobians."""
    rng = np.random.default_rng(7)
    net = Network(
        [
            L.Convolution(3, 2, padding=1, activation="tanh"),
            L.Subsampling(2, "mean", activation="tanh", remainder="pad"),
            L.LearnedCombination(2, 2, kernels="per_pair", activation="tanh"),
            L.LearnedCombination(2, 1, activation="tanh"),
            L.Flatten(),
            L.FullyConnected(3, activation="identity"),
        ],
        shape,
        loss="cross_entropy",
        dtype="float64",
        backend="numpy",
    )
    _randomize(net, rng)
    x, t, x_host, t_host = _batch(net, rng)
    got = _host(net, optim.diagonal_hessian(net, x, t))
    expected = _squared_jacobian_oracle(net, x_host, t_host)
    assert list(got) == list(net.parameters())
    for name in expected:
        np.testing.assert_allclose(
            got[name],
            expected[name],
            rtol=1e-6,
            atol=1e-9 * np.abs(expected[name]).max(),
            err_msg=name,
        )


def test_optimizers_use_a_backends_fused_updates_with_the_same_bits(rng):
    """Note [Fused updates] in anycnn.ops: where a backend's table has sgd_update_ /
    momentum_update_ (the CuPy plugin's one-kernel updates), SGD and Momentum call them, once
    per parameter and step, and (here with the reference updates, NumPy arrays) the parameters
    and velocities are those of the optimizers' own arithmetic, bit for bit; SDLM keeps its own."""
    import array_api_compat.numpy as np_xp

    from anycnn import ops as reference
    from anycnn.backend import registry

    calls: list[str] = []

    def counted(name):
        def update(*args):
            calls.append(name)
            return getattr(reference, name)(*args)

        update.__name__ = name
        return update

    fused = registry.Backend(
        name="numpy_with_updates",
        array_module="numpy",
        namespace=lambda: np_xp,
        device=lambda: "cpu",
        writable=True,  # in-place updates need writable arrays (Note [Backend capabilities])
        fast_ops=lambda: {
            **registry.lookup("numpy").fast_ops(),
            **{n: counted(n) for n in registry.UPDATE_OP_NAMES},
        },
    )
    x = rng.random((6, 1, 28, 28))
    t = np.eye(10)[rng.integers(0, 10, 6)]
    for kind, options in (("sgd", {}), ("momentum", {"momentum": 0.9})):
        nets = [models.dlt(dtype="float64", seed=4, backend=b) for b in ("numpy", fused)]
        opts = [optim.build_optimizer(kind, net, lr=0.3, **options) for net in nets]
        calls.clear()
        for _ in range(3):
            for net, opt in zip(nets, opts, strict=True):
                net.compute_gradients(net.backend.asarray(x, "float64"), t, check=False)
                opt.step()
        expected = {"sgd": "sgd_update_", "momentum": "momentum_update_"}[kind]
        assert calls == [expected] * 3 * len(nets[0].parameters())
        plain, with_updates = (net.state_dict() for net in nets)
        for name in plain:
            assert plain[name].tobytes() == with_updates[name].tobytes(), (kind, name)
        states = [opt.state_dict() for opt in opts]
        for name in states[0]:
            assert np.asarray(states[0][name]).tobytes() == np.asarray(states[1][name]).tobytes()


# --------------------------------------------------------------------------------------------
# Survivors of the mutation campaign (issue 22), each pinned by what the code promises
# --------------------------------------------------------------------------------------------
def test_a_layer_may_bring_its_own_curvature_rule():
    """``layer.curvature(d2y, need_input)`` wins over the built-in table; the first layer is
    asked for no input curvature, the others are and pass theirs down."""
    calls = []

    class Scale(L.Layer):
        def _build(self, input_shape, context):
            return input_shape

        def forward(self, x):
            return 2.0 * x

        def backward(self, dy, need_input_grad=True):
            return 2.0 * dy if need_input_grad else None

        def curvature(self, d2y, need_input):
            calls.append((self.name, need_input, tuple(d2y.shape)))
            return (4.0 * d2y if need_input else None), {}

    net = Network(
        [
            Scale(name="first"),
            Scale(name="second"),
            L.FullyConnected(2, activation="identity"),
            Scale(name="last"),
        ],
        (3,),
        loss="squared_error",
        dtype="float64",
        backend="numpy",
    )
    x = net.backend.asarray(np.ones((2, 3)))
    h = optim.diagonal_hessian(net, x, net.backend.asarray(np.zeros((2, 2))))
    assert calls == [("last", True, (2, 2)), ("second", True, (2, 3)), ("first", False, (2, 3))]
    # squared error: d2E/dy2 = 1 per pattern; through "last" (x2): 4; fc's input is 4 x = 4
    fc = net.layers[2].name
    np.testing.assert_allclose(np.asarray(h[f"{fc}.weight"]), np.full((2, 3), 4.0 * 16))


def test_build_optimizer_passes_the_rate_on():
    net = _tiny_fc("numpy")
    for name in ("sgd", "momentum", "sdlm"):
        assert optim.build_optimizer(name, net, lr=0.3).schedule.config() == {
            "name": "constant",
            "lr": 0.3,
        }
    schedule = optim.as_schedule({"name": "step", "lr": 0.2, "every": 2, "gamma": 0.5})
    assert schedule.config() == {"name": "step", "lr": 0.2, "every": 2, "gamma": 0.5}


def test_diagonal_hessian_checks_its_inputs_unless_told_not_to():
    net = _tiny_fc("numpy")
    bad = net.backend.asarray(np.full((2, 4), np.nan))
    t = net.backend.asarray(np.eye(3)[[0, 1]])
    with pytest.raises(ValueError, match="^diagonal_hessian: .*NaN or Inf"):
        optim.diagonal_hessian(net, bad, t)
    with pytest.raises(ValueError, match="^diagonal_hessian: "):
        optim.diagonal_hessian(net, net.backend.asarray(np.zeros((2, 4))), t[:1])
    with np.errstate(invalid="ignore"):
        h = optim.diagonal_hessian(net, bad, t, check=False)  # unchecked: NaN in, NaN out
    assert np.isnan(np.asarray(h["fc1.weight"])).all()


def test_output_curvature_of_the_cross_entropy_with_extreme_logits():
    """p (1 - p) from a softmax shifted by each row's own maximum: no overflow at 1e3, and a
    row of small logits keeps its probabilities beside a row of huge ones."""
    loss = L.CrossEntropy()
    y = np.array([[1000.0, 999.0, 0.0], [0.0, 1.0, 2.0]])
    t = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    got = loss.curvature(y, t)  # the loss owns its rule (issue 19, item 5)
    for row in range(2):
        p = np.exp(y[row] - y[row].max())
        p /= p.sum()
        np.testing.assert_allclose(got[row], p * (1 - p), rtol=1e-12, atol=1e-300)
    assert np.isfinite(got).all()


def test_the_registries_refuse_what_is_not_theirs():
    net = _tiny_fc("numpy")
    with pytest.raises(TypeError, match="^register_optimizer: expected an Optimizer subclass"):
        optim.register_optimizer(int)
    with pytest.raises(TypeError, match="^register_optimizer: expected an Optimizer subclass"):
        optim.register_optimizer(optim.SGD(net, 0.1))
    with pytest.raises(ValueError, match="^unknown schedule None; known: constant, step"):
        optim.schedule_from_config({"lr": 0.1})
    with pytest.raises(ValueError, match="^unknown optimizer None; known: sgd, momentum"):
        optim.optimizer_from_config(net, {"lr": {"name": "constant", "lr": 0.1}})


def test_default_rate_starts_where_asked():
    assert optim.Momentum.default_rate(0.5).config() == {"name": "constant", "lr": 0.5}
    assert optim.SGD.default_rate().config() == {"name": "constant", "lr": 0.05}
    sdlm = optim.SDLM.default_rate(0.01)
    assert sdlm.config() == optim.lecun1998(20.0).config() and sdlm.rate(0) == 0.01


def test_loaded_optimizer_state_is_a_copy(backend, rng):
    """Steps after load_state_dict never write into the arrays it was given."""
    net = _tiny_fc(backend)
    x, t, _, _ = _batch(net, rng)
    opt = optim.Momentum(net, 0.1, momentum=0.5)
    net.compute_gradients(x, t)
    opt.step()
    state = opt.state_dict()
    kept = {k: np.array(v, copy=True) for k, v in state.items()}
    again = optim.Momentum(net, 0.1, momentum=0.5)
    again.load_state_dict(state)
    net.compute_gradients(x, t)
    again.step()
    for key, value in state.items():
        np.testing.assert_array_equal(value, kept[key], err_msg=key)
    assert int(again.state_dict()["steps"]) == 2


def test_optimizer_state_of_a_layer_named_with_a_slash():
    """State keys are ``<slot>/<parameter>``, split at the first slash: a layer's name may hold
    more of them."""
    net = Network(
        [L.FullyConnected(3, name="block/fc", activation="tanh"), L.FullyConnected(2)],
        (4,),
        dtype="float64",
        backend="numpy",
    )
    x = net.backend.asarray(np.ones((2, 4)))
    t = net.backend.asarray(np.eye(2))
    opt = optim.Momentum(net, 0.1)
    net.compute_gradients(x, t)
    opt.step()
    state = opt.state_dict()
    assert "velocity/block/fc.weight" in state
    again = optim.Momentum(net, 0.1)
    again.load_state_dict(state)
    restored = again.state_dict()
    assert sorted(restored) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(restored[key], value, err_msg=key)
