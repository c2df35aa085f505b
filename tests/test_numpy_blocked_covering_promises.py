"""What the NumPy plugin's blocked 2-D path (``_blocked``), its convolutions that cover the map
(``_dense``) and the direct 'full' convolution's padding promise where the mutation campaign of
2026-12-08 (main 7ec0812, 10% sample) found no test (issue 22, tests/MUTATION.md): the compiled
f of a covering convolution (Note [Convolutions that cover the map]: "a logistic or tanh f are
applied by the direct kernels' compiled activation"), the documented defaults of the fused
backward passes, and conv_full's direct kernels taking a padding only below the kernel's size."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _blocked, _conv, _dense, _jit, _plan, _volume  # noqa: E402
from anycnn_numpy._activation import compiled_activation  # noqa: E402

from anycnn import ops as reference  # noqa: E402
from anycnn.layers.activations import get_activation  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

COMPILED = _jit.correlate_into is not None and _jit.activate_run is not None
needs_numba = pytest.mark.skipif(not COMPILED, reason="Numba is not installed here")


@needs_numba
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_a_covering_convolution_applies_the_direct_kernels_compiled_f(name):
    """``f(u + b)`` of a covering convolution has the bits of the direct kernels' compiled f
    applied to its ``u + b`` (not NumPy's f, a few ulp away: Note [Compiled activations])."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((9, 4, 5, 5)) * 2).astype(np.float32)
    k = rng.standard_normal((12, 4, 5, 5)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    activation = get_activation(name)
    assert _dense.covers(x, k)
    u = _dense.conv_covering(x, k, None, b)
    expected = np.ascontiguousarray(u.reshape(9, 12))
    _jit.activate_run(expected.reshape(-1), *compiled_activation(activation, np.dtype("float32")))
    got = _dense.conv_covering(x, k, None, b, activation)
    np.testing.assert_array_equal(got.reshape(9, 12), expected)
    # the compiled f is not NumPy's bit for bit on these values (the test can tell them apart)
    numpy_f = np.asarray(reference.activate(u.reshape(9, 12), activation))
    assert not np.array_equal(numpy_f, expected)


@needs_numba
def test_the_covering_backward_returns_delta_by_default():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    y = np.tanh(rng.standard_normal((3, 5, 1, 1))).astype(np.float32)
    dy = rng.standard_normal((3, 5, 1, 1)).astype(np.float32)
    tanh = get_activation("tanh")
    grad, bias, delta = _dense.conv_covering_backward(x, dy, y, tanh)
    expected = _dense.conv_covering_backward(x, dy, y, tanh, None, True)
    assert delta is not None
    for a, e in zip((grad, bias, delta), expected, strict=True):
        np.testing.assert_array_equal(a, e)
    np.testing.assert_array_equal(delta, np.asarray(reference.sensitivity(dy, y, tanh)))


@needs_numba
def test_the_blocked_backward_defaults_to_no_upsampling_and_returns_delta():
    """``_blocked.backward(x, dy, y, sens)``: selection None, up 1, delta returned."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    y = np.tanh(rng.standard_normal((2, 4, 7, 7))).astype(np.float32)
    dy = rng.standard_normal((2, 4, 7, 7)).astype(np.float32)
    sens = (_volume.GIVEN, np.float32(0), np.float32(0), False)
    grad, bias, delta = _blocked.backward(x, dy, y, sens)
    assert delta is not None
    np.testing.assert_array_equal(delta, dy)  # f' = 1: delta is dy as given, not up-sampled
    expected = oracles.conv_kernel_grad(x, dy)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(bias, dy.sum(axis=(0, 2, 3), dtype=np.float64), rtol=1e-5)


@needs_numba
@pytest.mark.parametrize("padding", [(2, 0), (0, 2), (2, 2), (1, 1)])
def test_conv_full_on_the_direct_path_with_padding_up_to_the_kernels_size(padding):
    """The direct kernels pad delta by ``k - 1 - p``, so they take a padding below the kernel's
    size; a padding of the kernel's size (allowed while 2p is below the 'full' map) is the
    'full' convolution cropped. Both give the reference's values."""
    rng = np.random.default_rng(4)
    delta = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    kernel = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    with _plan.forced("direct"):
        got = _conv.conv_full(delta, kernel, None, padding)
    expected = np.asarray(reference.conv_full(delta, kernel, None, padding))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@needs_numba
@pytest.mark.parametrize("need_delta", [True, False])
def test_the_blocked_halves_of_one_example_give_the_reference(monkeypatch, need_delta):
    """Note [One example on two cores] on the blocked kernels, forced on a small shape (the
    threshold set to 1): one example's 8-map blocks cut in two ranges, forward (bias, a
    selection) and fused backward (bias sums, delta when asked), each the reference's."""
    from anycnn_numpy import _threads

    monkeypatch.setattr(_threads, "DIRECT_PARALLEL_MACS", 1)
    rng = np.random.default_rng(6)
    o = 20  # three blocks of 8 maps, the last with 4 of padding: halves (0, 1), (1, 3)
    x = rng.standard_normal((1, 3, 9, 8)).astype(np.float32)
    k = rng.standard_normal((o, 3, 3, 2)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    sel = rng.random((o, 3)) < 0.7
    assert _blocked._block_halves(1, 3, 1) == [(0, 1), (1, 3)]
    y = _blocked.conv_valid(x, k, b, None, None, sel)
    expected = oracles.conv_valid(x, k * sel[:, :, None, None]) + b[:, None, None]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    sens = (_volume.GIVEN, np.float32(0), np.float32(0), False)
    grad, bias, delta = _blocked.backward(x, dy, y, sens, sel, 1, need_delta)
    expected_grad = oracles.conv_kernel_grad(x, dy) * sel[:, :, None, None]
    scale = float(np.abs(expected_grad).max())
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-5 * scale)
    assert bias.shape == (o,)
    np.testing.assert_allclose(bias, dy.sum(axis=(0, 2, 3), dtype=np.float64), rtol=1e-5)
    if need_delta:
        np.testing.assert_array_equal(delta, dy)
    else:
        assert delta is None
