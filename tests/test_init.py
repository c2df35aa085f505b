"""Initial parameters (issue 22): each init kind of each layer checked for its range, its mean and
its symmetry, statistically with fixed seeds, and the documented starting values (biases 0,
subsampling beta 1 or 1/n^2, combination logits 0).

Uniform on ``[-r, r]``: every draw inside, the extremes near ``+-r`` (so ``r`` is the documented
bound, not a smaller one), mean 0 and variance ``r^2 / 3`` within a few standard errors, as many
positive draws as negative ones.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from anycnn import Convolution, Flatten, FullyConnected, LearnedCombination, Network, Subsampling


def _params(layers, input_shape, seed=0):
    net = Network(layers, input_shape=input_shape, dtype="float64", seed=seed)
    return {k: np.asarray(net.backend.to_host(v)) for k, v in net.parameters().items()}


def _assert_uniform(values, bound, what):
    values = np.asarray(values, dtype=np.float64).ravel()
    n = values.size
    assert n >= 2000, what  # enough draws for the checks below to mean something
    assert np.all(np.abs(values) <= bound), f"{what}: a draw outside +-{bound}"
    # range: the largest |draw| of n uniform ones falls short of the bound by ~ bound / n (by
    # more than 14 bound / n with probability e^-14)
    assert np.abs(values).max() > bound * (1 - 14 / n), f"{what}: bound smaller than {bound}"
    # mean and variance of U(-r, r): 0 and r^2 / 3; standard errors r / sqrt(3 n) and
    # r^2 sqrt(4 / (45 n)); 5 of them leave a one-in-a-million false alarm
    assert abs(values.mean()) < 5 * bound / math.sqrt(3 * n), f"{what}: mean off 0"
    assert abs(values.var() - bound**2 / 3) < 5 * bound**2 * math.sqrt(4 / (45 * n)), what
    # symmetry: as many positive as negative draws (binomial, 5 sigma), and a symmetric spread
    positive = np.count_nonzero(values > 0)
    assert abs(positive - n / 2) < 5 * math.sqrt(n / 4), f"{what}: not symmetric about 0"
    q = np.quantile(values, [0.1, 0.25, 0.75, 0.9])
    np.testing.assert_allclose(
        q, [-0.8 * bound, -0.5 * bound, 0.5 * bound, 0.8 * bound], atol=0.05 * bound, err_msg=what
    )


@pytest.mark.parametrize("seed", [0, 7])
def test_fully_connected_glorot_and_lecun(seed):
    fan_in, units = 200, 100
    for init, bound in (
        ("glorot", math.sqrt(6 / (fan_in + units))),
        ("lecun", 2.4 / fan_in),
    ):
        p = _params([Flatten(), FullyConnected(units, init=init)], (2, 10, 10), seed)
        assert p["fc1.weight"].shape == (units, fan_in)
        _assert_uniform(p["fc1.weight"], bound, f"FullyConnected init={init}")
        assert np.all(p["fc1.bias"] == 0)


@pytest.mark.parametrize("seed", [0, 7])
def test_convolution_glorot_and_lecun_full(seed):
    c_in, maps, k = 6, 16, 5
    glorot = math.sqrt(6 / ((c_in + maps) * k * k))
    lecun = 2.4 / (c_in * k * k)  # F = |M_j| kh kw, every input map
    for init, bound in (("glorot", glorot), ("lecun", lecun)):
        p = _params([Convolution(maps, k, init=init)], (c_in, 8, 8), seed)
        _assert_uniform(p["conv1.kernel"], bound, f"Convolution init={init}")
        assert np.all(p["conv1.bias"] == 0)


def test_convolution_lecun_bound_follows_each_maps_inputs():
    """LeNet-5's C3: F = |M_j| 5 5 differs by output map (3, 4 or 6 inputs); kernels outside the
    table are exactly 0. Glorot's bound stays the whole layer's."""
    layers = [Convolution(16, 5, selection="lenet5", init="lecun")]
    net = Network(layers, input_shape=(6, 10, 10), dtype="float64", seed=3)
    kernel = np.asarray(net.backend.to_host(net.parameters()["conv1.kernel"]))
    table = net.layers[0].table
    assert np.all(kernel[~table] == 0)
    by_count: dict[int, list[np.ndarray]] = {}
    for j in range(16):
        by_count.setdefault(int(table[j].sum()), []).append(kernel[j, table[j]])
    assert sorted(by_count) == [3, 4, 6]
    for count, kernels in by_count.items():
        values = np.concatenate([v.ravel() for v in kernels])
        bound = 2.4 / (count * 25)
        assert np.all(np.abs(values) <= bound)
        assert np.abs(values).max() > 0.9 * bound, count  # not the bound of another count
    glorot = Network(
        [Convolution(16, 5, selection="lenet5")], input_shape=(6, 10, 10), dtype="float64", seed=3
    )
    kernel = np.asarray(glorot.backend.to_host(glorot.parameters()["conv1.kernel"]))
    bound = math.sqrt(6 / ((6 + 16) * 25))
    assert np.all(np.abs(kernel) <= bound) and np.abs(kernel).max() > 0.97 * bound
    assert np.all(kernel[~glorot.layers[0].table] == 0)


@pytest.mark.parametrize("kernels", ["per_input", "per_pair"])
def test_learned_combination_glorot_and_lecun(kernels):
    k = 5
    for init, bound in (("glorot", math.sqrt(6 / (2 * k * k))), ("lecun", 2.4 / (k * k))):
        p = _params([LearnedCombination(12, k, kernels=kernels, init=init)], (10, 8, 8), seed=1)
        expected = (10, k, k) if kernels == "per_input" else (12, 10, k, k)
        assert p["conv1.kernel"].shape == expected
        if kernels == "per_input":  # 250 draws: range and symmetry only
            values = p["conv1.kernel"]
            assert np.all(np.abs(values) <= bound) and np.abs(values).max() > 0.95 * bound
            assert 0.35 < np.mean(values > 0) < 0.65
        else:
            _assert_uniform(p["conv1.kernel"], bound, f"LearnedCombination init={init}")
        assert np.all(p["conv1.c"] == 0) and p["conv1.c"].shape == (12, 10)  # alpha uniform
        assert np.all(p["conv1.bias"] == 0)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_subsampling_starts_as_a_mean(n):
    size = 6
    for mode, beta0 in (("sum", 1 / n**2), ("mean", 1.0), ("decimate", 1.0)):
        p = _params([Subsampling(n, mode)], (3, size, size))
        np.testing.assert_array_equal(p["sub1.beta"], np.full(3, beta0))
        np.testing.assert_array_equal(p["sub1.bias"], np.zeros(3))
    assert _params([Subsampling(n, trainable=False)], (3, size, size)) == {}


def test_the_seed_decides_the_draws():
    def draw(seed):
        return _params([Flatten(), FullyConnected(4)], (1, 3, 3), seed)["fc1.weight"]

    np.testing.assert_array_equal(draw(5), draw(5))
    assert not np.array_equal(draw(5), draw(6))
