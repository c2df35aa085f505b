"""Backends answer capability questions (issue 19, item 5; ``Note [Backend capabilities]``).

Whether arrays may be written in place, the device in words, thread counts: code outside the
backends asks the record, so a backend that says "read-only" (JAX, array-api-strict, or any
third-party record that keeps the default) is trained through ``Network.set_parameter`` and
never written into.
"""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import backend as registry
from anycnn import layers as L
from anycnn.network import Network
from anycnn.training import optim

#: What each first-party backend says about in-place writes (registry name -> writable).
WRITABLE = {"numpy": True, "torch": True, "cupy": True, "array_api_strict": False, "jax": False}


@pytest.mark.jax  # cheap: in the default suite on JAX too
def test_every_backend_says_whether_its_arrays_are_writable(backend):
    assert backend.writable is WRITABLE[backend.name]


@pytest.mark.jax
def test_describe_names_the_backend_and_its_device(backend):
    text = backend.describe()
    assert text.startswith(f"{backend.name} on {backend.default_device}")
    if str(backend.default_device) == "cpu":
        assert "cores" in text


def test_thread_counts():
    numpy_backend = registry.lookup("numpy")
    before = numpy_backend.thread_count()
    assert before >= 1
    try:
        assert numpy_backend.set_thread_count(1) == 1
        assert numpy_backend.thread_count() == 1
    finally:
        numpy_backend.set_thread_count(before)
    assert registry.lookup("strict").thread_count() == 1  # no say: one thread
    assert registry.lookup("strict").set_thread_count(4) == 1


@pytest.mark.parametrize("kind", ["sgd", "momentum", "sdlm"])
def test_a_read_only_backend_is_never_written_into(rng, monkeypatch, kind):
    """The NumPy record made to say "read-only" over parameters NumPy itself refuses to write:
    every optimizer trains through set_parameter, with the bits of the in-place path."""

    def run(writable):
        monkeypatch.setattr(registry.lookup("numpy"), "writable", writable)
        net = Network(
            [L.Flatten(), L.FullyConnected(3, activation="tanh"), L.FullyConnected(2)],
            (1, 2, 2),
            dtype="float64",
            backend="numpy",
            seed=5,
        )
        if not writable:
            for name, p in net.parameters().items():
                frozen = np.array(p)
                frozen.flags.writeable = False
                net.set_parameter(name, frozen, check=False)
        opt = optim.build_optimizer(kind, net, lr=0.1, momentum=0.5 if kind != "sgd" else None)
        assert opt._in_place is writable
        opt.start_epoch(0, [(x, t)])
        for _ in range(3):
            net.compute_gradients(x, t)
            opt.step()  # an in-place write into a read-only array raises ValueError
        return net.state_dict()

    x = rng.standard_normal((4, 1, 2, 2))
    t = np.eye(2)[rng.integers(0, 2, 4)]
    in_place, replaced = run(True), run(False)
    initial = Network(
        [L.Flatten(), L.FullyConnected(3, activation="tanh"), L.FullyConnected(2)],
        (1, 2, 2),
        dtype="float64",
        backend="numpy",
        seed=5,
    ).state_dict()
    assert not np.array_equal(in_place["fc2.weight"], initial["fc2.weight"])  # it trained
    for name, value in in_place.items():
        np.testing.assert_array_equal(replaced[name], value, err_msg=name)


def test_the_cupy_record_states_its_capabilities():
    """Read without importing CuPy: what data parallelism and the CLI ask of it (the answers
    themselves need a GPU: untested on hardware)."""
    record = registry.lookup("cupy")
    assert record.writable is True
    for capability in ("device_name", "device_count", "use_device", "nccl"):
        assert callable(getattr(record, capability)), capability
    assert registry.lookup("numpy").device_count is None  # nothing to choose on the CPU
