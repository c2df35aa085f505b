"""The fused forward pass of a trainable subsampling layer, ``subsample_forward`` (Note [Fused
ops] in anycnn.ops; the NumPy backend's compiled job, Note [Fused subsampling] in
anycnn_numpy._kernels): ``d`` bit for bit and ``beta d + b`` before f bit for bit against the
backend's chain of ops, f within a few ulp in float32, everything bit for bit in float64 and for
activations the job does not compile; the same bits on any number of threads; the layer's
remainder and decimation cases left on their chain."""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import Network, Subsampling
from anycnn import ops as reference

numpy_backend = pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _jit, _resample, _threads  # noqa: E402

from anycnn.layers.activations import get_activation  # noqa: E402


def _chain(x, n, mode, beta, bias, activation):
    return reference._subsample_forward(_resample._CHAIN, x, n, mode, beta, bias, activation)


def _ulps(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b) / np.spacing(np.maximum(np.abs(b), np.finfo(b.dtype).tiny)))


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("activation", ["lecun_tanh", "sigmoid", "tanh", "identity", "relu"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_forward_against_the_chain(dtype, activation, mode, n):
    rng = np.random.default_rng(n + len(activation))
    x = (rng.standard_normal((37, 5, 6 * n, 4 * n)) * 2).astype(dtype)
    beta = rng.uniform(0.2, 2.0, 5).astype(dtype)
    bias = rng.standard_normal(5).astype(dtype)
    f = get_activation(activation)
    y, d = _resample.subsample_forward(x, n, mode, beta, bias, f)
    want_y, want_d = _chain(x, n, mode, beta, bias, f)
    assert y.shape == d.shape == (37, 5, 6, 4) and y.dtype == d.dtype == np.dtype(dtype)
    assert d.tobytes() == want_d.tobytes()
    exact = dtype == "float64" or activation in ("identity", "relu")
    if exact:
        assert y.tobytes() == want_y.tobytes()
    else:
        assert _ulps(y, want_y) <= 4
    np.testing.assert_allclose(
        y, reference.subsample_forward(*_f64(x, n, mode, beta, bias), f)[0], rtol=2e-5, atol=1e-6
    )


def _f64(x, n, mode, beta, bias):
    return np.float64(x), n, mode, np.float64(beta), np.float64(bias)


def test_fused_forward_takes_the_compiled_job_for_float32():
    if _jit.subsample_forward_sliced is None:
        pytest.skip("Numba is not installed here")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    beta, bias = np.ones(3, np.float32), np.zeros(3, np.float32)
    f = get_activation("tanh")
    calls = []
    driver = _jit.subsample_forward_sliced

    def spy(*args):
        calls.append(args)
        return driver(*args)

    _jit.subsample_forward_sliced = spy
    try:
        _resample.subsample_forward(x, 2, "sum", beta, bias, f)
        assert len(calls) == 1
        _resample.subsample_forward(x.astype(np.float64), 2, "sum", beta * 1.0, bias * 1.0, f)
        _resample.subsample_forward(x, 2, "sum", beta, bias, get_activation("relu"))
        _resample.subsample_forward(x[:, :, :, ::-1], 2, "sum", beta, bias, f)  # a view
        assert len(calls) == 1
    finally:
        _jit.subsample_forward_sliced = driver


def test_fused_forward_bits_do_not_depend_on_threads():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((256, 6, 28, 28)).astype(np.float32)
    beta = rng.uniform(0.2, 2.0, 6).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    f = get_activation("lecun_tanh")
    assert len(_threads.slices(256, 6 * 28 * 28 * 4)) > 1
    results = []
    for threads in (1, 2, 3):
        before = _threads.set_num_threads(threads)
        try:
            results.append(_resample.subsample_forward(x, 2, "sum", beta, bias, f))
        finally:
            _threads.set_num_threads(before)
    for y, d in results[1:]:
        assert y.tobytes() == results[0][0].tobytes() and d.tobytes() == results[0][1].tobytes()


@pytest.mark.parametrize(
    "options", [{"remainder": "pad"}, {"remainder": "drop"}, {"mode": "decimate"}, {}]
)
def test_the_layer_against_its_definition(options):
    """Whole blocks take the fused op, remainders and decimation their chain: the layer gives
    f(beta down(x) + b) either way (float64, the reference ops as the oracle)."""
    mode = options.pop("mode", "sum")
    net = Network(
        [Subsampling(2, mode, activation="tanh", **options)],
        (3, 9 if options else 8, 8),
        dtype="float64",
        backend="numpy",
    )
    layer = net.layers[0]
    rng = np.random.default_rng(1)
    layer.params["beta"][...] = rng.uniform(0.5, 2.0, 3)
    layer.params["bias"][...] = rng.standard_normal(3)
    x = rng.standard_normal((4, *net.input_shape))
    y = net.forward(x)
    fitted = x if not options else reference.fit_maps(x, *layer._fit)
    down = {"sum": reference.block_sum, "decimate": reference.decimate}[mode](fitted, 2)
    beta, bias = layer.params["beta"][:, None, None], layer.params["bias"][:, None, None]
    np.testing.assert_allclose(y, np.tanh(beta * down + bias), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer._d, down, rtol=1e-12, atol=1e-12)
