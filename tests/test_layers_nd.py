"""Layers in 1 and 3 spatial dimensions (issue 18): every layer's back-propagation against
finite differences in float64 on every backend, whole networks against PyTorch autograd
(conv1d / conv3d, avg_pool1d / avg_pool3d), the API (dimension from the input shape, the
Convolution1D / 3D pins) and checkpoints."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from anycnn import (
    Convolution,
    Convolution1D,
    Convolution3D,
    Flatten,
    FullyConnected,
    LayerError,
    LearnedCombination,
    Network,
    Subsampling,
    Subsampling1D,
    Subsampling3D,
    to_cross_correlation,
)
from anycnn.gradcheck import gradcheck
from anycnn.testing import assert_close

TOLERANCE = 1e-6


def _jitter(net, rng):
    for name, value in net.parameters().items():
        if name.endswith((".bias", ".beta", ".c")):
            host = net.backend.to_host(value) + rng.uniform(-0.3, 0.3, tuple(value.shape))
            net.set_parameter(name, net.backend.asarray(host, dtype="float64"))


def _kink_distance(net, x):
    """The smallest |u| over the units of ReLU convolutions for the input x: central differences
    that step across u = 0 measure the kink, not the gradient."""
    from anycnn import ops

    nearest, h = np.inf, x
    for layer in net.layers:
        if isinstance(layer, Convolution) and layer.activation.config()["name"] == "relu":
            u = ops.conv_valid(h, layer.params["kernel"], layer._selection, layer.pad)
            u = net.backend.to_host(u) + net.backend.to_host(layer.params["bias"]).reshape(
                (-1,) + (1,) * (len(layer.input_shape) - 1)
            )
            nearest = min(nearest, float(np.abs(u).min()))
        h = layer.forward(h)
    return nearest


def _gradcheck(layers, input_shape, rng, *, loss="squared_error", n=2):
    net = Network(layers, input_shape, loss=loss, dtype="float64", seed=0)
    _jitter(net, rng)
    x = net.backend.asarray(rng.standard_normal((n, *input_shape)), dtype="float64")
    # gradcheck's fourth-order stencil moves a kernel entry by up to 2 eps = 2e-4, so a unit by
    # up to 2e-4 |x| (~1e-3): redraw an input with a ReLU unit that close to its kink (the JAX
    # variant's seed drew |u| = 2.0e-4 and failed with a 6.8e-4 relative error)
    for _ in range(20):
        if _kink_distance(net, x) > 1e-2:
            break
        x = net.backend.asarray(rng.standard_normal((n, *input_shape)), dtype="float64")
    if loss == "cross_entropy":
        t = np.eye(net.output_shape[0])[rng.integers(0, net.output_shape[0], n)]
    else:
        t = rng.uniform(0.1, 0.9, (n, *net.output_shape))
    report = gradcheck(net, x, net.backend.asarray(t, dtype="float64"), max_entries=6)
    assert report.passed, "\n" + str(report)
    assert [c.name for c in report.checks] == list(net.parameters())
    return net


def _shape(dims, one, three):
    return one if dims == 1 else three


# every layer type, selection, activation, subsampling mode and remainder, beta/b, in 1-D and 3-D
LAYERS = {
    "conv-full-tanh": lambda d: (
        [Convolution(3, _shape(d, 4, (2, 3, 2)), activation="tanh")],
        _shape(d, (2, 11), (2, 4, 5, 4)),
    ),
    "conv-pairs-sigmoid-same": lambda d: (
        [Convolution(3, 3, selection="pairs", padding="same", activation="sigmoid")],
        _shape(d, (3, 9), (3, 4, 3, 5)),
    ),
    "conv-random-relu-padded": lambda d: (
        [
            Convolution(
                4, 2, selection="random", inputs_per_map=2, seed=1, padding=1, activation="relu"
            )
        ],
        _shape(d, (3, 7), (3, 3, 4, 3)),
    ),
    "conv-table-lecun": lambda d: (
        [Convolution(2, 2, selection=[[1, 0, 1], [0, 1, 0]], activation="lecun_tanh")],
        _shape(d, (3, 6), (3, 3, 3, 3)),
    ),
    "sub-sum-trainable": lambda d: (
        [Subsampling(2, "sum", activation="tanh")],
        _shape(d, (2, 8), (2, 4, 4, 2)),
    ),
    "sub-mean-pad": lambda d: (
        [Subsampling(2, "mean", activation="sigmoid", remainder="pad")],
        _shape(d, (2, 9), (2, 5, 4, 3)),
    ),
    "sub-decimate-drop": lambda d: (
        [Convolution(2, 2, activation="tanh"), Subsampling(2, "decimate", remainder="drop")],
        _shape(d, (2, 10), (1, 5, 6, 5)),
    ),
    "sub-mean-fixed": lambda d: (
        [Convolution(2, 2, activation="tanh"), Subsampling(2, "mean", trainable=False)],
        _shape(d, (2, 9), (1, 5, 5, 3)),
    ),
    "combine-per-input": lambda d: (
        [LearnedCombination(3, 2, activation="tanh")],
        _shape(d, (2, 8), (2, 3, 4, 3)),
    ),
    "combine-per-pair-entropy": lambda d: (
        [LearnedCombination(2, 2, kernels="per_pair", lam=0.1, sparsity="entropy")],
        _shape(d, (3, 7), (3, 3, 3, 4)),
    ),
    "flatten-fc": lambda d: (
        [Flatten(), FullyConnected(3, activation="tanh")],
        _shape(d, (2, 5), (2, 2, 3, 2)),
    ),
}


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_against_finite_differences(backend, rng, kind, dims):
    layers, shape = LAYERS[kind](dims)
    _gradcheck(layers, shape, rng)


@pytest.mark.parametrize("dims", [1, 3])
def test_deferred_upsampling_network(backend, rng, dims):
    """Convolution below a subsampling layer (Note [Deferred up-sampling]), with a remainder,
    and a softmax cross-entropy loss."""
    layers = [
        Convolution(3, 3, activation="tanh"),
        Subsampling(2, "sum", activation="sigmoid", remainder="pad"),
        Convolution(2, 2, selection="pairs", activation="tanh"),
        Subsampling(2, "mean", remainder="drop"),
        Flatten(),
        FullyConnected(3, activation="identity"),
    ]
    _gradcheck(layers, _shape(dims, (2, 23), (2, 8, 7, 8)), rng, loss="cross_entropy")


# --- PyTorch autograd on whole networks --------------------------------------------------------
def _torch_activation(torch, activation, u):
    config = activation.config()
    name = config["name"]
    if name == "sigmoid":
        return torch.sigmoid(config["gain"] * u)
    if name == "tanh":
        return config["a"] * torch.tanh(config["b"] * u)
    if name == "relu":
        return torch.relu(u)
    assert name == "identity", name
    return u


def _torch_loss_and_gradients(torch, net, x, t):
    """conv1d/conv3d on the converted kernels, avg_pool1d/3d (times n^d for a sum), slicing for
    decimation; autograd for the gradients."""
    tf = torch.nn.functional
    leaves = {
        name: torch.tensor(net.backend.to_host(v), dtype=torch.float64, requires_grad=True)
        for name, v in net.parameters().items()
    }
    h = torch.tensor(x, dtype=torch.float64)
    for layer in net.layers:
        p = {role: leaves[f"{layer.name}.{role}"] for role in layer.params}
        if isinstance(layer, Flatten):
            h = h.flatten(1)
            continue
        d = h.dim() - 2
        per_map = (slice(None),) + (None,) * d
        if isinstance(layer, Convolution):
            conv = tf.conv1d if d == 1 else tf.conv3d
            mask = torch.tensor(layer.table, dtype=torch.float64)[(...,) + (None,) * d]
            weight = to_cross_correlation(p["kernel"], dims=d) * mask
            u = conv(h, weight, p["bias"], padding=tuple(layer.pad))
        elif isinstance(layer, Subsampling):
            n = layer.n
            pool = tf.avg_pool1d if d == 1 else tf.avg_pool3d
            ceil = layer.remainder == "pad"
            if layer.mode == "sum":
                down = pool(h, n, ceil_mode=ceil) * n**d if d == 1 else None
                if d == 3:
                    down = pool(h, n, ceil_mode=ceil, divisor_override=1)
            elif layer.mode == "mean":
                down = pool(h, n, ceil_mode=ceil)
            else:
                index = (slice(None), slice(None)) + tuple(
                    slice(0, s if ceil else s - s % n, n) for s in h.shape[2:]
                )
                down = h[index]
            if layer.trainable:
                u = down * p["beta"][per_map] + p["bias"][per_map]
            else:
                u = down
        elif isinstance(layer, FullyConnected):
            u = tf.linear(h, p["weight"], p["bias"])
        else:
            raise AssertionError(f"no torch translation for {layer!r}")
        h = _torch_activation(torch, layer.activation, u)
    target = torch.tensor(t, dtype=torch.float64)
    loss = 0.5 * ((h - target) ** 2).sum() / h.shape[0]
    loss.backward()
    return loss.item(), {name: leaf.grad.numpy() for name, leaf in leaves.items()}


NETWORKS = {
    1: lambda: Network(
        [
            Convolution1D(4, 5, padding="same", activation="tanh"),
            Subsampling1D(2, "sum", activation="sigmoid"),
            Convolution(3, 3, selection="pairs", padding=1, activation="relu"),
            Subsampling(3, "mean", remainder="drop"),
            Convolution(2, 2, activation="tanh"),
            Subsampling(2, "decimate", remainder="pad"),
            Flatten(),
            FullyConnected(3, activation="sigmoid"),
        ],
        (2, 40),
        dtype="float64",
        seed=2,
    ),
    3: lambda: Network(
        [
            Convolution3D(3, (3, 2, 3), padding=(1, 0, 1), activation="tanh"),
            Subsampling3D(2, "sum", activation="sigmoid", remainder="drop"),
            Convolution(2, 2, selection=[[1, 1, 0], [0, 1, 1]], activation="tanh"),
            Subsampling(2, "mean", trainable=False, remainder="pad"),
            Flatten(),
            FullyConnected(2, activation="identity"),
        ],
        (1, 9, 8, 9),
        dtype="float64",
        seed=3,
    ),
}


@pytest.mark.parametrize("dims", [1, 3])
def test_networks_against_torch_autograd(backend, rng, dims):
    torch = pytest.importorskip("torch", reason="PyTorch is the autograd oracle")
    net = NETWORKS[dims]()
    for name, value in net.parameters().items():  # initial biases and betas are constants
        if name.endswith((".bias", ".beta")):
            moved = backend.to_host(value) + rng.uniform(-0.2, 0.2, tuple(value.shape))
            net.set_parameter(name, backend.asarray(moved, dtype="float64"))
    x_host = rng.standard_normal((3, *net.input_shape))
    t_host = rng.uniform(0.1, 0.9, (3, *net.output_shape))
    x, t = (backend.asarray(a, dtype="float64") for a in (x_host, t_host))
    loss = float(net.compute_gradients(x, t))
    expected_loss, expected = _torch_loss_and_gradients(torch, net, x_host, t_host)
    assert loss == pytest.approx(expected_loss, rel=1e-10, abs=1e-14)
    for name, grad in net.gradients().items():
        scale = float(np.abs(expected[name]).max())
        assert_close(
            grad, expected[name], backend=backend, rtol=0.0, atol=1e-10 * scale, err_msg=name
        )


# --- the API -----------------------------------------------------------------------------------
def test_dimension_comes_from_the_input_shape():
    layers = lambda: [Convolution(2, 3), Subsampling(2), Flatten(), FullyConnected(2)]  # noqa: E731
    one = Network(layers(), (1, 14))
    two = Network(layers(), (1, 14, 14))
    three = Network(layers(), (1, 6, 6, 6))
    assert one.layers[0].output_shape == (2, 12) and one.layers[1].output_shape == (2, 6)
    assert tuple(one.parameters()["conv1.kernel"].shape) == (2, 1, 3)
    assert two.layers[0].output_shape == (2, 12, 12)
    assert tuple(three.parameters()["conv1.kernel"].shape) == (2, 1, 3, 3, 3)
    assert three.layers[1].output_shape == (2, 2, 2, 2)
    assert three.layers[1].params["beta"].shape == (2,)
    assert float(three.backend.to_host(three.layers[1].params["beta"])[0]) == 1 / 8  # 1/n^d


@pytest.mark.parametrize(
    ("layers", "shape", "message"),
    [
        (
            [Convolution1D(2, 3)],
            (1, 8, 8),
            r"expects \(C, L\) signals, got input shape \(1, 8, 8\)",
        ),
        ([Subsampling3D(2)], (1, 8), r"expects \(C, D, H, W\) volumes, got input shape \(1, 8\)"),
        ([Convolution(2, (3, 3))], (1, 8), r"kernel_size must be an int or 1 ints"),
        ([Convolution(2, (3, 3, 3))], (1, 8, 8), r"kernel_size must be an int or 2 ints"),
        ([Convolution(2, 9)], (1, 8), r"kernel 9 is larger than the 8 input maps"),
        ([Convolution(2, 3, padding=(1, 1))], (1, 8), r"padding must be .* 1 of them"),
        ([Subsampling(2)], (1, 7), r"7 maps are not divisible by 2; .*remainder='drop'"),
        ([Subsampling(2)], (1, 4, 5, 4), r"4x5x4 maps are not divisible by 2"),
        ([Convolution(2, 2)], (1, 3, 3, 3, 3), r"expects \(C, H, W\) maps, got input shape"),
    ],
)
def test_shape_errors_name_layer_and_shapes(layers, shape, message):
    # the layers are made once, at collection, and building changes them: a copy per run, so
    # that the test passes again in the same process (the mutation campaign reruns it)
    with pytest.raises(LayerError, match=message):
        Network(copy.deepcopy(layers), shape)


def test_pins_refuse_bad_dims():
    with pytest.raises(ValueError, match="dims must be 1, 2, 3 or None"):
        Convolution(2, 3, dims=4)
    assert repr(Convolution3D(2, (1, 2, 3))) == "Convolution(2@1x2x3, full, sigmoid)"


@pytest.mark.parametrize("dims", [1, 3])
def test_checkpoint_round_trip(tmp_path, rng, dims):
    from anycnn import load_checkpoint, save_checkpoint

    net = NETWORKS[dims]()
    path = save_checkpoint(tmp_path / "nd.npz", net, epoch=1)
    again = load_checkpoint(path).network
    assert again.input_shape == net.input_shape
    assert [layer.config() for layer in again.layers] == [layer.config() for layer in net.layers]
    x = net.backend.asarray(rng.standard_normal((2, *net.input_shape)), dtype="float64")
    assert_close(again.forward(x), net.backend.to_host(net.forward(x)), backend=net.backend)


# --- to_torch ------------------------------------------------------------------------------------
EXPORTS = {
    **NETWORKS,
    "1-combination": lambda: Network(
        [
            Convolution(3, 4, padding=2, activation="relu"),
            Subsampling(3, "mean", remainder="pad"),
            LearnedCombination(4, 3, kernels="per_pair", activation="lecun_tanh"),
            Subsampling(2, "sum", trainable=False, remainder="pad"),
            Flatten(),
            FullyConnected(3, activation="identity"),
        ],
        (2, 37),
        loss="cross_entropy",
        dtype="float64",
        seed=4,
    ),
    "3-combination": lambda: Network(
        [
            LearnedCombination(3, (2, 3, 2), activation="tanh"),
            Subsampling(2, "mean", activation="sigmoid", remainder="pad"),
            Flatten(),
            FullyConnected(2, activation="identity"),
        ],
        (2, 6, 7, 5),
        dtype="float64",
        seed=5,
    ),
    "2-padded-remainders": lambda: Network(
        [
            Convolution(3, (3, 5), padding=(1, 2), activation="tanh"),
            Subsampling(3, "mean", remainder="pad"),
            Convolution(2, 2, selection="pairs", activation="sigmoid"),
            Subsampling(2, "sum", remainder="drop"),
            Flatten(),
            FullyConnected(2, activation="identity"),
        ],
        (2, 11, 10),
        dtype="float64",
        seed=6,
    ),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", [str(k) for k in EXPORTS])
def test_to_torch_gives_the_same_outputs(backend, rng, kind, dtype):
    """to_torch of 1-D, 2-D and 3-D networks (padding, every remainder and subsampling mode,
    selections, learned combinations, trainable beta/b moved off their initial values): the
    module's outputs are predict's."""
    torch = pytest.importorskip("torch", reason="to_torch needs PyTorch")
    from anycnn import to_torch

    built = EXPORTS[int(kind) if kind.isdigit() else kind]()
    net = Network.from_config(
        built.config(), extra_state=built.extra_state(), backend=backend, dtype=dtype
    )
    host = {k: v + rng.normal(0, 0.1, v.shape) for k, v in built.state_dict().items()}
    net.load_state_dict({k: v.astype(dtype) for k, v in host.items()})
    module = to_torch(net)
    x = rng.standard_normal((4, *net.input_shape)).astype(dtype)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    assert y.dtype == np.dtype(dtype)
    tolerance = {"float64": 1e-12, "float32": 2e-5}[dtype]
    expected = net.backend.to_host(net.predict(x))
    np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance)


def test_to_torch_layers_are_the_dimension_s_modules():
    torch = pytest.importorskip("torch", reason="to_torch needs PyTorch")
    from anycnn import to_torch

    one = to_torch(NETWORKS[1]())
    assert [type(m) for m in one if isinstance(m, torch.nn.modules.conv._ConvNd)] == [
        torch.nn.Conv1d
    ] * 3
    three = NETWORKS[3]()
    convs = [m for m in to_torch(three) if isinstance(m, torch.nn.modules.conv._ConvNd)]
    assert [type(m) for m in convs] == [torch.nn.Conv3d] * 2
    assert convs[0].padding == (1, 0, 1)
    kernel = three.state_dict()["conv3.kernel"]
    table = three.layers[2].table
    np.testing.assert_array_equal(
        convs[1].weight.detach().numpy(),
        kernel[..., ::-1, ::-1, ::-1] * table[:, :, None, None, None],
    )
