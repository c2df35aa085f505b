"""PyTorch autograd as an independent oracle: the same networks, with the same weights, written
with ``torch.nn.functional`` and differentiated by autograd; the loss and every gradient agree to
1e-10 relative in float64. The anycnn side runs on every backend.

The translation is the public one: anycnn kernels are MATLAB ``conv2`` kernels (flipped), so
``F.conv2d`` (a cross-correlation) gets ``to_cross_correlation(kernel)``; an input-map selection
is a masked weight; the notes' sum subsampling is ``avg_pool2d * n^2``, times beta, plus b.
A layer's ``padding`` is conv2d's, and a subsampling remainder ``"pad"`` is avg_pool2d's
``ceil_mode=True`` (``"drop"`` its default).
"""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import models
from anycnn.layers import (
    Convolution,
    Flatten,
    FullyConnected,
    Subsampling,
    from_cross_correlation,
    to_cross_correlation,
)
from anycnn.network import Network
from anycnn.testing import assert_close

torch = pytest.importorskip("torch", reason="PyTorch is the autograd oracle of these tests")
TF = torch.nn.functional

RTOL = 1e-10


def _torch_activation(activation, u):
    """Each activation from its definition in the notes (2.1), not from anycnn's code."""
    config = activation.config()
    name = config["name"]
    if name == "sigmoid":
        return torch.sigmoid(config["gain"] * u)
    if name == "tanh":
        return config["a"] * torch.tanh(config["b"] * u)
    if name == "lecun_tanh":
        return 1.7159 * torch.tanh(2.0 / 3.0 * u)
    if name == "relu":
        return torch.relu(u)
    if name == "identity":
        return u
    raise AssertionError(f"no torch translation for {name}")


def _per_map(v):
    return v[None, :, None, None]


def torch_loss_and_gradients(net, x, t):
    """The loss of ``net`` at (x, t) and its gradient for every parameter, by torch autograd."""
    leaves = {
        name: torch.tensor(net.backend.to_host(value), dtype=torch.float64, requires_grad=True)
        for name, value in net.parameters().items()
    }
    h = torch.tensor(x, dtype=torch.float64)
    for layer in net.layers:
        p = {role: leaves[f"{layer.name}.{role}"] for role in layer.params}
        if isinstance(layer, Flatten):
            h = h.flatten(1)
            continue
        if isinstance(layer, Convolution):
            mask = torch.tensor(layer.table, dtype=torch.float64)[:, :, None, None]
            weight = to_cross_correlation(p["kernel"]) * mask  # differentiable: a torch flip
            u = TF.conv2d(h, weight, p["bias"], padding=_torch_padding(layer))
        elif isinstance(layer, Subsampling):
            n = layer.n
            # remainder="pad" is PyTorch's ceil_mode (a partial block averages the samples
            # present), "drop" its default; "error" layers only see whole blocks.
            ceil = layer.remainder == "pad"
            if layer.mode == "sum":
                down = TF.avg_pool2d(h, n, ceil_mode=ceil, divisor_override=1)
            elif layer.mode == "mean":
                down = TF.avg_pool2d(h, n, ceil_mode=ceil)
            else:
                rows, cols = h.shape[2], h.shape[3]
                if not ceil:
                    rows, cols = rows - rows % n, cols - cols % n
                down = h[:, :, :rows:n, :cols:n]
            u = down * _per_map(p["beta"]) + _per_map(p["bias"]) if layer.trainable else down
        elif isinstance(layer, FullyConnected):
            u = TF.linear(h, p["weight"], p["bias"])
        else:
            raise AssertionError(f"no torch translation for {layer!r}")
        h = _torch_activation(layer.activation, u)
    target = torch.tensor(t, dtype=torch.float64)
    if net.loss.name == "cross_entropy":
        loss = TF.cross_entropy(h, target.argmax(dim=1))  # the batch mean
    else:
        loss = 0.5 * ((h - target) ** 2).sum() / h.shape[0]  # eq. (1), averaged over the batch
    loss.backward()
    return loss.item(), {name: leaf.grad.numpy() for name, leaf in leaves.items()}


def _torch_padding(layer):
    """PyTorch's ``padding`` argument for the layer's: its names, or the (rows, columns) ints."""
    spec = getattr(layer, "padding", "valid")
    return spec if isinstance(spec, str) else tuple(spec)


def _compare(net, x_host, t_host):
    backend = net.backend
    x = backend.asarray(x_host, dtype="float64")
    t = backend.asarray(t_host, dtype="float64")
    loss = float(net.compute_gradients(x, t))
    expected_loss, expected = torch_loss_and_gradients(net, x_host, t_host)
    assert loss == pytest.approx(expected_loss, rel=RTOL, abs=1e-14)
    grads = net.gradients()
    assert list(grads) == list(expected) == list(net.parameters())
    for name, grad in grads.items():
        # namespace, device and dtype; then |error| <= 1e-10 max |gradient| over the tensor
        scale = float(np.abs(expected[name]).max())
        assert_close(
            grad, expected[name], backend=backend, rtol=0.0, atol=RTOL * scale, err_msg=f"{name}: "
        )


ZOO = {
    "dlt": lambda: models.dlt(dtype="float64"),
    "lenet5-cross_entropy": lambda: models.lenet5(loss="cross_entropy", dtype="float64"),
    "lenet5-squared_error": lambda: models.lenet5(loss="squared_error", dtype="float64"),
}


@pytest.mark.parametrize("model", list(ZOO))
def test_zoo_against_torch_autograd(backend, rng, model):
    net = ZOO[model]()
    labels = rng.integers(0, 10, 3)
    t = np.eye(10)[labels]
    if model == "lenet5-squared_error":
        t = 2 * t - 1
    x = rng.uniform(0.0, 1.0, (3, *net.input_shape))
    # Trained networks have non-trivial biases and betas; initial ones are constants.
    for name, value in net.parameters().items():
        if name.endswith((".bias", ".beta")):
            moved = backend.to_host(value) + rng.uniform(-0.2, 0.2, tuple(value.shape))
            net.set_parameter(name, backend.asarray(moved, dtype="float64"))
    _compare(net, x, t)


SMALL = {
    "decimate-mean-fixed-relu": lambda: Network(
        [
            Convolution(3, 3, selection=[[1, 0], [1, 1], [0, 1]], activation="relu"),
            Subsampling(2, "decimate", activation={"name": "sigmoid", "gain": 2.0}),
            Convolution(
                4, 2, selection="triplets", activation={"name": "tanh", "a": 1.5, "b": 0.5}
            ),
            Subsampling(2, "mean", trainable=False),
            Flatten(),
            FullyConnected(3, activation="sigmoid"),
        ],
        (2, 12, 12),
        dtype="float64",
        seed=3,
    ),
    "random-selection-cross_entropy": lambda: Network(
        [
            Convolution(5, (2, 3), selection="random", inputs_per_map=2, activation="tanh"),
            Subsampling(3, "mean", activation="tanh"),
            Flatten(),
            FullyConnected(4, activation="identity"),
        ],
        (3, 7, 8),
        loss="cross_entropy",
        dtype="float64",
        seed=4,
    ),
    # issue 23: odd map sizes, each remainder and mode of the subsampling layers
    "remainders-odd-maps": lambda: Network(
        [
            Convolution(3, 2, activation="tanh"),
            Subsampling(2, "mean", activation="sigmoid", remainder="pad"),
            Convolution(4, (2, 1), selection="pairs", activation="tanh"),
            Subsampling(3, "sum", activation="tanh", remainder="drop"),
            Flatten(),
            FullyConnected(3, activation="sigmoid"),
        ],
        (2, 12, 10),
        dtype="float64",
        seed=5,
    ),
    # issue 23: zero padding ("same", ints, rows only) with rectangular kernels and maps
    "padding-rectangular": lambda: Network(
        [
            Convolution(3, (3, 5), padding="same", activation="tanh"),
            Subsampling(2, "sum", activation="sigmoid", remainder="drop"),
            Convolution(4, (2, 3), padding=(1, 0), selection="pairs", activation="tanh"),
            Convolution(2, 2, padding=2, activation="relu"),
            Flatten(),
            FullyConnected(3, activation="sigmoid"),
        ],
        (2, 9, 7),
        dtype="float64",
        seed=7,
    ),
    "remainders-decimate": lambda: Network(
        [
            Convolution(2, (3, 2), activation="sigmoid"),
            Subsampling(2, "decimate", activation="tanh", remainder="pad"),
            Convolution(3, 2, activation="tanh"),
            Subsampling(2, "decimate", trainable=False, remainder="drop"),
            Subsampling(1, "mean", trainable=False, remainder="drop"),
            Flatten(),
            FullyConnected(2, activation="identity"),
        ],
        (1, 11, 12),
        dtype="float64",
        seed=6,
    ),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_small_networks_against_torch_autograd(backend, rng, name):
    net = SMALL[name]()
    x = rng.standard_normal((2, *net.input_shape))
    t = np.eye(net.output_shape[0])[rng.integers(0, net.output_shape[0], 2)]
    _compare(net, x, t)


def test_kernel_conversion_round_trip(backend, rng):
    """from_cross_correlation undoes to_cross_correlation exactly; both are a rot180 of the
    last two axes, and the result stays on the backend."""
    k_host = rng.standard_normal((4, 3, 5, 2))
    k = backend.asarray(k_host, dtype="float64")
    weight = to_cross_correlation(k)
    assert_close(weight, k_host[:, :, ::-1, ::-1].copy(), backend=backend, rtol=0, atol=0)
    assert_close(from_cross_correlation(weight), k_host, backend=backend, rtol=0, atol=0)
    assert_close(
        to_cross_correlation(from_cross_correlation(k)), k_host, backend=backend, rtol=0, atol=0
    )


@pytest.mark.parametrize("padding", ["same", 1, (2, 0)], ids=str)
def test_padded_convolution_is_torch_conv2d_with_padding(backend, rng, padding):
    """Forward values with zero padding: F.conv2d(padding=...) of the converted kernel, on a
    rectangular kernel and rectangular maps."""
    net = Network(
        [Convolution(3, (3, 5), padding=padding, activation="identity")], (2, 6, 8), dtype="float64"
    )
    x_host = rng.standard_normal((2, 2, 6, 8))
    y = net.forward(backend.asarray(x_host, dtype="float64"))
    kernel = torch.tensor(backend.to_host(net.parameters()["conv1.kernel"]))
    expected = TF.conv2d(torch.tensor(x_host), to_cross_correlation(kernel), padding=padding)
    assert_close(y, expected.numpy(), backend=backend)


def test_convolution_layer_is_torch_conv2d_of_the_converted_kernel(backend, rng):
    """Forward values: x_j = f(sum_i x_i * k_ij + b_j) equals F.conv2d with the converted
    weights; without the conversion it does not (the kernels are not symmetric)."""
    net = Network([Convolution(3, 3, activation="identity")], (2, 6, 6), dtype="float64")
    x_host = rng.standard_normal((2, 2, 6, 6))
    y = net.forward(backend.asarray(x_host, dtype="float64"))
    kernel = torch.tensor(backend.to_host(net.parameters()["conv1.kernel"]))
    x = torch.tensor(x_host)
    assert_close(y, TF.conv2d(x, to_cross_correlation(kernel)).numpy(), backend=backend)
    assert not np.allclose(backend.to_host(y), TF.conv2d(x, kernel).numpy())
