"""One example's kernel gradient cut into two halves of tap groups (Note [Maps in lanes] in
anycnn_numpy._wgrad, from SPLIT_MACS on) gives the kernel gradient, the bias gradient and the
deltas of the formulas, not only the kernel gradient of the uncut pass (issue 22: the quarter
campaign of main 15fdaa2 found the halves forming the deltas, and their sums, again unnoticed).
SPLIT_MACS is lowered so that a small example takes the split."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _jit  # noqa: E402

if _jit.correlate_into is None:  # pragma: no cover - the [jit] extra is part of the test install
    pytest.skip("Numba is not installed here: no blocked kernels", allow_module_level=True)
from anycnn_numpy import _wgrad  # noqa: E402


def test_the_halves_of_one_example_give_the_formulas(monkeypatch, rng):
    monkeypatch.setattr(_wgrad, "SPLIT_MACS", 0)
    n, c, o, h, k, up = 1, 3, 20, 16, 5, 2
    oh = h - k + 1
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    y = rng.uniform(-0.9, 0.9, (n, o, oh, oh)).astype(np.float32)
    dy = rng.standard_normal((n, o, oh // up, oh // up)).astype(np.float32)
    sens = (_wgrad.LOGISTIC, np.float32(1.0), np.float32(0.0), False)
    delta = y.astype(np.float64) * (1 - y) * np.kron(dy, np.ones((1, 1, up, up)))
    want_grad = oracles.conv_kernel_grad(x.astype(np.float64), delta)
    scale = float(np.abs(want_grad).max())
    for need_delta in (True, False):
        grad, bias, got = _wgrad.backward(x, dy, y, sens, None, up, need_delta)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(bias, delta.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-4)
        if need_delta:
            np.testing.assert_allclose(got, delta, rtol=1e-5, atol=1e-6)
        else:
            assert got is None
