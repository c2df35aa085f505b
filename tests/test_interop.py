"""Interop (issue 15): DLPack into every entry point, Network.to between backends with training
continuing identically, and anycnn.to_torch tested against the network's outputs."""

from __future__ import annotations

import numpy as np
import pytest

import anycnn
from anycnn import models
from anycnn.backend import lookup
from anycnn.layers import Convolution, Flatten, FullyConnected, LearnedCombination, Subsampling

torch = pytest.importorskip("torch")
strict = pytest.importorskip("array_api_strict")


try:  # JAX arrays come in through DLPack like the others; JAX is optional here
    import jax

    jax.config.update("jax_enable_x64", True)  # else jnp.asarray rounds float64 to float32
except ImportError:
    jax = None


def _sources(x):
    """The same host data as a PyTorch CPU tensor, an array-api-strict array and, where JAX is
    installed, a JAX array."""
    sources = {"torch": torch.from_numpy(x), "strict": strict.asarray(x)}
    if jax is not None:
        sources["jax"] = jax.numpy.asarray(x)
    return sources


def test_jax_arrays_come_in_through_dlpack(rng):
    """A JAX array (CPU) into the NumPy backend: the values and dtype, with no copy."""
    if jax is None:
        pytest.skip("JAX is not installed")
    x = rng.random((3, 4))
    a = jax.numpy.asarray(x)
    y = lookup("numpy").asarray(a)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, x)
    assert np.shares_memory(y, np.from_dlpack(a))


# --- DLPack ----------------------------------------------------------------------------------
def test_asarray_takes_torch_and_strict_arrays(backend, rng):
    x = rng.random((3, 4))
    for source, foreign in _sources(x).items():
        y = backend.asarray(foreign)
        assert lookup(backend.name).owns(anycnn.backend.backend_of(y).xp), source
        np.testing.assert_array_equal(backend.to_host(y), x, err_msg=source)
        z = backend.asarray(foreign, dtype="float32")
        np.testing.assert_array_equal(backend.to_host(z), x.astype(np.float32), err_msg=source)


def test_dlpack_is_zero_copy_where_the_device_matches():
    x = np.arange(6.0)
    numpy_backend = lookup("numpy")
    t = torch.from_numpy(x.copy())
    assert np.shares_memory(numpy_backend.asarray(t), t.numpy())
    a = strict.asarray(x.copy())
    assert np.shares_memory(numpy_backend.asarray(a), np.from_dlpack(a))
    shared = lookup("torch").asarray(x)  # NumPy into torch: torch.asarray shares too
    x[0] = 42.0
    assert float(shared[0]) == 42.0
    assert not np.shares_memory(numpy_backend.asarray(t, copy=True), t.numpy())


def test_network_entry_points_take_torch_and_strict_arrays(backend, rng):
    net = models.dlt(backend=backend, dtype="float64")
    x = rng.random((6, 1, 28, 28))
    labels = rng.integers(0, 10, 6)
    expected = backend.to_host(net.predict(x))
    for source, foreign in _sources(x).items():
        np.testing.assert_array_equal(backend.to_host(net.predict(foreign)), expected)
        classes = backend.to_host(net.predict_classes(foreign))
        np.testing.assert_array_equal(classes, expected.argmax(axis=1), err_msg=source)
        label_array = _sources(labels)[source]
        assert net.evaluate(foreign, label_array) == net.evaluate(x, labels)
    net.fit(torch.from_numpy(x), torch.from_numpy(labels), epochs=1, batch_size=3, lr=0.1)
    net.set_parameter("fc5.bias", torch.zeros(10, dtype=torch.float64))
    np.testing.assert_array_equal(net.state_dict()["fc5.bias"], np.zeros(10))


# --- Network.to ------------------------------------------------------------------------------
MOVES = [("numpy", "array_api_strict"), ("numpy", "torch"), ("array_api_strict", "torch"),
         ("torch", "numpy"), ("array_api_strict", "numpy")]  # fmt: skip


@pytest.mark.parametrize(("home", "target"), MOVES, ids=[f"{a}-to-{b}" for a, b in MOVES])
@pytest.mark.parametrize("optimizer", ["momentum", "sdlm"])
def test_network_to_moves_parameters_and_optimizer_state(home, target, optimizer, rng):
    """Moving is exact (there and back gives the same bits, optimizer state included), and after
    a move training continues as a network that was on the target all along with the same
    state: the optimizer uses the new namespace and its moved buffers."""
    x = rng.random((16, 1, 28, 28))
    labels = rng.integers(0, 10, 16)
    lr = 0.1 if optimizer == "momentum" else None
    extra = {"lr": lr} if lr else {}
    net = models.dlt(backend=home, dtype="float64")
    net.fit(x, labels, epochs=1, batch_size=8, optimizer=optimizer, **extra)
    params, state = net.state_dict(), net.optimizer.state_dict()
    opt = net.optimizer

    assert net.to(target) is net
    assert net.backend is lookup(target) and net.optimizer is opt
    for name, value in net.parameters().items():
        assert lookup(target).owns(anycnn.backend.backend_of(value).xp), name
        np.testing.assert_array_equal(net.backend.to_host(value), params[name], err_msg=name)
    for key, value in opt.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)

    twin = models.dlt(backend=target, dtype="float64")
    twin.load_state_dict(params)
    twin_opt = anycnn.optim.optimizer_from_config(twin, opt.config())
    twin_opt.load_state_dict(state)
    twin_opt.epoch = opt.epoch
    net.fit(x, labels, epochs=1, batch_size=8, optimizer=optimizer, seed=4)
    twin.fit(x, labels, epochs=1, batch_size=8, optimizer=twin_opt, seed=4)
    for name, value in twin.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[name], value, err_msg=name)

    # and back home: within float rounding of a network that never moved
    stay = models.dlt(backend=home, dtype="float64")
    stay.fit(x, labels, epochs=1, batch_size=8, optimizer=optimizer, **extra)
    stay.fit(x, labels, epochs=1, batch_size=8, optimizer=optimizer, seed=4)
    net.to(home)
    for name, value in stay.state_dict().items():
        np.testing.assert_allclose(net.state_dict()[name], value, rtol=1e-9, atol=1e-12)


def test_network_to_an_unknown_backend_or_device_says_so():
    net = models.dlt(backend="numpy")
    with pytest.raises(ValueError, match=r"unknown backend 'tpu'"):
        net.to("tpu")
    with pytest.raises(ValueError, match=r"backend 'array_api_strict' has no device 'gpu7'"):
        net.to("strict:gpu7")
    assert net.backend is lookup("numpy")


# --- to_torch --------------------------------------------------------------------------------
def _combination_net(backend, dtype, kernels):
    return anycnn.Network(
        [
            Convolution(4, 3, activation="tanh"),
            Subsampling(2, "decimate", activation="relu"),
            LearnedCombination(5, 3, kernels=kernels, activation="lecun_tanh"),
            Flatten(),
            FullyConnected(3, activation="identity"),
        ],
        (2, 12, 12),
        loss="cross_entropy",
        dtype=dtype,
        backend=backend,
        seed=2,
    )


NETS = {
    "dlt": lambda backend, dtype: models.dlt(backend=backend, dtype=dtype),
    "lenet5": lambda backend, dtype: models.lenet5(backend=backend, dtype=dtype),
    "lenet5-squared": lambda backend, dtype: models.lenet5(
        backend=backend, dtype=dtype, loss="squared_error"
    ),
    "combination-per-input": lambda b, d: _combination_net(b, d, "per_input"),
    "combination-per-pair": lambda b, d: _combination_net(b, d, "per_pair"),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("model", list(NETS))
def test_to_torch_gives_the_same_outputs(backend, model, dtype, rng):
    net = NETS[model](backend, dtype)
    # move the parameters off their initial values (trainable subsampling, softmax weights)
    host = {k: v + rng.normal(0, 0.05, v.shape) for k, v in net.state_dict().items()}
    net.load_state_dict({k: v.astype(dtype) for k, v in host.items()})
    module = anycnn.to_torch(net)
    x = rng.random((5, *net.input_shape)).astype(dtype)
    with torch.no_grad():
        y = module(torch.from_numpy(x)).numpy()
    assert y.dtype == np.dtype(dtype)
    tolerance = {"float64": 1e-12, "float32": 2e-5}[dtype]
    np.testing.assert_allclose(y, backend.to_host(net.predict(x)), rtol=tolerance, atol=tolerance)


def test_to_torch_kernels_are_in_pytorch_cross_correlation_layout():
    net = models.lenet5(backend="numpy", dtype="float64")
    convs = [m for m in anycnn.to_torch(net) if isinstance(m, torch.nn.Conv2d)]
    conv = convs[1]  # conv3, with LeCun's input-map table
    kernel = net.state_dict()["conv3.kernel"]
    table = net.layers[2].table
    weight = conv.weight.detach().numpy()
    np.testing.assert_array_equal(weight, kernel[:, :, ::-1, ::-1] * table[:, :, None, None])
    assert np.all(weight[~table] == 0)


def test_network_to_keeps_tables_and_learned_combinations(rng):
    """Input-map tables and the softmax weights c move with the network (rebuilt on the target
    from the configuration and the extra state)."""
    net = _combination_net("numpy", "float64", "per_pair")
    lenet = models.lenet5(backend="numpy", dtype="float64")
    for model in (net, lenet):
        x = rng.random((3, *model.input_shape))
        before = model.predict(x)
        model.to("strict")
        np.testing.assert_allclose(
            model.backend.to_host(model.predict(x)), before, rtol=1e-12, atol=1e-14
        )
    np.testing.assert_array_equal(lenet.layers[2].table, anycnn.layers.lenet5_table())
