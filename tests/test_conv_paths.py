"""The NumPy backend's three convolution paths (direct, im2col + BLAS, FFT) and the cost model
that chooses among them (Note [Choosing a path] in anycnn_numpy._plan, Note [Convolutions by the
FFT] in anycnn_numpy._fft): every path against SciPy, the FFT path's gradients by finite
differences, its bits independent of the thread count, and the model's choices deterministic and
keeping the zoo models on the paths their bits come from."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _conv, _fft, _fft_budget, _jit, _plan  # noqa: E402

from anycnn.layers.activations import Identity  # noqa: E402

#: (C_in, H, W), (C_out, C_in, kh, kw), padding
SHAPES = {
    "small": ((2, 9, 11), (3, 2, 3, 3), (0, 0)),
    "large-kernel": ((3, 20, 17), (4, 3, 11, 7), (0, 0)),
    "padded": ((2, 12, 12), (3, 2, 5, 5), (2, 1)),
    "one-row": ((3, 1, 64), (5, 3, 1, 9), (0, 0)),
    "one-pixel": ((4, 5, 5), (6, 4, 5, 5), (0, 0)),
}
PATHS = ["direct", "im2col", "fft", "blocked"]


def _padded(x, padding):
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _skip_unavailable(path):
    if path in ("direct", "blocked") and _jit.correlate_into is None:
        pytest.skip("Numba is not installed here: no direct kernels")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("path", PATHS)
def test_every_path_matches_scipy(path, shape, dtype, rng):
    """Forward, 'full' and kernel-gradient convolutions, plain and fused, with and without an
    input-map selection and padding, on each path forced in turn, against SciPy."""
    _skip_unavailable(path)
    (c, h, w), kshape, padding = SHAPES[shape]
    ph, pw = padding
    n = 3
    oh, ow = h + 2 * ph - kshape[2] + 1, w + 2 * pw - kshape[3] + 1
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    k = rng.standard_normal(kshape).astype(dtype)
    b = rng.standard_normal(kshape[0]).astype(dtype)
    d = rng.standard_normal((n, kshape[0], oh, ow)).astype(dtype)
    xp = _padded(x, padding)
    rtol = (1e-4 if path == "fft" else 2e-5) if dtype == "float32" else 1e-11
    for sel in (None, rng.random(kshape[:2]) < 0.6):
        with _plan.forced(path):
            full = _conv.conv_full(d, k, sel, padding)
            cases = {
                "valid": (_conv.conv_valid(x, k, sel, padding), oracles.conv_valid(xp, k, sel)),
                "valid+bias": (
                    _conv.conv_valid_activate(x, k, b, Identity(), sel, padding),
                    oracles.conv_valid(xp, k, sel) + b[:, None, None],
                ),
                "full": (
                    full,
                    oracles.conv_full(d, k, sel)[:, :, ph : ph + h, pw : pw + w],
                ),
                "grad": (
                    _conv.conv_kernel_grad(x, d, sel, padding),
                    oracles.conv_kernel_grad(xp, d, sel),
                ),
            }
            grad, bias, delta = _conv.conv_backward(x, d, d, Identity(), sel, 1, True, padding)
        cases["fused grad"] = (grad, cases["grad"][1])
        cases["fused bias"] = (bias, d.sum(axis=(0, 2, 3)))
        for name, (got, expected) in cases.items():
            assert got.dtype == dtype and got.shape == expected.shape, name
            atol = rtol * float(np.abs(expected).max())
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=name)
        if sel is not None:
            assert np.all(cases["grad"][0][~sel] == 0)


@pytest.mark.parametrize("maps", [6, 7])
def test_one_large_example_runs_its_maps_on_two_cores(monkeypatch, maps, rng):
    """Note [One example on two cores]: at batch 1 a large direct convolution is cut into two
    ranges of maps (odd counts too); the results match SciPy and are the same bits on one
    thread as on two."""
    from anycnn_numpy import _threads

    if _jit.correlate_into is None:
        pytest.skip("Numba is not installed here: no direct kernels")
    x = rng.standard_normal((1, 3, 60, 60)).astype("float32")
    k = rng.standard_normal((maps, 3, 7, 7)).astype("float32")
    d = rng.standard_normal((1, maps, 54, 54)).astype("float32")
    assert _conv._map_halves(1, maps, maps * 3 * 49 * 54 * 54) is not None

    def run():
        with _plan.forced("direct"):
            fused = _conv.conv_backward(x, d, d, Identity(), None, 1, True)
            return [
                _conv.conv_valid(x, k),
                _conv.conv_full(d, k),
                _conv.conv_kernel_grad(x, d),
                *fused,
            ]

    got = run()
    expected = [oracles.conv_valid(x, k), oracles.conv_full(d, k), oracles.conv_kernel_grad(x, d)]
    expected += [expected[2], d.sum(axis=(0, 2, 3)), d]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(np.abs(b).max()))
    monkeypatch.setattr(_threads._pool, "threads", 1)
    for a, b in zip(got, run(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "numpy"])
def test_fft_products_with_and_without_numba(monkeypatch, compiled, rng):
    """The products of spectra: the compiled loops and the NumPy broadcasts agree."""
    if compiled and _jit.spectral_mac is None:
        pytest.skip("Numba is not installed here")
    if not compiled:
        monkeypatch.setattr(_jit, "spectral_mac", None)
        monkeypatch.setattr(_jit, "spectral_corr", None)
    x = rng.standard_normal((5, 3, 30, 30))
    k = rng.standard_normal((7, 3, 9, 9))
    d = rng.standard_normal((5, 7, 22, 22))
    sel = rng.random((7, 3)) < 0.7
    with _plan.forced("fft"):
        got = [
            _conv.conv_valid(x, k, sel),
            _conv.conv_full(d, k, sel),
            _conv.conv_kernel_grad(x, d, sel),
        ]
    expected = [oracles.conv_valid(x, k, sel), oracles.conv_full(d, k, sel)]
    expected.append(oracles.conv_kernel_grad(x, d, sel))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())


def test_fft_groups_and_chunks_give_the_same_results(monkeypatch, rng):
    """Memory stays bounded by taking examples a few at a time and output maps in groups
    (Note [Convolutions by the FFT]): a tiny group budget (one map per group, one example per
    chunk) gives the results of one group for everything, to rounding."""
    x = rng.standard_normal((4, 3, 20, 20))
    k = rng.standard_normal((5, 3, 5, 5))
    d = rng.standard_normal((4, 5, 16, 16))
    with _plan.forced("fft"):
        big = [_conv.conv_valid(x, k), _conv.conv_full(d, k), _conv.conv_kernel_grad(x, d)]
        monkeypatch.setattr(_fft_budget, "GROUP_BYTES", 1)
        small = [_conv.conv_valid(x, k), _conv.conv_full(d, k), _conv.conv_kernel_grad(x, d)]
    for a, b in zip(big, small, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12 * np.abs(a).max())


def test_fft_gives_the_same_bits_on_one_thread_and_on_several(monkeypatch, rng):
    """The FFT kernel gradient sums its batch per pool slice and adds the slices in order: the
    same bits whether the slices run side by side or one after another."""
    from anycnn_numpy import _threads

    x = rng.standard_normal((64, 3, 40, 40)).astype("float32")
    k = rng.standard_normal((8, 3, 7, 7)).astype("float32")
    d = rng.standard_normal((64, 8, 34, 34)).astype("float32")

    def run():
        with _plan.forced("fft"):
            return [_conv.conv_valid(x, k), _conv.conv_kernel_grad(x, d), _conv.conv_full(d, k)]

    threaded = run()
    monkeypatch.setattr(_threads._pool, "threads", 1)
    for a, b in zip(threaded, run(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_fft_network_gradients_by_finite_differences():
    """A convolution + subsampling network in float64 whose convolutions all run on the FFT
    path (padding and a second layer's input gradient included): back-propagation against
    central finite differences."""
    from anycnn import Convolution, Flatten, FullyConnected, Network, Subsampling
    from anycnn.gradcheck import gradcheck

    net = Network(
        [
            Convolution(3, 5, activation="tanh", padding=1),
            Subsampling(2, "mean"),
            Convolution(4, 3, activation="sigmoid"),
            Flatten(),
            FullyConnected(2, activation="identity"),
        ],
        (2, 14, 14),
        loss="squared_error",
        dtype="float64",
        backend="numpy",
        seed=1,
    )
    rng = np.random.default_rng(5)
    x = net.backend.asarray(rng.standard_normal((2, 2, 14, 14)), dtype="float64")
    t = net.backend.asarray(rng.standard_normal((2, 2)), dtype="float64")
    with _plan.forced("fft"):
        assert (
            _conv._path("valid", True, np.dtype("float64"), 2, 2, 3, 14, 14, 5, 5, 1, 1, False)
            == "fft"
        )
        report = gradcheck(net, x, t, max_entries=8)
    assert report.passed, str(report)


# --- the cost model ------------------------------------------------------------------------------
ZOO = {  # (c, o, h, w, k): DLT C1, C3; LeNet-5 C1, C3
    "dlt-c1": (1, 6, 28, 28, 5),
    "dlt-c3": (6, 12, 12, 12, 5),
    "lenet5-c1": (1, 6, 32, 32, 5),
    "lenet5-c3": (6, 16, 14, 14, 5),
}


@pytest.mark.parametrize("batch", [1, 16, 50, 64, 256])
@pytest.mark.parametrize("layer", list(ZOO))
def test_zoo_layers_stay_on_the_direct_kernels(layer, batch):
    """The zoo models' bits and speed come from the direct kernels: the fitted model keeps every
    convolution of theirs there (a refit that moves one fails here), and LeNet-5's C5 (one
    output pixel) on its one GEMM."""
    c, o, h, w, k = ZOO[layer]
    for op in _plan.OPS:
        assert _plan.choose(op, batch, c, o, h, w, k, k) == "direct", op
    for op in _plan.OPS:
        assert _plan.choose(op, batch, 16, 120, 5, 5, 5, 5) == "im2col", op


def test_the_choice_is_a_function_of_the_shape(monkeypatch):
    """Deterministic: the same shape gets the same path whatever the thread count, and the
    model's predictions are pure functions of the counts."""
    from anycnn_numpy import _threads

    shapes = [(64, 3, 64, 256, 256, 11, 11), (1, 1, 6, 28, 28, 3, 3), (8, 16, 32, 64, 64, 7, 7)]
    first = [_plan.choose(op, *s) for s in shapes for op in _plan.OPS]
    monkeypatch.setattr(_threads._pool, "threads", 1)
    _plan.choose.cache_clear()
    assert [_plan.choose(op, *s) for s in shapes for op in _plan.OPS] == first
    with pytest.raises(ValueError, match="op 'conv'"):
        _plan.choose("conv", *shapes[0])
    with pytest.raises(ValueError, match="path 'gpu'"):
        with _plan.forced("gpu"):
            pass


def test_the_model_takes_the_fft_for_large_kernels_on_large_maps():
    """Where the measurements found the FFT fastest (bench/paths.py: 11 x 11 kernels, 16 -> 32
    maps on 64 x 64, every op), the fitted model takes it, and only among the paths that can run
    the arrays; where the blocked kernels were fastest (the forward pass of 3 -> 16 maps, 11 x
    11, 128 x 128; the kernel gradient of 3 -> 64 maps on 256 x 256, the FFT's before Note [Maps
    in lanes] in _wgrad), those."""
    for op in _plan.OPS:
        assert _plan.choose(op, 8, 16, 32, 64, 64, 11, 11) == "fft", op
    assert _plan.choose("grad", 64, 3, 64, 256, 256, 11, 11) == "blocked"
    assert _plan.choose("valid", 8, 3, 16, 128, 128, 11, 11) == "blocked"
    assert _plan.choose("valid", 64, 3, 64, 256, 256, 11, 11, available=("direct",)) == "direct"


def test_fast_lengths():
    """FFT sizes are the next 2, 3, 5, 7-smooth integers."""
    for size in range(1, 300):
        got = _fft.fast_length(size)
        assert got >= size and _smooth(got)
        assert not any(_smooth(m) for m in range(size, got))


def _smooth(m):
    for p in (2, 3, 5, 7):
        while m % p == 0:
            m //= p
    return m == 1


@pytest.mark.parametrize("batch", [1, 64])
def test_blocked_path_fuses_f_and_gives_the_same_bits_on_any_thread_count(monkeypatch, batch, rng):
    """Note [Blocked 2-D path]: the register-blocked kernels on 2-D maps, forced, with tanh
    compiled into the forward pass and f' and an up-sampling with a remainder in the fused
    backward, match the chain of reference ops; their batch slices (batch 64) and, for one large example,
    the forward pass's halves of 8-map blocks and the kernel gradient's halves of tap groups
    (Note [Maps in lanes] in _wgrad) give the same bits on one thread as on two."""
    from anycnn_numpy import _blocked, _threads, _wgrad

    from anycnn.layers.activations import get_activation

    if _jit.correlate_into is None:
        pytest.skip("Numba is not installed here: no blocked kernels")
    tanh = get_activation("tanh")
    # 10 maps: a forward block with 6 maps of padding, 16 lanes with 6; 20: 32 lanes with 12
    size, o = (20, 10) if batch > 1 else (100, 20)
    x = rng.standard_normal((batch, 3, size, size)).astype("float32")
    k = (rng.standard_normal((o, 3, 5, 5)) / 20).astype("float32")
    b = rng.standard_normal(o).astype("float32")
    oh = size - 4
    dy = rng.standard_normal((batch, o, oh // 2 + 1, oh // 2 + 1)).astype("float32")
    if batch == 1:
        assert _blocked._block_halves(1, 3, 8 * 3 * 3 * 25 * oh * size) is not None
        triples = 3 * 5 * 2  # (input map, kernel row, 4 columns), 3 a pass with 32 maps
        assert 32 * triples * 4 * oh * oh >= _wgrad.SPLIT_MACS

    def run():
        with _plan.forced("blocked"):
            y = _conv.conv_valid_activate(x, k, b, tanh)
            grad, bias, delta = _conv.conv_backward(x, dy, y, tanh, None, 2, True)
            return [y, grad, bias, delta]

    y, grad, bias, delta = got = run()
    u = oracles.conv_valid(x, k) + b[:, None, None]
    np.testing.assert_allclose(y, np.tanh(u), rtol=1e-5, atol=1e-5)
    up = np.kron(dy, np.ones((1, 1, 2, 2), np.float32))[:, :, :oh, :oh]
    expected_delta = (1 - y.astype(np.float64) ** 2) * up
    np.testing.assert_allclose(delta, expected_delta, rtol=1e-4, atol=1e-5)
    expected_grad = oracles.conv_kernel_grad(x, expected_delta)
    scale = float(np.abs(expected_grad).max())
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(bias, expected_delta.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-3)
    monkeypatch.setattr(_threads._pool, "threads", 1)
    for a, c in zip(got, run(), strict=True):
        np.testing.assert_array_equal(a, c)


def test_a_path_leaves_the_direct_kernels_only_beyond_both_fits_errors():
    """Note [Choosing a path]: another path is taken only where it is predicted faster than the
    direct kernels by more than the larger of the two fits' median errors."""
    errors = {"valid-direct": 0.2, "valid-blocked": 0.05, "valid-fft": 0.3}
    assert _plan.decide("valid", {"direct": 1.0, "blocked": 1 / 1.15}, errors) == "direct"
    assert _plan.decide("valid", {"direct": 1.0, "blocked": 1 / 1.25}, errors) == "blocked"
    assert _plan.decide("valid", {"direct": 1.0, "fft": 1 / 1.25}, errors) == "direct"
    assert _plan.decide("valid", {"direct": 1.0, "fft": 1 / 1.35}, errors) == "fft"
    # among the others, the fastest with its margin
    both = {"direct": 1.0, "fft": 0.5, "blocked": 0.52}
    assert _plan.decide("valid", both, errors) == "blocked"


@pytest.mark.parametrize("batch", [1, 3, 64])
def test_direct_chunks_are_at_most_the_longest_slice_and_give_the_same_bits(
    monkeypatch, batch, rng
):
    """``_conv._chunk``: the direct kernels' scratch is sized for at most the longest batch
    slice they get (one example for a batch of 1, halves of its maps included), and the three
    convolutions give bit for bit what the unclamped chunk (``_jit.direct_chunk``) gives."""
    if _jit.correlate_into is None:
        pytest.skip("Numba is not installed here: no direct kernels")
    from anycnn_numpy import _threads

    from anycnn.layers.activations import get_activation

    tanh = get_activation("tanh")
    n, c, o, size, k = batch, 6, 32, 28, 5  # batch 1: halves of the maps (2.8 M multiply-adds)
    oh = size - k + 1
    macs = o * c * k * k * oh * oh
    bounds = _threads.direct_bounds(n, macs)
    longest = max(b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True))
    unclamped = _jit.direct_chunk(oh, size, 4)
    f32 = np.dtype("float32")
    assert _conv._chunk(oh, size, f32, n, macs) == min(unclamped, longest)
    if batch == 1:
        assert _conv._map_halves(n, o, macs) is not None
        assert _conv._chunk(oh, size, f32, n, macs) == 1 < unclamped
    x = rng.standard_normal((n, c, size, size)).astype(f32)
    kernel = (rng.standard_normal((o, c, k, k)) / 10).astype(f32)
    bias = rng.standard_normal(o).astype(f32)
    d = rng.standard_normal((n, o, oh, oh)).astype(f32)

    def run():
        with _plan.forced("direct"):
            y = _conv.conv_valid_activate(x, kernel, bias, tanh)
            grads = _conv.conv_backward(x, d, y, tanh, None, 1, True)
            return [y, *grads, _conv.conv_full(d, kernel)]

    got = run()
    monkeypatch.setattr(
        _conv, "_chunk", lambda rows, width, dtype, n, macs: _jit.direct_chunk(rows, width, 4)
    )
    for a, b in zip(got, run(), strict=True):
        np.testing.assert_array_equal(a, b)
