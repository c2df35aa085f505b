"""Every hot op on every backend against SciPy / NumPy oracles, adjoint identities, dtype and
device preservation, and the errors of the checked entry points (anycnn.functional)."""

from __future__ import annotations

import numpy as np
import oracles
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anycnn import functional as F
from anycnn import ops as reference
from anycnn.testing import assert_close

SETTINGS = settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
DTYPES = ["float32", "float64"]


@st.composite
def conv_case(draw):
    n = draw(st.integers(1, 3))
    c_in = draw(st.integers(1, 4))
    c_out = draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = kh + draw(st.integers(0, 6)), kw + draw(st.integers(0, 6))
    with_selection = draw(st.booleans())
    seed = draw(st.integers(0, 2**31))
    return n, c_in, c_out, kh, kw, h, w, with_selection, seed


def _arrays(backend, dtype, *arrays):
    return [
        None if a is None else backend.asarray(a, dtype=a.dtype.name if a.dtype == bool else dtype)
        for a in arrays
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(case=conv_case())
def test_convolutions_match_scipy(backend, dtype, case):
    n, c_in, c_out, kh, kw, h, w, with_selection, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    k = rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype)
    d = rng.standard_normal((n, c_out, h - kh + 1, w - kw + 1)).astype(dtype)
    sel = rng.random((c_out, c_in)) < 0.6 if with_selection else None
    bx, bk, bd, bsel = _arrays(backend, dtype, x, k, d, sel)

    for name, args, host in [
        ("conv_valid", (bx, bk, bsel), (x, k, sel)),
        ("conv_full", (bd, bk, bsel), (d, k, sel)),
        ("conv_kernel_grad", (bx, bd, bsel), (x, d, sel)),
    ]:
        expected = getattr(oracles, name)(
            *[a if a is None else a.astype(np.float64) if a.dtype != bool else a for a in host]
        )
        assert_close(
            getattr(F, name)(*args), expected.astype(dtype), backend=backend, err_msg=f"{name}: "
        )


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**31),
)
def test_resampling_matches_numpy(backend, dtype, shape, n, seed):
    rng = np.random.default_rng(seed)
    small = rng.standard_normal(shape).astype(dtype)
    big = rng.standard_normal(shape[:2] + (shape[2] * n, shape[3] * n)).astype(dtype)
    (bsmall, bbig) = _arrays(backend, dtype, small, big)
    for name, arg, host in [
        ("kron_upsample", bsmall, small),
        ("decimate_transpose", bsmall, small),
        ("block_sum", bbig, big),
        ("block_mean", bbig, big),
        ("decimate", bbig, big),
    ]:
        expected = getattr(oracles, name)(host.astype(np.float64), n).astype(dtype)
        assert_close(getattr(F, name)(arg, n), expected, backend=backend, err_msg=f"{name}: ")


def _inner(xp, a, b):
    return float(xp.sum(a * b))


@pytest.mark.parametrize("selection", [False, True])
def test_adjoint_identities(backend, xp, rng, selection):
    """<A x, y> = <x, A^T y>: conv_full and conv_kernel_grad are the adjoints of conv_valid,
    block_sum of kron_upsample, decimate_transpose of decimate (float64)."""
    x = rng.standard_normal((2, 3, 9, 8))
    k = rng.standard_normal((4, 3, 4, 3))
    d = rng.standard_normal((2, 4, 6, 6))
    sel = rng.random((4, 3)) < 0.5 if selection else None
    bx, bk, bd = (backend.asarray(a, dtype="float64") for a in (x, k, d))
    bsel = None if sel is None else backend.asarray(sel)
    forward = _inner(xp, F.conv_valid(bx, bk, bsel), bd)
    assert forward == pytest.approx(_inner(xp, bx, F.conv_full(bd, bk, bsel)), rel=1e-12)
    assert forward == pytest.approx(_inner(xp, bk, F.conv_kernel_grad(bx, bd, bsel)), rel=1e-12)

    small = backend.asarray(rng.standard_normal((2, 3, 4, 5)), dtype="float64")
    big = backend.asarray(rng.standard_normal((2, 3, 12, 15)), dtype="float64")
    for up, down in [(F.kron_upsample, F.block_sum), (F.decimate_transpose, F.decimate)]:
        assert _inner(xp, up(small, 3), big) == pytest.approx(
            _inner(xp, small, down(big, 3)), rel=1e-12
        )


def test_selection_zeroes_unselected_pairs(backend, rng):
    """A kernel outside M_j has no effect and gets a zero gradient."""
    x = backend.asarray(rng.standard_normal((2, 3, 7, 7)), dtype="float64")
    k = rng.standard_normal((2, 3, 3, 3))
    sel = np.array([[True, False, True], [False, True, False]])
    changed = k.copy()
    changed[~sel] += 100.0
    bsel = backend.asarray(sel)
    a = F.conv_valid(x, backend.asarray(k, dtype="float64"), bsel)
    b = F.conv_valid(x, backend.asarray(changed, dtype="float64"), bsel)
    assert_close(a, backend.to_host(b), backend=backend)
    d = backend.asarray(rng.standard_normal((2, 2, 5, 5)), dtype="float64")
    grad = backend.to_host(F.conv_kernel_grad(x, d, bsel))
    assert np.all(grad[~sel] == 0) and np.all(np.abs(grad[sel]).sum(axis=(1, 2)) > 0)


@pytest.mark.jax  # in the default suite on JAX (tests/conftest.py SUBSET_VARIANTS)
def test_reference_ops_run_on_backend(backend, rng):
    """The pure Array API reference runs on every namespace and agrees with the fast op."""
    x = rng.standard_normal((2, 2, 6, 6))
    k = rng.standard_normal((3, 2, 3, 3))
    bx, bk = backend.asarray(x, dtype="float64"), backend.asarray(k, dtype="float64")
    assert_close(reference.conv_valid(bx, bk), oracles.conv_valid(x, k), backend=backend)
    assert_close(reference.block_sum(bx, 2), oracles.block_sum(x, 2), backend=backend)


# --- batches large enough for every fast path ---------------------------------------------------
# The hypothesis cases above use batches of 1-3; a backend's fast ops may take other paths for
# large batches (the NumPy backend: batch slices on its threads, Note [Wide columns]). These are
# the zoo's layer shapes at batches that cross those thresholds.
LAYER_SHAPES = {
    "dlt-c1": ((1, 28, 28), (6, 1, 5, 5)),
    "dlt-c3": ((6, 12, 12), (12, 6, 5, 5)),
    "lenet5-c3": ((6, 14, 14), (16, 6, 5, 5)),
    "lenet5-c5": ((16, 5, 5), (20, 16, 5, 5)),
    "wide-rows": ((2, 9, 40), (3, 2, 3, 3)),
}


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("layer", list(LAYER_SHAPES))
def test_large_batches_match_scipy(backend, layer, batch, rng):
    (c, h, w), kshape = LAYER_SHAPES[layer]
    x = rng.standard_normal((batch, c, h, w))
    k = rng.standard_normal(kshape)
    d = rng.standard_normal((batch, kshape[0], h - kshape[2] + 1, w - kshape[3] + 1))
    bx, bk, bd = _arrays(backend, "float32", x, k, d)
    for name, args, host in [
        ("conv_valid", (bx, bk), (x, k)),
        ("conv_full", (bd, bk), (d, k)),
        ("conv_kernel_grad", (bx, bd), (x, d)),
    ]:
        expected = getattr(oracles, name)(*host)
        # float32 sums of up to 64 x 100 products: absolute error relative to the largest entry
        atol = 1e-5 * float(np.abs(expected).max())
        assert_close(
            getattr(F, name)(*args),
            expected.astype("float32"),
            backend=backend,
            rtol=1e-5,
            atol=atol,
            err_msg=f"{name}: ",
        )


def test_strided_inputs_match_contiguous_ones(backend, rng):
    """Views whose rows are not contiguous (a transposed batch) give the same results."""
    x = backend.asarray(rng.standard_normal((12, 40, 36, 2)), dtype="float32")
    d = backend.asarray(rng.standard_normal((12, 3, 32, 30)), dtype="float32")
    k = backend.asarray(rng.standard_normal((3, 2, 5, 5)), dtype="float32")
    view = backend.xp.permute_dims(x, (0, 3, 2, 1))[:, :, :, :32]  # (12, 2, 36, 32), strided
    dense = backend.asarray(backend.to_host(view).copy())
    assert_close(F.conv_valid(view, k), backend.to_host(F.conv_valid(dense, k)), backend=backend)
    dview = d[:, :, :, :28]
    dd = backend.asarray(backend.to_host(dview).copy())
    assert_close(
        F.conv_kernel_grad(view, dview),
        backend.to_host(F.conv_kernel_grad(dense, dd)),
        backend=backend,
        rtol=1e-5,
        atol=1e-4,
    )


# --- fused ops (Note [Fused ops] in anycnn.ops) ----------------------------------------------------
@pytest.mark.parametrize("activation", ["sigmoid", "lecun_tanh", "relu", "identity"])
@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("layer", list(LAYER_SHAPES))
def test_fused_conv_matches_the_chain(backend, layer, batch, activation, rng):
    """A backend's fused conv + bias + f equals conv_valid, the bias and ``activation.apply``
    to 4 ulp (float32: the NumPy backend's compiled logistic and tanh are within 4 ulp of
    NumPy's, Note [Compiled activations]; the other activations give the chain's bits); and
    both agree with the reference definition."""
    from anycnn.layers.activations import get_activation

    (c, h, w), kshape = LAYER_SHAPES[layer]
    act = get_activation(activation)
    x = backend.asarray(rng.standard_normal((batch, c, h, w)), dtype="float32")
    k = backend.asarray(rng.standard_normal(kshape) * 0.3, dtype="float32")
    b = backend.asarray(rng.standard_normal(kshape[0]), dtype="float32")
    sel = backend.asarray(rng.random(kshape[:2]) < 0.7) if kshape[1] > 1 else None
    u = backend.ops.conv_valid(x, k, sel)
    u += b[:, None, None]
    chain = backend.to_host(act.apply(u, backend.xp))
    fused = backend.ops.fused.get("conv_valid_activate")
    if fused is not None:
        np.testing.assert_array_max_ulp(backend.to_host(fused(x, k, b, act, sel)), chain, 4)
    assert_close(reference.conv_valid_activate(x, k, b, act, sel), chain, backend=backend)


@pytest.mark.parametrize("up", [1, 2, 3])
@pytest.mark.parametrize(
    "activation", [{"name": "sigmoid", "gain": 2.0}, "lecun_tanh", "identity", "relu"], ids=str
)
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("layer", ["dlt-c1", "dlt-c3", "lenet5-c3", "wide-rows"])
def test_fused_conv_backward_matches_the_chain(backend, layer, batch, activation, up, rng):
    """A backend's fused conv_backward (Note [Fused ops]) gives the reference's kernel and bias
    gradients to rounding and, when asked for, the sensitivity delta = f'(u) o up(dy) (float64);
    the kernel gradient is zero outside the selection. A layer whose maps the up-sampling does
    not divide takes up = 1."""
    from anycnn.layers.activations import get_activation

    (c, h, w), kshape = LAYER_SHAPES[layer]
    dh, dw = h - kshape[2] + 1, w - kshape[3] + 1
    if dh % up or dw % up:
        up = 1
    act = get_activation(activation)
    x = backend.asarray(rng.standard_normal((batch, c, h, w)), dtype="float64")
    y = backend.asarray(act.forward(rng.standard_normal((batch, kshape[0], dh, dw))), "float64")
    dy = backend.asarray(rng.standard_normal((batch, kshape[0], dh // up, dw // up)), "float64")
    table = rng.random(kshape[:2]) < 0.7
    sel = backend.asarray(table) if kshape[1] > 1 else None
    expected = reference.conv_backward(x, dy, y, act, sel, up, True)
    fused = backend.ops.fused.get("conv_backward")
    if fused is None:
        pytest.skip(f"{backend.name} has no fused conv_backward")
    for need_delta in (True, False):
        got = fused(x, dy, y, act, sel, up, need_delta)
        names = ("kernel grad", "bias grad", "delta")
        _assert_gradients_close(backend, got, expected, names, need_delta)
        if sel is not None:
            assert np.all(backend.to_host(got[0])[~table] == 0)


@pytest.mark.parametrize(
    "activation", [{"name": "sigmoid", "gain": 2.0}, "lecun_tanh", "identity", "relu"], ids=str
)
@pytest.mark.parametrize("shape", [(1, 6, 14, 14), (64, 16, 5, 5), (300, 6, 14, 14)])
def test_fused_subsample_backward_matches_the_chain(backend, shape, activation, rng):
    """A backend's fused subsample_backward (Note [Fused ops]) gives the reference's dE/dbeta,
    dE/db and beta delta to rounding (float64), and no beta delta without need_input_grad."""
    from anycnn.layers.activations import get_activation

    act = get_activation(activation)
    y = backend.asarray(act.forward(rng.standard_normal(shape)), dtype="float64")
    dy, d = (backend.asarray(rng.standard_normal(shape), dtype="float64") for _ in range(2))
    beta = backend.asarray(rng.standard_normal(shape[1]), dtype="float64")
    expected = reference.subsample_backward(dy, y, d, beta, act, True)
    fused = backend.ops.fused.get("subsample_backward")
    if fused is None:
        pytest.skip(f"{backend.name} has no fused subsample_backward")
    for need_input_grad in (True, False):
        got = fused(dy, y, d, beta, act, need_input_grad)
        names = ("beta grad", "bias grad", "beta delta")
        _assert_gradients_close(backend, got, expected, names, need_input_grad)


def _assert_gradients_close(backend, got, expected, names, wanted):
    """A fused backward op's ``(grad, grad, array or None)`` against the reference's (computed
    with the array): the third is there, and close, exactly when the call asked for it."""
    for name, a, b in zip(names[:2], got[:2], expected[:2], strict=True):
        assert_close(a, backend.to_host(b), backend=backend, err_msg=name)
    if wanted:
        assert_close(got[2], backend.to_host(expected[2]), backend=backend, err_msg=names[2])
    else:
        assert got[2] is None, names[2]


SENSITIVITY_ACTIVATIONS = [
    "sigmoid",
    {"name": "sigmoid", "gain": 2.0},
    "lecun_tanh",
    {"name": "tanh", "a": 1.5, "b": 0.5},
    "tanh",
    "relu",
    "identity",
]


@pytest.mark.parametrize("activation", SENSITIVITY_ACTIVATIONS, ids=str)
@pytest.mark.parametrize("shape", [(1, 6, 24, 24), (256, 6, 24, 24), (50, 12, 8, 8), (64, 84)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_sensitivity_gives_the_bits_of_the_activation(backend, activation, shape, dtype, rng):
    """A backend's fused f'(u) o dy equals ``activation.sensitivity`` bit for bit (on CuPy to
    rounding: CUDA contracts multiply-adds), leaves dy and y alone, and the reference op is the
    activation's method; a user subclass that redefines f' is not mistaken for its parent."""
    from anycnn.layers.activations import Sigmoid, get_activation

    act = get_activation(activation)
    u = rng.standard_normal(shape) * 3
    y = backend.asarray(act.forward(u), dtype=dtype)
    dy = backend.asarray(rng.standard_normal(shape), dtype=dtype)
    y_before, dy_before = backend.to_host(y).copy(), backend.to_host(dy).copy()
    chain = backend.to_host(act.sensitivity(dy, y, backend.xp))
    np.testing.assert_array_equal(backend.to_host(reference.sensitivity(dy, y, act)), chain)
    fused = backend.ops.fused.get("sensitivity")
    if fused is None:
        return
    got = backend.to_host(fused(dy, y, act))
    if backend.name == "cupy":
        assert_close(got, chain, backend=backend)
    else:
        np.testing.assert_array_equal(got, chain)
    np.testing.assert_array_equal(backend.to_host(y), y_before)
    np.testing.assert_array_equal(backend.to_host(dy), dy_before)

    class Doubled(Sigmoid):  # a user activation with its own f': the fused op must not guess
        def sensitivity(self, dy, y, xp):
            return 2.0 * super().sensitivity(dy, y, xp)

    doubled = Doubled()
    np.testing.assert_array_equal(
        backend.to_host(fused(dy, y, doubled)),
        backend.to_host(doubled.sensitivity(dy, y, backend.xp)),
    )


# --- bad input ---------------------------------------------------------------------------------
def test_errors_name_operation_and_shapes(backend, rng):
    x = backend.asarray(rng.standard_normal((2, 3, 8, 8)), dtype="float32")
    k = backend.asarray(rng.standard_normal((4, 3, 3, 3)), dtype="float32")
    with pytest.raises(
        ValueError, match=r"conv_valid: x must be a 4-d \(N, C, H, W\) array, got shape \(3, 8, 8\)"
    ):
        F.conv_valid(x[0, ...], k)
    with pytest.raises(
        ValueError, match=r"conv_valid: kernel 9x9 is larger than the 8x8 input maps"
    ):
        F.conv_valid(x, backend.asarray(np.ones((4, 3, 9, 9)), dtype="float32"))
    with pytest.raises(ValueError, match=r"x has 3 maps but the kernel expects C_in = 2"):
        F.conv_valid(x, backend.asarray(np.ones((4, 2, 3, 3)), dtype="float32"))
    with pytest.raises(
        TypeError, match=r"conv_valid: x and kernel must share a dtype, got .*float32 and .*float64"
    ):
        F.conv_valid(x, backend.asarray(np.ones((4, 3, 3, 3)), dtype="float64"))
    with pytest.raises(
        TypeError, match=r"conv_valid: x must have a real floating dtype .* got .*int"
    ):
        F.conv_valid(backend.asarray(np.ones((2, 3, 8, 8), dtype=np.int32)), k)
    with pytest.raises(
        ValueError,
        match=r"selection must be a \(C_out, C_in\) = \(4, 3\) boolean table, got shape \(3, 4\)",
    ):
        F.conv_valid(x, k, backend.asarray(np.ones((3, 4), dtype=bool)))
    with pytest.raises(ValueError, match=r"block_sum: 8x8 maps are not divisible by 3"):
        F.block_sum(x, 3)
    with pytest.raises(ValueError, match=r"decimate: the factor n must be a positive int, got 0"):
        F.decimate(x, 0)
    with pytest.raises(
        ValueError, match=r"conv_full: delta has 3 maps but the kernel has C_out = 4"
    ):
        F.conv_full(x, k)
    with pytest.raises(
        ValueError, match=r"conv_kernel_grad: x and delta have different batch sizes, 2 and 1"
    ):
        F.conv_kernel_grad(x, x[:1, ...])


def test_mixing_backends_is_an_error(backend, rng):
    import array_api_strict

    x = backend.asarray(rng.standard_normal((1, 1, 4, 4)), dtype="float64")
    other = (
        array_api_strict.asarray(np.ones((1, 1, 2, 2)))
        if backend.name != "array_api_strict"
        else np.ones((1, 1, 2, 2))
    )
    with pytest.raises(TypeError, match=r"conv_valid: arrays from two backends: .* and .*"):
        F.conv_valid(x, other)


def test_two_devices_is_an_error():
    array_api_strict = pytest.importorskip("array_api_strict")
    a = array_api_strict.asarray(np.ones((1, 1, 4, 4)))
    b = array_api_strict.asarray(np.ones((1, 1, 2, 2)), device=array_api_strict.Device("device1"))
    with pytest.raises(
        ValueError, match=r"conv_valid: arrays on two devices: .*CPU_DEVICE.* and .*device1"
    ):
        F.conv_valid(a, b)


def test_ops_keep_the_device():
    """An array on a second device stays there (array-api-strict's device1)."""
    array_api_strict = pytest.importorskip("array_api_strict")
    dev = array_api_strict.Device("device1")
    x = array_api_strict.asarray(np.ones((1, 2, 6, 6)), device=dev)
    k = array_api_strict.asarray(np.ones((3, 2, 3, 3)), device=dev)
    for out in (F.conv_valid(x, k), F.kron_upsample(x, 2), F.block_sum(x, 2), F.decimate(x, 3)):
        assert out.device == dev


# --- the NumPy backend's compiled kernel (Note [Kernel gradient as dot products]) ----------------
@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("layer", list(LAYER_SHAPES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_kernel_gradient_with_and_without_numba(monkeypatch, layer, batch, dtype, rng):
    """The compiled sums and BLAS give the same kernel gradient (to rounding), and both match
    SciPy; without Numba (or with ANYCNN_NUMBA=0) the backend runs on BLAS alone. (The direct
    kernels, which take these layers first, are switched off: test_numpy_convolutions_direct_and_blas.)"""
    _jit = pytest.importorskip("anycnn_numpy._jit")
    from anycnn_numpy import _conv

    monkeypatch.setattr(_jit, "correlate_into", None)

    (c, h, w), kshape = LAYER_SHAPES[layer]
    x = rng.standard_normal((batch, c, h, w)).astype(dtype)
    d = rng.standard_normal((batch, kshape[0], h - kshape[2] + 1, w - kshape[3] + 1)).astype(dtype)
    sel = rng.random(kshape[:2]) < 0.7
    expected = oracles.conv_kernel_grad(x, d, sel)
    atol = (1e-5 if dtype == "float32" else 1e-12) * float(np.abs(expected).max())
    results = {}
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(_jit, "kernel_grad_sum", None)
        elif _jit.kernel_grad_sum is None:
            continue  # Numba is not installed here: only the BLAS path exists
        results[compiled] = _conv.conv_kernel_grad(x, d, sel)
        np.testing.assert_allclose(results[compiled], expected, rtol=1e-5, atol=atol)
        assert np.all(results[compiled][~sel] == 0)


@pytest.mark.parametrize("batch", [1, 5, 64])
@pytest.mark.parametrize("layer", list(LAYER_SHAPES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "blas"])
def test_numpy_convolutions_direct_and_blas(monkeypatch, direct, dtype, layer, batch, rng):
    """Note [Direct convolutions]: the compiled direct kernels and the im2col + BLAS paths they
    stand in for both match SciPy, with and without an input-map selection, bias included;
    the kernel gradient is zero outside the selection; the fused conv_backward (identity f, so
    delta = up(dy)) gives SciPy's kernel gradient and the sums of delta on both paths."""
    _jit = pytest.importorskip("anycnn_numpy._jit")
    from anycnn_numpy import _conv

    from anycnn.layers.activations import Identity

    if direct and _jit.correlate_into is None:
        pytest.skip("Numba is not installed here: only the BLAS paths exist")
    if not direct:
        monkeypatch.setattr(_jit, "correlate_into", None)
    (c, h, w), kshape = LAYER_SHAPES[layer]
    x = rng.standard_normal((batch, c, h, w)).astype(dtype)
    k = rng.standard_normal(kshape).astype(dtype)
    b = rng.standard_normal(kshape[0]).astype(dtype)
    d = rng.standard_normal((batch, kshape[0], h - kshape[2] + 1, w - kshape[3] + 1)).astype(dtype)
    rtol = 2e-5 if dtype == "float32" else 1e-12
    for sel in (None, rng.random(kshape[:2]) < 0.6):
        cases = [
            (_conv.conv_valid(x, k, sel), oracles.conv_valid(x, k, sel)),
            (
                _conv.conv_valid_activate(x, k, b, Identity(), sel),
                oracles.conv_valid(x, k, sel) + b[:, None, None],
            ),
            (_conv.conv_full(d, k, sel), oracles.conv_full(d, k, sel)),
            (_conv.conv_kernel_grad(x, d, sel), oracles.conv_kernel_grad(x, d, sel)),
        ]
        up = 2 if d.shape[2] % 2 == 0 and d.shape[3] % 2 == 0 else 1
        small = np.ascontiguousarray(d[:, :, ::up, ::up])
        spread = np.kron(small, np.ones((up, up), dtype))
        fused = _conv.conv_backward(x, small, d, Identity(), sel, up, True)
        cases += [
            (fused[0], oracles.conv_kernel_grad(x, spread, sel)),
            (fused[1], spread.sum(axis=(0, 2, 3))),
            (fused[2], spread),
        ]
        names = ["valid", "valid+bias", "full", "grad", "fused grad", "fused bias", "fused delta"]
        for name, (got, expected) in zip(names, cases, strict=True):
            assert got.dtype == dtype and got.shape == expected.shape, name
            atol = rtol * float(np.abs(expected).max())
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, err_msg=name)
        if sel is not None:
            assert np.all(cases[3][0][~sel] == 0)


@pytest.mark.parametrize(
    "activation", ["sigmoid", {"name": "sigmoid", "gain": 2.0}, "lecun_tanh", "tanh"], ids=str
)
def test_numpy_compiled_activations(activation, rng):
    """Note [Compiled activations]: the direct kernels' float32 logistic and tanh are within
    4 ulp of NumPy's on -100..100 (a convolution by a 1 x 1 kernel of 1 turns the op into f
    itself), NaN stays NaN, and the limits at +-inf and past exp's overflow are NumPy's."""
    _jit = pytest.importorskip("anycnn_numpy._jit")
    from anycnn_numpy import _conv

    from anycnn.layers.activations import get_activation

    if _jit.direct_activations is None:
        pytest.skip("Numba is not installed here: f is NumPy's own")
    act = get_activation(activation)
    u = np.concatenate(
        [
            np.linspace(-100, 100, 400_001, dtype=np.float32),
            np.float32([0.0, -0.0, 1e-30, -1e-30, 88.7, 88.73, -88.73, 1e4, -1e4]),
        ]
    )
    special = np.float32([np.inf, -np.inf, np.nan])
    x = np.concatenate([u, special, np.zeros(4 * 32 - (u.size + 3) % (4 * 32), np.float32)])
    x = x.reshape(-1, 1, 4, 32)
    one = np.ones((1, 1, 1, 1), np.float32)
    got = _conv.conv_valid_activate(x, one, np.zeros(1, np.float32), act).reshape(-1)
    with np.errstate(over="ignore"):
        chain = act.apply(u.copy(), np)
    np.testing.assert_array_max_ulp(got[: u.size], chain, 4)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = act.apply(special.copy(), np)
    np.testing.assert_array_equal(got[u.size : u.size + 3], expected)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 6, 6), (5, 6, 12, 24), (256, 6, 24, 24)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_resampling_with_and_without_numba(monkeypatch, n, shape, dtype, rng):
    """Note [Resampling kernels]: the compiled block sums, block means and kron up-sampling give
    the bits of the NumPy slices they replace; a strided input takes the NumPy slices."""
    _jit = pytest.importorskip("anycnn_numpy._jit")
    from anycnn_numpy import _resample

    if _jit.block_sum_into is None:
        pytest.skip("Numba is not installed here: only the NumPy path exists")
    b, c, h, w = shape  # h and w divisible by 2 and 3
    x = rng.standard_normal(shape).astype(dtype)
    small = rng.standard_normal(shape).astype(dtype)
    strided = rng.standard_normal((b, c, h, 2 * w)).astype(dtype)[..., ::2]

    def run():
        return [
            _resample.block_sum(x, n),
            _resample.block_mean(x, n),
            _resample.kron_upsample(small, n),
            _resample.block_sum(strided, n),
            _resample.kron_upsample(small[..., ::-1], n),
        ]

    compiled = run()
    monkeypatch.setattr(_jit, "block_sum_into", None)
    monkeypatch.setattr(_jit, "kron_into", None)
    plain = run()
    for a, p in zip(compiled, plain, strict=True):
        np.testing.assert_array_equal(a, p)
    np.testing.assert_array_equal(compiled[2], np.kron(small, np.ones((n, n), dtype)))
    np.testing.assert_allclose(compiled[0], oracles.block_sum(x, n), rtol=1e-5, atol=1e-5)


def test_spin_wait_sees_another_threads_write():
    """Note [Spinning helpers]: the compiled spin returns as soon as another thread changes the
    watched value (its load is not hoisted out of the loop), and gives up after its turns."""
    import threading
    import time

    _jit = pytest.importorskip("anycnn_numpy._jit")
    if _jit.spin_while is None:
        pytest.skip("Numba is not installed here: the pool blocks without spinning")
    flag = np.zeros(2, np.int64)
    assert _jit.spin_while(flag, 1, 0, 1000) is False  # unchanged: gives up
    assert _jit.spin_while(flag, 1, 7, 1000) is True  # already different
    writer = threading.Timer(0.02, lambda: flag.__setitem__(1, 5))
    writer.start()
    start = time.perf_counter()
    seen = _jit.spin_while(flag, 1, 0, 1 << 40)  # would spin for hours if the load were hoisted
    writer.join()
    assert seen is True
    assert time.perf_counter() - start < 60


def test_compiled_kernels_are_cached_once(tmp_path):
    """Numba's on-disk cache keeps one entry per kernel and signature: a second process loads the
    kernels instead of adding files (the spin kernel once added an entry per process, its
    intrinsics being closures); and the kernels it loads give the bits of the ones the first
    process compiled (a training step of both zoo models, float32)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("numba")
    code = (
        "import hashlib\n"
        "import numpy as np\n"
        "from anycnn import models\n"
        "from anycnn.layers.activations import Sigmoid\n"
        "from anycnn_numpy import _activation, _conv, _resample, _threads\n"
        "x = np.ones((8, 6, 12, 12), np.float32)\n"
        "d = np.ones((8, 12, 8, 8), np.float32)\n"
        "_conv.conv_kernel_grad(x, d), _resample.block_sum(x, 2), _resample.kron_upsample(x, 2)\n"
        "_activation.sensitivity(x, x, Sigmoid())\n"
        "digest = hashlib.md5()\n"
        "for name, size in (('dlt', 28), ('lenet5', 32)):\n"
        "    net = models.build(name, dtype='float32', seed=3)\n"
        "    rng = np.random.default_rng(0)\n"
        "    images = rng.random((40, 1, size, size), dtype=np.float32)\n"
        "    targets = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 40)]\n"
        "    net.compute_gradients(images, targets)\n"
        "    for g in net.gradients().values():\n"
        "        digest.update(np.asarray(g).tobytes())\n"
        "_threads._spin.calibrate()  # compiles or loads the spin kernel\n"
        "print(_threads._spin.turns > 0, digest.hexdigest())\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    env.pop("ANYCNN_NUMBA", None)
    env.pop("ANYCNN_SPIN_US", None)
    counts, digests = [], []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        spins, digest = out.stdout.split()
        assert spins == "True", out.stderr
        digests.append(digest)
        counts.append(sum(1 for p in tmp_path.rglob("*") if p.is_file()))
    assert counts[0] > 0
    assert counts[1] == counts[0]
    assert digests[1] == digests[0]


def test_numba_can_be_switched_off():
    """ANYCNN_NUMBA=0 leaves the compiled kernel out (read when the backend is first imported)."""
    import subprocess
    import sys

    code = "from anycnn_numpy import _jit; print(_jit.kernel_grad_sum is None)"
    env = {**__import__("os").environ, "ANYCNN_NUMBA": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
    code = (
        "from anycnn_numpy import _threads; _threads._spin.calibrate(); print(_threads._spin.turns)"
    )
    env = {**__import__("os").environ, "ANYCNN_SPIN_US": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "0", out.stderr


def test_numpy_ops_give_the_same_bits_on_one_thread_and_on_several(monkeypatch, rng):
    """Whether an op's slices run side by side or one after another on the calling thread, the
    slices and so the sums are the same: bit-identical results."""
    from anycnn_numpy import _activation, _conv, _resample, _threads

    x = rng.standard_normal((96, 1, 32, 32)).astype("float32")
    d = rng.standard_normal((96, 6, 28, 28)).astype("float32")
    k = rng.standard_normal((6, 1, 5, 5)).astype("float32")
    assert 96 * (25 + 6) * 28 * 32 * 4 >= 2 * _threads._SLICE_BYTES  # several slices by default
    from anycnn.layers.activations import LeCunTanh

    def run():
        return [
            _conv.conv_kernel_grad(x, d),
            _conv.conv_valid(x, k),
            _resample.block_sum(d, 2),
            _resample.kron_upsample(d, 2),
            _activation.sensitivity(d, np.tanh(d), LeCunTanh()),
        ]

    threaded = run()
    monkeypatch.setattr(_threads._pool, "threads", 1)
    alone = run()
    for a, b in zip(threaded, alone, strict=True):
        np.testing.assert_array_equal(a, b)
