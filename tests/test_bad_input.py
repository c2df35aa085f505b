"""The bad-input catalogue: each case asserts the exception type and that the message names the
argument or layer and the expected and actual value. Cases run on the NumPy backend (the
cross-backend versions of the op and layer checks live in test_ops.py and test_network.py)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

import anycnn
from anycnn import datasets, functional as F, models
from anycnn.backend import BackendUnavailableError, lookup
from anycnn.layers import Convolution, Flatten, FullyConnected, LayerError, Subsampling

NP = lookup("numpy")


def _x(shape, dtype="float32"):
    return np.zeros(shape, dtype=dtype)


def _dlt():
    return models.dlt(backend="numpy")


def _write_idx(path, array, code=0x08, magic_zero=b"\x00\x00"):
    header = magic_zero + struct.pack(">BB", code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(">u1").tobytes())
    return path


# (id, thunk, exception type, regex that names the thing and the expected/actual values)
API_CASES = [
    # --- registry ------------------------------------------------------------------------------
    ("unknown backend", lambda: anycnn.set_backend("tpu"), ValueError,
     r"unknown backend 'tpu'; known backends: auto, numpy, cpu"),
    ("backend name not a string", lambda: anycnn.set_backend(3), TypeError,
     r"backend name must be a str, got int"),
    # --- hot ops -------------------------------------------------------------------------------
    ("op wrong rank", lambda: F.conv_valid(_x((3, 8, 8)), _x((2, 3, 3, 3))), ValueError,
     r"conv_valid: x must be a 4-d \(N, C, H, W\) array, got shape \(3, 8, 8\)"),
    ("op kernel larger than maps", lambda: F.conv_valid(_x((1, 1, 4, 4)), _x((1, 1, 5, 5))), ValueError,
     r"conv_valid: kernel 5x5 is larger than the 4x4 input maps"),
    ("op channel mismatch", lambda: F.conv_valid(_x((1, 2, 8, 8)), _x((1, 3, 3, 3))), ValueError,
     r"x has 2 maps but the kernel expects C_in = 3"),
    ("op integer images", lambda: F.conv_valid(np.zeros((1, 1, 8, 8), np.uint8), _x((1, 1, 3, 3))),
     TypeError, r"conv_valid: x must have a real floating dtype .* got uint8"),
    ("op dtype mix", lambda: F.conv_valid(_x((1, 1, 8, 8)), _x((1, 1, 3, 3), "float64")), TypeError,
     r"x and kernel must share a dtype, got float32 and float64"),
    ("op list instead of array", lambda: F.block_sum([[1.0]], 2), TypeError,
     r"block_sum: expected arrays, got builtins.list"),
    ("op not divisible", lambda: F.block_sum(_x((1, 1, 7, 7)), 2), ValueError,
     r"block_sum: 7x7 maps are not divisible by 2"),
    ("op zero factor", lambda: F.kron_upsample(_x((1, 1, 2, 2)), 0), ValueError,
     r"kron_upsample: the factor n must be a positive int, got 0"),
    ("op negative factor", lambda: F.decimate(_x((1, 1, 4, 4)), -2), ValueError,
     r"decimate: the factor n must be a positive int, got -2"),
    ("op selection shape", lambda: F.conv_valid(_x((1, 2, 8, 8)), _x((3, 2, 3, 3)), np.ones((2, 3), bool)),
     ValueError, r"selection must be a \(C_out, C_in\) = \(3, 2\) boolean table, got shape \(2, 3\)"),
    ("op selection dtype", lambda: F.conv_valid(_x((1, 2, 8, 8)), _x((3, 2, 3, 3)), np.ones((3, 2))),
     TypeError, r"selection must be a boolean table, got dtype float64"),
    # --- layers at build time ------------------------------------------------------------------
    ("subsampling not dividing", lambda: anycnn.Network(
        [Convolution(2, 4), Subsampling(2)], (1, 10, 10), backend="numpy"), LayerError,
     r"Subsampling\(2, sum, identity\) \(sub2\): 7x7 maps are not divisible by 2"),
    ("kernel larger than map", lambda: anycnn.Network([Convolution(2, 9)], (1, 8, 8), backend="numpy"),
     LayerError, r"\(conv1\): kernel 9x9 is larger than the 8x8 input maps"),
    ("fully connected on maps", lambda: anycnn.Network([FullyConnected(3)], (1, 4, 4), backend="numpy"),
     LayerError, r"\(fc1\): expects a vector input, got maps of shape \(1, 4, 4\); add Flatten\(\)"),
    ("table wrong shape", lambda: anycnn.Network(
        [Convolution(3, 3, selection=np.ones((2, 3), bool))], (2, 8, 8), backend="numpy"), LayerError,
     r"\(conv1\): the input-map table must have shape \(C_out, C_in\) = \(3, 2\), got \(2, 3\)"),
    ("table empty row", lambda: anycnn.Network(
        [Convolution(2, 3, selection=np.array([[True, False], [False, False]]))], (2, 8, 8),
        backend="numpy"), LayerError, r"\(conv1\): output map\(s\) \[1\] use no input map"),
    ("unknown selection", lambda: Convolution(2, 3, selection="quads").build(
        (2, 8, 8), anycnn.layers.BuildContext(NP, NP.xp.float32, np.random.default_rng())),
     LayerError, r"unknown selection 'quads'; use one of full, lenet5"),
    ("lenet5 table wrong sizes", lambda: anycnn.Network(
        [Convolution(8, 3, selection="lenet5")], (6, 8, 8), backend="numpy"), LayerError,
     r"'lenet5' table connects 6 input maps to 16 output maps, got 6 -> 8"),
    ("zero maps", lambda: Convolution(0, 3), ValueError, r"Convolution: maps must be a positive int, got 0"),
    ("negative units", lambda: FullyConnected(-4), ValueError,
     r"FullyConnected: units must be a positive int, got -4"),
    ("zero input size", lambda: anycnn.Network([Flatten()], (1, 0, 4), backend="numpy"), ValueError,
     r"input_shape must be positive sizes, got \(1, 0, 4\)"),
    ("unknown activation", lambda: Convolution(2, 3, activation="swish"), ValueError,
     r"unknown activation 'swish'; known: .*sigmoid"),
    ("unknown loss", lambda: anycnn.Network([Flatten()], (4,), loss="hinge", backend="numpy"),
     ValueError, r"unknown loss 'hinge'; known: squared_error, cross_entropy"),
    ("unknown model", lambda: models.build("alexnet"), ValueError,
     r"unknown model 'alexnet'; known models: dlt, lenet5"),
    ("bad dtype", lambda: models.dlt(backend="numpy", dtype="float16"), ValueError,
     r"dtype must be 'float32' or 'float64', got 'float16'"),
    # --- network calls -------------------------------------------------------------------------
    ("input wrong shape", lambda: _dlt().forward(_x((2, 1, 32, 32))), ValueError,
     r"Convolution\(6@5x5, full, sigmoid\) \(conv1\) expects a batch of shape \(N, 1, 28, 28\), got \(2, 1, 32, 32\)"),
    ("input wrong rank", lambda: _dlt().forward(_x((1, 28, 28))), ValueError,
     r"expects a batch of shape \(N, 1, 28, 28\), got \(1, 28, 28\)"),
    ("input integer", lambda: _dlt().forward(np.zeros((2, 1, 28, 28), np.uint8)), TypeError,
     r"x has dtype uint8 but the network is float32"),
    ("input float64 into float32 net", lambda: _dlt().forward(_x((2, 1, 28, 28), "float64")), TypeError,
     r"x has dtype float64 but the network is float32"),
    ("input of another backend", lambda: models.dlt(backend="strict").forward(_x((2, 1, 28, 28))),
     TypeError, r"x is a numpy array but the network lives on array_api_strict; use net.backend.asarray"),
    ("targets wrong shape", lambda: _dlt().compute_gradients(_x((2, 1, 28, 28)), _x((2, 9))), ValueError,
     r"targets must have shape \(2, 10\) to match the outputs of FullyConnected\(10, sigmoid\) \(fc5\), got \(2, 9\)"),
    ("x and t batch sizes differ", lambda: _dlt().compute_gradients(_x((3, 1, 28, 28)), _x((2, 10))),
     ValueError, r"targets must have shape \(3, 10\) .* got \(2, 10\)"),
    ("backward before forward", lambda: _dlt().backward(_x((2, 10))), RuntimeError,
     r"Network.backward: call forward first"),
    ("unknown parameter", lambda: _dlt().set_parameter("conv9.kernel", _x((1,))), KeyError,
     r"no parameter 'conv9.kernel'; parameters: conv1.kernel"),
    ("parameter wrong shape", lambda: _dlt().set_parameter("conv1.bias", _x((7,))), ValueError,
     r"set_parameter\(conv1.bias\): expected shape \(6,\), got \(7,\)"),
    # --- data ----------------------------------------------------------------------------------
    ("labels out of range", lambda: datasets.one_hot(np.array([1, 12]), 10), datasets.DatasetError,
     r"12"),
    ("unknown data set", lambda: datasets.load("cifar-11"), datasets.DatasetError, r"cifar-11"),
    ("zero batch size", lambda: datasets.batches(10, 0), ValueError, r"batch_size"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case):
    _, thunk, error, pattern = case
    with pytest.raises(error, match=pattern):
        thunk()


def test_cupy_without_gpu_is_a_clear_error():
    record = lookup("cupy")
    if record.available:
        pytest.skip("a CUDA device is usable here")
    with pytest.raises(BackendUnavailableError, match=r"backend 'cupy' is unavailable: cupy is"):
        anycnn.set_backend("cuda")
    with pytest.raises(BackendUnavailableError, match=r"cupy"):
        models.dlt(backend="gpu")


def test_failed_calls_leave_parameters_unchanged():
    net = _dlt()
    before = {k: np.array(v, copy=True) for k, v in net.parameters().items()}
    bad_calls = [
        lambda: net.compute_gradients(_x((2, 1, 28, 28)), _x((2, 9))),
        lambda: net.compute_gradients(_x((2, 1, 32, 32)), _x((2, 10))),
        lambda: net.set_parameter("conv1.kernel", _x((6, 1, 4, 4))),
        lambda: net.set_parameter("conv1.kernel", _x((6, 1, 5, 5), "float64")),
    ]
    for call in bad_calls:
        with pytest.raises((ValueError, TypeError)):
            call()
    for name, value in net.parameters().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_truncated_idx(tmp_path):
    path = _write_idx(tmp_path / "x.idx", np.zeros((4, 3, 3), np.uint8))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(datasets.DatasetError, match=r"x.idx.*truncated"):
        datasets.read_idx(path)


def test_wrong_idx_magic(tmp_path):
    path = _write_idx(tmp_path / "y.idx", np.zeros((4,), np.uint8), magic_zero=b"\x01\x02")
    with pytest.raises(datasets.DatasetError, match=r"y.idx"):
        datasets.read_idx(path)


def test_corrupt_gzip_idx(tmp_path):
    path = tmp_path / "z.idx.gz"
    data = gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 100) + bytes(100))
    path.write_bytes(data[:20] + b"garbage" + data[27:])
    with pytest.raises(datasets.DatasetError, match=r"z.idx.gz"):
        datasets.read_idx(path)


def test_directory_without_the_files(tmp_path):
    with pytest.raises(datasets.DatasetError, match=r"train-images-idx3-ubyte"):
        datasets.load(tmp_path)
