"""What the layers promise where the mutation campaigns found no test (issue 22): kernels outside
an input-map table never contribute, whatever their values; the curvature of the pooling layers
is their squared Jacobian; a fixed decimation leaves its input's memory alone; the kernel-size
check at its exact boundary; layer seeds are 31-bit; the descriptions of activations redefined
by a subclass; the layers' reprs; arrays of two namespaces refused by the reference ops."""

from __future__ import annotations

import re

import array_api_strict
import numpy as np
import pytest

from anycnn import (
    Convolution,
    Flatten,
    Network,
    Subsampling,
    functional,
    ops,
)
from anycnn.layers import activations, losses


def _net(layers, shape, **kwargs):
    return Network(layers, input_shape=shape, backend="cpu", dtype="float64", **kwargs)


def test_kernels_outside_the_table_never_contribute_whatever_their_values():
    """Kernels outside the selection are not parameters: set to ones there (set_parameter keeps
    what it is given), they change no output, no input delta, no kernel gradient inside the
    table and no input curvature."""
    rng = np.random.default_rng(0)
    layers = lambda: [Convolution(3, 3, selection="random", inputs_per_map=1), Flatten()]  # noqa: E731
    zeroed, ones = _net(layers(), (3, 5, 5), seed=4), _net(layers(), (3, 5, 5), seed=4)
    conv0, conv1 = zeroed.layers[0], ones.layers[0]
    table = conv0.table
    assert np.array_equal(table, conv1.table) and not table.all()
    kernel = np.asarray(conv0.params["kernel"]).copy()
    kernel[~table] = 1.0
    ones.set_parameter(conv1.name + ".kernel", kernel)
    x = rng.random((2, 3, 5, 5))
    dy = rng.random((2, 27))
    outs, deltas, grads, curvatures = [], [], [], []
    for net, conv in ((zeroed, conv0), (ones, conv1)):
        outs.append(np.asarray(net.forward(x)))
        dx = conv.backward(np.reshape(dy, (2, 3, 3, 3)), need_input_grad=True)
        deltas.append(np.asarray(dx))
        grads.append(np.asarray(conv.grads["kernel"])[table])
        d2x, _ = conv.curvature(np.reshape(dy, (2, 3, 3, 3)))
        curvatures.append(np.asarray(d2x))
    for pair in (outs, deltas, grads, curvatures):
        np.testing.assert_allclose(pair[1], pair[0], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize(
    "mode, size, remainder",
    [
        ("sum", 4, "error"),
        ("mean", 4, "error"),
        ("decimate", 4, "error"),
        ("mean", 5, "pad"),
        ("sum", 5, "drop"),
        ("mean", 6, "error"),
    ],
)
@pytest.mark.parametrize("dims", [1, 2])
def test_the_curvature_of_a_fixed_pooling_is_its_squared_jacobian(mode, size, remainder, dims):
    """Each input feeds at most one output with weight a (1, 1/n^d or 0), so LeCun's d2x is
    a^2 d2y = backward(ones) o backward(d2y)."""
    n = 3 if size == 6 else 2
    layer = Subsampling(n, mode, trainable=False, remainder=remainder)
    shape = (2, *((size,) * dims))
    _net([layer], shape)
    rng = np.random.default_rng(1)
    layer.forward(rng.random((3, *shape)))
    d2y = rng.random((3, *layer.output_shape))
    a = np.asarray(layer.backward(np.ones_like(d2y)))
    expected = a * np.asarray(layer.backward(d2y))
    d2x, h = layer.curvature(d2y)
    assert h == {}
    np.testing.assert_allclose(np.asarray(d2x), expected, rtol=1e-14)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("mode", ["decimate", "sum", "mean"])
def test_a_fixed_pooling_leaves_its_input_alone(mode, n):
    """A decimation's samples may be a view of x (all of it for n = 1): its activation must not
    be applied in place."""
    layer = Subsampling(n, mode, activation="sigmoid", trainable=False)
    _net([layer], (2, 4, 4))
    x = np.random.default_rng(2).random((3, 2, 4, 4))
    before = x.copy()
    y = np.asarray(layer.forward(x))
    assert np.array_equal(x, before)
    assert np.all((y > 0) & (y < 1))


@pytest.mark.parametrize("padding", [0, 1, 2])
def test_a_kernel_may_be_as_large_as_the_padded_input_and_no_larger(padding):
    size = 3 + 2 * padding
    net = _net([Convolution(2, size, padding=padding)], (1, 3, 3))
    assert net.output_shape == (2, 1, 1)
    with pytest.raises(ValueError, match="is larger than the 3x3 input maps"):
        _net([Convolution(2, size + 1, padding=padding)], (1, 3, 3))


def test_layer_seeds_drawn_from_the_network_seed_are_31_bit():
    """The seeds a network draws for its layers are stored in JSON configurations and must be
    valid int32 seeds (the first 40 draws of a seed-0 network)."""
    net = _net([Convolution(1, 1) for _ in range(40)], (1, 2, 2), seed=0)
    seeds = [layer.config()["seed"] for layer in net.layers]
    assert all(0 <= s < 2**31 for s in seeds) and len(set(seeds)) == 40
    assert max(seeds) >= 2**30  # a draw over the whole range, not a smaller one


@pytest.mark.parametrize("method", ["forward", "derivative", "apply", "sensitivity"])
def test_a_subclass_that_redefines_any_formula_describes_nothing(method):
    """Backends compute what describe() says: a subclass of Sigmoid that redefines one of its
    formulas (and not describe) must not pass for a sigmoid."""
    own = type("Mine", (activations.Sigmoid,), {method: lambda self, *a, **k: None})
    assert own().describe() is None
    assert activations.Sigmoid().describe() == ("logistic", 1.0)


def test_an_undescribed_activation_computes_its_sensitivity_from_its_derivative():
    class Doubling(activations.Activation):
        name = "doubling"

        def forward(self, u):
            return 2 * u

        def derivative(self, y, u=None):
            return 2 + 0 * y

    dy = np.array([1.0, -3.0])
    assert np.array_equal(Doubling().sensitivity(dy, np.array([5.0, 7.0]), np), [2.0, -6.0])
    with pytest.raises(NotImplementedError, match="Activation.derivative"):
        activations.Activation().derivative(dy)
    with pytest.raises(NotImplementedError, match="Activation.forward"):
        activations.Activation().forward(dy)


@pytest.mark.parametrize(
    "layer, text",
    [
        (Convolution(2, 3, padding="same"), "Convolution(2@3x3, full, sigmoid, padding=same)"),
        (Convolution(2, 3, padding=1), "Convolution(2@3x3, full, sigmoid, padding=(1, 1))"),
        (Convolution(2, 3), "Convolution(2@3x3, full, sigmoid)"),
        (Subsampling(2, trainable=False), "Subsampling(2, sum, identity, fixed)"),
        (Subsampling(2, "mean"), "Subsampling(2, mean, identity)"),
        (
            Subsampling(3, remainder="drop", trainable=False),
            "Subsampling(3, sum, identity, fixed, remainder=drop)",
        ),
    ],
)
def test_reprs(layer, text):
    assert repr(layer) == text


def _mixed():
    rng = np.random.default_rng(3)
    return rng.random((2, 1, 4, 4)), array_api_strict.asarray(rng.random((1, 1, 2, 2)))


@pytest.mark.parametrize(
    "call",
    [
        lambda a, b: ops.conv_valid(a, b),
        lambda a, b: ops.conv_valid(b[...] * 0 + array_api_strict.asarray(a[:1, :1, :2, :2]), a),
        lambda a, b: ops.conv_kernel_grad(a, b),
        lambda a, b: ops.conv_kernel_grad(array_api_strict.asarray(a), a[:, :, :3, :3]),
        lambda a, b: ops.fully_connected(a[:, 0, 0, :], array_api_strict.asarray(a[:, 0, :, 0])),
        lambda a, b: ops.fully_connected(array_api_strict.asarray(a[:, 0, 0, :]), a[:, 0, :, 0]),
        lambda a, b: ops.sensitivity(a, array_api_strict.asarray(a), activations.Sigmoid()),
        lambda a, b: ops.sensitivity(array_api_strict.asarray(a), a, activations.Sigmoid()),
    ],
)
def test_the_reference_ops_refuse_arrays_of_two_namespaces(call):
    a, b = _mixed()
    with pytest.raises(TypeError, match="[Mm]ultiple namespaces"):
        call(a, b)


@pytest.mark.parametrize("method", ["gradient", "curvature"])
def test_the_cross_entropy_refuses_arrays_of_two_namespaces(method):
    y = np.zeros((2, 3))
    with pytest.raises(TypeError, match="[Mm]ultiple namespaces"):
        getattr(losses.CrossEntropy(), method)(y, array_api_strict.asarray(y))
    with pytest.raises(TypeError, match="[Mm]ultiple namespaces"):
        getattr(losses.CrossEntropy(), method)(array_api_strict.asarray(y), y)


def test_the_functional_checks_name_each_argument():
    x = np.zeros((1, 1, 3, 3))
    k = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"conv_full: delta must be a 4-d"):
        functional.conv_full(np.zeros((1, 3, 3)), k)
    with pytest.raises(ValueError, match=r"conv_kernel_grad: x must be"):
        functional.conv_kernel_grad(np.zeros((3, 3)), np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"conv_kernel_grad: delta must be"):
        functional.conv_kernel_grad(x, np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match=r"conv_kernel_grad: .*selection"):
        functional.conv_kernel_grad(x, np.zeros((1, 1, 2, 2)), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match=r"conv_valid: padding must be \(rows, columns\)"):
        functional.conv_valid(x, k, padding=1)
    with pytest.raises(ValueError, match=r"larger than the 3x3 input maps padded by \(1, 0\)"):
        functional.conv_valid(x, np.zeros((1, 1, 6, 2)), padding=(1, 0))
    with pytest.raises(ValueError, match=r"block_sum: x must be a 4-d"):
        functional.block_sum(np.zeros((4, 4)), 2)
    with pytest.raises(ValueError, match=r"kron_upsample: x must be a 4-d"):
        functional.kron_upsample(np.zeros((1, 1, 1, 2, 2, 2)), 2)
    with pytest.raises(ValueError, match=r"fully_connected: weight must be .*\(M, D\)"):
        functional.fully_connected(np.zeros((2, 3)), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match=r"fully_connected_input_grad: delta must be .*\(N, D\)"):
        functional.fully_connected_input_grad(np.zeros(3), np.zeros((3, 4)))


@pytest.mark.parametrize("divisible", [True, False])
def test_the_resampling_check_refuses_a_remainder_only_when_asked(divisible):
    check = functional._resampling(divisible)
    args = {"x": np.zeros((1, 1, 5, 4)), "n": 2}
    if divisible:
        with pytest.raises(ValueError, match="divisible"):
            check("block_sum", args)
    else:
        check("block_sum", args)
        assert args["n"] == 2


@pytest.mark.parametrize("name", sorted(functional.CHECKS))
def test_a_checked_entry_point_is_built_with_its_docs_and_module(name):
    fresh = functional._checked(name, functional.CHECKS[name])
    built = getattr(functional, name)
    assert fresh.__module__ == "anycnn.functional"
    assert fresh.__doc__ == built.__doc__
    assert fresh.__doc__.startswith(ops.__dict__[name].__doc__.split("\n", 1)[0].strip())
    assert "Checked entry point: validates " in fresh.__doc__
    assert fresh.__doc__.endswith("\n") and "Examples\n--------\n>>> " in fresh.__doc__


def test_an_unbuilt_convolution_has_no_table_and_no_parameters():
    conv = Convolution(2, 3)
    assert conv.extra_state() == {} and conv.parameter_count() == 0


def test_a_convolution_keeps_the_selection_list_it_was_given():
    selection = [[True, False], [False, True]]
    conv = Convolution(2, 3, selection=selection)
    selection[0][1] = True  # the caller's list changes after the layer was made
    _net([conv], (2, 4, 4))
    assert conv.table.tolist() == [[True, False], [False, True]]


def test_a_learned_combination_config_names_dims_only_when_given():
    from anycnn import LearnedCombination

    assert "dims" not in LearnedCombination(2, 3).config()
    assert LearnedCombination(2, 3, dims=1).config()["dims"] == 1


@pytest.mark.parametrize("mode", ["max", "SUM ", ""])
def test_an_unknown_pooling_mode_is_refused(mode):
    with pytest.raises(ValueError, match="mode"):
        Subsampling(2, mode)


@pytest.mark.parametrize(
    "shape, n, left",
    [((1, 5), 2, "the last 1 sample(s)"), ((1, 5, 4, 7), 3, "the last 2 / 1 / 1 sample(s)")],
)
def test_a_remainder_names_what_drop_would_ignore_per_axis(shape, n, left):
    with pytest.raises(ValueError, match=rf"remainder='drop' to ignore {re.escape(left)} \("):
        _net([Subsampling(n)], shape)
