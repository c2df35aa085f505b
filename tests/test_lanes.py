"""The float32 direct convolutions on chunks of 16 examples, one per vector lane (Note [Examples
on the lanes] in anycnn_numpy._direct): the 16 x 16 transposition they are built on, which
convolutions take them, their results against the reference ops (forward with f compiled in,
'full' with padding, the fused backward with an up-sampling remainder and a selection), the same
bits for an example whatever chunk it is in and on any thread count, and float64 left alone."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _conv, _jit, _plan, _threads  # noqa: E402

from anycnn import ops as reference  # noqa: E402
from anycnn.layers.activations import get_activation  # noqa: E402

pytestmark = pytest.mark.skipif(
    _jit.correlate_into is None, reason="Numba is not installed here: no direct kernels"
)


def _direct():
    from anycnn_numpy import _direct

    return _direct


def test_vtranspose16_transposes_a_block_between_any_strides(rng):
    """``dst[d0 + c ds + r] = src[s0 + r ss + c]`` for a 16 x 16 block, nothing else written."""
    import numba
    from anycnn_numpy._vectors import vtranspose16

    @numba.njit
    def transpose(src, s0, ss, dst, d0, ds):
        vtranspose16(src, s0, ss, dst, d0, ds)

    src = rng.standard_normal(40 * 40).astype(np.float32)
    dst = np.zeros(41 * 41, np.float32)
    transpose(src, 3, 40, dst, 5, 41)
    block = src[3 : 3 + 16 * 40].reshape(16, 40)[:, :16]
    written = np.lib.stride_tricks.as_strided(dst[5:], shape=(16, 16), strides=(41 * 4, 4))
    np.testing.assert_array_equal(written, block.T)
    assert np.count_nonzero(dst) == np.count_nonzero(block)


def test_which_convolutions_take_the_lanes():
    """Kernels up to 5 x 5 on maps whose 16 examples' input and output fit LANES_BYTES, float32,
    chunks of lanes_min() examples or more; float64 never (test_float64_stays_on_the_rows)."""
    direct = _direct()
    lanes = direct.on_lanes  # (C, H, W, pad_w, O, oh, ow, kh, kw)
    assert lanes(1, 28, 28, 0, 6, 24, 24, 5, 5) and lanes(6, 12, 12, 0, 12, 8, 8, 5, 5)  # DLT
    assert lanes(12, 8, 8, 4, 6, 12, 12, 5, 5)  # DLT's C3 'full' convolution
    assert lanes(1, 32, 32, 0, 6, 28, 28, 5, 5) and lanes(6, 14, 14, 0, 16, 10, 10, 5, 5)
    assert not lanes(3, 20, 20, 0, 4, 14, 14, 7, 7) and not lanes(3, 20, 20, 0, 4, 10, 18, 11, 3)
    assert not lanes(3, 64, 64, 0, 16, 60, 60, 5, 5)  # 4.5 MB on the lanes: the rows
    assert direct.LANES_BYTES == 1 << 20
    x = np.zeros((40, 2, 9, 9), np.float32)
    wts = np.zeros((3, 2, 3, 3), np.float32)
    out = np.empty((40, 3, 7, 7), np.float32)
    active = np.ones((3, 2), bool)
    bias = np.zeros(3, np.float32)
    args = (x, 0, 0, wts, bias, active, direct.IDENTITY, np.float32(1), np.float32(1), out)
    # 9 x 9 maps kept 7 x 7: the rows would throw away 2 columns of 9, so chunks of 9 or more
    assert direct.lanes_min(9, 0, 7) == 9 and direct.LANES_MIN == 12
    assert direct.lanes_min(28, 0, 24) == 12 and direct.lanes_min(8, 4, 12) == 12
    assert direct._lanes_into(*args, 0, 40) == 32  # 16 + 16, the last 8 left to the rows
    assert direct._lanes_into(*args, 0, 39) == 32
    assert direct._lanes_into(*args, 0, 25) == 25  # 16 + 9
    assert direct._lanes_into(*args, 5, 13) == 5  # 8: none
    wide = np.zeros((40, 2, 9, 14), np.float32)  # 14 columns for 12: the rows lose little
    out = np.empty((40, 3, 7, 12), np.float32)
    args = (wide, *args[1:-1], out)
    assert direct._lanes_into(*args, 0, 40) == 32 and direct._lanes_into(*args, 0, 28) == 28


@pytest.mark.parametrize("n", [16, 29, 37])
@pytest.mark.parametrize("case", ["c3", "padded", "selection"])
def test_lanes_forward_and_full_match_the_reference(case, n, rng):
    """conv_valid_activate (logistic compiled in, a bias) and conv_full on shapes that take the
    lanes, full chunks and partial ones (29 = 16 + 13 on the lanes, 37 = 32 + 5 on the rows),
    against the float64 reference ops."""
    c, o, h, w, k, pad = {
        "c3": (6, 12, 12, 12, 5, (0, 0)),
        "padded": (3, 5, 9, 11, 3, (1, 2)),
        "selection": (6, 16, 14, 14, 5, (0, 0)),
    }[case]
    sel = rng.random((o, c)) < 0.6 if case == "selection" else None
    act = get_activation("sigmoid")
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    kernel = (rng.standard_normal((o, c, k, k)) / 5).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    with _plan.forced("direct"):
        y = _conv.conv_valid_activate(x, kernel, bias, act, sel, pad)
        d = rng.standard_normal(y.shape).astype(np.float32)
        full = _conv.conv_full(d, kernel, sel, pad)
    x64, k64, b64 = (v.astype(np.float64) for v in (x, kernel, bias))
    expected = reference.conv_valid_activate(x64, k64, b64, act, sel, pad)
    np.testing.assert_allclose(y, expected, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(
        full, reference.conv_full(d.astype(np.float64), k64, sel, pad), rtol=2e-5, atol=2e-5
    )


@pytest.mark.parametrize("n", [16, 29])
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_lanes_backward_matches_the_reference(activation, n, rng):
    """The fused backward on the lanes (kernel and bias gradients, delta), with an up-sampling
    whose last row and column fall past dy (a subsampling remainder, padded with zeros) and a
    selection, against the float64 reference."""
    act = get_activation(activation)
    c, o, h = 6, 16, 15  # 11 x 11 outputs, dy 6 x 6 up-sampled by 2 and cut to 11
    sel = rng.random((o, c)) < 0.6
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    y = (rng.random((n, o, 11, 11)) * 0.9).astype(np.float32)
    dy = rng.standard_normal((n, o, 6, 6)).astype(np.float32)
    with _plan.forced("direct"):
        grad, bias, delta = _conv.conv_backward(x, dy, y, act, sel, 2, True)
    expected = reference.conv_backward(
        x.astype(np.float64), dy.astype(np.float64), y.astype(np.float64), act, sel, 2, True
    )
    for got, want in zip((grad, bias, delta), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_an_example_has_the_same_bits_in_any_chunk(rng):
    """Each lane sums its own example in one order: the forward output of examples 16-31 is the
    same, bit for bit, whether they are the second chunk of 32 or the only chunk of 16."""
    act = get_activation("sigmoid")
    x = rng.standard_normal((32, 6, 12, 12)).astype(np.float32)
    kernel = (rng.standard_normal((12, 6, 5, 5)) / 5).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    with _plan.forced("direct"):
        whole = _conv.conv_valid_activate(x, kernel, bias, act)
        part = _conv.conv_valid_activate(np.ascontiguousarray(x[16:]), kernel, bias, act)
    np.testing.assert_array_equal(whole[16:], part)


def test_lanes_give_the_same_bits_on_one_thread_and_on_several(monkeypatch, rng):
    """DLT's C3 at batch 256 (four slices of 64, four chunks each): forward, fused backward and
    'full' convolution give the same bits when the slices run one after another."""
    act = get_activation("sigmoid")
    x = rng.standard_normal((256, 6, 12, 12)).astype(np.float32)
    kernel = (rng.standard_normal((12, 6, 5, 5)) / 5).astype(np.float32)
    bias = rng.standard_normal(12).astype(np.float32)
    dy = rng.standard_normal((256, 12, 4, 4)).astype(np.float32)

    def run():
        with _plan.forced("direct"):
            y = _conv.conv_valid_activate(x, kernel, bias, act)
            grad, b, delta = _conv.conv_backward(x, dy, y, act, None, 2, True)
            return [y, grad, b, delta, _conv.conv_full(delta, kernel)]

    threaded = run()
    monkeypatch.setattr(_threads._pool, "threads", 1)
    for a, b in zip(threaded, run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unused_lanes_add_nothing_to_the_kernel_gradient(rng):
    """A partial chunk (13 of 16 lanes) after a chunk of huge numbers: the gradient of the 29
    examples equals the sum of the two batches' gradients taken apart (to rounding), so the
    first chunk's numbers left in the unused lanes were not summed."""
    act = get_activation("identity")
    x = rng.standard_normal((29, 2, 12, 12)).astype(np.float32)
    x[:16] *= 1e3
    y = rng.standard_normal((29, 4, 8, 8)).astype(np.float32)
    with _plan.forced("direct"):
        whole = _conv.conv_backward(x, y, y, act, None, 1, False)[0]
        first = _conv.conv_backward(
            np.ascontiguousarray(x[:16]), y[:16].copy(), y[:16].copy(), act, None, 1, False
        )[0]
        last = _conv.conv_backward(
            np.ascontiguousarray(x[16:]), y[16:].copy(), y[16:].copy(), act, None, 1, False
        )[0]
    np.testing.assert_allclose(whole, first + last, rtol=1e-5, atol=1e-5 * np.abs(whole).max())
    np.testing.assert_allclose(
        last,
        reference.conv_kernel_grad(x[16:].astype(np.float64), y[16:].astype(np.float64)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_float64_stays_on_the_rows(rng):
    """float64 never takes the lanes (its bits are the training runs' reference): its lanes
    entry point computes nothing."""
    direct = _direct()
    x = rng.standard_normal((32, 6, 12, 12))
    out = np.empty((32, 12, 8, 8))
    active = np.ones((12, 6), bool)
    wts = rng.standard_normal((12, 6, 5, 5))
    bias = np.zeros(12)

    import numba

    @numba.njit
    def lanes(x, wts, bias, active, out):
        return direct._lanes_of(x, 0, 0, wts, bias, active, 0, 1.0, 1.0, out, 0, 32)

    assert lanes(x, wts, bias, active, out) == 0
