"""What the NumPy plugin's ops promise beyond their values (issue 22: survivors of the mutation
campaigns in backends/anycnn_numpy, tests/MUTATION.md).

* **Which inputs take the fast paths.** Float arrays of one dtype (and, for the fused ops, the
  layouts the compiled kernels take) never reach the reference ops; anything else goes to the
  reference op of the same name with every argument as given (no argument dropped, swapped or
  defaulted) and comes back as its answer. The values alone cannot tell the two apart: they
  agree to rounding by design.
* **The NumPy loops behind the compiled ones** (``ANYCNN_NUMBA=0`` or no Numba), on batches large
  enough for the pool to cut into slices (one thread or several, the slicing is the same).
* **Edge cases** a layer never makes but the ops accept: a 0-d or empty sensitivity, a
  subsampling factor of 1, padded im2col.
* **The backend record's words and settings** (the compile note, the kernel status, the thread
  count), and the float32 vector code that Numba compiles from ``_direct``'s IR builders, compiled
  afresh here (a cached kernel would never run them)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("anycnn_numpy")
import anycnn_numpy  # noqa: E402
from anycnn_numpy import (  # noqa: E402
    _activation,
    _conv,
    _dense,
    _im2col,
    _jit,
    _resample,
)

from anycnn import ops as reference  # noqa: E402
from anycnn.layers.activations import Activation, Identity, Sigmoid, Tanh  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

FALLBACKS = [
    "conv_valid",
    "conv_valid_activate",
    "conv_full",
    "conv_kernel_grad",
    "conv_backward",
    "subsample_backward",
    "block_mean",
    "fully_connected",
    "fully_connected_weight_grad",
    "fully_connected_input_grad",
]


@pytest.fixture
def reference_calls(monkeypatch):
    """Every call the plugin makes to a reference op, as ``(name, args)`` (the first one is the
    plugin's own: a reference op may call others)."""
    calls = []
    for name in FALLBACKS:
        original = getattr(reference, name)

        def recorded(*args, _name=name, _original=original, **kwargs):
            assert not kwargs, (_name, kwargs)
            calls.append((_name, args))
            return _original(*args)

        monkeypatch.setattr(reference, name, recorded)
    return calls


def _as_given(call, name, args):
    """The call is ``reference.name(*args)``, each array the very object given."""
    got_name, got = call
    assert got_name == name
    assert len(got) == len(args), (name, got)
    for a, b in zip(got, args, strict=True):
        assert a is b or (not isinstance(b, np.ndarray) and a == b), (name, a, b)


def _bits(got, want):
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _bits(g, w)
        return
    if want is None:
        assert got is None
        return
    assert isinstance(got, np.ndarray) and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def _conv_cases(rng, dtype_x, dtype_k):
    """(name, plugin op, args) of the convolution ops: a selection and a padding that are not
    the defaults, so that an argument lost on the way shows."""
    x = rng.standard_normal((2, 3, 7, 6)).astype(dtype_x)
    k = rng.standard_normal((4, 3, 3, 2)).astype(dtype_k)
    sel = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], bool)
    pad = (1, 2)
    oh, ow = 7 + 2 - 3 + 1, 6 + 4 - 2 + 1
    d = rng.standard_normal((2, 4, oh, ow)).astype(dtype_k)
    y = np.tanh(rng.standard_normal((2, 4, oh, ow))).astype(dtype_x)
    dy = rng.standard_normal((2, 4, oh, ow)).astype(dtype_k)
    bias = rng.standard_normal(4).astype(dtype_k)
    tanh = Tanh(1.7159, 2.0 / 3.0)
    return [
        ("conv_valid", _conv.conv_valid, (x, k, sel, pad)),
        ("conv_valid_activate", _conv.conv_valid_activate, (x, k, bias, tanh, sel, pad)),
        ("conv_full", _conv.conv_full, (d.astype(dtype_x), k, sel, pad)),
        ("conv_kernel_grad", _conv.conv_kernel_grad, (x, d, sel, pad)),
        ("conv_backward", _conv.conv_backward, (x, dy, y, tanh, sel, 1, False, pad)),
    ]


def _dense_cases(rng, dtype_a, dtype_b):
    x = rng.standard_normal((5, 4)).astype(dtype_a)
    w = rng.standard_normal((3, 4)).astype(dtype_b)
    d = rng.standard_normal((5, 3)).astype(dtype_b)
    return [
        ("fully_connected", _dense.fully_connected, (x, w)),
        ("fully_connected_weight_grad", _dense.fully_connected_weight_grad, (x, d)),
        ("fully_connected_input_grad", _dense.fully_connected_input_grad, (d.astype(dtype_a), w)),
    ]


def test_arrays_of_two_dtypes_go_to_the_reference_op_as_given(reference_calls):
    rng = np.random.default_rng(0)
    for name, op, args in _conv_cases(rng, np.float32, np.float64) + _dense_cases(
        rng, np.float32, np.float64
    ):
        reference_calls.clear()
        got = op(*args)
        assert reference_calls, name
        _as_given(reference_calls[0], name, args)
        _bits(got, getattr(reference, name)(*args))


def test_integer_arrays_go_to_the_reference_op(reference_calls):
    rng = np.random.default_rng(1)
    for name, op, args in _dense_cases(rng, np.int64, np.int64):
        reference_calls.clear()
        got = op(*args)
        _as_given(reference_calls[0], name, args)
        _bits(got, getattr(reference, name)(*args))
    x = rng.integers(0, 9, (2, 3, 4, 6))
    reference_calls.clear()
    got = _resample.block_mean(x, 2)
    _as_given(reference_calls[0], "block_mean", (x, 2))
    _bits(got, reference.block_mean(x, 2))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_arrays_of_one_dtype_never_reach_the_reference_ops(reference_calls, dtype):
    rng = np.random.default_rng(2)
    for name, op, args in _conv_cases(rng, dtype, dtype) + _dense_cases(rng, dtype, dtype):
        got = op(*args)
        assert reference_calls == [], name
        want = getattr(reference, name)(*args)
        reference_calls.clear()
        tol = 1e-4 if dtype == np.float32 else 1e-12
        for g, w in zip(
            got if isinstance(got, tuple) else (got,),
            want if isinstance(want, tuple) else (want,),
            strict=True,
        ):
            if w is None:
                assert g is None
                continue
            assert g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    x = rng.standard_normal((2, 3, 4, 6)).astype(dtype)
    _resample.block_mean(x, 2)
    assert reference_calls == []


def _subsample_args(rng, dtype=np.float64):
    y = np.tanh(rng.standard_normal((3, 2, 4, 5))).astype(dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    d = rng.standard_normal(y.shape).astype(dtype)
    beta = rng.standard_normal(2).astype(dtype)
    return dy, y, d, beta


@pytest.mark.parametrize(
    "change",
    ["no kernel", "dy dtype", "d dtype", "dy strided", "d strided", "y strided", "beta dtype"],
)
@pytest.mark.parametrize("need", [True, False])
def test_subsample_backward_goes_to_the_reference_op_where_the_kernel_cannot(
    monkeypatch, reference_calls, change, need
):
    """The fused subsampling gradients run the compiled sums only on C-contiguous arrays of one
    float dtype; anything else is the reference op's answer, arguments as given."""
    rng = np.random.default_rng(3)
    dy, y, d, beta = _subsample_args(rng)
    wide = rng.standard_normal((3, 2, 4, 10))
    if change == "no kernel":
        monkeypatch.setattr(_jit, "subsample_sums_into", None)
    elif change == "dy dtype":
        dy = dy.astype(np.float32)
    elif change == "d dtype":
        d = d.astype(np.float32)
    elif change == "dy strided":
        dy = wide[..., ::2]
    elif change == "d strided":
        d = wide[..., ::2]
    elif change == "y strided":
        y = np.tanh(wide)[..., ::2]
    else:
        beta = beta.astype(np.float32)
    args = (dy, y, d, beta, Tanh(), need)
    got = _resample.subsample_backward(*args)
    _as_given(reference_calls[0], "subsample_backward", args)
    _bits(got, reference.subsample_backward(*args))


def test_subsample_backward_on_the_kernel(reference_calls):
    """On arrays the kernel takes: no reference op; the sums to rounding in the layer's dtype,
    ``beta delta`` by default and None without ``need_input_grad``."""
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        dy, y, d, beta = _subsample_args(rng, dtype)
        want = reference.subsample_backward(dy, y, d, beta, Tanh())
        reference_calls.clear()
        got = _resample.subsample_backward(dy, y, d, beta, Tanh())
        assert reference_calls == []
        tol = 1e-5 if dtype == np.float32 else 1e-12
        for g, w in zip(got, want, strict=True):
            assert g.dtype == np.dtype(dtype)
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
        assert _resample.subsample_backward(dy, y, d, beta, Tanh(), False)[2] is None


class _Strided(Activation):
    """An activation without a description whose f' o dy comes back in another dtype, or not
    C-contiguous: the fused op cannot hand such a delta to the compiled sums."""

    name = "strided"

    def __init__(self, dtype=None):
        self.dtype = dtype

    def forward(self, u):
        return np.tanh(u)

    def derivative(self, y, u=None):
        return 1 - y * y

    def sensitivity(self, dy, y, xp):
        out = dy * (1 - y * y)
        if self.dtype is not None:
            return out.astype(self.dtype)
        wide = np.empty(out.shape[:-1] + (2 * out.shape[-1],), out.dtype)
        wide[..., ::2] = out
        return wide[..., ::2]


@pytest.mark.parametrize("activation", [_Strided(), _Strided(np.float32)], ids=["strided", "dtype"])
def test_subsample_backward_takes_back_a_delta_the_kernel_cannot_read(reference_calls, activation):
    rng = np.random.default_rng(5)
    dy, y, d, beta = _subsample_args(rng)
    got = _resample.subsample_backward(dy, y, d, beta, activation, True)
    _as_given(reference_calls[0], "subsample_backward", (dy, y, d, beta, activation, True))
    _bits(got, reference.subsample_backward(dy, y, d, beta, activation, True))


# --- the NumPy loops behind the compiled ones, on batches the pool cuts into slices ----------


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "numpy"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_resampling_of_a_batch_cut_into_slices(monkeypatch, compiled, n):
    """Block sums and means, kron up-sampling: 64 examples of 8 maps of 24 x 24 (2.4 MB of
    float64: more than one slice of the pool) equal the reference ops; the NumPy loops give the
    compiled kernels' bits (Note [Resampling kernels]); a factor of 1 gives a copy."""
    if not compiled:
        monkeypatch.setattr(_jit, "block_sum_into", None)
        monkeypatch.setattr(_jit, "kron_into", None)
    elif _jit.block_sum_into is None:
        pytest.skip("Numba is not installed here")
    rng = np.random.default_rng(n)
    x = rng.standard_normal((64, 8, 24, 24))
    small = rng.standard_normal((64, 8, 24 // n, 24 // n))
    for op in ("block_sum", "block_mean"):
        got = getattr(_resample, op)(x, n)
        np.testing.assert_allclose(got, getattr(reference, op)(x, n), rtol=1e-12, atol=1e-12)
        assert got is not x and got.shape == (64, 8, 24 // n, 24 // n)
    got = _resample.kron_upsample(small, n)
    np.testing.assert_array_equal(got, reference.kron_upsample(small, n))
    assert got is not small


@pytest.mark.parametrize("rows", [2048, 40])
def test_blas_products_of_row_and_inner_slices(rows):
    """``gemm`` cuts ``a`` into row slices, ``gemm_sum`` the inner dimension into slices summed
    in order: both are the product (2048 rows of 256 float64 are 4 MB: two slices or more)."""
    rng = np.random.default_rng(rows)
    a, b = rng.standard_normal((rows, 128)), rng.standard_normal((128, 128))
    np.testing.assert_allclose(_im2col.gemm(a, b), a @ b, rtol=1e-12, atol=1e-12)
    c, e = rng.standard_normal((128, rows)), rng.standard_normal((rows, 128))
    np.testing.assert_allclose(_im2col.gemm_sum(c, e), c @ e, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("n", [1, 4])
def test_im2col_forward_pads_its_input(n):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((n, 2, 6, 5))
    k = rng.standard_normal((3, 2, 3, 4))
    for padding in ((1, 0), (0, 2), (2, 1)):
        got = _im2col.conv_valid(x, k, None, None, padding)
        want = reference.conv_valid(x, k, None, padding)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# --- the activation ops -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_the_identitys_sensitivity_is_dy_itself(dtype):
    dy = np.ones((2, 3), dtype)
    y = np.zeros((2, 3), dtype)
    assert _activation.sensitivity(dy, y, Identity()) is dy


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2)], ids=["0-d", "empty", "empty-3d"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sensitivity_of_a_scalar_and_of_no_values(shape, dtype):
    for activation in (Sigmoid(0.5), Tanh(1.7159, 2.0 / 3.0)):
        dy = np.full(shape, 0.25, dtype)
        y = np.full(shape, 0.5, dtype)
        got = _activation.sensitivity(dy, y, activation)
        want = activation.sensitivity(dy, y, np)
        assert got.shape == shape and got.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got, want)


def test_what_the_direct_kernels_apply_themselves():
    """Note [Compiled activations]: float32 logistic and scaled tanh, with their constants in
    float32, and the identity; nothing for float64, ReLU or an activation without a
    description (the epilogue applies those)."""
    if _jit.direct_activations is None:
        pytest.skip("Numba is not installed here")
    identity, logistic, tanh = _jit.direct_activations
    f32 = np.dtype(np.float32)
    got = _activation.compiled_activation(Sigmoid(0.5), f32)
    assert got == (logistic, 0.5, 0.0) and all(type(v) is np.float32 for v in got[1:])
    got = _activation.compiled_activation(Tanh(1.7159, 2.0 / 3.0), f32)
    assert got == (tanh, np.float32(1.7159), np.float32(2.0 / 3.0))
    assert got[1].dtype == f32
    assert _activation.compiled_activation(Identity(), f32)[0] == identity
    assert _activation.compiled_activation(Sigmoid(), np.dtype(np.float64)) is None
    assert _activation.compiled_activation(_Strided(), f32) is None
    from anycnn.layers.activations import ReLU

    assert _activation.compiled_activation(ReLU(), f32) is None


# --- the backend record -----------------------------------------------------------------------


def test_the_compile_note_and_the_kernel_status(monkeypatch):
    backend = anycnn_numpy.backend
    monkeypatch.setattr(_jit, "status", lambda: (False, "off: because"))
    assert backend.compile_note() is None
    assert backend.kernel_status() == "numpy's compiled CPU kernels: off: because"
    monkeypatch.setattr(_jit, "status", lambda: (True, "active (stand-in)"))
    monkeypatch.setattr(_jit, "cache_dir", lambda: "/stand-in/cache")
    seconds = _jit.COMPILE_SECONDS
    assert backend.compile_note() == (
        f"compiling CPU kernels once (~{seconds} s), cached in /stand-in/cache"
    )
    monkeypatch.setattr(_jit, "cache_dir", lambda: None)
    assert backend.compile_note() == (
        f"compiling CPU kernels once (~{seconds} s), cached in Numba's cache"
    )
    assert backend.kernel_status() == "numpy's compiled CPU kernels: active (stand-in)"


def test_the_thread_count_is_asked_or_set():
    backend = anycnn_numpy.backend
    before = anycnn_numpy.get_num_threads()
    other = 3 if before != 3 else 2
    try:
        assert backend.threads(None) == before
        assert anycnn_numpy.get_num_threads() == before
        assert backend.threads(other) == other
        assert anycnn_numpy.get_num_threads() == other
    finally:
        anycnn_numpy.set_num_threads(before)


# --- the float32 vector code, compiled afresh -------------------------------------------------


def test_the_vector_activations_compiled_afresh_are_the_scalar_bits():
    """``_direct``'s IR builders (the 16-lane exp, logistic, tanh, loads, stores, splats) run only
    when Numba compiles a kernel that uses them, and the kernels are cached: compiled here
    afresh, the vector logistic and tanh give the scalar loop's bits (Note [Explicit vectors])
    over the exponential's range, its clamps and the tanh's switch."""
    numba = pytest.importorskip("numba")
    from anycnn_numpy import _direct, _vectors
    from numba.core import datamodel

    # the vector type and its data model, made anew (the module's own were made at import)
    assert _vectors.Float32x16().name == "float32x16"
    model = _vectors._Float32x16Model(datamodel.default_manager, _vectors.float32x16)
    assert model.get_value_type() == _vectors.VECTOR
    assert str(_vectors.VECTOR) == "<16 x float>"
    vector = numba.njit(
        cache=False, nogil=True, fastmath=_direct._ACTIVATION_MATH, error_model="numpy"
    )(_direct._activate_run32.py_func)
    values = np.concatenate(
        [
            np.linspace(-100, 100, 2000, dtype=np.float32),
            np.linspace(-1, 1, 999, dtype=np.float32),
            np.float32([0.6249999, 0.625, 0.6250001, -0.625, 0.0, -0.0, np.inf, -np.inf, np.nan]),
            np.float32([88.7, 88.79, 88.81, 89.5, -85.9, -86.1, -87.0, 1e-30, -1e-30]),
        ]
    )
    for kind, p0, p1 in (
        (_direct.LOGISTIC, 1.0, 0.0),
        (_direct.LOGISTIC, 0.5, 0.0),
        (_direct.TANH, 1.7159, 2.0 / 3.0),
        (_direct.TANH, 1.0, 1.0),
    ):
        got, want = values.copy(), values.copy()
        vector(got, kind, np.float32(p0), np.float32(p1))
        _direct._activate_run(want, kind, np.float32(p0), np.float32(p1))
        assert got.tobytes() == want.tobytes(), (kind, p0, p1)


# --- the fused convolution gradients ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_backward_by_default_and_with_an_upsampling_of_any_fit(dtype):
    """``conv_backward(x, dy, y, f)`` takes up = 1 and returns delta by default; with ``up``,
    ``dy`` holds ``size // up`` ("drop") or ``ceil(size / up)`` ("pad") rows and columns on
    the fused path, and any other count goes through the chain (``fit_maps`` crops or pads
    ``up(dy)``): the reference op's results in every case."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 2, 10, 9)).astype(dtype)
    y = np.tanh(rng.standard_normal((2, 3, 7, 6))).astype(dtype)  # 4 x 4 kernels
    tanh = Tanh(1.7159, 2.0 / 3.0)
    tol = 2e-4 if dtype == np.float32 else 1e-11
    dy = rng.standard_normal(y.shape).astype(dtype)
    got = _conv.conv_backward(x, dy, y, tanh)
    want = reference.conv_backward(x, dy, y, tanh)
    assert got[2] is not None
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)
    for rows, columns in ((3, 3), (4, 3), (3, 4), (4, 4), (2, 3), (5, 3), (3, 2), (3, 5)):
        small = rng.standard_normal((2, 3, rows, columns)).astype(dtype)
        got = _conv.conv_backward(x, small, y, tanh, None, 2)
        want = reference.conv_backward(x, small, y, tanh, None, 2)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{rows} x {columns}")


# --- the FFT path -----------------------------------------------------------------------------


def _fft_cases(rng, h, w, padding, n=2):
    """conv_valid, conv_full and conv_kernel_grad on the FFT path, each with the reference op's
    answer (``n`` examples, 3 -> 4 maps, 3 x 4 kernels, a selection)."""
    from anycnn_numpy import _plan

    ph, pw = padding
    x = rng.standard_normal((n, 3, h, w))
    k = rng.standard_normal((4, 3, 3, 4))
    sel = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], bool)
    oh, ow = h + 2 * ph - 2, w + 2 * pw - 3
    d = rng.standard_normal((n, 4, oh, ow))
    with _plan.forced("fft"):
        got = [
            _conv.conv_valid(x, k, sel, padding),
            _conv.conv_full(d, k, sel, padding),
            _conv.conv_kernel_grad(x, d, sel, padding),
        ]
    want = [
        reference.conv_valid(x, k, sel, padding),
        reference.conv_full(d, k, sel, padding),
        reference.conv_kernel_grad(x, d, sel, padding),
    ]
    return got, want


@pytest.mark.parametrize("padding", [(0, 0), (1, 2)])
@pytest.mark.parametrize("size", [(11, 13), (17, 22)], ids=["11x13", "17x22"])
def test_fft_transforms_larger_than_the_maps(size, padding):
    """Note [Convolutions by the FFT]: the transform sizes are the next 2, 3, 5, 7-smooth ones,
    here often larger than the maps (11 -> 12, 13 -> 14, 17 -> 18, 22 -> 24): the rows and
    columns past the result are cut off, not returned."""
    rng = np.random.default_rng(size[0])
    got, want = _fft_cases(rng, *size, padding, n=5)  # slices of 2 and 3 examples
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "numpy"])
@pytest.mark.parametrize("budget", [1, "kept"])
def test_fft_in_groups_and_chunks_with_and_without_kept_spectra(monkeypatch, compiled, budget):
    """A budget that takes one example at a time and one map per group (4 examples: two per
    slice of the kernel gradient, each slice adding its chunks' products), and one that keeps
    the input spectra for every group (transformed once): the same results, with the compiled
    products of spectra and with the NumPy ones."""
    from anycnn_numpy import _fft_budget

    if not compiled:
        monkeypatch.setattr(_jit, "spectral_mac", None)
        monkeypatch.setattr(_jit, "spectral_corr", None)
    elif _jit.spectral_mac is None:
        pytest.skip("Numba is not installed here")
    # 'kept': room for the spectra of the batch (2 x 4 maps of 12 x 8 frequencies) but not for
    # a group of two maps
    limit = 2 * 4 * 12 * 8 * 8 if budget == "kept" else 1
    monkeypatch.setattr(_fft_budget, "GROUP_BYTES", limit)
    rng = np.random.default_rng(8)
    got, want = _fft_cases(rng, 10, 13, (0, 0), 2 if budget == "kept" else 4)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", [Tanh(1.7159, 2.0 / 3.0), Sigmoid(), Identity()])
def test_the_fused_gradients_take_every_fit_of_the_upsampling(monkeypatch, activation):
    """Note [Fused ops]: a convolution layer's backward pass on the direct kernels forms
    ``delta = f'(u) o up(dy)`` itself when ``dy`` has the layer's batch and maps and ``size //
    up`` or ``ceil(size / up)`` rows and columns (a subsampling layer after it dropping or
    padding a remainder); other sizes take the chain of ops (``fit_maps`` of ``up(dy)``)."""
    if _jit.correlate_into is None:
        pytest.skip("Numba is not installed here: no direct kernels")
    from anycnn_numpy import _plan

    fused = []
    original = _conv._direct_backward

    def spy(*args):
        if args[1] is not args[2]:  # (x, dy, y, ...); conv_kernel_grad passes (x, d, d, ...)
            fused.append(args[1].shape)
        return original(*args)

    monkeypatch.setattr(_conv, "_direct_backward", spy)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 10, 9))
    y = np.tanh(rng.standard_normal((2, 3, 7, 6)))
    with _plan.forced("direct"):
        for up, rows, columns, takes in [
            (1, 7, 6, True),
            (2, 3, 3, True),
            (2, 4, 3, True),
            (2, 3, 4, False),
            (2, 2, 3, False),
            (2, 4, 4, False),
            (3, 2, 2, True),
            (3, 3, 2, True),
            (3, 1, 2, False),
            (4, 1, 1, True),
            (4, 2, 2, True),
            (4, 3, 2, False),
        ]:
            fused.clear()
            dy = rng.standard_normal((2, 3, rows, columns))
            got = _conv.conv_backward(x, dy, y, activation, None, up)
            assert bool(fused) is takes, (up, rows, columns)
            want = reference.conv_backward(x, dy, y, activation, None, up)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-11, atol=1e-11)
        fused.clear()
        _conv.conv_backward(x, rng.standard_normal((2, 2, 7, 6)), y[:, :2].copy(), activation)
        assert fused, "fewer maps: still the fused kernel"
        _conv.conv_backward(x, rng.standard_normal((2, 3, 7, 6)).astype(np.float32), y, activation)
        assert len(fused) == 1, "dy of another dtype: the chain"


# --- im2col on batches cut into slices, and its wide columns ----------------------------------


def test_wide_windows_are_whole_rows_of_contiguous_maps_only():
    """Note [Wide columns]: ``[n, c, a, b, q] = x[n, c].flat[(kh-1-a) w + (kw-1-b) + q]`` for
    maps whose rows are contiguous and consecutive; None otherwise (a column slice of wider
    maps, or every other column)."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 6, 7))
    kh, kw, oh = 3, 2, 4
    wide = _im2col.wide_windows(x, kh, kw, oh)
    span = (oh - 1) * 7 + (7 - kw + 1)
    assert wide.shape == (2, 3, kh, kw, span)
    flat = x.reshape(2, 3, 42)
    for a in range(kh):
        for b in range(kw):
            start = (kh - 1 - a) * 7 + (kw - 1 - b)
            np.testing.assert_array_equal(wide[:, :, a, b], flat[:, :, start : start + span])
    assert _im2col.wide_windows(rng.standard_normal((2, 3, 6, 9))[..., :7], kh, kw, oh) is None
    assert _im2col.wide_windows(rng.standard_normal((2, 3, 6, 14))[..., ::2], kh, kw, oh) is None


@pytest.mark.parametrize("rows", ["contiguous", "strided"])
@pytest.mark.parametrize(
    "shape", [(12, 12, 3), (20, 20, 5), (5, 5, 5)], ids=["wide", "plain", "pixel"]
)
def test_im2col_on_a_batch_cut_into_slices(rows, shape):
    """The three im2col convolutions on 96 examples (more than one slice of the pool: each slice
    its own columns, grid and padded buffers, its own rows of the result) equal the reference
    ops, on maps whose rows are contiguous and on a column slice of wider maps."""
    h, w, k = shape
    rng = np.random.default_rng(h)
    big = rng.standard_normal((96, 4, h, w + 3))
    x = np.ascontiguousarray(big[..., :w]) if rows == "contiguous" else big[..., :w]
    kernel = rng.standard_normal((6, 4, k, k))
    delta = rng.standard_normal((96, 6, h - k + 1, w - k + 1))
    tol = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(
        _im2col.conv_valid(x, kernel, None), reference.conv_valid(x, kernel), **tol
    )
    np.testing.assert_allclose(
        _im2col.conv_kernel_grad(x, delta), reference.conv_kernel_grad(x, delta), **tol
    )
    np.testing.assert_allclose(
        _im2col.conv_full(delta, kernel), reference.conv_full(delta, kernel), **tol
    )


def test_a_slope_of_another_dtype_or_on_integers_is_the_activations_own():
    """The in-place slope runs on float arrays of one dtype; a float64 dy with float32 outputs
    (promoted by the activation's method) and integer outputs take the method, read-only arrays
    the in-place program (it writes neither): each the method's bits and dtype."""
    rng = np.random.default_rng(11)
    y32 = np.tanh(rng.standard_normal((3, 4))).astype(np.float32)
    dy64 = rng.standard_normal((3, 4))
    for activation in (Sigmoid(0.5), Tanh(1.7159, 2.0 / 3.0)):
        cases = [(dy64, y32), (dy64.astype(np.int64), np.arange(12).reshape(3, 4))]
        frozen = dy64.copy(), np.tanh(dy64)
        for a in frozen:
            a.flags.writeable = False
        cases.append(frozen)
        for dy, y in cases:
            got = _activation.sensitivity(dy, y, activation)
            want = activation.sensitivity(dy, y, np)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


# --- and what the op table and the odd shapes promise ----------------------------------------


def test_a_fresh_op_table_gives_the_reference_ops_in_one_two_and_three_dimensions():
    """``_fast_ops`` (with ``_nd.dimension_generic``'s 1-D and 3-D wrappers) built afresh, not
    the table made at import: each map op on signals, maps and volumes equals the reference."""
    rng = np.random.default_rng(12)
    table = anycnn_numpy._fast_ops()
    act = Tanh(1.7159, 2.0 / 3.0)
    # 1-D with C k = 15 (the 2-D mapping) and 40 (the volume kernels, float32), 2-D, 3-D
    for spatial, ks, c in (
        ((40,), (5,), 3),
        ((40,), (5,), 8),
        ((9, 8), (3, 2), 3),
        ((7, 6, 8), (3, 2, 3), 3),
    ):
        for dtype, tol in ((np.float32, 2e-4), (np.float64, 1e-10)):
            x = rng.standard_normal((2, c, *spatial)).astype(dtype)
            k = rng.standard_normal((4, c, *ks)).astype(dtype)
            b = rng.standard_normal(4).astype(dtype)
            pad = (1,) * len(spatial)
            out = tuple(s + 2 - q + 1 for s, q in zip(spatial, ks, strict=True))
            d = rng.standard_normal((2, 4, *out)).astype(dtype)
            y = np.tanh(rng.standard_normal((2, 4, *out))).astype(dtype)
            cases = [
                ("conv_valid", (x, k, None, pad)),
                ("conv_valid_activate", (x, k, b, act, None, pad)),
                ("conv_kernel_grad", (x, d, None, pad)),
                ("conv_full", (d, k, None, pad)),
                ("conv_backward", (x, d, y, act, None, 1, True, pad)),
            ]
            for name, args in cases:
                got, want = table[name](*args), getattr(reference, name)(*args)
                for g, w in zip(
                    got if isinstance(got, tuple) else (got,),
                    want if isinstance(want, tuple) else (want,),
                    strict=True,
                ):
                    assert g.shape == w.shape, (name, spatial)
                    np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=name)


def test_decimation_keeps_the_first_sample_of_whole_blocks_only():
    rng = np.random.default_rng(13)
    for h, w, n in ((7, 9, 2), (9, 7, 3), (8, 6, 2)):
        x = rng.standard_normal((2, 3, h, w))
        np.testing.assert_array_equal(_resample.decimate(x, n), reference.decimate(x, n))


def test_keep_freed_memory_says_whether_the_setting_was_made(monkeypatch):
    from anycnn_numpy import _memory

    monkeypatch.setattr(_memory, "keep_freed_memory", lambda: True)
    assert anycnn_numpy.keep_freed_memory() is True
    monkeypatch.setattr(_memory, "keep_freed_memory", lambda: False)
    assert anycnn_numpy.keep_freed_memory() is False


@pytest.mark.parametrize("selection", [False, True])
def test_one_large_example_on_two_halves_of_its_maps(selection):
    """Note [One example on two cores]: at batch 1 a large direct convolution runs its output
    maps in two halves, each with its own kernels, bias, selection rows, padding and deltas."""
    if _jit.correlate_into is None:
        pytest.skip("Numba is not installed here: no direct kernels")
    from anycnn_numpy import _plan

    rng = np.random.default_rng(14)
    x = rng.standard_normal((1, 6, 60, 60))  # 3.1 M multiply-adds: two halves
    k = rng.standard_normal((6, 6, 5, 5))
    sel = (rng.random((6, 6)) < 0.7) if selection else None
    pad = (1, 2)
    d = rng.standard_normal((1, 6, 58, 60))
    y = np.tanh(rng.standard_normal((1, 6, 58, 60)))
    act = Tanh(1.7159, 2.0 / 3.0)
    assert _conv._map_halves(1, 6, 6 * 6 * 25 * 58 * 60) is not None
    with _plan.forced("direct"):
        got = [
            _conv.conv_valid(x, k, sel, pad),
            _conv.conv_full(d, k, sel, pad),
            *_conv.conv_backward(x, d, y, act, sel, 1, True, pad),
        ]
    want = [
        reference.conv_valid(x, k, sel, pad),
        reference.conv_full(d, k, sel, pad),
        *reference.conv_backward(x, d, y, act, sel, 1, True, pad),
    ]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-9)


def test_a_padding_as_large_as_the_kernel_is_never_left_to_the_fft():
    """Note [Convolutions by the FFT]: the wrapped-around terms miss the 'valid' outputs only
    for paddings below the kernel's size; a larger padding takes another path even when the
    FFT is asked for, and gives the reference's results."""
    from anycnn_numpy import _plan

    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 2, 9, 8))
    k = rng.standard_normal((3, 2, 3, 2))
    for padding in ((3, 0), (0, 2), (4, 1), (4, 3)):
        with _plan.forced("fft"):
            got = _conv.conv_valid(x, k, None, padding)
        np.testing.assert_allclose(got, reference.conv_valid(x, k, None, padding), atol=1e-10)


def test_a_forced_nd_path_is_undone_after_its_block():
    from anycnn_numpy import _nd

    for volume in (True, False):
        with _nd.forced(volume):
            assert _nd._forced is volume
        assert _nd._forced is None
