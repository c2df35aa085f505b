"""What the constructors promise (issue 22): each documented default, and each validation at its
boundaries (0, 1 and a negative value), asserted through behaviour and ``config()``.

A mutation campaign found these untested: an optimizer's default coefficient or a layer's default
could change silently, and the checks were never tried at the values where ``<`` and ``<=`` part.
"""

from __future__ import annotations

import numpy as np
import pytest

import anycnn
from anycnn import Convolution, Flatten, FullyConnected, LearnedCombination, Network, Subsampling
from anycnn.layers import (
    CrossEntropy,
    LeCunTanh,
    Sigmoid,
    SquaredError,
    Tanh,
    get_activation,
    get_loss,
)
from anycnn.training.optim import (
    SDLM,
    SGD,
    Constant,
    Momentum,
    Piecewise,
    Step,
    build_optimizer,
    lecun1998,
)


def _net():
    return Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")


# --- optimizers --------------------------------------------------------------------------------
def test_optimizer_default_rates_and_coefficients():
    net = _net()
    sgd, momentum, sdlm = SGD(net), Momentum(net), SDLM(net)
    assert sgd.schedule.config() == {"name": "constant", "lr": 0.05}
    assert momentum.schedule.config() == {"name": "constant", "lr": 0.02}
    assert momentum.momentum == 0.9 and momentum.slots == ("velocity",)
    # SDLM: lecun1998 scaled to start at 0.003 (0.0005 x 6), mu 0.02, 500 samples, no momentum
    assert sdlm.schedule.config() == lecun1998(6.0).config()
    assert [sdlm.schedule.rate(e) for e in (0, 2, 5, 8, 12)] == [
        0.003,
        0.0012,
        0.0006,
        0.0003,
        0.00006,
    ]
    assert (sdlm.mu, sdlm.samples, sdlm.momentum, sdlm.slots) == (0.02, 500, 0.0, ("hessian",))
    assert sgd.layer_rates == {} and set(sgd.multipliers.values()) == {1.0}
    assert (sgd.steps, sgd.epoch, sgd.lr) == (0, 0, 0.05)


def test_build_optimizer_defaults_match_the_classes():
    net = _net()
    assert build_optimizer("sgd", net).config()["lr"] == {"name": "constant", "lr": 0.05}
    assert build_optimizer("momentum", net).config()["momentum"] == 0.9
    assert build_optimizer("momentum", net, momentum=0.5).config()["momentum"] == 0.5
    sdlm = build_optimizer("sdlm", net).config()
    assert (sdlm["mu"], sdlm["samples"], sdlm["momentum"]) == (0.02, 500, 0.0)
    assert build_optimizer("sdlm", net, momentum=0.3).config()["momentum"] == 0.3
    assert build_optimizer(" SGD ", net).name == "sgd"  # names are trimmed and case-blind
    with pytest.raises(ValueError, match="the sgd optimizer has no momentum"):
        build_optimizer("sgd", net, momentum=0.5)
    assert build_optimizer("sgd", net, momentum=0).name == "sgd"  # 0 is no momentum
    assert build_optimizer("sgd", net, momentum=None).name == "sgd"


def test_schedule_defaults():
    step = Step(0.1)
    assert (step.every, step.gamma) == (1, 0.5)
    assert [step.rate(e) for e in range(3)] == [0.1, 0.05, 0.025]
    assert lecun1998().config() == {
        "name": "piecewise",
        "rates": [0.0005, 0.0002, 0.0001, 0.00005],
        "epochs": [2, 3, 3, 4],
        "final": 0.00001,
    }


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda v: Constant(v), "learning rate"),
        (lambda v: Step(v), "learning rate"),
        (lambda v: lecun1998(v), "^lecun1998: scale must be"),
        (lambda v: SGD(_net(), v), "learning rate"),
    ],
)
def test_global_rates_refuse_zero_and_negatives_and_take_one(make, match):
    for bad in (0, 0.0, -1, -0.5, float("nan"), float("inf"), True, "0.1", None):
        if bad is None and match == "learning rate":
            continue  # SGD(net, None) is the default rate
        with pytest.raises(ValueError, match=match):
            make(bad)
    make(1)  # a one is a rate like another
    make(np.float32(0.5))
    make(np.int64(2))


def test_coefficients_in_zero_one():
    net = _net()
    for value in (0, 0.0, 0.5, 0.999):
        assert Momentum(net, 0.1, momentum=value).momentum == value
        assert SDLM(net, 0.1, momentum=value).momentum == value
    for value in (1, 1.0, 1.5, -0.1, -1):
        with pytest.raises(ValueError, match="^the momentum must be"):
            Momentum(net, 0.1, momentum=value)
        with pytest.raises(ValueError, match="^SDLM: momentum must be"):
            SDLM(net, 0.1, momentum=value)
    assert SDLM(net, 0.1, momentum=0.5).slots == ("hessian", "velocity")
    assert SDLM(net, 0.1, momentum=0).slots == ("hessian",)


def test_sdlm_mu_and_samples_bounds():
    net = _net()
    for value in (0, 0.0, -1, -0.02):
        with pytest.raises(ValueError, match="^SDLM: mu must be"):
            SDLM(net, 0.1, mu=value)
    assert SDLM(net, 0.1, mu=1).mu == 1.0
    assert SDLM(net, 0.1, mu=1e-9).mu == 1e-9
    for value in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="SDLM: samples must be a positive int"):
            SDLM(net, 0.1, samples=value)
    assert SDLM(net, 0.1, samples=1).samples == 1


def test_schedule_integer_bounds():
    for value in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="Step: every must be a positive int"):
            Step(0.1, every=value)
    assert Step(0.1, every=1).every == 1
    # gamma may be 0 (one epoch at lr, then nothing) or 1 (constant), not negative
    assert [Step(0.1, gamma=0).rate(e) for e in (0, 1)] == [0.1, 0.0]
    assert [Step(0.1, gamma=1).rate(e) for e in (0, 5)] == [0.1, 0.1]
    with pytest.raises(ValueError, match="^Step: gamma must be"):
        Step(0.1, gamma=-0.5)
    for value in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="Piecewise: epoch counts must be positive ints"):
            Piecewise([0.1], [value], final=0.01)
    assert Piecewise([0.1], [1], final=0.01).epochs == [1]
    for rate in (0, 0.0):  # 0 is a valid rate inside a schedule (a frozen phase)...
        assert Piecewise([rate], [1], final=rate).rate(0) == 0.0
    with pytest.raises(ValueError, match="^Piecewise: a rate must be"):  # ...a negative one is not
        Piecewise([-0.1], [1], final=0.01)
    with pytest.raises(ValueError, match="^Piecewise: the final rate must be"):
        Piecewise([0.1], [1], final=-0.01)
    with pytest.raises(ValueError, match="2 rates and 1 epoch counts"):
        Piecewise([0.1, 0.2], [1], final=0.01)


def test_layer_rates_bounds():
    net = _net()
    opt = SGD(net, 0.1, layer_rates={"fc1": 0, "fc1.bias": 1})
    assert (opt.rate("fc1.weight"), opt.rate("fc1.bias")) == (0.0, 0.1)
    for bad in (-1, -0.5, float("nan")):
        with pytest.raises(ValueError, match=r"layer_rates\['fc1'\]"):
            SGD(net, 0.1, layer_rates={"fc1": bad})
    with pytest.raises(ValueError, match="'nope' is neither a layer nor a parameter"):
        SGD(net, 0.1, layer_rates={"nope": 1})


# --- layers ------------------------------------------------------------------------------------
def test_layer_constructor_defaults():
    conv = Convolution(4, 3)
    sigmoid = {"name": "sigmoid", "gain": 1.0}
    assert conv.config() == {
        "maps": 4,
        "kernel_size": [3, 3],
        "padding": "valid",
        "selection": "table",  # the drawn table travels in extra_state()
        "activation": sigmoid,
        "init": "glorot",
        "inputs_per_map": 3,
        "seed": None,
    }
    assert (conv.pad, conv.init, conv.inputs_per_map, conv.seed) == ((0, 0), "glorot", 3, None)
    assert conv.selection_spec == "full"
    assert FullyConnected(3).config() == {"units": 3, "activation": sigmoid, "init": "glorot"}
    assert Subsampling().config() == {
        "n": 2,
        "mode": "sum",
        "activation": {"name": "identity"},
        "trainable": True,
        "remainder": "error",
    }
    assert LearnedCombination(2, 3).config() == {
        "maps": 2,
        "kernel_size": [3, 3],
        "kernels": "per_input",
        "lam": 0.0,
        "sparsity": "l1",
        "activation": sigmoid,
        "init": "glorot",
    }
    assert Flatten().name is None and conv.name is None


def test_activation_and_loss_defaults():
    assert Sigmoid().gain == 1.0
    assert (Tanh().a, Tanh().b) == (1.0, 1.0)
    assert (LeCunTanh().a, LeCunTanh().b) == (1.7159, 2.0 / 3.0)
    assert get_activation(None).config() == {"name": "identity"}
    assert get_activation("logistic").config() == {"name": "sigmoid", "gain": 1.0}
    assert get_activation("linear").config() == {"name": "identity"}
    assert get_loss("mse").name == get_loss("squared_error").name == "squared_error"
    assert get_loss("Cross_Entropy").name == "cross_entropy"
    assert get_loss({"name": "mse"}).name == "squared_error"
    loss = SquaredError()
    assert get_loss(loss) is loss
    assert (SquaredError().config(), CrossEntropy().config()) == (
        {"name": "squared_error"},
        {"name": "cross_entropy"},
    )
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        get_loss("hinge")
    net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2))
    assert net.loss.name == "squared_error"  # the notes' eq. (1) unless told otherwise


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda v: Convolution(v, 3), "Convolution: maps must be a positive int"),
        (lambda v: Convolution(2, v), "Convolution: kernel_size must be positive"),
        (lambda v: Convolution(2, (3, v)), "Convolution: kernel_size must be positive"),
        (lambda v: FullyConnected(v), "FullyConnected: units must be a positive int"),
        (lambda v: Subsampling(v), "Subsampling: the factor n must be a positive int"),
        (lambda v: LearnedCombination(v, 3), "LearnedCombination: maps must be a positive int"),
        (lambda v: LearnedCombination(2, v), "LearnedCombination: kernel_size must be positive"),
    ],
)
def test_layer_sizes_refuse_zero_and_negatives_and_take_one(make, match):
    for bad in (0, -1, -3):
        with pytest.raises(ValueError, match=match):
            make(bad)
    make(1)


def test_a_size_of_one_builds_and_runs():
    """Size 1 everywhere: a 1x1 kernel, one map, one unit, subsampling by 1 (the identity)."""
    net = Network(
        [Convolution(1, 1), Subsampling(1), Flatten(), FullyConnected(1)],
        input_shape=(1, 2, 2),
        dtype="float64",
    )
    x = net.backend.asarray(np.arange(8.0).reshape(2, 1, 2, 2), dtype="float64")
    assert tuple(net.forward(x).shape) == (2, 1)
    assert [layer.output_shape for layer in net.layers] == [(1, 2, 2), (1, 2, 2), (4,), (1,)]


def test_bool_sizes_are_refused():
    for make in (
        lambda: Convolution(True, 3),
        lambda: FullyConnected(True),
        lambda: Subsampling(True),
        lambda: LearnedCombination(True, 3),
    ):
        with pytest.raises(ValueError, match="positive int"):
            make()


def test_learned_combination_lambda_bounds():
    assert LearnedCombination(2, 3, lam=0).lam == 0.0
    assert LearnedCombination(2, 3, lam=1).lam == 1.0
    for bad in (-1, -0.1, float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match=r"lambda \(lam\) must be a finite number >= 0"):
            LearnedCombination(2, 3, lam=bad)


def test_random_selection_inputs_per_map_bounds():
    def build(k):
        return Network(
            [Convolution(2, 1, selection="random", inputs_per_map=k, seed=0)],
            input_shape=(3, 2, 2),
        )

    for k in (0, -1, 4):
        with pytest.raises(anycnn.layers.LayerError, match=r"inputs_per_map must be in \[1, 3\]"):
            build(k)
    for k in (1, 3):
        table = build(k).layers[0].table
        assert table.sum(axis=1).tolist() == [k, k]


def test_padding_forms_and_bounds():
    """Every form resolve_padding's docstring names, and amounts 0, 1 and -1."""
    from anycnn.layers.conv import resolve_padding

    assert resolve_padding("valid", (3, 4), "X") == (0, 0)
    assert resolve_padding("same", (3, 5), "X") == (1, 2)
    assert resolve_padding("same", (1, 1), "X") == (0, 0)
    assert resolve_padding(0, (3, 3), "X") == (0, 0)
    assert resolve_padding(1, (3, 3), "X") == (1, 1)
    assert resolve_padding((1, 0), (3, 3), "X") == (1, 0)
    assert resolve_padding([0, 2], (3, 3), "X") == (0, 2)
    assert resolve_padding(2, (3,), "X") == (2,)  # any number of spatial axes
    with pytest.raises(ValueError, match="X: padding='same' needs odd kernel sizes.*a 3x2 kernel"):
        resolve_padding("same", (3, 2), "X")
    for bad in (-1, (1, -1), (1,), (1, 1, 1), (True, 0), 1.0, "full", (0.5, 1)):
        with pytest.raises(ValueError, match="X: padding must be 'valid', 'same'"):
            resolve_padding(bad, (3, 3), "X")
    assert Convolution(2, 3, padding=1).pad == (1, 1)
    assert Convolution(2, 3, padding="same").config()["padding"] == "same"
    assert Convolution(2, 3, padding=(0, 1)).config()["padding"] == [0, 1]


def test_schedule_and_optimizer_reprs():
    assert repr(Constant(0.1)) == "Constant(lr=0.1)"
    assert repr(Step(0.1, every=2, gamma=0.25)) == "Step(lr=0.1, every=2, gamma=0.25)"
    assert repr(Piecewise([0.1], [2], final=0.01)) == (
        "Piecewise(rates=[0.1], epochs=[2], final=0.01)"
    )
    net = _net()
    assert repr(SGD(net, 0.1)) == f"<SGD lr=Constant(lr=0.1) on {net.name}>"
