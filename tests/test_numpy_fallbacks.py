"""The NumPy plugin's ops on what their fast paths do not take, and on several threads (issue 22:
survivors of the second mutation campaign, tests/MUTATION.md).

* Arrays of two dtypes (a float32 input with a float64 kernel, a bias of another dtype) go to the
  reference ops: the plugin's answer is the reference's, bit for bit. No other test called the
  plugin's ops with such arrays (the layers never make them), so a fallback that returned None,
  or swapped its arguments, went unnoticed.
* The kernel gradient by im2col cuts a large batch into slices (a slice of one example, of
  several, of maps with few or many pixels) for the pool's threads; the tests' small batches
  were never cut, where a slice that ran to the end of the batch instead of its own end gave the
  same numbers. Here the gradient is compared with the reference op on one, two and three
  threads, for small batches and one large enough to be cut."""

from __future__ import annotations

import anycnn_numpy
import numpy as np
import pytest
from anycnn_numpy import _conv, _dense, _im2col

from anycnn import ops as reference
from anycnn.layers.activations import get_activation

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _mixed(rng, *shapes):
    """The first array float32, the others float64."""
    first, *rest = (rng.standard_normal(shape) for shape in shapes)
    return (first.astype(np.float32), *rest)


def _same(got, want):
    assert got is not None
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert np.asarray(got).dtype == np.asarray(want).dtype


def test_dense_ops_of_two_dtypes_are_the_reference_ops():
    rng = np.random.default_rng(0)
    x, w = _mixed(rng, (3, 4), (5, 4))
    _same(_dense.fully_connected(x, w), reference.fully_connected(x, w))
    d, w2 = _mixed(rng, (3, 5), (5, 4))
    _same(_dense.fully_connected_input_grad(d, w2), reference.fully_connected_input_grad(d, w2))
    x3, d3 = _mixed(rng, (3, 4), (3, 5))
    _same(_dense.fully_connected_weight_grad(x3, d3), reference.fully_connected_weight_grad(x3, d3))


def test_convolutions_of_two_dtypes_are_the_reference_ops():
    rng = np.random.default_rng(1)
    x, k = _mixed(rng, (2, 2, 6, 6), (3, 2, 3, 3))
    _same(_conv.conv_valid(x, k), reference.conv_valid(x, k))
    d, k2 = _mixed(rng, (2, 3, 4, 4), (3, 2, 3, 3))
    _same(_conv.conv_full(d, k2), reference.conv_full(d, k2))
    x3, d3 = _mixed(rng, (2, 2, 6, 6), (2, 3, 4, 4))
    _same(_conv.conv_kernel_grad(x3, d3), reference.conv_kernel_grad(x3, d3))


def test_a_fused_convolution_with_a_bias_of_another_dtype_is_the_reference_op():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 6, 6))
    k = rng.standard_normal((3, 2, 3, 3))
    bias = rng.standard_normal(3).astype(np.float32)
    tanh = get_activation("tanh")
    got = _conv.conv_valid_activate(x, k, bias, tanh)
    want = reference.conv_valid_activate(x, k, bias, tanh)
    _same(got, want)


CASES = [(n, 2, size) for n in (1, 2, 3, 5) for size in (5, 12)] + [(100, 32, 5)]


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize(
    ("n", "maps", "size"),
    CASES,  # maps of 3x3 or 10x10 outputs; the last, 100 x 32 maps, large enough to be cut
    ids=[f"n{n}-maps{maps}-{size}x{size}" for n, maps, size in CASES],
)
def test_the_im2col_kernel_gradient_on_several_threads(threads, n, maps, size):
    rng = np.random.default_rng(n * 10 + size)
    x = rng.standard_normal((n, maps, size, size))
    delta = rng.standard_normal((n, maps, size - 2, size - 2))
    want = reference.conv_kernel_grad(x, delta)
    before = anycnn_numpy.set_num_threads(threads)
    try:
        got = _im2col.conv_kernel_grad(x, delta)
    finally:
        anycnn_numpy.set_num_threads(before)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
