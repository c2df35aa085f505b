"""What the NumPy plugin's resampling ops promise beyond their values (issue 22: survivors of
the mutation campaigns in backends/anycnn_numpy/_resample.py, tests/MUTATION.md): a trainable
subsampling layer's fused gradients taken as one compiled job over the batch's slices (Note
[Slices taken in compiled code] in ``_direct``) give the bits and dtypes of the pool's slices,
with and without the input gradient."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _jit, _resample, _threads  # noqa: E402

from anycnn import ops as reference  # noqa: E402
from anycnn.layers.activations import Sigmoid, Tanh  # noqa: E402


@pytest.mark.skipif(_jit.subsample_backward_sliced is None, reason="no compiled jobs here")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subsample_gradients_as_a_compiled_job_are_the_pools_bits(monkeypatch, dtype):
    monkeypatch.setattr(_threads, "_SLICE_BYTES", 2000)  # slices of a few examples
    rng = np.random.default_rng(0)
    y = np.tanh(rng.standard_normal((9, 3, 6, 5))).astype(dtype)
    item = 3 * y[0].size * y.itemsize
    assert len(_threads.slices(9, item)) > 1  # several slices, one job
    dy = rng.standard_normal(y.shape).astype(dtype)
    d = rng.standard_normal(y.shape).astype(dtype)
    beta = rng.standard_normal(3).astype(dtype)
    for act in (Tanh(1.7159, 2.0 / 3.0), Sigmoid()):
        for need in (True, False):
            job = _resample.subsample_backward(dy, y, d, beta, act, need)
            with monkeypatch.context() as patch:
                patch.setattr(_jit, "subsample_backward_sliced", None)
                pool = _resample.subsample_backward(dy, y, d, beta, act, need)
            want = reference.subsample_backward(dy, y, d, beta, act, need)
            for a, b, w in zip(job, pool, want, strict=True):
                if w is None:
                    assert a is None and b is None
                    continue
                assert a.dtype == b.dtype == w.dtype and a.shape == w.shape
                assert a.tobytes() == b.tobytes()
                tol = 1e-3 if dtype == np.float32 else 1e-9
                np.testing.assert_allclose(a, w, rtol=tol, atol=tol * max(1, np.abs(w).max()))
