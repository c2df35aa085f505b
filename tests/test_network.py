"""The Network on every backend: named parameters and gradients, arrays of the right backend and
dtype, build-time shape errors that name the layer, call-time errors that name the fix and leave
the parameters unchanged, and config / from_config round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anycnn import models
from anycnn.backend import lookup
from anycnn.layers import Convolution, Flatten, FullyConnected, LayerError, Subsampling
from anycnn.network import Network
from anycnn.testing import assert_close, dtype_name

DLT_PARAMETERS = [
    "conv1.kernel",
    "conv1.bias",
    "conv3.kernel",
    "conv3.bias",
    "fc5.weight",
    "fc5.bias",
]
LENET5_PARAMETERS = [
    "conv1.kernel",
    "conv1.bias",
    "sub2.beta",
    "sub2.bias",
    "conv3.kernel",
    "conv3.bias",
    "sub4.beta",
    "sub4.bias",
    "conv5.kernel",
    "conv5.bias",
    "fc6.weight",
    "fc6.bias",
    "fc7.weight",
    "fc7.bias",
]
LENET5_SHAPES = {
    "conv1.kernel": (6, 1, 5, 5),
    "conv1.bias": (6,),
    "sub2.beta": (6,),
    "sub2.bias": (6,),
    "conv3.kernel": (16, 6, 5, 5),
    "conv3.bias": (16,),
    "sub4.beta": (16,),
    "sub4.bias": (16,),
    "conv5.kernel": (120, 16, 5, 5),
    "conv5.bias": (120,),
    "fc6.weight": (84, 120),
    "fc6.bias": (84,),
    "fc7.weight": (10, 84),
    "fc7.bias": (10,),
}


def _host(net, value):
    return np.array(net.backend.to_host(value), copy=True)


def _snapshot(net):
    return {name: _host(net, value) for name, value in net.parameters().items()}


def _assert_unchanged(net, before):
    after = _snapshot(net)
    assert list(after) == list(before)
    for name, value in after.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


# --- names, backends and dtypes ----------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("model", "names"),
    [(models.dlt, DLT_PARAMETERS), (models.lenet5, LENET5_PARAMETERS)],
    ids=["dlt", "lenet5"],
)
def test_named_parameters_and_gradients(backend, rng, model, names, dtype):
    """Parameters and gradients by layer and role, all arrays of the current backend (namespace
    and device) in the network's dtype; 10 outputs."""
    net = model(dtype=dtype)
    assert net.backend is backend and net.dtype_name == dtype
    assert list(net.parameters()) == names
    assert list(net.parameter_layers()) == names
    assert net.output_shape == (10,)
    for name, value in net.parameters().items():
        assert_close(value, _host(net, value), backend=backend, err_msg=f"{name}: ")
        assert dtype_name(value.dtype) == dtype, name
    x = backend.asarray(rng.uniform(0, 1, (3, *net.input_shape)), dtype=dtype)
    t = backend.asarray(np.eye(10)[[1, 4, 9]], dtype=dtype)
    assert net.gradients() == {}
    loss = net.compute_gradients(x, t)
    assert_close(loss, np.asarray(float(loss), dtype=dtype), backend=backend)
    assert tuple(net.forward(x).shape) == (3, 10)
    grads = net.gradients()
    assert list(grads) == names
    for name, grad in grads.items():
        assert tuple(grad.shape) == tuple(net.parameters()[name].shape), name
        assert_close(grad, _host(net, grad), backend=backend, err_msg=f"{name}: ")
        assert dtype_name(grad.dtype) == dtype, name
        assert np.all(np.isfinite(_host(net, grad))), name
    assert tuple(net.predict(x).shape) == (3, 10)  # the outputs, as Keras' predict
    assert tuple(net.predict_classes(x).shape) == (3,)


def test_lenet5_shapes_and_table():
    net = models.lenet5(backend="numpy")
    assert {k: tuple(v.shape) for k, v in net.parameters().items()} == LENET5_SHAPES
    assert [layer.name for layer in net.layers] == [
        "conv1",
        "sub2",
        "conv3",
        "sub4",
        "conv5",
        "flatten5",
        "fc6",
        "fc7",
    ]
    assert [layer.output_shape for layer in net.layers] == [
        (6, 28, 28),
        (6, 14, 14),
        (16, 10, 10),
        (16, 5, 5),
        (120, 1, 1),
        (120,),
        (84,),
        (10,),
    ]
    assert int(net.layers[2].table.sum()) == 60  # Table I's 60 connections
    assert "conv3" in net.summary()


def test_dlt_shapes():
    net = models.dlt(backend="numpy")
    assert [layer.output_shape for layer in net.layers] == [
        (6, 24, 24),
        (6, 12, 12),
        (12, 8, 8),
        (12, 4, 4),
        (192,),
        (10,),
    ]
    assert tuple(net.parameters()["fc5.weight"].shape) == (10, 192)


def test_the_backend_argument_wins_over_the_current_backend(backend):
    net = Network([Flatten(), FullyConnected(2)], (1, 2, 2), backend="numpy")
    assert net.backend is lookup("numpy")
    assert Network([Flatten(), FullyConnected(2)], (1, 2, 2)).backend is backend


# --- build-time errors -------------------------------------------------------------------------
BUILD_ERRORS = {
    "not divisible": (
        lambda: [Convolution(2, 3), Subsampling(2)],
        (1, 9, 9),
        [r"7x7 maps are not divisible by 2", r"\(sub2\)", r"input shape \(2, 7, 7\)"],
    ),
    "kernel larger than the maps": (
        lambda: [Convolution(2, 3), Subsampling(2), Convolution(4, 5)],
        (1, 10, 10),
        [r"kernel 5x5 is larger than the 4x4 input maps", r"\(conv3\)"],
    ),
    "fully connected on maps": (
        lambda: [Convolution(2, 3), FullyConnected(10)],
        (1, 6, 6),
        [r"expects a vector input, got maps of shape \(2, 4, 4\)", r"add Flatten\(\)", r"\(fc2\)"],
    ),
    "table of the wrong shape": (
        lambda: [Convolution(3, 3, selection=np.ones((2, 2), bool))],
        (2, 6, 6),
        [r"\(C_out, C_in\) = \(3, 2\), got \(2, 2\)", r"\(conv1\)"],
    ),
    "output map without input": (
        lambda: [Convolution(3, 3, selection=[[1, 0], [0, 0], [1, 1]])],
        (2, 6, 6),
        [r"output map\(s\) \[1\] use no input map", r"\(conv1\)"],
    ),
    "lenet5 table on other sizes": (
        lambda: [Convolution(4, 3, selection="lenet5")],
        (3, 6, 6),
        [r"'lenet5' table connects 6 input maps to 16 output maps, got 3 -> 4", r"\(conv1\)"],
    ),
    "unknown selection": (
        lambda: [Convolution(4, 3, selection="quads")],
        (3, 6, 6),
        [r"unknown selection 'quads'", r"\(conv1\)"],
    ),
    "pairs of one map": (
        lambda: [Convolution(4, 3, selection="pairs")],
        (1, 6, 6),
        [r"'pairs' needs at least 2 input maps, got 1", r"\(conv1\)"],
    ),
    "convolution on vectors": (
        lambda: [Flatten(), Convolution(2, 3)],
        (1, 6, 6),
        [r"expects \(C, H, W\) maps, got input shape \(36,\)", r"\(conv1\)"],
    ),
    "subsampling on vectors": (
        lambda: [Subsampling(2)],
        (16,),
        [r"expects \(C, H, W\) maps, got input shape \(16,\)", r"\(sub1\)"],
    ),
}


@pytest.mark.parametrize("case", list(BUILD_ERRORS))
def test_build_errors_name_the_layer(backend, case):
    layers, shape, patterns = BUILD_ERRORS[case]
    with pytest.raises(LayerError) as info:
        Network(layers(), shape, dtype="float64")
    for pattern in patterns:
        assert info.match(pattern)


def test_build_errors_of_the_network(backend):
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64', got 'int32'"):
        Network([Flatten()], (1, 2, 2), dtype="int32")
    with pytest.raises(ValueError, match="needs at least one layer"):
        Network([], (1, 2, 2))
    with pytest.raises(ValueError, match="input_shape must be positive sizes"):
        Network([Flatten()], (1, 0, 2))
    with pytest.raises(TypeError, match="expected Layer objects, got str"):
        Network(["conv"], (1, 2, 2))
    with pytest.raises(ValueError, match="two layers are named 'a'"):
        Network([Flatten(name="a"), FullyConnected(2, name="a")], (1, 2, 2))


# --- call-time errors --------------------------------------------------------------------------
def _dlt_batch(backend, rng, n=2, dtype="float64"):
    x = backend.asarray(rng.uniform(0, 1, (n, 1, 28, 28)), dtype=dtype)
    t = backend.asarray(np.eye(10)[rng.integers(0, 10, n)], dtype=dtype)
    return x, t


def test_call_errors_name_the_fix_and_change_nothing(backend, rng):
    net = models.dlt(dtype="float64")
    x, t = _dlt_batch(backend, rng)
    net.compute_gradients(x, t)  # grads exist; a failed call must not touch parameters
    before = _snapshot(net)
    as_float32 = backend.asarray(rng.uniform(0, 1, (2, 1, 28, 28)), dtype="float32")
    cases = [
        (
            lambda: net.forward(backend.asarray(np.zeros((2, 1, 32, 32)), dtype="float64")),
            ValueError,
            r"\(conv1\) expects a batch of shape \(N, 1, 28, 28\), got \(2, 1, 32, 32\)",
        ),
        (
            lambda: net.forward(backend.asarray(np.zeros((2, 28, 28)), dtype="float64")),
            ValueError,
            r"\(conv1\) expects a batch of shape \(N, 1, 28, 28\), got \(2, 28, 28\)",
        ),
        (
            lambda: net.forward(backend.asarray(np.zeros((2, 1, 28, 28), np.int64))),
            TypeError,
            r"x has dtype int64 but the network is float64",
        ),
        (
            lambda: net.forward(as_float32),
            TypeError,
            r"x has dtype float32 but the network is float64; convert with "
            r"net.backend.asarray\(x, dtype='float64'\)",
        ),
        (
            lambda: net.forward(np.zeros((2, 1, 28, 28)).tolist()),
            TypeError,
            r"expected arrays, got builtins.list; use net.backend.asarray\(x\)",
        ),
        (
            lambda: net.forward(backend.asarray(np.zeros((0, 1, 28, 28)), dtype="float64")),
            ValueError,
            r"empty batch",
        ),
        (
            lambda: net.compute_gradients(x, backend.asarray(np.zeros((2, 9)), dtype="float64")),
            ValueError,
            r"targets must have shape \(2, 10\) .*\(fc5\), got \(2, 9\)",
        ),
        (
            lambda: net.compute_gradients(x, backend.asarray(np.zeros((3, 10)), dtype="float64")),
            ValueError,
            r"targets must have shape \(2, 10\) .*, got \(3, 10\)",
        ),
        (
            lambda: net.compute_gradients(x, backend.asarray(np.zeros((2, 10)), dtype="float32")),
            TypeError,
            r"targets have dtype float32, expected float64",
        ),
        (lambda: net.compute_gradients(as_float32, t), TypeError, r"x has dtype float32"),
        (
            lambda: net.set_parameter(
                "conv1.kernel", backend.asarray(np.zeros((6, 1, 4, 4)), dtype="float64")
            ),
            ValueError,
            r"set_parameter\(conv1.kernel\): expected shape \(6, 1, 5, 5\)",
        ),
        (
            lambda: net.set_parameter(
                "conv1.kernel", backend.asarray(np.zeros((6, 1, 5, 5)), dtype="float32")
            ),
            TypeError,
            r"set_parameter\(conv1.kernel\): expected dtype",
        ),
        (lambda: net.set_parameter("conv9.kernel", x), KeyError, r"no parameter 'conv9.kernel'"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()
        _assert_unchanged(net, before)


def test_targets_of_the_wrong_shape_after_forward(backend, rng):
    net = models.dlt(dtype="float64")
    x, _ = _dlt_batch(backend, rng)
    net.forward(x)
    before = _snapshot(net)
    with pytest.raises(ValueError, match=r"targets must have shape \(2, 10\)"):
        net.backward(backend.asarray(np.zeros((2, 10, 1)), dtype="float64"))
    _assert_unchanged(net, before)


def test_backward_before_forward(backend):
    net = Network([Flatten(), FullyConnected(2)], (1, 2, 2), dtype="float64")
    with pytest.raises(RuntimeError, match="call forward first"):
        net.backward(backend.asarray(np.zeros((1, 2)), dtype="float64"))


# Pairs of (the network's backend, the backend the data wrongly comes from).
INTRUDERS = [
    ("array_api_strict", "numpy"),
    ("numpy", "array_api_strict"),
    ("torch", "numpy"),
    ("numpy", "torch"),
]


@pytest.mark.parametrize(("home", "other"), INTRUDERS, ids=[f"{o}-into-{h}" for h, o in INTRUDERS])
def test_an_array_of_another_backend(home, other, rng):
    """Data must be moved explicitly: the message says how (thinc's asarray hint)."""
    for name in (home, other):
        if not lookup(name).available:
            pytest.skip(f"{name} unavailable: {lookup(name).unavailable_reason}")
    net = models.dlt(backend=home, dtype="float64")
    x_home, t_home = _dlt_batch(lookup(home), rng)
    x_other, t_other = _dlt_batch(lookup(other), rng)
    before = _snapshot(net)
    with pytest.raises(
        TypeError,
        match=rf"x is a {other} array but the network lives on {home}; "
        r"use net.backend.asarray\(x\)",
    ):
        net.forward(x_other)
    with pytest.raises(TypeError, match=rf"targets are a {other} array"):
        net.compute_gradients(x_home, t_other)
    # set_parameter takes any backend's array (DLPack, issue 15) and keeps a copy of its own
    same = lookup(other).asarray(net.state_dict()["fc5.bias"])
    net.set_parameter("fc5.bias", same)
    assert net.parameters()["fc5.bias"] is not same
    _assert_unchanged(net, before)
    net.compute_gradients(x_home, t_home)  # and the network still works


# --- config round trips ------------------------------------------------------------------------
def _round_trip(net, backend):
    config = net.config()
    assert json.loads(json.dumps(config)) == config  # JSON-able
    extra = net.extra_state()
    rebuilt = Network.from_config(config, extra_state=extra, backend=backend)
    assert rebuilt.config() == config
    assert list(rebuilt.extra_state()) == list(extra)
    for key, table in extra.items():
        np.testing.assert_array_equal(rebuilt.extra_state()[key], table, err_msg=key)
    assert rebuilt.backend is backend
    assert [type(layer) for layer in rebuilt.layers] == [type(layer) for layer in net.layers]
    assert [layer.output_shape for layer in rebuilt.layers] == [
        layer.output_shape for layer in net.layers
    ]
    # The same seed gives the same initial parameters.
    assert list(rebuilt.parameters()) == list(net.parameters())
    for name, value in rebuilt.parameters().items():
        np.testing.assert_array_equal(
            _host(rebuilt, value), _host(net, net.parameters()[name]), err_msg=name
        )
    return rebuilt


@pytest.mark.parametrize("model", [models.dlt, models.lenet5], ids=["dlt", "lenet5"])
def test_zoo_config_round_trip(backend, model):
    net = model(dtype="float64")
    rebuilt = _round_trip(net, backend)
    if model is models.lenet5:
        assert rebuilt.extra_state()["conv3.table"].sum() == 60
        np.testing.assert_array_equal(rebuilt.layers[2].table, net.layers[2].table)


def test_config_round_trip_of_every_option(backend):
    net = Network(
        [
            Convolution(
                4, (3, 2), selection="random", inputs_per_map=1, activation="relu", init="lecun"
            ),
            Subsampling(
                2, "decimate", activation={"name": "sigmoid", "gain": 2.0}, trainable=False
            ),
            Convolution(3, 2, selection="pairs", activation={"name": "tanh", "a": 1.5, "b": 0.5}),
            Subsampling(1, "mean"),
            Flatten(),
            FullyConnected(5, activation="identity", init="lecun", name="hidden"),
        ],
        (2, 10, 11),
        loss="cross_entropy",
        dtype="float64",
        seed=5,
        name="everything",
    )
    rebuilt = _round_trip(net, backend)
    assert rebuilt.name == "everything" and rebuilt.seed == 5
    assert rebuilt.loss.name == "cross_entropy"
    assert "hidden.weight" in rebuilt.parameters()


def test_from_config_needs_the_tables(backend):
    net = models.lenet5()
    with pytest.raises(ValueError, match=r"needs the input-map table 'conv1.table'"):
        Network.from_config(net.config())
    config = net.config()
    config["layers"][0]["type"] = "Pooling"
    with pytest.raises(ValueError, match=r"unknown layer type 'Pooling'"):
        Network.from_config(config, extra_state=net.extra_state())


def test_from_config_may_change_backend_and_dtype(backend):
    net = models.dlt(backend="numpy")
    rebuilt = Network.from_config(net.config(), extra_state=net.extra_state(), dtype="float64")
    assert rebuilt.backend is backend and rebuilt.dtype_name == "float64"


def test_parameter_count_leaves_out_unselected_kernels():
    """LeCun et al. (1998): C3 has 1,516 trainable parameters (60 kernels of 5x5 + 16 biases),
    not the 2,416 entries of its (16, 6, 5, 5) kernel array."""
    net = models.lenet5(backend="numpy")
    by_layer = {layer.name: layer.parameter_count() for layer in net.layers}
    assert by_layer["conv3"] == 1516 and by_layer["conv1"] == 156 and by_layer["sub2"] == 12
    assert net.num_parameters() == sum(by_layer.values()) == 60850


def test_deferred_upsampling_gives_the_gradients_of_the_chain(backend, monkeypatch):
    """Note [Deferred up-sampling]: a network hands each convolution below a subsampling layer
    the un-up-sampled deltas (a capability of both layers, not a type check), and its gradients
    are those of the layer-by-layer chain (float64, to rounding); a layer below that does not
    take them gets ``up(delta)`` formed by the subsampling layer."""
    from anycnn.layers import Convolution

    rng = np.random.default_rng(3)
    x = rng.random((5, 1, 32, 32))
    t = np.eye(10)[rng.integers(0, 10, 5)]

    def gradients():
        net = models.lenet5(backend=backend.name, dtype="float64", seed=1)
        net.compute_gradients(backend.asarray(x, dtype="float64"), backend.asarray(t, "float64"))
        return net, {k: backend.to_host(v) for k, v in net.gradients().items()}

    net, fused = gradients()
    assert sorted(net._defer_up) == [1, 3]  # sub2 and sub4, above conv1 and conv3
    monkeypatch.setattr(Convolution, "takes_upsampled", False)
    net, chain = gradients()
    assert not net._defer_up
    for name, g in chain.items():
        np.testing.assert_allclose(fused[name], g, rtol=1e-10, atol=1e-13, err_msg=name)
