"""The NumPy backend's fully connected layers (3.1.2, 3.2.2): BLAS products, split over the
pool's threads by rows, the weight gradient by slices of the batch summed in order."""

from __future__ import annotations

from anycnn import ops as _reference
from anycnn_numpy._im2col import gemm, gemm_sum, usable


def fully_connected(x, weight):
    if not usable(x, weight):
        return _reference.fully_connected(x, weight)
    return gemm(x, weight.T)


def fully_connected_weight_grad(x, delta):
    if not usable(x, delta):
        return _reference.fully_connected_weight_grad(x, delta)
    return gemm_sum(delta.T, x)


def fully_connected_input_grad(delta, weight):
    if not usable(delta, weight):
        return _reference.fully_connected_input_grad(delta, weight)
    return gemm(delta, weight)
