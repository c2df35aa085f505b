"""Note [Outer products] in anycnn_numpy._dense: at batch 1 the NumPy backend forms the fully
connected weight gradient, and the kernel gradient of a convolution whose maps are one pixel
(LeNet-5's C5), as a broadcast product instead of a GEMM with an inner dimension of 1: one
product per entry either way, so the bits must be the GEMM's."""

from __future__ import annotations

import numpy as np
import pytest
from anycnn_numpy import _dense, _im2col

from anycnn import ops as reference


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_one_weight_gradient_is_the_gemms_bits(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 120)).astype(dtype)
    delta = rng.standard_normal((1, 84)).astype(dtype)
    got = _dense.fully_connected_weight_grad(x, delta)
    assert got.dtype == dtype and got.shape == (84, 120)
    assert got.tobytes() == (delta.T @ x).tobytes()
    assert got.tobytes() == _im2col.gemm_sum(delta.T, x).tobytes()  # the path of batch > 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_pixel_kernel_gradient_at_batch_one_is_the_gemms_bits(dtype):
    """LeNet-5's C5 shape: 16 maps of 5 x 5 in, 120 maps of 1 x 1 out."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 16, 5, 5)).astype(dtype)
    delta = rng.standard_normal((1, 120, 1, 1)).astype(dtype)
    got = _im2col.conv_kernel_grad(x, delta)
    columns = np.ascontiguousarray(x[0, :, ::-1, ::-1]).reshape(400, 1)  # windows read backwards
    assert got.tobytes() == (delta[0].reshape(120, 1) @ columns.T).reshape(120, 16, 5, 5).tobytes()
    np.testing.assert_allclose(got, reference.conv_kernel_grad(x, delta), rtol=1e-6, atol=1e-6)
