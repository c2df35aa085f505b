"""Each flag of the layer contract tried both ways (issue 22): ``need_input_grad`` (the input
gradient, right when asked for, None when not, the parameter gradients the same either way),
``defer_up`` of subsampling, ``need_delta`` of the convolution's backward op, ``trainable``,
and the networks' ``check=`` on forward, backward, compute_gradients and set_parameter.

The input gradients asked for are checked against a directional central difference in float64
of ``E(x) = sum(dy o forward(x))``, whose gradient in ``x`` is what ``backward(dy)`` returns.
"""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import ops as reference
from anycnn.layers import (
    BuildContext,
    Convolution,
    Flatten,
    FullyConnected,
    LearnedCombination,
    Subsampling,
    get_activation,
)
from anycnn.layers.base import Upsampled
from anycnn.network import Network

LAYERS = {
    "conv": lambda: Convolution(3, 3, activation="tanh"),
    "conv_table_padded": lambda: Convolution(
        3, (3, 2), selection="random", inputs_per_map=1, padding=(1, 0), seed=4, activation="tanh"
    ),
    "sub_sum": lambda: Subsampling(2, "sum", activation="tanh"),
    "sub_mean_fixed": lambda: Subsampling(2, "mean", trainable=False),
    "sub_decimate": lambda: Subsampling(2, "decimate", activation="sigmoid"),
    "sub_pad_remainder": lambda: Subsampling(3, "mean", activation="tanh", remainder="pad"),
    "flatten": Flatten,
    "fc": lambda: FullyConnected(4, activation="sigmoid"),
    "combination": lambda: LearnedCombination(3, 3, lam=0.1, activation="tanh"),
}
INPUTS = {"flatten": (2, 4, 4), "fc": (7,), "sub_pad_remainder": (2, 7, 5)}


def _built(backend, make, shape, seed=0):
    layer = make()
    layer.name = "layer"
    rng = np.random.default_rng(seed)
    layer.build(shape, BuildContext(backend, backend.xp.float64, rng))
    for role, p in layer.params.items():  # off the initial values (zero biases, beta 1/4)
        host = np.asarray(backend.to_host(p)) + 0.2 * rng.standard_normal(tuple(p.shape))
        if role == "kernel" and getattr(layer, "table", None) is not None:
            host = host * layer.table[:, :, None, None]
        layer.params[role] = backend.asarray(host, dtype="float64")
    return layer


def _grads(backend, layer):
    return {k: np.array(backend.to_host(v), copy=True) for k, v in layer.grads.items()}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_need_input_grad_both_ways(backend, rng, kind):
    shape = INPUTS.get(kind, (2, 8, 6))
    layer = _built(backend, LAYERS[kind], shape)
    x_host = rng.standard_normal((3, *shape))
    x = backend.asarray(x_host, dtype="float64")
    y = layer.forward(x)
    dy_host = rng.standard_normal(tuple(y.shape))
    dy = backend.asarray(dy_host, dtype="float64")

    dx = layer.backward(dy, need_input_grad=True)
    with_dx = _grads(backend, layer)
    assert dx is not None and tuple(dx.shape) == x_host.shape
    dx_host = np.asarray(backend.to_host(dx), dtype=np.float64)

    def energy(values):
        out = layer.forward(backend.asarray(values, dtype="float64"))
        return float(np.sum(np.asarray(backend.to_host(out)) * dy_host))

    direction = rng.standard_normal(x_host.shape)
    h = 1e-6
    numeric = (energy(x_host + h * direction) - energy(x_host - h * direction)) / (2 * h)
    assert np.sum(dx_host * direction) == pytest.approx(numeric, rel=1e-6, abs=1e-8)

    layer.forward(x)
    assert layer.backward(dy, need_input_grad=False) is None
    without_dx = _grads(backend, layer)
    assert sorted(without_dx) == sorted(with_dx) == sorted(layer.params)
    for name in with_dx:  # the parameter gradients do not depend on the flag
        np.testing.assert_allclose(without_dx[name], with_dx[name], rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_need_input_grad_default_and_curvature_both_ways(backend, rng, kind):
    """``need_input_grad`` defaults to True in ``backward`` and ``curvature``; ``curvature``
    without it returns None for the input and the same parameter curvatures (SDLM's pass asks
    no input curvature of the first layer)."""
    shape = INPUTS.get(kind, (2, 8, 6))
    layer = _built(backend, LAYERS[kind], shape)
    x = backend.asarray(rng.standard_normal((3, *shape)), dtype="float64")
    y = layer.forward(x)
    dy = backend.asarray(rng.standard_normal(tuple(y.shape)), dtype="float64")
    asked = np.asarray(backend.to_host(layer.backward(dy, need_input_grad=True)))
    layer.forward(x)
    by_default = layer.backward(dy)
    assert by_default is not None
    np.testing.assert_array_equal(np.asarray(backend.to_host(by_default)), asked)

    d2y = backend.asarray(rng.uniform(0.1, 1.0, tuple(y.shape)), dtype="float64")
    layer.forward(x)
    d2x_asked, h_asked = layer.curvature(d2y, need_input_grad=True)
    layer.forward(x)
    d2x_default, h_default = layer.curvature(d2y)
    layer.forward(x)
    d2x_none, h_none = layer.curvature(d2y, need_input_grad=False)
    assert d2x_asked is not None and tuple(d2x_asked.shape) == (3, *shape)
    assert d2x_none is None and d2x_default is not None
    asked_host = np.asarray(backend.to_host(d2x_asked))
    assert np.all(asked_host >= 0)  # a Gauss-Newton curvature: sums of squares
    np.testing.assert_array_equal(np.asarray(backend.to_host(d2x_default)), asked_host)
    assert sorted(h_asked) == sorted(h_default) == sorted(h_none)
    for role, value in h_asked.items():
        np.testing.assert_array_equal(
            np.asarray(backend.to_host(h_none[role])), np.asarray(backend.to_host(value))
        )


@pytest.mark.parametrize("mode", ["sum", "mean", "decimate"])
@pytest.mark.parametrize("trainable", [True, False])
def test_subsampling_defer_up_both_ways(backend, rng, mode, trainable):
    """``defer_up=True`` hands down ``Upsampled(delta, n)`` whose up-sampling is exactly the input
    gradient of ``defer_up=False`` (for "sum" and "mean": the block's share of it)."""
    layer = _built(backend, lambda: Subsampling(2, mode, trainable=trainable), (2, 6, 4))
    x = backend.asarray(rng.standard_normal((2, 2, 6, 4)), dtype="float64")
    y = layer.forward(x)
    dy = backend.asarray(rng.standard_normal(tuple(y.shape)), dtype="float64")
    plain = np.asarray(backend.to_host(layer.backward(dy, defer_up=False)))
    plain_grads = _grads(backend, layer)
    layer.forward(x)
    deferred = layer.backward(dy, defer_up=True)
    if mode == "decimate":  # decimation's transpose is no up-sampling: never deferred
        assert not isinstance(deferred, Upsampled)
        np.testing.assert_array_equal(np.asarray(backend.to_host(deferred)), plain)
        return
    assert isinstance(deferred, Upsampled) and deferred.n == 2
    up = np.asarray(backend.to_host(reference.kron_upsample(deferred.delta, 2)))
    np.testing.assert_allclose(up, plain, rtol=1e-15, atol=0)
    for name, value in _grads(backend, layer).items():
        np.testing.assert_array_equal(value, plain_grads[name])


def test_trainable_both_ways(backend, rng):
    x_host = rng.standard_normal((2, 1, 4, 4))
    x = backend.asarray(x_host, dtype="float64")
    fixed = _built(backend, lambda: Subsampling(2, "sum", trainable=False), (1, 4, 4))
    trained = _built(backend, lambda: Subsampling(2, "sum"), (1, 4, 4))
    assert fixed.params == {} and sorted(trained.params) == ["beta", "bias"]
    sums = x_host.reshape(2, 1, 2, 2, 2, 2).sum(axis=(3, 5))
    np.testing.assert_allclose(np.asarray(backend.to_host(fixed.forward(x))), sums, rtol=1e-15)
    beta = np.asarray(backend.to_host(trained.params["beta"]))
    bias = np.asarray(backend.to_host(trained.params["bias"]))
    expected = sums * beta[None, :, None, None] + bias[None, :, None, None]
    np.testing.assert_allclose(
        np.asarray(backend.to_host(trained.forward(x))), expected, rtol=1e-14
    )


@pytest.mark.parametrize("up", [1, 2])
def test_conv_backward_need_delta_both_ways(backend, rng, up):
    """The one-call convolution gradients: delta when asked, None when not, the same sums."""
    act = get_activation("tanh")
    x = rng.standard_normal((2, 2, 7, 7))
    y = np.tanh(rng.standard_normal((2, 3, 6, 6)))
    dy = rng.standard_normal((2, 3, 6 // up, 6 // up))
    ops = [reference.conv_backward]
    fused = backend.ops.fused.get("conv_backward")
    if fused is not None:
        ops.append(fused)
    for op in ops:
        args = [backend.asarray(a, dtype="float64") for a in (x, dy, y)]
        gk, gb, delta = op(*args, act, None, up, True)
        gk2, gb2, none = op(*args, act, None, up, False)
        assert none is None and delta is not None
        expected_delta = (1 - y * y) * np.kron(dy, np.ones((up, up)))
        np.testing.assert_allclose(np.asarray(backend.to_host(delta)), expected_delta, rtol=1e-13)
        np.testing.assert_allclose(
            np.asarray(backend.to_host(gb)), expected_delta.sum(axis=(0, 2, 3)), rtol=1e-12
        )
        for a, b in ((gk, gk2), (gb, gb2)):
            np.testing.assert_allclose(
                np.asarray(backend.to_host(a)), np.asarray(backend.to_host(b)), rtol=1e-14
            )


def _net(backend):
    return Network(
        [Convolution(2, 3, activation="tanh"), Flatten(), FullyConnected(2, activation="identity")],
        (1, 5, 5),
        loss="cross_entropy",
        dtype="float64",
        backend=backend,
        seed=1,
    )


def test_network_asks_no_input_gradient_of_its_first_layer(backend, rng):
    net = _net(backend)
    seen = []
    for layer in net.layers:
        original = layer.backward

        def spy(dy, need_input_grad=True, original=original, name=layer.name):
            seen.append((name, need_input_grad))
            return original(dy, need_input_grad)

        layer.backward = spy
    x = backend.asarray(rng.standard_normal((2, 1, 5, 5)), dtype="float64")
    t = backend.asarray(np.eye(2), dtype="float64")
    net.compute_gradients(x, t)
    names = [layer.name for layer in net.layers]
    assert seen == [(names[2], True), (names[1], True), (names[0], False)]


def test_network_check_both_ways(backend, rng):
    net = _net(backend)
    x = backend.asarray(rng.standard_normal((2, 1, 5, 5)), dtype="float64")
    t = backend.asarray(np.eye(2), dtype="float64")
    bad_x = backend.asarray(np.full((2, 1, 5, 5), np.nan), dtype="float64")
    bad_t = backend.asarray(np.array([[np.inf, 0.0], [0.0, 1.0]]), dtype="float64")
    # check=True (the default) refuses non-finite inputs and targets, naming them
    with pytest.raises(ValueError, match="NaN or Inf"):
        net.forward(bad_x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        net.compute_gradients(x, bad_t)
    net.forward(x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        net.backward(bad_t)
    # check=False computes on what it is given, unchecked (the training loop's inner path) ...
    y = np.asarray(net.backend.to_host(net.forward(bad_x, check=False)))
    assert np.isnan(y).all()
    net.forward(x, check=False)
    with np.errstate(invalid="ignore"):
        net.backward(bad_t, check=False)
    grads = np.asarray(net.backend.to_host(net.gradients()[f"{net.layers[2].name}.bias"]))
    assert not np.isfinite(grads).all()
    # ... and the same numbers as check=True on valid data
    a = float(net.compute_gradients(x, t))
    ga = {k: np.array(net.backend.to_host(v), copy=True) for k, v in net.gradients().items()}
    b = float(net.compute_gradients(x, t, check=False))
    assert a == b
    for k, v in net.gradients().items():
        np.testing.assert_array_equal(np.asarray(net.backend.to_host(v)), ga[k])


def test_set_parameter_check_both_ways(backend):
    net = _net(backend)
    fc = net.layers[2].name
    value = backend.asarray(np.arange(2.0), dtype="float64")
    net.set_parameter(f"{fc}.bias", value)  # check=True: a copy, checked
    assert net.parameters()[f"{fc}.bias"] is not value
    with pytest.raises(ValueError, match=rf"set_parameter\({fc}.bias\)"):
        net.set_parameter(f"{fc}.bias", backend.asarray(np.zeros(3), dtype="float64"))
    with pytest.raises(ValueError, match=rf"set_parameter\({fc}.bias\)"):
        net.set_parameter(f"{fc}.bias", backend.asarray(np.array([np.nan, 0.0]), dtype="float64"))
    net.set_parameter(f"{fc}.bias", value, check=False)  # the optimizers' path: taken as it is
    assert net.parameters()[f"{fc}.bias"] is value
    assert net.layers[2].params["bias"] is value
    with pytest.raises(KeyError, match=f"{fc}.nope"):
        net.set_parameter(f"{fc}.nope", value, check=False)


def test_every_layer_asks_the_input_gradient_by_default():
    """The contract's default, in the base class and every layer (``need_input_grad=True`` in
    ``backward`` and ``curvature``), read from the signatures like the ops' parity test."""
    import inspect

    from anycnn.layers import LAYER_TYPES
    from anycnn.layers.base import Layer

    classes = {Layer, *LAYER_TYPES.values()}
    assert {Convolution, Subsampling, FullyConnected, Flatten, LearnedCombination} <= classes
    for cls in classes:
        for method in ("backward", "curvature"):
            parameter = inspect.signature(getattr(cls, method)).parameters["need_input_grad"]
            assert parameter.default is True, (cls.__name__, method)
