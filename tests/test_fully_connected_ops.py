"""The fully connected hot ops (eqs. 2-5 of the notes) on every backend against plain NumPy,
their adjoint identities, and the errors of their checked entry points."""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import functional as F
from anycnn.testing import assert_close


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 3, 2), (5, 7, 4), (300, 120, 84), (1000, 192, 10)])
def test_fully_connected_ops_match_numpy(backend, dtype, shape):
    n, d, m = shape
    rng = np.random.default_rng(n + d + m)
    x = rng.standard_normal((n, d))
    w = rng.standard_normal((m, d))
    delta = rng.standard_normal((n, m))
    bx, bw, bd = (backend.asarray(a, dtype=dtype) for a in (x, w, delta))
    scale = {"float32": 10 * np.sqrt(max(d, n)), "float64": 1.0}[dtype]
    for name, args, expected in [
        ("fully_connected", (bx, bw), x @ w.T),
        ("fully_connected_weight_grad", (bx, bd), delta.T @ x),
        ("fully_connected_input_grad", (bd, bw), delta @ w),
    ]:
        assert_close(
            getattr(F, name)(*args),
            expected.astype(dtype),
            backend=backend,
            atol=2e-5 * scale if dtype == "float32" else None,
            err_msg=f"{name}: ",
        )


def test_fully_connected_adjoints(backend, xp, rng):
    x, w, d = rng.standard_normal((6, 5)), rng.standard_normal((4, 5)), rng.standard_normal((6, 4))
    bx, bw, bd = (backend.asarray(a, dtype="float64") for a in (x, w, d))
    forward = float(xp.sum(F.fully_connected(bx, bw) * bd))
    assert forward == pytest.approx(float(xp.sum(bw * F.fully_connected_weight_grad(bx, bd))))
    assert forward == pytest.approx(float(xp.sum(bx * F.fully_connected_input_grad(bd, bw))))


def test_fully_connected_errors_name_the_op(backend, rng):
    x = backend.asarray(rng.standard_normal((2, 5)), dtype="float32")
    w = backend.asarray(rng.standard_normal((3, 4)), dtype="float32")
    with pytest.raises(ValueError, match="fully_connected: x has 5 features but the weight"):
        F.fully_connected(x, w)
    with pytest.raises(ValueError, match="fully_connected_weight_grad: x and delta have"):
        F.fully_connected_weight_grad(
            x, backend.asarray(rng.standard_normal((3, 3)), dtype="float32")
        )
    with pytest.raises(ValueError, match="fully_connected_input_grad: delta has 4 units"):
        F.fully_connected_input_grad(
            backend.asarray(rng.standard_normal((2, 4)), dtype="float32"), w
        )
