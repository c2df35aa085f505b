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


def test_a_checked_entry_point_built_afresh_has_the_reference_ops_signature(monkeypatch):
    """``functional._checked`` (the module's entry points are built at import, before a
    mutation campaign switches a mutant on; built here afresh): the reference op's signature
    and ``__wrapped__``, its checks and its result, and a docstring that starts with the
    op's own (or with the checks' paragraph for an op without one)."""
    import inspect

    from anycnn import ops as reference

    entry = F._checked("conv_valid", F.CHECKS["conv_valid"])
    assert entry.__wrapped__ is reference.conv_valid
    assert inspect.signature(entry) == inspect.signature(reference.conv_valid)
    be = anycnn.get_backend()
    x = be.asarray(np.arange(16.0).reshape(1, 1, 4, 4), dtype="float64")
    k = be.asarray(np.ones((1, 1, 2, 2)), dtype="float64")
    np.testing.assert_array_equal(np.asarray(entry(x, k)), np.asarray(reference.conv_valid(x, k)))
    with pytest.raises(ValueError, match=r"conv_valid.*selection"):
        entry(x, k, selection=np.ones((2, 2), dtype=bool))
    assert entry.__doc__.startswith(inspect.cleandoc(reference.conv_valid.__doc__)[:40])

    def bare(x, kernel, selection=None, padding=0):
        return reference.conv_valid(x, kernel, selection, padding)

    monkeypatch.setattr(reference, "conv_valid", bare)
    assert F._checked("conv_valid", F.CHECKS["conv_valid"]).__doc__.startswith(
        "\n\nChecked entry point"
    )


def _f(a, dtype="float64"):
    return anycnn.get_backend().asarray(np.asarray(a, dtype=dtype), dtype=dtype)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda: F.fully_connected(_f(np.ones((2, 3, 1))), _f(np.ones((4, 3)))),
            ValueError,
            r"^fully_connected: x must be a 2-d \(N, D\) array",
        ),
        (
            lambda: F.fully_connected(_f(np.ones((2, 3))), _f(np.ones(3))),
            ValueError,
            r"^fully_connected: weight must be a 2-d \(M, D\) array",
        ),
        (
            lambda: F.fully_connected(_f(np.ones((2, 3)), "int64"), _f(np.ones((4, 3)))),
            TypeError,
            r"^fully_connected: x must have a real floating dtype",
        ),
        (
            lambda: F.fully_connected(_f(np.ones((2, 3)), "float32"), _f(np.ones((4, 3)))),
            TypeError,
            r"^fully_connected: x and weight must share a dtype",
        ),
        (
            lambda: F.fully_connected_weight_grad(_f(np.ones((2, 3, 1))), _f(np.ones((2, 4)))),
            ValueError,
            r"^fully_connected_weight_grad: x must be a 2-d \(N, D\) array",
        ),
        (
            lambda: F.fully_connected_weight_grad(
                _f(np.ones((2, 3)), "float32"), _f(np.ones((2, 4)))
            ),
            TypeError,
            r"^fully_connected_weight_grad: x and delta must share a dtype",
        ),
        (
            lambda: F.fully_connected_input_grad(_f(np.ones((2, 4, 1))), _f(np.ones((4, 3)))),
            ValueError,
            r"^fully_connected_input_grad: delta must be a 2-d \(N, D\) array",
        ),
    ],
    ids=[
        "fc x rank",
        "fc weight rank",
        "fc x int",
        "fc dtypes",
        "wgrad x rank",
        "wgrad dtypes",
        "igrad delta rank",
    ],
)
def test_the_fully_connected_ops_name_themselves_the_argument_and_its_layout(call, error, message):
    with pytest.raises(error, match=message):
        call()
