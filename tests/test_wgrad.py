"""The kernel gradient with the output maps in the vector lanes (Note [Maps in lanes] in
anycnn_numpy._wgrad, the blocked path's ``"grad"`` op): the fused backward pass against float64
formulas on the shapes its blocking rounds up (maps past 16 or 32 lanes, kernel columns past a
multiple of 4, (input map, kernel row, 4 columns) triples past a pass), every f' it compiles,
up-sampling with and without a remainder, and the bits of one large example cut in two halves
of tap groups against the uncut pass."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _jit  # noqa: E402

if _jit.correlate_into is None:  # pragma: no cover - the [jit] extra is part of the test install
    pytest.skip("Numba is not installed here: no blocked kernels", allow_module_level=True)
from anycnn_numpy import _threads, _wgrad  # noqa: E402

#: (name, sens, f' from y in float64)
SLOPES = {
    "tanh": ((_wgrad.TANH, 1.7159, 0.6666 / 1.7159, True), lambda y: (1.7159 - y) * (y + 1.7159)
             * (0.6666 / 1.7159)),
    "logistic": ((_wgrad.LOGISTIC, 1.0, 0.0, False), lambda y: y * (1 - y)),
    "logistic-gain": ((_wgrad.LOGISTIC, 2.5, 0.0, True), lambda y: 2.5 * y * (1 - y)),
    "given": ((_wgrad.GIVEN, 0.0, 0.0, False), lambda y: np.ones_like(y)),
}  # fmt: skip


def _sens(name):
    kind, p0, p1, scaled = SLOPES[name][0]
    return (kind, np.float32(p0), np.float32(p1), scaled)


def _expected(x, dy, y, name, up, selection):
    """delta = f'(y) o up(dy) (zeros where a remainder has no delta), eq. (7), the bias sums."""
    n, o, oh, ow = y.shape
    up_dy = np.zeros((n, o, oh, ow))
    big = np.kron(dy.astype(np.float64), np.ones((1, 1, up, up)))
    rows, cols = min(oh, big.shape[2]), min(ow, big.shape[3])
    up_dy[:, :, :rows, :cols] = big[:, :, :rows, :cols]
    delta = SLOPES[name][1](y.astype(np.float64)) * up_dy
    grad = oracles.conv_kernel_grad(x.astype(np.float64), delta)
    if selection is not None:
        grad = grad * selection[:, :, None, None]
    return grad, delta.sum(axis=(0, 2, 3)), delta


#: batch, input maps, output maps, (H, W), (kh, kw), up, dy's (dh, dw) (None: floor(size / up))
CASES = [
    (3, 3, 16, (23, 23), (7, 7), 2, None),  # 16 maps: one vector; 7 columns: two groups of 4
    (2, 1, 6, (18, 18), (5, 3), 2, (7, 7)),  # 6 of 16 lanes; 16 columns, 14 with deltas
    (2, 2, 20, (19, 19), (3, 5), 3, None),  # 20 of 32 lanes; up 3, the "drop" remainder
    (1, 3, 33, (21, 21), (11, 11), 1, None),  # two blocks of 32 lanes, the second with 1 map
    (4, 5, 40, (12, 12), (2, 9), 2, None),  # 5 x 2 x 3 = 30 triples: 10 passes of 3
    (2, 2, 16, (1, 40), (1, 13), 1, None),  # a signal as a one-row map
]


@pytest.mark.parametrize("name", list(SLOPES))
@pytest.mark.parametrize("case", range(len(CASES)))
def test_maps_in_lanes_against_float64(case, name, rng):
    """Kernel gradient, bias gradient and delta (when asked for) to float32 rounding, with and
    without an input-map selection."""
    n, c, o, (h, w), (kh, kw), up, small = CASES[case]
    oh, ow = h - kh + 1, w - kw + 1
    dh, dw = small or (oh // up, ow // up)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y = rng.uniform(-0.9, 0.9, (n, o, oh, ow)).astype(np.float32)
    dy = rng.standard_normal((n, o, dh, dw)).astype(np.float32)
    for selection in (None, rng.random((o, c)) < 0.6):
        grad, bias, delta = _wgrad.backward(x, dy, y, _sens(name), selection, up, True)
        none = _wgrad.backward(x, dy, y, _sens(name), selection, up, False)
        want_grad, want_bias, want_delta = _expected(x, dy, y, name, up, selection)
        assert grad.dtype == bias.dtype == delta.dtype == np.float32
        assert grad.shape == (o, c, kh, kw) and delta.shape == y.shape and none[2] is None
        scale = float(np.abs(want_grad).max())
        np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-5 * scale)
        np.testing.assert_allclose(bias, want_bias, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(delta, want_delta, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(none[0], grad)
        np.testing.assert_array_equal(none[1], bias)


def test_one_large_example_in_halves_of_tap_groups_gives_the_uncut_bits(monkeypatch, rng):
    """Note [Maps in lanes]: from SPLIT_MACS on, one example's tap groups run as two halves on
    the pool (disjoint sums); the result is bit for bit the pass on one thread."""
    x = rng.standard_normal((1, 3, 90, 90)).astype(np.float32)
    y = rng.uniform(-0.9, 0.9, (1, 64, 80, 80)).astype(np.float32)
    dy = rng.standard_normal((1, 64, 40, 40)).astype(np.float32)
    assert 64 * (3 * 11 * 3) * 4 * 80 * 80 >= _wgrad.SPLIT_MACS  # the split is taken
    split = _wgrad.backward(x, dy, y, _sens("tanh"), None, 2, True)
    monkeypatch.setattr(_threads._pool, "threads", 1)
    for a, b in zip(split, _wgrad.backward(x, dy, y, _sens("tanh"), None, 2, True), strict=True):
        np.testing.assert_array_equal(a, b)
    want_grad = _expected(x, dy, y, "tanh", 2, None)[0]
    scale = float(np.abs(want_grad).max())
    np.testing.assert_allclose(split[0], want_grad, rtol=1e-4, atol=1e-5 * scale)


def test_the_transpose_shuffles_transpose():
    """The four stages of two-row shuffles (``_transpose_masks``) applied to a 16 x 16 matrix
    give its transpose (the compiled ``_transpose16`` is built from these masks)."""
    m = np.arange(256).reshape(16, 16)
    rows = [m[i] for i in range(16)]
    step = 8
    while step >= 1:
        low, high = _wgrad._transpose_masks(step)
        new = list(rows)
        for r in range(16):
            if not r & step:
                both = np.concatenate([rows[r], rows[r + step]])
                new[r], new[r + step] = both[low], both[high]
        rows, step = new, step // 2
    np.testing.assert_array_equal(np.array(rows), m.T)
