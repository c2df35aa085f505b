"""What ``Network.fit``, ``gradcheck`` and the functional checks promise where the mutation
campaign of 2026-12-08 (main 7ec0812, 10% sample) found no test (issue 22): the learning rate
given with an optimizer's name, ``distributed=`` handed to the loop, no preprocessing recorded
after a fit without one, the entry point named in fit's input errors, gradcheck's float64 twin
holding float64 parameters and targets, and conv_valid naming itself for a bad selection.
Small and in process."""

from __future__ import annotations

import numpy as np
import pytest

import anycnn
from anycnn import Flatten, FullyConnected, Network
from anycnn import functional as F
from anycnn.gradcheck import gradcheck
from anycnn.training import distributed


def _tiny(**kwargs):
    return Network([Flatten(), FullyConnected(3)], input_shape=(1, 2, 2), backend="cpu", **kwargs)


def _data(n=4):
    rng = np.random.default_rng(0)
    return rng.random((n, 1, 2, 2)).astype(np.float32), np.arange(n) % 3


@pytest.mark.parametrize("name", ["sgd", "momentum", "sdlm"])
def test_fit_gives_lr_to_the_optimizer_it_builds_by_name(name):
    net = _tiny()
    x, y = _data()
    net.fit(x, y, epochs=1, batch_size=2, optimizer=name, lr=0.0123)
    assert net.optimizer.name == name
    assert net.optimizer.config()["lr"] == {"name": "constant", "lr": 0.0123}
    # and without lr, the optimizer's documented default rate
    other = _tiny()
    other.fit(x, y, epochs=1, batch_size=2, optimizer=name)
    assert other.optimizer.config()["lr"] == type(other.optimizer).default_rate().config()


def test_fit_hands_distributed_to_the_loop():
    """``distributed=`` reaches the loop's communicator (an unknown engine is refused there;
    None would be "auto" and train)."""
    x, y = _data()
    net = _tiny()
    before = net.parameters()["fc1.weight"].copy()
    with pytest.raises(distributed.DistributedError, match="unknown distributed engine 'no such'"):
        net.fit(x, y, epochs=1, batch_size=2, distributed="no such")
    assert np.array_equal(net.parameters()["fc1.weight"], before)
    net.fit(x, y, epochs=1, batch_size=2, distributed="single")
    assert net.epochs_trained == 1


def test_a_fit_without_preprocessing_records_none():
    """A new network fitted on floats has no preprocessing afterwards (``None``, as documented:
    "none for a new network"), so predict and save see none either."""
    net = _tiny()
    x, y = _data()
    net.fit(x, y, epochs=1, batch_size=2)
    assert net.preprocessing is None
    net.fit(x, y, epochs=1, batch_size=2, preprocessing="normalize")
    assert net.preprocessing is not None and net.preprocessing.kind == "normalize"


@pytest.mark.parametrize(
    "x, error, message",
    [
        (np.zeros((2, 1, 3, 3), np.float32), ValueError, r"^Network\.fit: .* expects a batch"),
        (np.zeros((2, 1, 2, 2), np.uint8), TypeError, r"^Network\.fit: x has dtype uint8"),
    ],
    ids=["shape", "dtype"],
)
def test_fit_names_itself_for_floats_it_cannot_take(x, error, message):
    with pytest.raises(error, match=message):
        _tiny().fit(x, np.array([0, 1]), epochs=1)


def test_fit_names_validation_data_for_floats_it_cannot_take():
    x, y = _data()
    bad = np.zeros((2, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"^Network\.fit: validation_data: .* expects a batch"):
        _tiny().fit(x, y, epochs=1, validation_data=(bad, np.array([0, 1])))


@pytest.mark.parametrize("parameters", [None, ["fc1.bias"]], ids=["all", "one"])
def test_gradcheck_differentiates_a_float64_twin_with_float64_parameters_and_targets(
    monkeypatch, parameters
):
    """Note [Float32 gradient checks]: the float32 network's parameters, ``x`` and ``t`` are
    converted to ``numeric_dtype`` on the twin, every one of them (not only the parameter
    being perturbed), before any loss is taken."""
    net = Network(
        [Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), backend="cpu", dtype="float32"
    )
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 2, 2)).astype(np.float32)
    t = rng.random((2, 2)).astype(np.float32)
    seen = []
    objective = Network.objective

    def spy(self, y, target):
        if self is not net:
            dtypes = {np.asarray(v).dtype for v in self.parameters().values()}
            seen.append((np.asarray(y).dtype, np.asarray(target).dtype, dtypes))
        return objective(self, y, target)

    monkeypatch.setattr(Network, "objective", spy)
    report = gradcheck(net, x, t, parameters=parameters)
    assert report.passed, report
    assert seen, "the twin was never differentiated"
    f64 = np.dtype(np.float64)
    assert all(s == (f64, f64, {f64}) for s in seen), seen[:3]


def test_conv_valid_names_itself_for_a_selection_of_the_wrong_shape():
    be = anycnn.get_backend()
    x = be.asarray(np.ones((1, 3, 4, 4)), dtype="float64")
    kernel = be.asarray(np.ones((2, 3, 2, 2)), dtype="float64")
    with pytest.raises(ValueError, match=r"conv_valid.*selection"):
        F.conv_valid(x, kernel, selection=np.ones((3, 2), dtype=bool))
