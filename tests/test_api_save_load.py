"""net.save / anycnn.load, state_dict, and set_parameter's copy (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

import anycnn
from anycnn import models


def _toy(rng, n=24):
    return rng.random((n, 1, 28, 28)), rng.integers(0, 10, n)


def test_save_load_round_trips_outputs_exactly(backend, rng, tmp_path):
    net = models.lenet5(backend=backend, dtype="float64")
    images = rng.integers(0, 256, (16, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 16)
    net.fit(images, labels, epochs=1, batch_size=8, optimizer="momentum", lr=0.01,
            preprocessing="normalize")  # fmt: skip
    net.fit(images, labels, epochs=1, batch_size=8, optimizer="momentum")
    path = net.save(tmp_path / "lenet5.npz")
    assert anycnn.checkpoint.read_info(path)["epoch"] == net.epochs_trained == 2
    again = anycnn.load(path, backend=backend)
    assert again.epochs_trained == 2
    assert again.backend is backend and again.config() == net.config()
    assert again.preprocessing == net.preprocessing  # saved with the model, applied by predict
    np.testing.assert_array_equal(
        backend.to_host(again.predict(images)), backend.to_host(net.predict(images))
    )
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value, err_msg=name)
    # the optimizer came back with its state: training goes on exactly as without the save
    state = net.optimizer.state_dict()
    for key, value in again.optimizer.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    net.fit(images, labels, epochs=1, batch_size=8, optimizer="momentum", seed=5)
    again.fit(images, labels, epochs=1, batch_size=8, optimizer="momentum", seed=5)
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[name], value, err_msg=name)


def test_save_without_training_and_load_elsewhere(rng, tmp_path):
    """No epoch or optimizer needed; the file loads on another backend with the same outputs
    (within rounding: the backends' kernels sum in other orders)."""
    net = models.dlt(backend="numpy", dtype="float64")
    path = net.save(tmp_path / "dlt.npz")
    assert anycnn.checkpoint.read_info(path)["epoch"] == 0
    x = rng.random((3, 1, 28, 28))
    moved = anycnn.load(path, backend="strict")
    assert moved.optimizer is None and moved.preprocessing is None
    np.testing.assert_allclose(
        moved.backend.to_host(moved.predict(x)), net.predict(x), rtol=1e-13, atol=1e-15
    )


def test_load_of_a_broken_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(anycnn.CheckpointError, match=r"broken.npz"):
        anycnn.load(path)


def test_state_dict_is_host_copies_and_load_state_dict_is_all_or_nothing(backend):
    net = models.dlt(backend=backend, dtype="float64")
    state = net.state_dict()
    assert all(type(v) is np.ndarray for v in state.values())
    state["conv1.bias"][:] = 7.0  # a copy: the network does not see it
    assert not np.any(net.state_dict()["conv1.bias"] == 7.0)
    other = models.dlt(backend=backend, dtype="float64", seed=1)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.state_dict()["conv1.bias"], np.full(6, 7.0))
    before = other.state_dict()
    bad = dict(state)
    bad["fc5.weight"] = np.full((10, 192), np.nan)  # checked after conv1's were assigned
    bad["conv1.kernel"] = np.zeros((6, 1, 5, 5))
    with pytest.raises(ValueError, match=r"set_parameter\(fc5.weight\): the value holds"):
        other.load_state_dict(bad)
    for name, value in before.items():
        np.testing.assert_array_equal(other.state_dict()[name], value, err_msg=name)
    with pytest.raises(KeyError, match=r"missing \['fc5.bias'\]"):
        other.load_state_dict({k: v for k, v in state.items() if k != "fc5.bias"})


def test_the_callers_array_is_untouched_after_set_parameter_and_a_step(backend, rng):
    """set_parameter copies: the in-place updates of NumPy and PyTorch optimizers never reach
    the array the caller handed in (issue 15's silent change)."""
    net = models.dlt(backend=backend, dtype="float64")
    mine = backend.asarray(np.full((10, 192), 0.01))
    original = np.array(backend.to_host(mine), copy=True)
    net.set_parameter("fc5.weight", mine)
    host = np.full(10, 0.5)
    net.set_parameter("fc5.bias", host)  # a host array into any backend's network
    x, labels = _toy(rng, 8)
    net.fit(x, labels, epochs=1, batch_size=4, optimizer="momentum", lr=0.5)
    assert not np.array_equal(net.state_dict()["fc5.weight"], original)  # it did train
    np.testing.assert_array_equal(backend.to_host(mine), original)
    np.testing.assert_array_equal(host, np.full(10, 0.5))
