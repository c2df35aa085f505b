"""The NumPy backend's fully connected layers (3.1.2, 3.2.2): BLAS products, split over the
pool's threads by rows, the weight gradient by slices of the batch summed in order.

Note [Outer products]
~~~~~~~~~~~~~~~~~~~~~
At batch 1 the weight gradient ``delta^T x`` is an outer product, a GEMM with an inner
dimension of 1, and OpenBLAS's SGEMM takes 67 us for LeNet-5's C5-sized one (120 x 400) where
NumPy's broadcast multiply takes 24 (one thread, CPU time; bench/results/numpy-notes.md,
"Outer products"). Each entry is one product either way (rounded once, times alpha = 1, plus
beta = 0), so both give the same bits: online training (batch 1) takes the multiply.
"""

from __future__ import annotations

import numpy as np

from anycnn import ops as _reference
from anycnn_numpy._im2col import gemm, gemm_sum, usable


def fully_connected(x, weight):
    if not usable(x, weight):
        return _reference.fully_connected(x, weight)
    return gemm(x, weight.T)


def fully_connected_weight_grad(x, delta):
    if not usable(x, delta):
        return _reference.fully_connected_weight_grad(x, delta)
    if x.shape[0] == 1:  # Note [Outer products]
        return np.multiply.outer(delta[0], x[0])
    return gemm_sum(delta.T, x)


def fully_connected_input_grad(delta, weight):
    if not usable(delta, weight):
        return _reference.fully_connected_input_grad(delta, weight)
    return gemm(delta, weight)
