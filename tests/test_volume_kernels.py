"""The NumPy backend's direct volume kernels (``anycnn_numpy._volume``, Note [Direct volumes]):
float32 1-D and 3-D convolutions forced onto them and onto the 2-D mappings
(``anycnn_numpy._nd.forced``), each against the reference ops in float64; the path rules of
Note [Choosing an N-D path]; the same bits on one and two threads; and a whole 1-D and 3-D
network's gradients on both paths."""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import ops as reference

pytest.importorskip("numba")
anycnn_numpy = pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _nd  # noqa: E402

from anycnn.layers.activations import get_activation  # noqa: E402


def _table():
    from anycnn.backend import registry

    return registry.lookup("numpy").ops


#: (batch, C_in, C_out, sizes, kernel, padding or None, up) -- 1-D and 3-D, odd sizes so that
#: up-sampling leaves remainders, more than 8 output maps (two blocks of the kernels)
CASES = [
    (2, 3, 5, (19,), (4,), None, 2),
    (1, 2, 9, (17,), (6,), (2,), 3),
    (3, 1, 8, (7, 6, 9), (3, 2, 3), None, 2),
    (2, 2, 11, (6, 7, 5), (2, 3, 3), (1, 0, 2), 2),
    (1, 3, 4, (5, 5, 6), (1, 1, 1), None, 1),
]


def _case(rng, case):
    n, c, o, sizes, ks, pads, up = case
    x = rng.standard_normal((n, c, *sizes))
    k = rng.standard_normal((o, c, *ks)) * 0.3
    b = rng.standard_normal(o) * 0.3
    sel = rng.random((o, c)) < 0.7
    return x, k, b, sel, pads or (0,) * len(sizes), up


@pytest.mark.parametrize("volume", [True, False], ids=["volume", "mapped"])
@pytest.mark.parametrize("case", CASES, ids=[f"{len(c[3])}d-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("activation", ["tanh", "lecun_tanh", "sigmoid", "relu", "identity"])
def test_forward_and_backward_match_the_reference(rng, case, volume, activation):
    """float32 conv_valid, conv_valid_activate, conv_kernel_grad and conv_backward (every
    remainder of the up-sampling, with and without delta) on either path give the float64
    reference's values to float32 rounding."""
    table = _table()
    act = get_activation(activation)
    x, k, b, sel, pads, up = _case(rng, case)
    f32 = [a.astype(np.float32) for a in (x, k, b)]
    with _nd.forced(volume):
        u = table.conv_valid(f32[0], f32[1], sel, pads)
        y = table.conv_valid_activate(f32[0], f32[1], f32[2], act, sel, pads)
    np.testing.assert_allclose(u, reference.conv_valid(x, k, sel, pads), rtol=1e-4, atol=1e-4)
    expected_y = reference.conv_valid_activate(x, k, b, act, sel, pads)
    np.testing.assert_allclose(y, expected_y, rtol=1e-4, atol=1e-4)
    assert y.dtype == np.float32
    for small in {s // up for s in y.shape[2:]} | {-(-s // up) for s in y.shape[2:]}:
        shape = tuple(max(1, min(small, -(-s // up))) for s in y.shape[2:])
        if any(not (s // up <= m <= -(-s // up)) for m, s in zip(shape, y.shape[2:], strict=True)):
            continue
        dy = rng.standard_normal((y.shape[0], y.shape[1], *shape))
        y64 = expected_y.astype(np.float32).astype(np.float64)
        expected = reference.conv_backward(x, dy, y64, act, sel, up, True, pads)
        for need_delta in (True, False):
            with _nd.forced(volume):
                got = table.conv_backward(
                    f32[0], dy.astype(np.float32), y64.astype(np.float32), act, sel, up,
                    need_delta, pads,
                )  # fmt: skip
            scale = max(1.0, float(np.abs(expected[0]).max()))
            np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-4 * scale)
            np.testing.assert_allclose(got[1], expected[1], rtol=1e-4, atol=1e-3)
            if need_delta:
                np.testing.assert_allclose(got[2], expected[2], rtol=1e-4, atol=1e-5)
            else:
                assert got[2] is None
    delta = rng.standard_normal(y.shape)
    with _nd.forced(volume):
        grad = table.conv_kernel_grad(f32[0], delta.astype(np.float32), sel, pads)
    expected = reference.conv_kernel_grad(x, delta, sel, pads)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_the_rules_choose_by_shape():
    """Note [Choosing an N-D path]: forward volumes always, signals from C k >= 32; backward
    from the measured sizes; float64 and 2-D never."""
    f32 = np.float32

    def arr(*shape, dtype=f32):
        return np.zeros(shape, dtype)

    assert _nd.volume_forward(arr(1, 1, 4, 4, 4), arr(8, 1, 3, 3, 3))
    assert not _nd.volume_forward(arr(1, 1, 4, 4, 4, dtype=np.float64), arr(8, 1, 3, 3, 3))
    assert not _nd.volume_forward(arr(1, 1, 4, 4), arr(8, 1, 3, 3))
    assert _nd.volume_forward(arr(1, 16, 100), arr(32, 16, 2))  # C k = 32
    assert not _nd.volume_forward(arr(1, 1, 100), arr(8, 1, 31))  # C k = 31
    assert _nd.volume_backward(arr(1, 8, 100), arr(1, 16, 76))  # C k = 200
    assert not _nd.volume_backward(arr(1, 8, 100), arr(1, 16, 77))  # C k = 192
    # 16^3 volumes, 3^3 kernels, 1 -> 8: 8 * 27 * 14 * 16 < 100k; 64^3: above
    assert not _nd.volume_backward(arr(1, 1, 16, 16, 16), arr(1, 8, 14, 14, 14))
    assert _nd.volume_backward(arr(1, 1, 64, 64, 64), arr(1, 8, 62, 62, 62))
    with _nd.forced(False):
        assert not _nd.volume_forward(arr(1, 1, 4, 4, 4), arr(8, 1, 3, 3, 3))
    with _nd.forced(True):
        assert _nd.volume_backward(arr(1, 1, 16, 16, 16), arr(1, 8, 14, 14, 14))
        assert not _nd.volume_backward(arr(1, 1, 4, 4), arr(1, 8, 2, 2))


def test_same_bits_on_one_and_two_threads(rng):
    """The pool's ranges of (example, depth) pairs depend on the shape only, and the kernel
    gradient's partial sums are added in range order: one thread and two give the same bits."""
    table = _table()
    act = get_activation("tanh")
    x = rng.standard_normal((3, 4, 20, 18, 22)).astype(np.float32)
    k = (rng.standard_normal((10, 4, 3, 3, 3)) * 0.2).astype(np.float32)
    b = np.zeros(10, np.float32)
    before = anycnn_numpy.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            anycnn_numpy.set_num_threads(threads)
            with _nd.forced(True):
                y = table.conv_valid_activate(x, k, b, act)
                dy = np.ones((3, 10, 9, 8, 10), np.float32)
                results.append((y, *table.conv_backward(x, dy, y, act, None, 2, True)))
    finally:
        anycnn_numpy.set_num_threads(before)
    for one, two in zip(*results, strict=True):
        np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("input_shape", [(3, 40), (2, 9, 8, 10)], ids=["1d", "3d"])
def test_networks_train_alike_on_both_paths(input_shape):
    """A float32 1-D or 3-D network's loss and gradients agree on the volume kernels and on the
    2-D mappings (to float32 rounding)."""
    from anycnn import Convolution, Flatten, FullyConnected, Network, Subsampling

    def build():
        return Network(
            [
                Convolution(12, 3, padding="same", activation="tanh"),
                Subsampling(2, "sum", activation="lecun_tanh", remainder="pad"),
                Convolution(9, 3, activation="sigmoid"),
                Flatten(),
                FullyConnected(3, activation="identity"),
            ],
            input_shape,
            loss="cross_entropy",
            dtype="float32",
            backend="numpy",
            seed=3,
        )

    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, *input_shape)).astype(np.float32)
    t = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    found = []
    for volume in (True, False):
        net = build()
        with _nd.forced(volume):
            loss = float(net.compute_gradients(x, t, check=True))
        found.append((loss, net.gradients()))
    (loss_v, grads_v), (loss_m, grads_m) = found
    assert loss_v == pytest.approx(loss_m, rel=1e-5)
    for name, g in grads_m.items():
        np.testing.assert_allclose(grads_v[name], g, rtol=1e-3, atol=1e-5, err_msg=name)
