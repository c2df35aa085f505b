"""Convolutions whose kernel covers the input maps (LeNet-5's C5), float32, as GEMMs on the
arrays in place (Note [Convolutions that cover the map] in anycnn_numpy._dense): forward with
the bias and every kind of f, the fused backward and the 'full' convolution, against the
float64 reference ops; the same bits on one and two threads; float64 left on its path."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _conv, _dense, _threads  # noqa: E402

from anycnn import ops as reference  # noqa: E402
from anycnn.layers.activations import get_activation  # noqa: E402

ACTIVATIONS = ["identity", "sigmoid", "tanh", "lecun_tanh", "relu"]


def _case(rng, n, c=16, o=120, k=5, selection=False):
    x = rng.standard_normal((n, c, k, k)).astype(np.float32)
    kernel = (rng.standard_normal((o, c, k, k)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    sel = rng.random((o, c)) < 0.5 if selection else None
    return x, kernel, bias, sel


def _f64(*arrays):
    return [None if a is None else np.asarray(a, np.float64) for a in arrays]


@pytest.mark.parametrize("selection", [False, True])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("n", [1, 5, 119, 120, 300])
def test_covering_convolution_matches_the_reference(n, activation, selection):
    rng = np.random.default_rng(n + len(activation) + selection)
    x, kernel, bias, sel = _case(rng, n, selection=selection)
    assert _dense.covers(x, kernel)
    f = get_activation(activation)
    x64, k64, b64 = _f64(x, kernel, bias)
    want = reference.conv_valid_activate(x64, k64, b64, f, sel)
    got = _conv.conv_valid_activate(x, kernel, bias, f, sel)
    assert got.dtype == np.float32 and got.shape == (n, 120, 1, 1)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
    plain = _conv.conv_valid(x, kernel, sel)
    np.testing.assert_allclose(plain, reference.conv_valid(x64, k64, sel), rtol=2e-5, atol=2e-5)

    dy = rng.standard_normal(got.shape).astype(np.float32)
    y64 = np.asarray(got, np.float64)
    want_k, want_b, want_d = reference.conv_backward(x64, _f64(dy)[0], y64, f, sel)
    grad, bias_grad, delta = _conv.conv_backward(x, dy, got, f, sel)
    assert grad.dtype == bias_grad.dtype == delta.dtype == np.float32
    assert grad.shape == kernel.shape and bias_grad.shape == (120,) and delta.shape == got.shape
    np.testing.assert_allclose(delta, want_d, rtol=1e-5, atol=1e-6)
    scale = np.abs(want_k).max() + 1e-3
    np.testing.assert_allclose(grad, want_k, rtol=1e-4, atol=1e-5 * scale * max(1, n / 16))
    np.testing.assert_allclose(bias_grad, want_b, rtol=1e-4, atol=1e-4)
    if sel is not None:
        assert not grad[~sel].any()
    assert _conv.conv_backward(x, dy, got, f, sel, need_delta=False)[2] is None

    full = _conv.conv_full(delta, kernel, sel)
    np.testing.assert_allclose(
        full, reference.conv_full(_f64(delta)[0], k64, sel), rtol=1e-4, atol=1e-5
    )


def test_covering_convolution_bits_do_not_depend_on_threads():
    """One product on the calling thread, BLAS held to one thread, whatever the pool has."""
    rng = np.random.default_rng(7)
    x, kernel, bias, sel = _case(rng, 512, selection=True)
    f = get_activation("lecun_tanh")
    dy = rng.standard_normal((512, 120, 1, 1)).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        before = _threads.set_num_threads(threads)
        try:
            y = _conv.conv_valid_activate(x, kernel, bias, f, sel)
            grad, bias_grad, delta = _conv.conv_backward(x, dy, y, f, sel)
            results.append([y, grad, bias_grad, delta, _conv.conv_full(delta, kernel, sel)])
        finally:
            _threads.set_num_threads(before)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a.tobytes() == b.tobytes()


def test_only_float32_maps_the_kernel_covers_take_the_gemms():
    rng = np.random.default_rng(3)
    x, kernel, _, _ = _case(rng, 4)
    assert _dense.covers(x, kernel)
    assert not _dense.covers(x.astype(np.float64), kernel.astype(np.float64))  # its bits stay
    assert not _dense.covers(x, kernel, (1, 1))
    assert not _dense.covers(x[:, :, :4, :4].copy(), kernel[:, :, :3, :3].copy())
    assert not _dense.covers(np.asfortranarray(x), kernel)
    y = np.zeros((4, 120, 1, 1), np.float32)
    assert _dense.covered_backward(x, y, y, 1)
    assert not _dense.covered_backward(x, y, y, 2)
    assert not _dense.covered_backward(x, y, y, 1, (0, 1))
    assert not _dense.covered_backward(x, y[:, :, :0], y[:, :, :0], 1)
    assert _dense.covered_full(y, kernel)
    assert not _dense.covered_full(y, kernel, (1, 0))
    assert not _dense.covered_full(y.astype(np.float64), kernel.astype(np.float64))
