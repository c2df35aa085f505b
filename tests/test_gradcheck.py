"""Back-propagation against finite differences (section 4.4 of the notes) on every backend, in
float64, relative error <= 1e-6: every layer type, input-map selection, activation, loss,
subsampling mode and layer order, and the two zoo models; and proof that the check catches a
gradient that is wrong by 1 %, a missing rot180 and a missing 1/N."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

from anycnn import models, ops
from anycnn.gradcheck import gradcheck
from anycnn.layers import Convolution, Flatten, FullyConnected, Subsampling
from anycnn.network import Network
from anycnn.training.loop import target_values

TOLERANCE = 1e-6
MAX_ENTRIES = 8  # per parameter, plus one directional derivative through every entry


def _batch(net, rng, n=2):
    """x ~ N(0, 1); one-hot targets for cross-entropy (softmax over axis 1), else U(0.1, 0.9)."""
    x = rng.standard_normal((n, *net.input_shape))
    if net.loss.name == "cross_entropy":
        classes = net.output_shape[0]
        labels = rng.integers(0, classes, (n, *net.output_shape[1:]))
        t = np.moveaxis(np.eye(classes)[labels], -1, 1)
    else:
        t = rng.uniform(0.1, 0.9, (n, *net.output_shape))
    be = net.backend
    return be.asarray(x, dtype="float64"), be.asarray(t, dtype="float64")


def _jitter(net, rng):
    """Move biases and betas off their initial constants so that a forgotten term shows."""
    for name, value in net.parameters().items():
        if name.endswith((".bias", ".beta")):
            host = net.backend.to_host(value) + rng.uniform(-0.3, 0.3, tuple(value.shape))
            net.set_parameter(name, net.backend.asarray(host, dtype="float64"))


def _check(layers, input_shape, rng, *, loss="squared_error", n=2, max_entries=MAX_ENTRIES):
    net = Network(layers, input_shape, loss=loss, dtype="float64", seed=0)
    _jitter(net, rng)
    x, t = _batch(net, rng, n)
    report = gradcheck(net, x, t, max_entries=max_entries)
    assert report.passed, "\n" + str(report)
    assert [c.name for c in report.checks] == list(net.parameters())
    return net, report


# --- every layer type --------------------------------------------------------------------------
LAYER_TYPES = {
    "Convolution": (lambda: [Convolution(2, 3, activation="tanh")], (2, 6, 6)),
    "Subsampling": (lambda: [Subsampling(2, "sum", activation="tanh")], (2, 6, 6)),
    "FullyConnected": (lambda: [FullyConnected(3, activation="sigmoid")], (5,)),
    "Flatten": (lambda: [Flatten(), FullyConnected(3, activation="tanh")], (2, 3, 3)),
}


@pytest.mark.jax  # in the default suite on JAX (tests/conftest.py SUBSET_VARIANTS)
@pytest.mark.parametrize("kind", list(LAYER_TYPES))
def test_layer_type(backend, rng, kind):
    layers, shape = LAYER_TYPES[kind]
    _check(layers(), shape, rng)


# --- every input-map selection -----------------------------------------------------------------
SELECTIONS = {
    "full": ("full", {}, 3, 4),
    "lenet5": ("lenet5", {}, 6, 16),
    "pairs": ("pairs", {}, 3, 4),
    "triplets": ("triplets", {}, 4, 5),
    "random": ("random", {"inputs_per_map": 2, "seed": 3}, 4, 5),
    "table": (np.array([[True, False, True], [False, True, False]]), {}, 3, 2),
}


@pytest.mark.parametrize("selection", list(SELECTIONS))
def test_selection(backend, rng, selection):
    spec, options, c_in, c_out = SELECTIONS[selection]
    layers = [
        Convolution(c_out, 3, selection=spec, activation="tanh", **options),
        Subsampling(2, "sum", activation="tanh"),
        Flatten(),
        FullyConnected(3, activation="sigmoid"),
    ]
    net, _ = _check(layers, (c_in, 6, 6), rng)
    assert net.layers[0].table.shape == (c_out, c_in)


# --- every activation --------------------------------------------------------------------------
ACTIVATIONS = {
    "sigmoid": "sigmoid",
    "sigmoid-gain2.5": {"name": "sigmoid", "gain": 2.5},
    "tanh": "tanh",
    "tanh-a1.5-b0.5": {"name": "tanh", "a": 1.5, "b": 0.5},
    "lecun_tanh": "lecun_tanh",
    "relu": "relu",
    "identity": "identity",
}
KINK_MARGIN = 1e-2


def _pre_activations(net, x):
    """u of the two layers of [Convolution, Flatten, FullyConnected], on the host with SciPy."""
    conv, _, fc = net.layers
    host = {k: net.backend.to_host(v) for k, v in net.parameters().items()}
    u1 = oracles.conv_valid(x, host["conv1.kernel"]) + host["conv1.bias"][None, :, None, None]
    x2 = conv.activation.forward(u1).reshape(x.shape[0], -1)  # NumPy through the same formula
    u2 = x2 @ host["fc2.weight"].T + host["fc2.bias"]
    return np.concatenate([u1.ravel(), u2.ravel()])


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activation(backend, rng, activation):
    """Each activation in a convolution and a fully connected layer.

    relu has a kink at u = 0 where finite differences are wrong by up to 100 %; the data seed is
    the first one (the search is the same on every backend) that keeps every pre-activation at
    least 1e-2 from 0, which the perturbations of gradcheck (<= 2e-4 per weight) cannot cross.
    """
    spec = ACTIVATIONS[activation]
    net = Network(
        [Convolution(2, 3, activation=spec), Flatten(), FullyConnected(3, activation=spec)],
        (1, 5, 5),
        dtype="float64",
        seed=0,
    )
    _jitter(net, np.random.default_rng(0))
    for seed in range(100):
        data = np.random.default_rng(seed)
        x_host = data.standard_normal((2, 1, 5, 5))
        if np.abs(_pre_activations(net, x_host)).min() > KINK_MARGIN:
            break
    else:
        pytest.fail("no data seed keeps the pre-activations away from the kink")
    t = data.uniform(0.1, 0.9, (2, 3))
    report = gradcheck(
        net,
        net.backend.asarray(x_host, dtype="float64"),
        net.backend.asarray(t, dtype="float64"),
        max_entries=MAX_ENTRIES,
    )
    assert report.passed, "\n" + str(report)


# --- both losses -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("loss", "output"), [("squared_error", "sigmoid"), ("cross_entropy", "identity")]
)
def test_loss(backend, rng, loss, output):
    layers = [
        Convolution(2, 3, activation="tanh"),
        Subsampling(2, "sum"),
        Flatten(),
        FullyConnected(4, activation=output),
    ]
    _check(layers, (1, 6, 6), rng, loss=loss, n=3)


def test_cross_entropy_on_maps(backend, rng):
    """The softmax runs over axis 1 whatever the rank: here over the maps of each pixel."""
    _check([Convolution(3, 3, activation="identity")], (2, 5, 5), rng, loss="cross_entropy")


# --- every subsampling mode --------------------------------------------------------------------
@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "fixed"])
@pytest.mark.parametrize(("mode", "n"), [("sum", 2), ("sum", 3), ("mean", 2), ("decimate", 2)])
def test_subsampling_mode(backend, rng, mode, n, trainable):
    layers = [
        Convolution(2, 3, activation="sigmoid"),
        Subsampling(n, mode, activation="tanh", trainable=trainable),
        Flatten(),
        FullyConnected(3, activation="sigmoid"),
    ]
    net, _ = _check(layers, (1, 8, 8), rng)
    assert ("sub2.beta" in net.parameters()) is trainable


# --- other layer orders ------------------------------------------------------------------------
ORDERS = {
    # two convolutions in a row: the lower one gets conv2(delta, rot180(k), 'full') (3.2.1)
    "conv-conv": (
        lambda: [
            Convolution(3, 3, activation="tanh"),
            Convolution(2, 2, selection="pairs", activation="sigmoid"),
            Flatten(),
            FullyConnected(3),
        ],
        (2, 7, 7),
    ),
    # the notes' case: a subsampling layer between two convolutions
    "conv-sub-conv": (
        lambda: [
            Convolution(2, 3, activation="tanh"),
            Subsampling(2, "sum"),
            Convolution(3, 3, selection="pairs", activation="tanh"),
            Flatten(),
            FullyConnected(3),
        ],
        (1, 10, 10),
    ),
    # a fully connected layer right after subsampling: vanilla back-propagation (3.2.1)
    "sub-flatten-fc": (
        lambda: [Subsampling(2, "sum", activation="tanh"), Flatten(), FullyConnected(3)],
        (2, 6, 6),
    ),
    "sub-sub": (
        lambda: [
            Convolution(2, 3, activation="sigmoid"),
            Subsampling(2, "mean"),
            Subsampling(2, "sum", activation="tanh"),
            Flatten(),
            FullyConnected(3),
        ],
        (1, 10, 10),
    ),
    "fc-fc": (
        lambda: [
            Flatten(),
            FullyConnected(4, activation="tanh"),
            FullyConnected(3, activation="lecun_tanh"),
        ],
        (1, 3, 3),
    ),
    "maps-output": (
        lambda: [
            Convolution(2, 3, activation="tanh"),
            Subsampling(2, "decimate", activation="sigmoid"),
        ],
        (2, 6, 6),
    ),
}


@pytest.mark.parametrize("order", list(ORDERS))
def test_layer_order(backend, rng, order):
    layers, shape = ORDERS[order]
    _check(layers(), shape, rng)


# --- the zoo -----------------------------------------------------------------------------------
ZOO = {
    "dlt": lambda: models.dlt(dtype="float64"),
    "lenet5-cross_entropy": lambda: models.lenet5(loss="cross_entropy", dtype="float64"),
    "lenet5-squared_error": lambda: models.lenet5(loss="squared_error", dtype="float64"),
}


@pytest.mark.parametrize("model", list(ZOO))
def test_zoo_model(backend, rng, model):
    """The full-size models, batch 2: 3 sampled entries per parameter plus one directional
    derivative along a random unit vector through all of them."""
    net = ZOO[model]()
    assert net.backend is backend
    labels = rng.integers(0, 10, 2)
    t = np.eye(10)[labels]
    if model == "lenet5-squared_error":
        t = 2 * t - 1  # +-1 targets for scaled tanh outputs (2.1)
    x = backend.asarray(rng.uniform(0.0, 1.0, (2, *net.input_shape)), dtype="float64")
    report = gradcheck(net, x, backend.asarray(t, dtype="float64"), max_entries=3)
    assert report.passed, "\n" + str(report)
    assert [c.name for c in report.checks] == list(net.parameters())


# --- a wrong gradient is caught ----------------------------------------------------------------
def _small(rng):
    net = Network(
        [
            Convolution(2, 3, activation="tanh"),
            Subsampling(2, "sum", activation="tanh"),
            Convolution(3, 2, selection="pairs", activation="tanh"),
            Flatten(),
            FullyConnected(3, activation="sigmoid"),
        ],
        (1, 8, 8),
        dtype="float64",
        seed=0,
    )
    _jitter(net, rng)
    return net, *_batch(net, rng)


def test_a_one_percent_error_is_caught(backend, rng, monkeypatch):
    net, x, t = _small(rng)
    assert gradcheck(net, x, t, max_entries=MAX_ENTRIES).passed
    layer = net.layers[2]
    right = layer.backward

    def scaled(dy, need_input_grad=True):
        dx = right(dy, need_input_grad)
        layer.grads["kernel"] = layer.grads["kernel"] * 1.01
        return dx

    monkeypatch.setattr(layer, "backward", scaled)
    report = gradcheck(net, x, t, max_entries=MAX_ENTRIES)
    assert report.passed is False
    assert [c.name for c in report.failures()] == ["conv3.kernel"]
    assert "conv3.kernel" in str(report) and "FAIL" in str(report)
    assert 1e-3 < report.max_relative_error < 2e-2


def test_a_missing_rot180_is_caught(backend, rng, monkeypatch):
    """Drop the outer rot180 of eq. (7) in the backend's op table (a cached namespace:
    monkeypatch restores the entry). Every kernel fails; biases, betas and weights pass."""
    net, x, t = _small(rng)
    right = backend.ops.conv_kernel_grad
    xp = backend.xp

    def unrotated(x, delta, selection=None):
        return xp.flip(right(x, delta, selection), axis=(2, 3))

    monkeypatch.setattr(backend.ops, "conv_kernel_grad", unrotated)
    # A fused conv_backward (Note [Fused ops]) would compute eq. (7) itself: the layers take the
    # chain on this table's ops instead, which calls the broken conv_kernel_grad.
    chain = ops.compose_fused(backend.ops)["conv_backward"]
    monkeypatch.setattr(backend.ops, "conv_backward", chain)
    report = gradcheck(net, x, t, max_entries=MAX_ENTRIES)
    assert report.passed is False
    assert [c.name for c in report.failures()] == ["conv1.kernel", "conv3.kernel"]
    monkeypatch.undo()
    assert backend.ops.conv_kernel_grad is right
    assert gradcheck(net, x, t, max_entries=MAX_ENTRIES).passed


def test_a_missing_batch_mean_is_caught(backend, rng, monkeypatch):
    """dE/dy without the 1/N of the batch mean: every parameter is off by a factor N = 2."""
    net, x, t = _small(rng)
    right = net.loss.gradient
    monkeypatch.setattr(net.loss, "gradient", lambda y, t: right(y, t) * 2.0)
    report = gradcheck(net, x, t, max_entries=MAX_ENTRIES)
    assert [c.name for c in report.failures()] == list(net.parameters())


# --- the checker itself ------------------------------------------------------------------------
def test_the_notes_second_order_formula_also_passes(backend, rng):
    """(E(w + eps) - E(w - eps)) / (2 eps) of section 4.4, with a step for its O(eps^2) error."""
    net, x, t = _small(rng)
    report = gradcheck(net, x, t, order=2, eps=1e-6, max_entries=4)
    assert report.passed, "\n" + str(report)


def test_gradcheck_leaves_parameters_unchanged(backend, rng):
    net, x, t = _small(rng)
    before = {k: np.array(net.backend.to_host(v), copy=True) for k, v in net.parameters().items()}
    gradcheck(net, x, t, max_entries=4)
    for name, value in net.parameters().items():
        np.testing.assert_array_equal(net.backend.to_host(value), before[name], err_msg=name)


def test_gradcheck_arguments(backend, rng):
    net, x, t = _small(rng)
    report = gradcheck(net, x, t, parameters=["fc4.bias"])
    assert [c.name for c in report.checks] == ["fc4.bias"]
    assert report.checks[0].entries == 3
    with pytest.raises(KeyError, match="no parameter 'fc9.bias'"):
        gradcheck(net, x, t, parameters=["fc9.bias"])
    with pytest.raises(ValueError, match="order must be 2 or 4"):
        gradcheck(net, x, t, order=3)


# --- float32 networks (Note [Float32 gradient checks]) ----------------------------------------
@pytest.mark.parametrize("model", ["dlt", "lenet5"])
def test_float32_zoo_model_passes_against_float64_differences(backend, rng, model):
    """A float32 network's back-propagation is checked against central differences of its
    float64 copy: it passes at the float32 default (1e-4) with ~1e-6 to spare. Differencing
    the float32 losses themselves (numeric_dtype=None) cannot: 1e-1 and worse."""
    net = models.build(model, dtype="float32", seed=0)
    labels = rng.integers(0, 10, 2)
    low, high = target_values(net)
    t = np.where(np.eye(10)[labels] > 0, high, low)
    x = backend.asarray(rng.uniform(0.0, 1.0, (2, *net.input_shape)), dtype="float32")
    t = backend.asarray(t, dtype="float32")
    report = gradcheck(net, x, t, max_entries=2)
    assert report.tolerance == 1e-4
    assert report.passed, "\n" + str(report)
    assert report.max_relative_error < 1e-5
    noisy = gradcheck(net, x, t, max_entries=2, numeric_dtype=None, parameters=["conv1.bias"])
    assert noisy.max_relative_error > 1e-3


def test_a_one_percent_error_is_caught_in_float32(rng, monkeypatch):
    net, x, t = _small(rng)
    net32 = Network.from_config(net.config(), extra_state=net.extra_state(), dtype="float32")
    for name, value in net.parameters().items():
        net32.set_parameter(name, net32.backend.asarray(np.asarray(value), dtype="float32"))
    x32, t32 = (net32.backend.asarray(np.asarray(a), dtype="float32") for a in (x, t))
    assert gradcheck(net32, x32, t32, max_entries=MAX_ENTRIES).passed
    layer = net32.layers[2]
    right = layer.backward

    def scaled(dy, need_input_grad=True):
        dx = right(dy, need_input_grad)
        layer.grads["kernel"] = layer.grads["kernel"] * 1.01
        return dx

    monkeypatch.setattr(layer, "backward", scaled)
    report = gradcheck(net32, x32, t32, max_entries=MAX_ENTRIES)
    assert [c.name for c in report.failures()] == ["conv3.kernel"]
