"""Learned combinations of feature maps (section 3.3) and their sparsity penalty (3.3.1): the
forward pass and every gradient against the notes' formulas evaluated literally with SciPy,
finite differences of the penalised error on every backend, the export to an input-map table,
the configuration round trip, and the errors."""

from __future__ import annotations

import json

import numpy as np
import oracles
import pytest
from scipy.signal import convolve2d

from anycnn.backend import resolve_dtype
from anycnn.gradcheck import gradcheck
from anycnn.layers import (
    Convolution,
    Flatten,
    FullyConnected,
    LayerError,
    LearnedCombination,
    to_selection,
)
from anycnn.layers.base import BuildContext
from anycnn.network import Network
from anycnn.testing import assert_close

KERNELS = ["per_input", "per_pair"]


def _softmax(c):
    e = np.exp(c - c.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _built(backend, rng, *, kernels, c_in=3, maps=4, size=7, k=3, **options):
    layer = LearnedCombination(maps, k, kernels=kernels, activation="identity", **options)
    dtype = resolve_dtype(backend.xp, "float64")
    layer.build((c_in, size, size), BuildContext(backend, dtype, rng))
    layer.params["c"] = backend.asarray(rng.standard_normal((maps, c_in)), dtype="float64")
    layer.params["bias"] = backend.asarray(rng.standard_normal(maps), dtype="float64")
    return layer


@pytest.mark.parametrize("kernels", KERNELS)
def test_forward_and_gradients_match_the_notes_literally(backend, rng, kernels):
    """Every quantity of 3.3 computed map by map with SciPy's conv2, as the notes write it."""
    n, c_in, maps, size, k = 2, 3, 4, 7, 3
    layer = _built(backend, rng, kernels=kernels, c_in=c_in, maps=maps, size=size, k=k)
    c = backend.to_host(layer.params["c"])
    kern = backend.to_host(layer.params["kernel"])
    b = backend.to_host(layer.params["bias"])
    pair = (lambda j, i: kern[i]) if kernels == "per_input" else (lambda j, i: kern[j, i])
    alpha = _softmax(c)  # alpha[j, i] is the notes' alpha_ij
    x = rng.standard_normal((n, c_in, size, size))
    dy = rng.standard_normal((n, maps, size - k + 1, size - k + 1))

    # z[n, j, i] = x_i * k_ij ('valid' conv2), the per-map convolutions of 3.3
    z = np.array(
        [
            [
                [convolve2d(x[s, i], pair(j, i), mode="valid") for i in range(c_in)]
                for j in range(maps)
            ]
            for s in range(n)
        ]
    )
    u = np.einsum("ji,sjiuv->sjuv", alpha, z) + b[None, :, None, None]
    assert_close(layer.forward(backend.asarray(x, dtype="float64")), u, backend=backend)

    dx = layer.backward(backend.asarray(dy, dtype="float64"))
    delta = dy  # identity activation
    grad_alpha = np.einsum("sjuv,sjiuv->ji", delta, z)  # dE/dalpha_i = sum_uv (delta o (x_i*k_i))
    grad_c = alpha * (grad_alpha - (grad_alpha * alpha).sum(axis=1, keepdims=True))  # eq. (10)
    # eq. (8)-(9) directly, as a check on eq. (10)'s algebra
    jacobian = np.einsum("jk,ki->jki", alpha, np.eye(c_in)) - np.einsum("ji,jk->jki", alpha, alpha)
    np.testing.assert_allclose(np.einsum("jk,jki->ji", grad_alpha, jacobian), grad_c, atol=1e-12)
    # eq. (7) through alpha
    grad_pair = alpha[:, :, None, None] * oracles.conv_kernel_grad(x, delta)
    grad_kernel = grad_pair.sum(axis=0) if kernels == "per_input" else grad_pair
    effective = np.array([[alpha[j, i] * pair(j, i) for i in range(c_in)] for j in range(maps)])

    assert_close(layer.grads["c"], grad_c, backend=backend)
    assert_close(layer.grads["kernel"], grad_kernel, backend=backend)
    assert_close(layer.grads["bias"], delta.sum(axis=(0, 2, 3)), backend=backend)
    assert_close(dx, oracles.conv_full(delta, effective), backend=backend)


def _network(backend, rng, *, kernels, lam, sparsity):
    layers = [
        Convolution(3, 3, activation="tanh"),
        LearnedCombination(4, 3, kernels=kernels, lam=lam, sparsity=sparsity, activation="tanh"),
        Flatten(),
        FullyConnected(3, activation="identity"),
    ]
    net = Network(
        layers,
        (2, 7, 7),
        loss="cross_entropy",
        dtype="float64",
        backend=backend,
        seed=int(rng.integers(2**31)),
    )
    # away from the uniform alpha, where the entropy penalty's gradient vanishes
    net.set_parameter("conv2.c", backend.asarray(rng.standard_normal((4, 3)), dtype="float64"))
    x = backend.asarray(rng.standard_normal((2, 2, 7, 7)), dtype="float64")
    t = backend.asarray(np.eye(3)[[0, 2]], dtype="float64")
    return net, x, t


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize(
    "sparsity,lam",
    [("l1", 0.0), ("l1", 0.3), ("entropy", 0.3)],
    ids=["lambda0", "l1-lambda0.3", "entropy-lambda0.3"],
)
def test_gradcheck_of_the_penalised_error(backend, rng, kernels, sparsity, lam):
    """Finite differences of E~ = E + Omega (eq. 11) for c, k and b, and the layer below."""
    net, x, t = _network(backend, rng, kernels=kernels, lam=lam, sparsity=sparsity)
    report = gradcheck(net, x, t, max_entries=12, tolerance=1e-6)
    assert {"conv2.c", "conv2.kernel", "conv2.bias", "conv1.kernel"} <= {
        c.name for c in report.checks
    }
    assert report.passed, str(report)
    total = float(net.compute_gradients(x, t))
    data = float(net.loss_value(net.forward(x), t))
    assert total == pytest.approx(data + float(net.penalty()), rel=1e-12)
    if sparsity == "l1":  # Note [The L1 penalty of 3.3.1 is constant]
        assert float(net.penalty()) == pytest.approx(lam * 4, rel=1e-12)
    else:
        assert 0 < float(net.penalty()) < lam * 4 * np.log(3)


def test_the_notes_l1_penalty_is_constant_and_has_no_gradient(backend, rng):
    """Note [The L1 penalty of 3.3.1 is constant]: eq. (14) vanishes on the softmax's simplex."""
    plain = _built(backend, rng, kernels="per_pair", maps=5, c_in=4)
    penalised = _built(backend, rng, kernels="per_pair", maps=5, c_in=4, lam=2.0)
    for key in plain.params:
        penalised.params[key] = plain.params[key]
    plain.params["c"] = penalised.params["c"] = backend.asarray(
        5 * rng.standard_normal((5, 4)), dtype="float64"
    )
    x = backend.asarray(rng.standard_normal((2, 4, 7, 7)), dtype="float64")
    dy = backend.asarray(rng.standard_normal((2, 5, 5, 5)), dtype="float64")
    for layer in (plain, penalised):
        layer.forward(x)
        layer.backward(dy, need_input_grad=False)
    assert float(penalised.penalty()) == pytest.approx(2.0 * 5, rel=1e-14)
    eq14 = backend.to_host(penalised._penalty_grad(penalised.alpha()))
    assert np.abs(eq14).max() < 1e-14
    np.testing.assert_allclose(
        backend.to_host(penalised.grads["c"]), backend.to_host(plain.grads["c"]), rtol=0, atol=1e-14
    )


def test_the_entropy_penalty_alone_drives_alpha_to_one_hot(rng):
    layer = _built(_numpy(), rng, kernels="per_input", maps=6, c_in=5, lam=1.0, sparsity="entropy")
    before = float(layer.penalty())
    for _ in range(300):
        layer.params["c"] = layer.params["c"] - 5.0 * layer._penalty_grad(layer.alpha())
    assert float(layer.penalty()) < 0.05 * before
    assert (np.asarray(layer.alpha()).max(axis=1) > 0.99).all()


def _numpy():
    from anycnn.backend import lookup

    return lookup("numpy")


# -- export to an input-map table ------------------------------------------------------------
def test_to_selection_threshold_top_k_and_both():
    alphas = np.array([[0.6, 0.3, 0.1], [0.05, 0.05, 0.9], [0.34, 0.33, 0.33]])
    assert to_selection(alphas, threshold=0.2).tolist() == [
        [True, True, False],
        [False, False, True],
        [True, True, True],
    ]
    assert to_selection(alphas, top_k=1).tolist() == [
        [True, False, False],
        [False, False, True],
        [True, False, False],
    ]
    # ties go to the lower index
    assert to_selection(alphas, top_k=2)[1].tolist() == [True, False, True]
    assert to_selection(alphas, threshold=0.2, top_k=2).tolist() == [
        [True, True, False],
        [False, False, True],
        [True, True, False],
    ]


def test_a_frozen_table_retrains_as_a_plain_convolution(backend, rng):
    """Keeping every map and the effective kernel alpha_ij k_ij reproduces the layer exactly."""
    layer = _built(backend, rng, kernels="per_input", maps=4, c_in=3)
    table = layer.selection(top_k=3)
    assert table.shape == (4, 3) and table.all()
    conv = Convolution(4, 3, selection=table, activation="identity")
    conv.build((3, 7, 7), BuildContext(backend, resolve_dtype(backend.xp, "float64"), rng))
    conv.params["kernel"] = layer.effective_kernel()
    conv.params["bias"] = layer.params["bias"]
    x = backend.asarray(rng.standard_normal((2, 3, 7, 7)), dtype="float64")
    assert_close(conv.forward(x), backend.to_host(layer.forward(x)), backend=backend)
    sparse = layer.selection(top_k=1)  # a sparser table: a valid selection for Convolution
    Convolution(4, 3, selection=sparse).build(
        (3, 7, 7), BuildContext(backend, resolve_dtype(backend.xp, "float64"), rng)
    )
    assert (sparse.sum(axis=1) == 1).all()


def test_to_selection_rejects_a_table_of_the_wrong_shape(rng):
    with pytest.raises(ValueError, match=r"\(C_out, C_in\) table, got shape \(3,\)"):
        to_selection(np.full(3, 1 / 3), threshold=0.1)
    with pytest.raises(ValueError, match=r"shape \(C_out, C_in\) = \(4, 3\), got \(3, 4\)"):
        to_selection(np.full((3, 4), 0.25), threshold=0.1, shape=(4, 3))
    layer = _built(_numpy(), rng, kernels="per_pair", maps=4, c_in=3)
    layer.params["c"] = np.zeros((3, 4))  # a stale c of the wrong layout
    with pytest.raises(ValueError, match=r"LearnedCombination.*\(4, 3\), got \(3, 4\)"):
        layer.selection(threshold=0.1)


def test_to_selection_names_the_output_maps_a_threshold_leaves_empty():
    alphas = np.array([[0.5, 0.5], [0.9, 0.1], [0.45, 0.55]])
    with pytest.raises(ValueError, match=r"output map\(s\) \[0, 2\] with no input map"):
        to_selection(alphas, threshold=0.6)


@pytest.mark.parametrize(
    "options,message",
    [
        ({}, "give a threshold, a top_k, or both"),
        ({"top_k": 0}, r"top_k must be an int in \[1, 2\]"),
        ({"top_k": 3}, r"top_k must be an int in \[1, 2\]"),
        ({"threshold": 1.0}, r"threshold must be in \[0, 1\)"),
    ],
)
def test_to_selection_rejects_bad_options(options, message):
    with pytest.raises(ValueError, match=message):
        to_selection(np.array([[0.5, 0.5]]), **options)


def test_to_selection_takes_any_backends_array(backend):
    alphas = backend.asarray(np.array([[0.7, 0.3], [0.2, 0.8]]), dtype="float64")
    assert to_selection(alphas, threshold=0.5).tolist() == [[True, False], [False, True]]


# -- construction, configuration ---------------------------------------------------------------
@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_a_bad_lambda_is_refused_by_name(lam):
    with pytest.raises(ValueError, match="lambda"):
        LearnedCombination(4, 3, lam=lam)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"kernels": "per_output"}, "kernels must be one of"),
        ({"sparsity": "l2"}, "sparsity must be one of"),
        ({"init": "he"}, "init must be"),
        ({"maps": 0}, "maps must be a positive int"),
    ],
)
def test_bad_options_are_refused(options, message):
    args = {"maps": 4, **options}
    with pytest.raises(ValueError, match=message):
        LearnedCombination(args.pop("maps"), 3, **args)


def test_build_errors_name_the_layer(rng):
    context = BuildContext(_numpy(), resolve_dtype(_numpy().xp, "float64"), rng)
    with pytest.raises(LayerError, match=r"LearnedCombination.*expects \(C, H, W\)"):
        LearnedCombination(4, 3).build((10,), context)
    with pytest.raises(LayerError, match="kernel 5x5 is larger than the 4x4 input maps"):
        LearnedCombination(4, 5).build((3, 4, 4), context)


@pytest.mark.parametrize("kernels", KERNELS)
def test_network_config_round_trip(kernels):
    layers = [
        Convolution(6, 5, activation="lecun_tanh"),
        LearnedCombination(
            16,
            5,
            kernels=kernels,
            lam=0.01,
            sparsity="entropy",
            activation="lecun_tanh",
            init="lecun",
        ),
        Flatten(),
        FullyConnected(10, activation="identity"),
    ]
    net = Network(layers, (1, 16, 16), loss="cross_entropy", backend="numpy", seed=3)
    config = json.loads(json.dumps(net.config()))
    again = Network.from_config(config, extra_state=net.extra_state())
    assert again.config() == net.config()
    assert {k: tuple(v.shape) for k, v in again.parameters().items()} == {
        k: tuple(v.shape) for k, v in net.parameters().items()
    }
    kernel_shape = (6, 5, 5) if kernels == "per_input" else (16, 6, 5, 5)
    assert tuple(net.parameters()["conv2.kernel"].shape) == kernel_shape
    assert tuple(net.parameters()["conv2.c"].shape) == (16, 6)
    assert "LearnedCombination(16@5x5" in net.summary()
