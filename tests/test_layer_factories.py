"""The N-D layer factories and kernel conversions keep their promises (issue 22):
``Convolution1D/2D/3D`` and ``Subsampling1D/2D/3D`` pin the number of spatial axes (refusing any
other input, and keeping it through ``config()``), pass every other option on, and have the
documented defaults; ``to/from_cross_correlation`` flip exactly the last ``dims`` axes."""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import Network
from anycnn.layers import (
    Convolution,
    LayerError,
    Subsampling,
    from_cross_correlation,
    to_cross_correlation,
)
from anycnn.layers.conv import Convolution1D, Convolution2D, Convolution3D
from anycnn.layers.subsample import Subsampling1D, Subsampling2D, Subsampling3D

SHAPES = {1: (2, 12), 2: (2, 12, 12), 3: (2, 12, 12, 12)}
CONVOLUTIONS = {1: Convolution1D, 2: Convolution2D, 3: Convolution3D}
SUBSAMPLINGS = {1: Subsampling1D, 2: Subsampling2D, 3: Subsampling3D}


@pytest.mark.parametrize("d", [1, 2, 3])
def test_convolution_factories_pin_their_dims_and_pass_options_on(d):
    layer = CONVOLUTIONS[d](3, 3, activation="tanh", padding="same")
    assert isinstance(layer, Convolution) and layer.dims == d
    assert layer.config()["dims"] == d and layer.activation.name == "tanh"
    net = Network([layer], input_shape=SHAPES[d], dtype="float64")
    assert net.output_shape == (3, *SHAPES[d][1:])  # "same" padding was passed on
    for other in {1, 2, 3} - {d}:
        with pytest.raises(LayerError, match=r"expects .*, got input shape"):
            Network([CONVOLUTIONS[d](3, 3)], input_shape=SHAPES[other])
    assert Convolution(3, 3).dims is None  # the plain layer takes it from the input


@pytest.mark.parametrize("d", [1, 2, 3])
def test_subsampling_factories_pin_their_dims_defaults_and_options(d):
    layer = SUBSAMPLINGS[d](activation="tanh", trainable=False)
    assert isinstance(layer, Subsampling) and layer.dims == d
    assert (layer.n, layer.mode, layer.trainable, layer.activation.name) == (
        2,
        "sum",
        False,
        "tanh",
    )
    assert layer.config()["dims"] == d
    net = Network([layer], input_shape=SHAPES[d], dtype="float64")
    assert net.output_shape == (2, *(6,) * d)
    x = np.random.default_rng(d).standard_normal((1, *SHAPES[d]))
    blocks = x.reshape(1, 2, *[s for _ in range(d) for s in (6, 2)])
    sums = blocks.sum(axis=tuple(range(3, 3 + 2 * d, 2)))  # the notes' default: block sums
    out = net.backend.to_host(net.forward(net.backend.asarray(x, dtype="float64")))
    np.testing.assert_allclose(out, np.tanh(sums), rtol=1e-13)
    assert SUBSAMPLINGS[d](3, "mean").config()["n"] == 3
    assert SUBSAMPLINGS[d](3, "mean").mode == "mean"
    for other in {1, 2, 3} - {d}:
        with pytest.raises(LayerError, match=r"expects .*, got input shape"):
            Network([SUBSAMPLINGS[d]()], input_shape=SHAPES[other])


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_cross_correlation_conversions_flip_the_last_dims_axes(backend, dims):
    host = np.random.default_rng(dims).standard_normal((2, 3, 2, 3, 4))
    k = backend.asarray(host, dtype="float64")
    flipped = host[(..., *[slice(None, None, -1)] * dims)]
    np.testing.assert_array_equal(backend.to_host(to_cross_correlation(k, dims)), flipped)
    np.testing.assert_array_equal(backend.to_host(from_cross_correlation(k, dims)), flipped)
    back = from_cross_correlation(to_cross_correlation(k, dims), dims)
    np.testing.assert_array_equal(backend.to_host(back), host)
    if dims == 2:  # the default: the two axes of 2-D kernels
        np.testing.assert_array_equal(backend.to_host(from_cross_correlation(k)), flipped)
