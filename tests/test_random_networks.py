"""Random small networks pass the finite-difference check (section 4.4): random sequences of
convolutions (random sizes and input-map selections), learned combinations of maps (3.3, either
kernel layout, with or without the sparsity penalty), subsamplings (random factor, mode,
trainable or fixed), Flatten and fully connected layers, random activations and either loss.
The NumPy run counts its examples: at least 100 valid networks are checked.

relu is left out: at its kink finite differences are wrong, and a random network cannot be
kept away from it (test_gradcheck.py checks relu with data chosen to avoid the kink).
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from anycnn.gradcheck import gradcheck
from anycnn.layers import Convolution, Flatten, FullyConnected, LearnedCombination, Subsampling
from anycnn.network import Network

ACTIVATIONS = st.sampled_from(
    ["sigmoid", {"name": "sigmoid", "gain": 2.0}, "tanh", "lecun_tanh", "identity"]
)


@st.composite
def selections(draw, c_out, c_in):
    options = ["full", "random", "table"]
    options += ["pairs"] if c_in >= 2 else []
    options += ["triplets"] if c_in >= 3 else []
    kind = draw(st.sampled_from(options))
    if kind == "random":
        return {
            "selection": "random",
            "inputs_per_map": draw(st.integers(1, c_in)),
            "seed": draw(st.integers(0, 1000)),
        }
    if kind == "table":  # each row a non-empty subset of the input maps, as a bit mask
        rows = [draw(st.integers(1, 2**c_in - 1)) for _ in range(c_out)]
        table = np.array([[(row >> i) & 1 for i in range(c_in)] for row in rows], dtype=bool)
        return {"selection": table}
    return {"selection": kind}


@st.composite
def networks(draw):
    """(layers, input shape, loss, batch size, data seed) for a network on maps of at most 12x12.

    The map layers are drawn first, then the input size that makes every one of them fit
    exactly (subsampling factors divide, kernels fit), so factors 2 and 3 are common."""
    plan = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            plan.append(("conv", (draw(st.integers(1, 3)), draw(st.integers(1, 3)))))
        else:
            plan.append(("sub", draw(st.sampled_from([1, 2, 2, 3]))))
    # The input size is an affine function a * final + b of the last maps' size.
    a, b = [1, 1], [0, 0]
    for kind, size in reversed(plan):
        for axis in range(2):
            if kind == "conv":
                b[axis] += size[axis] - 1
            else:
                a[axis], b[axis] = a[axis] * size, b[axis] * size
    largest = [(12 - b[axis]) // a[axis] for axis in range(2)]
    assume(min(largest) >= 1)
    final = [draw(st.integers(1, min(largest[axis], 3))) for axis in range(2)]
    c = draw(st.integers(1, 3))
    input_shape = (c, a[0] * final[0] + b[0], a[1] * final[1] + b[1])
    layers = []
    for kind, size in plan:
        if kind == "conv":
            maps = draw(st.integers(1, 4))
            if c >= 2 and draw(st.integers(0, 4)) == 0:  # a learned combination (3.3), 1 in 5
                layers.append(
                    LearnedCombination(
                        maps,
                        size,
                        kernels=draw(st.sampled_from(["per_input", "per_pair"])),
                        lam=draw(st.sampled_from([0.0, 0.1])),
                        sparsity=draw(st.sampled_from(["l1", "entropy"])),
                        activation=draw(ACTIVATIONS),
                    )
                )
            else:
                layers.append(
                    Convolution(
                        maps, size, activation=draw(ACTIVATIONS), **draw(selections(maps, c))
                    )
                )
            c = maps
        else:
            layers.append(
                Subsampling(
                    size,
                    draw(st.sampled_from(["sum", "mean", "decimate"])),
                    activation=draw(ACTIVATIONS),
                    trainable=draw(st.booleans()),
                )
            )
    has_parameters = any(
        isinstance(layer, Convolution | LearnedCombination)
        or (isinstance(layer, Subsampling) and layer.trainable)
        for layer in layers
    )
    if draw(st.booleans()) or not has_parameters:
        layers.append(Flatten())
        for _ in range(draw(st.integers(1, 2))):
            layers.append(FullyConnected(draw(st.integers(2, 4)), activation=draw(ACTIVATIONS)))
    loss = draw(st.sampled_from(["squared_error", "cross_entropy"]))
    return layers, input_shape, loss, draw(st.integers(1, 3)), draw(st.integers(0, 2**16))


def _check(case, backend):
    layers, input_shape, loss, n, seed = case
    net = Network(layers, input_shape, loss=loss, dtype="float64", backend=backend, seed=seed)
    for layer in net.layers:  # what the run covered: pytest --hypothesis-show-statistics
        event(repr(layer).split("(")[0])
        if isinstance(layer, Subsampling):
            event(f"Subsampling {layer.mode} {'trainable' if layer.trainable else 'fixed'}")
        if isinstance(layer, Convolution) and not layer.table.all():
            event("Convolution with a partial selection")
        if isinstance(layer, LearnedCombination):
            event(f"LearnedCombination {layer.kernels} lambda={layer.lam}")
        if getattr(layer, "activation", None) is not None:
            event(f"activation {layer.activation!r}")
    event(loss)
    be = net.backend
    rng = np.random.default_rng(seed)
    # Biases and betas off their constants, and the mixing weights c of a learned combination
    # off zero: with every alpha equal and a softmax over the output maps, the gradient of a
    # per_input kernel is exactly 0 (the softmax deltas sum to 0), and rounding noise of ~1e-16
    # then reads as a relative error against gradcheck's floor.
    for name, value in net.parameters().items():
        if name.endswith((".bias", ".beta", ".c")):
            moved = be.to_host(value) + rng.uniform(-0.3, 0.3, tuple(value.shape))
            net.set_parameter(name, be.asarray(moved, dtype="float64"))
    x = rng.standard_normal((n, *input_shape))
    if loss == "cross_entropy":  # one-hot along axis 1, the axis of the softmax
        classes = net.output_shape[0]
        labels = rng.integers(0, classes, (n, *net.output_shape[1:]))
        t = np.moveaxis(np.eye(classes)[labels], -1, 1)
    else:
        t = rng.uniform(0.1, 0.9, (n, *net.output_shape))
    x, t = be.asarray(x, dtype="float64"), be.asarray(t, dtype="float64")
    # Central differences at eps = 1e-4 carry rounding noise of about 1e-16 |E| / 1e-4 = 1e-12 |E|
    # per entry. A tensor whose gradient is all below 1e-5 |E| (saturated sigmoids after a few
    # sums, a softmax over one map, the constant L1 penalty of 3.3.1) is held to an absolute
    # error of 1e-11 |E| rather than to 1e-6 of its own vanishing size, which is noise: random
    # seeds found such networks failing at 1e-6 relative with absolute errors of 1e-14 to 1e-12.
    error = abs(float(net.objective(net.forward(x), t)))
    report = gradcheck(net, x, t, max_entries=10, seed=seed, floor=1e-5 * max(1.0, error))
    assert report.passed, f"\n{net.summary()}\n{report}"
    assert [c.name for c in report.checks] == list(net.parameters())


def test_random_networks_pass_gradcheck():
    """100 random networks on NumPy, counted: a strategy that rejects too much (assume) or a
    space that runs out would stop hypothesis early, and this says so."""
    checked = []

    @settings(max_examples=100, deadline=None, derandomize=True, database=None)
    @given(case=networks())
    def check(case):
        checked.append(case)
        _check(case, "numpy")

    check()
    assert len(checked) >= 100, f"only {len(checked)} networks were checked"


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=networks())
def test_random_networks_pass_gradcheck_on_every_backend(backend, case):
    """A shorter run of the same property on every backend (the reference ops of strict and
    torch, the fast ops of numpy and cupy)."""
    _check(case, backend)
