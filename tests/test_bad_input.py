"""The bad-input catalogue: each case asserts the exception type and that the message names the
argument or layer and the expected and actual value. API cases run on the NumPy backend (the
cross-backend versions of the op and layer checks live in test_ops.py and test_network.py), with
array-api-strict where a case is about mixing backends; file cases (IDX, checkpoints) write their
file first; CLI cases run ``anycnn.cli.main`` in-process and assert exit status 2 and a single
``error: ...`` line on stderr naming the option or file and the value."""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest

import anycnn
from anycnn import datasets, models, optim, train
from anycnn import functional as F
from anycnn.backend import BackendUnavailableError, lookup
from anycnn.cli import EXIT_USAGE, main
from anycnn.layers import Convolution, Flatten, FullyConnected, LayerError, Subsampling
from anycnn.training import checkpoint as ckpt

NP = lookup("numpy")
STRICT = lookup("strict")


class _NoDLPack:
    """An Array API object of a made-up library that cannot export through DLPack."""

    def __array_namespace__(self, api_version=None):
        import types

        return types.ModuleType("fakearrays")


def _x(shape, dtype="float32"):
    return np.zeros(shape, dtype=dtype)


def _dlt():
    return models.dlt(backend="numpy")


def _with(value, index, shape=(2, 1, 28, 28), dtype="float32"):
    """A zero batch with one entry set (NaN, Inf) at ``index``."""
    x = np.zeros(shape, dtype=dtype)
    x[index] = value
    return x


_MNIST = datasets.load("mnist", limit=40)


def _dataset(**change):
    """The first 40 MNIST examples as a Dataset, with some fields replaced."""
    fields = dict(
        name="small",
        train_images=_MNIST.train_images,
        train_labels=_MNIST.train_labels,
        test_images=_MNIST.test_images,
        test_labels=_MNIST.test_labels,
    )
    fields.update(change)
    return datasets.Dataset(**fields)


def _train(**options):
    options = {"epochs": 1, "progress": False, "evaluate_test": False, **options}
    dataset = options.pop("dataset", None) or _dataset()
    return train.train(_dlt(), dataset, **options)


def _prep():
    return train.Preprocessing.fit(_dlt(), _MNIST.train_images)


def _write_idx(path, array, code=0x08, magic_zero=b"\x00\x00"):
    header = (
        magic_zero
        + struct.pack(">BB", code, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
    )
    path.write_bytes(header + array.astype(">u1").tobytes())
    return path


# (id, thunk, exception type, regex that names the thing and the expected/actual values)
API_CASES = [
    # --- registry ------------------------------------------------------------------------------
    (
        "unknown backend",
        lambda: anycnn.set_backend("tpu"),
        ValueError,
        r"unknown backend 'tpu'; known backends: auto, numpy, cpu",
    ),
    (
        "backend name not a string",
        lambda: anycnn.set_backend(3),
        TypeError,
        r"backend name must be a str, got int",
    ),
    # --- hot ops -------------------------------------------------------------------------------
    (
        "op wrong rank",
        lambda: F.conv_valid(_x((3, 8, 8)), _x((2, 3, 3, 3))),
        ValueError,
        r"conv_valid: x must be a 4-d \(N, C, H, W\) array, got shape \(3, 8, 8\)",
    ),
    (
        "op kernel larger than maps",
        lambda: F.conv_valid(_x((1, 1, 4, 4)), _x((1, 1, 5, 5))),
        ValueError,
        r"conv_valid: kernel 5x5 is larger than the 4x4 input maps",
    ),
    (
        "op channel mismatch",
        lambda: F.conv_valid(_x((1, 2, 8, 8)), _x((1, 3, 3, 3))),
        ValueError,
        r"x has 2 maps but the kernel expects C_in = 3",
    ),
    (
        "op integer images",
        lambda: F.conv_valid(np.zeros((1, 1, 8, 8), np.uint8), _x((1, 1, 3, 3))),
        TypeError,
        r"conv_valid: x must have a real floating dtype .* got uint8",
    ),
    (
        "op dtype mix",
        lambda: F.conv_valid(_x((1, 1, 8, 8)), _x((1, 1, 3, 3), "float64")),
        TypeError,
        r"x and kernel must share a dtype, got float32 and float64",
    ),
    (
        "op list instead of array",
        lambda: F.block_sum([[1.0]], 2),
        TypeError,
        r"block_sum: expected arrays, got builtins.list",
    ),
    (
        "op not divisible",
        lambda: F.block_sum(_x((1, 1, 7, 7)), 2),
        ValueError,
        r"block_sum: 7x7 maps are not divisible by 2",
    ),
    (
        "op zero factor",
        lambda: F.kron_upsample(_x((1, 1, 2, 2)), 0),
        ValueError,
        r"kron_upsample: the factor n must be a positive int, got 0",
    ),
    (
        "op negative factor",
        lambda: F.decimate(_x((1, 1, 4, 4)), -2),
        ValueError,
        r"decimate: the factor n must be a positive int, got -2",
    ),
    (
        "op selection shape",
        lambda: F.conv_valid(_x((1, 2, 8, 8)), _x((3, 2, 3, 3)), np.ones((2, 3), bool)),
        ValueError,
        r"selection must be a \(C_out, C_in\) = \(3, 2\) boolean table, got shape \(2, 3\)",
    ),
    (
        "op selection dtype",
        lambda: F.conv_valid(_x((1, 2, 8, 8)), _x((3, 2, 3, 3)), np.ones((3, 2))),
        TypeError,
        r"selection must be a boolean table, got dtype float64",
    ),
    # --- layers at build time ------------------------------------------------------------------
    (
        "subsampling not dividing",
        lambda: anycnn.Network([Convolution(2, 4), Subsampling(2)], (1, 10, 10), backend="numpy"),
        LayerError,
        r"Subsampling\(2, sum, identity\) \(sub2\): 7x7 maps are not divisible by 2",
    ),
    (
        "kernel larger than map",
        lambda: anycnn.Network([Convolution(2, 9)], (1, 8, 8), backend="numpy"),
        LayerError,
        r"\(conv1\): kernel 9x9 is larger than the 8x8 input maps",
    ),
    (
        "fully connected on maps",
        lambda: anycnn.Network([FullyConnected(3)], (1, 4, 4), backend="numpy"),
        LayerError,
        r"\(fc1\): expects a vector input, got maps of shape \(1, 4, 4\); add Flatten\(\)",
    ),
    (
        "table wrong shape",
        lambda: anycnn.Network(
            [Convolution(3, 3, selection=np.ones((2, 3), bool))], (2, 8, 8), backend="numpy"
        ),
        LayerError,
        r"\(conv1\): the input-map table must have shape \(C_out, C_in\) = \(3, 2\), got \(2, 3\)",
    ),
    (
        "table empty row",
        lambda: anycnn.Network(
            [Convolution(2, 3, selection=np.array([[True, False], [False, False]]))],
            (2, 8, 8),
            backend="numpy",
        ),
        LayerError,
        r"\(conv1\): output map\(s\) \[1\] use no input map",
    ),
    (
        "unknown selection",
        lambda: Convolution(2, 3, selection="quads").build(
            (2, 8, 8), anycnn.layers.BuildContext(NP, NP.xp.float32, np.random.default_rng())
        ),
        LayerError,
        r"unknown selection 'quads'; use one of full, lenet5",
    ),
    (
        "lenet5 table wrong sizes",
        lambda: anycnn.Network([Convolution(8, 3, selection="lenet5")], (6, 8, 8), backend="numpy"),
        LayerError,
        r"'lenet5' table connects 6 input maps to 16 output maps, got 6 -> 8",
    ),
    (
        "zero maps",
        lambda: Convolution(0, 3),
        ValueError,
        r"Convolution: maps must be a positive int, got 0",
    ),
    (
        "negative units",
        lambda: FullyConnected(-4),
        ValueError,
        r"FullyConnected: units must be a positive int, got -4",
    ),
    (
        "zero input size",
        lambda: anycnn.Network([Flatten()], (1, 0, 4), backend="numpy"),
        ValueError,
        r"input_shape must be positive sizes, got \(1, 0, 4\)",
    ),
    (
        "unknown activation",
        lambda: Convolution(2, 3, activation="swish"),
        ValueError,
        r"unknown activation 'swish'; known: .*sigmoid",
    ),
    (
        "unknown loss",
        lambda: anycnn.Network([Flatten()], (4,), loss="hinge", backend="numpy"),
        ValueError,
        r"unknown loss 'hinge'; known: squared_error, cross_entropy",
    ),
    (
        "unknown model",
        lambda: models.build("alexnet"),
        ValueError,
        r"unknown model 'alexnet'; known models: dlt, lenet5",
    ),
    (
        "bad dtype",
        lambda: models.dlt(backend="numpy", dtype="float16"),
        ValueError,
        r"dtype must be 'float32' or 'float64', got 'float16'",
    ),
    # --- network calls -------------------------------------------------------------------------
    (
        "input wrong shape",
        lambda: _dlt().forward(_x((2, 1, 32, 32))),
        ValueError,
        r"Convolution\(6@5x5, full, sigmoid\) \(conv1\) expects a batch of shape \(N, 1, 28, 28\), got \(2, 1, 32, 32\)",
    ),
    (
        "input wrong rank",
        lambda: _dlt().forward(_x((1, 28, 28))),
        ValueError,
        r"expects a batch of shape \(N, 1, 28, 28\), got \(1, 28, 28\)",
    ),
    (
        "input integer",
        lambda: _dlt().forward(np.zeros((2, 1, 28, 28), np.uint8)),
        TypeError,
        r"x has dtype uint8 but the network is float32",
    ),
    (
        "input float64 into float32 net",
        lambda: _dlt().forward(_x((2, 1, 28, 28), "float64")),
        TypeError,
        r"x has dtype float64 but the network is float32",
    ),
    (
        "input of another backend",
        lambda: models.dlt(backend="strict").forward(_x((2, 1, 28, 28))),
        TypeError,
        r"x is a numpy array but the network lives on array_api_strict; use net.backend.asarray",
    ),
    (
        "targets wrong shape",
        lambda: _dlt().compute_gradients(_x((2, 1, 28, 28)), _x((2, 9))),
        ValueError,
        r"targets must have shape \(2, 10\) to match the outputs of FullyConnected\(10, sigmoid\) \(fc5\), got \(2, 9\)",
    ),
    (
        "x and t batch sizes differ",
        lambda: _dlt().compute_gradients(_x((3, 1, 28, 28)), _x((2, 10))),
        ValueError,
        r"targets must have shape \(3, 10\) .* got \(2, 10\)",
    ),
    (
        "backward before forward",
        lambda: _dlt().backward(_x((2, 10))),
        RuntimeError,
        r"Network.backward: call forward first",
    ),
    (
        "unknown parameter",
        lambda: _dlt().set_parameter("conv9.kernel", _x((1,))),
        KeyError,
        r"no parameter 'conv9.kernel'; parameters: conv1.kernel",
    ),
    (
        "parameter wrong shape",
        lambda: _dlt().set_parameter("conv1.bias", _x((7,))),
        ValueError,
        r"set_parameter\(conv1.bias\): expected shape \(6,\), got \(7,\)",
    ),
    # --- data ----------------------------------------------------------------------------------
    (
        "labels out of range",
        lambda: datasets.one_hot(np.array([1, 12]), 10),
        datasets.DatasetError,
        r"12",
    ),
    ("unknown data set", lambda: datasets.load("cifar-11"), datasets.DatasetError, r"cifar-11"),
    ("zero batch size", lambda: datasets.batches(10, 0), ValueError, r"batch_size"),
    # --- non-finite inputs (Network.check_input, the checked path only) -------------------------
    (
        "NaN in x",
        lambda: _dlt().forward(_with(np.nan, (1, 0, 3, 4))),
        ValueError,
        r"Network.forward: x holds 1 non-finite value\(s\) \(NaN or Inf\) out of 1568; the first "
        r"is nan at index \(1, 0, 3, 4\)",
    ),
    (
        "Inf in x, compute_gradients",
        lambda: _dlt().compute_gradients(_with(np.inf, (0, 0, 0, 7)), _x((2, 10))),
        ValueError,
        r"Network.compute_gradients: x holds 1 non-finite .* the first is inf at index "
        r"\(0, 0, 0, 7\)",
    ),
    (
        "-Inf in x, predict",
        lambda: _dlt().predict(_with(-np.inf, (1, 0, 27, 27))),
        ValueError,
        r"Network.predict: x holds 1 non-finite .* -inf at index \(1, 0, 27, 27\)",
    ),
    (
        "NaN in x on strict",
        lambda: models.dlt(backend="strict").forward(STRICT.asarray(_with(np.nan, (0, 0, 1, 2)))),
        ValueError,
        r"Network.forward: x holds 1 non-finite .* index \(0, 0, 1, 2\)",
    ),
    (
        "NaN in targets",
        lambda: _dlt().compute_gradients(_x((2, 1, 28, 28)), _with(np.nan, (1, 3), (2, 10))),
        ValueError,
        r"Network.compute_gradients: targets holds 1 non-finite .* index \(1, 3\)",
    ),
    (
        "NaN in a new parameter",
        lambda: _dlt().set_parameter("conv1.bias", _with(np.nan, 2, (6,))),
        ValueError,
        r"set_parameter\(conv1.bias\): the value holds 1 non-finite .* index \(2,\)",
    ),
    (
        "NaN in training images",
        lambda: _train(
            dataset=_dataset(train_images=_with(np.nan, (5, 2, 3), (40, 28, 28), "float64"))
        ),
        ValueError,
        r"train: data set 'small': train_images hold 1 non-finite .* index \(5, 2, 3\) \(example 5\)",
    ),
    (
        "Inf in evaluation images",
        lambda: train.evaluate(
            _dlt(), _with(np.inf, (3, 0, 0), (40, 28, 28), "float64"), _MNIST.test_labels, _prep()
        ),
        ValueError,
        r"evaluate: images hold 1 non-finite .* \(example 3\)",
    ),
    # --- arrays of another backend -------------------------------------------------------------
    (
        "strict x into a NumPy network",
        lambda: _dlt().forward(STRICT.asarray(_x((2, 1, 28, 28)))),
        TypeError,
        r"Network.forward: x is a array_api_strict array but the network lives on numpy; "
        r"use net.backend.asarray",
    ),
    (
        "strict targets into a NumPy network",
        lambda: _dlt().compute_gradients(_x((2, 1, 28, 28)), STRICT.asarray(_x((2, 10)))),
        TypeError,
        r"targets are a array_api_strict array but the network lives on numpy",
    ),
    (
        "NumPy targets into a strict network",
        lambda: (
            lambda net: net.compute_gradients(net.backend.asarray(_x((2, 1, 28, 28))), _x((2, 10)))
        )(models.dlt(backend="strict")),
        TypeError,
        r"targets are a numpy array but the network lives on array_api_strict",
    ),
    (  # arrays of another backend are brought over by DLPack (issue 15), dtypes are kept
        "strict float64 parameter into a float32 NumPy network",
        lambda: _dlt().set_parameter("conv1.bias", STRICT.asarray(_x((6,), "float64"))),
        TypeError,
        r"set_parameter\(conv1.bias\): expected dtype float32, got float64",
    ),
    (
        "list as x",
        lambda: _dlt().forward([[0.0]]),
        TypeError,
        r"Network.forward: expected arrays, got builtins.list; use net.backend.asarray",
    ),
    (
        "an array without DLPack into NumPy asarray",
        lambda: NP.asarray(_NoDLPack()),
        TypeError,
        r"numpy.asarray: got an array of .*, which does not speak DLPack; convert it to NumPy",
    ),
    # --- backends and dtypes -------------------------------------------------------------------
    (
        "unknown backend for a network",
        lambda: anycnn.Network([Flatten()], (4,), backend="tpu"),
        ValueError,
        r"unknown backend 'tpu'; known backends: auto, numpy",
    ),
    (
        "unknown backend in use_backend",
        lambda: anycnn.use_backend("metal").__enter__(),
        ValueError,
        r"unknown backend 'metal'",
    ),
    (
        "float16 network",
        lambda: anycnn.Network([Flatten()], (4,), dtype="float16", backend="numpy"),
        ValueError,
        r"Network: dtype must be 'float32' or 'float64', got 'float16'",
    ),
    (
        "float16 x",
        lambda: _dlt().forward(_x((2, 1, 28, 28), "float16")),
        TypeError,
        r"x has dtype float16 but the network is float32; convert with "
        r"net.backend.asarray\(x, dtype='float32'\)",
    ),
    (
        "float16 parameter",
        lambda: _dlt().set_parameter("conv1.bias", _x((6,), "float16")),
        TypeError,
        r"set_parameter\(conv1.bias\): expected dtype float32, got float16",
    ),
    (
        "float16 on strict",
        lambda: STRICT.asarray(_x((2,)), dtype="float16"),
        ValueError,
        r"unknown dtype 'float16' for array_api_strict",
    ),
    # --- network construction ------------------------------------------------------------------
    (
        "seed not an int",
        lambda: anycnn.Network([Flatten()], (4,), seed="7", backend="numpy"),
        TypeError,
        r"Network: seed must be an int, got '7'",
    ),
    (
        "input_shape not a tuple",
        lambda: anycnn.Network([Flatten()], 784, backend="numpy"),
        TypeError,
        r"Network: input_shape must be a tuple of ints such as \(1, 28, 28\).*got 784",
    ),
    (
        "one layer object twice",
        lambda: (lambda fc: anycnn.Network([Flatten(), fc, fc], (4,), backend="numpy"))(
            FullyConnected(4)
        ),
        ValueError,
        r"Network: the same FullyConnected object appears twice in the layers",
    ),
    (
        "predict batch_size 0",
        lambda: _dlt().predict(_x((2, 1, 28, 28)), batch_size=0),
        ValueError,
        r"Network.predict: batch_size must be an int >= 1, got 0",
    ),
    # --- labels --------------------------------------------------------------------------------
    (
        "label 10 of 10 classes",
        lambda: _dataset(train_labels=np.where(np.arange(40) == 6, 10, _MNIST.train_labels)),
        datasets.DatasetError,
        r"dataset 'small': train_labels: label 10 at index 6 is outside \[0, 10\)",
    ),
    (
        "negative label",
        lambda: _dataset(test_labels=np.where(np.arange(40) == 2, -1, _MNIST.test_labels)),
        datasets.DatasetError,
        r"test_labels: label -1 at index 2 is outside \[0, 10\)",
    ),
    (
        "more classes than outputs",
        lambda: _train(dataset=_dataset(num_classes=12)),
        ValueError,
        r"labels out of range: data set 'small' has labels up to 9 \(12 classes\) but model 'dlt' "
        r"has 10 outputs",
    ),
    (
        "evaluate labels out of range",
        lambda: train.evaluate(_dlt(), _MNIST.test_images, np.full(40, 12), _prep()),
        ValueError,
        r"evaluate: labels out of range: label 12 at index 0 is outside \[0, 10\) for model 'dlt'",
    ),
    (
        "evaluate fewer labels than images",
        lambda: train.evaluate(_dlt(), _MNIST.test_images, _MNIST.test_labels[:30], _prep()),
        ValueError,
        r"evaluate: expected 40 integer labels, one per image, got int64 labels of shape \(30,\)",
    ),
    (
        "images and labels counts differ",
        lambda: _dataset(train_labels=_MNIST.train_labels[:30]),
        datasets.DatasetError,
        r"40 images in train_images but 30 labels in train_labels",
    ),
    # --- optimizers ----------------------------------------------------------------------------
    (
        "learning rate NaN",
        lambda: optim.SGD(_dlt(), float("nan")),
        ValueError,
        r"the learning rate must be a finite number >= 0, got nan",
    ),
    (
        "learning rate Inf",
        lambda: optim.Momentum(_dlt(), float("inf")),
        ValueError,
        r"the learning rate must be a finite number >= 0, got inf",
    ),
    (
        "learning rate negative",
        lambda: optim.SGD(_dlt(), -0.1),
        ValueError,
        r"the learning rate must be a finite number >= 0, got -0.1",
    ),
    (
        "learning rate zero",
        lambda: optim.SGD(_dlt(), 0.0),
        ValueError,
        r"the learning rate must be > 0 \(a zero rate never changes the parameters\), got 0.0",
    ),
    (
        "learning rate zero in a step schedule",
        lambda: optim.Step(0, every=2),
        ValueError,
        r"the learning rate must be > 0 .* got 0.0",
    ),
    (
        "learning rate a string",
        lambda: optim.SGD(_dlt(), "0.1"),
        ValueError,
        r"the learning rate must be a number, got '0.1'",
    ),
    (
        "momentum 1",
        lambda: optim.Momentum(_dlt(), 0.1, momentum=1.0),
        ValueError,
        r"the momentum must be in \[0, 1\), got 1.0",
    ),
    (
        "momentum negative",
        lambda: optim.Momentum(_dlt(), 0.1, momentum=-0.5),
        ValueError,
        r"the momentum must be a finite number >= 0, got -0.5",
    ),
    (
        "momentum NaN",
        lambda: optim.Momentum(_dlt(), 0.1, momentum=float("nan")),
        ValueError,
        r"the momentum must be a finite number >= 0, got nan",
    ),
    (
        "SDLM momentum 1",
        lambda: optim.SDLM(_dlt(), 0.1, momentum=1),
        ValueError,
        r"SDLM: momentum must be in \[0, 1\), got 1.0",
    ),
    (
        "negative layer rate",
        lambda: optim.SGD(_dlt(), 0.1, layer_rates={"conv1": -1}),
        ValueError,
        r"layer_rates\['conv1'\] must be a finite number >= 0, got -1.0",
    ),
    (
        "unknown optimizer",
        lambda: optim.build_optimizer("adam", _dlt()),
        ValueError,
        r"unknown optimizer 'adam'; known: sgd, momentum, sdlm",
    ),
    (
        "step before gradients",
        lambda: optim.SGD(_dlt(), 0.1).step(),
        RuntimeError,
        r"SGD.step: no gradient for 'conv1.kernel'; call network.compute_gradients",
    ),
    # --- the training loop ---------------------------------------------------------------------
    (
        "train batch_size 0",
        lambda: _train(batch_size=0),
        ValueError,
        r"train: batch_size must be an int >= 1, got 0",
    ),
    (
        "train batch_size negative",
        lambda: _train(batch_size=-8),
        ValueError,
        r"train: batch_size must be an int >= 1, got -8",
    ),
    (
        "train epochs 0",
        lambda: _train(epochs=0),
        ValueError,
        r"train: epochs must be an int >= 1, got 0",
    ),
    (
        "train epochs negative",
        lambda: _train(epochs=-2),
        ValueError,
        r"train: epochs must be an int >= 1, got -2",
    ),
    (
        "train limit negative",
        lambda: _train(limit=-5),
        ValueError,
        r"train: limit must be an int >= 1, got -5",
    ),
    (
        "train resume without a directory",
        lambda: _train(resume=True),
        ValueError,
        r"train: resume=True needs a checkpoint_dir",
    ),
    (
        "unknown preprocessing",
        lambda: _train(preprocessing="zscore"),
        ValueError,
        r"preprocessing must be 'auto', 'scale01', 'normalize' or 'none', got 'zscore'",
    ),
    (
        "images larger than the input",
        lambda: train.Preprocessing.fit(_dlt(), np.zeros((2, 32, 32), np.uint8)),
        ValueError,
        r"images of shape \(32, 32\) cannot feed model 'dlt', whose input is \(1, 28, 28\)",
    ),
    (
        "evaluate batch_size 0",
        lambda: train.evaluate(
            _dlt(), _MNIST.test_images, _MNIST.test_labels, _prep(), batch_size=0
        ),
        ValueError,
        r"evaluate: batch_size must be an int >= 1, got 0",
    ),
    (
        "checkpoint epoch negative",
        lambda: ckpt.save_checkpoint("unused.npz", _dlt(), epoch=-1),
        ValueError,
        r"save_checkpoint: epoch must be an int >= 0, got -1",
    ),
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


def _host(net):
    return {k: np.array(net.backend.to_host(v), copy=True) for k, v in net.parameters().items()}


def test_failed_calls_leave_parameters_unchanged(tmp_path):
    """Bad targets or inputs, a bad set_parameter, a failed checkpoint load into this network, a
    refused optimizer state, and a refused training call change no parameter (nor the optimizer
    state). Not in the list: a diverging optimizer step, which does not raise (steps are
    unchecked, see test_hardening.py); training raises afterwards and the checkpoint on disk is
    what stays intact."""
    net = _dlt()
    opt = optim.Momentum(net, 0.1)
    net.compute_gradients(_x((2, 1, 28, 28)), _x((2, 10)))
    opt.step()  # a velocity exists, so a refused state is seen to change nothing
    before, state = _host(net), opt.state_dict()

    wrong_shape = ckpt.save_checkpoint(
        tmp_path / "w.npz", models.dlt(backend="numpy", seed=3), epoch=1
    )
    with np.load(wrong_shape) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["param/fc5.bias"] = np.zeros(9, np.float32)  # fc5.bias is last: all others fit
    np.savez(wrong_shape, **arrays)
    other = ckpt.save_checkpoint(tmp_path / "l.npz", models.lenet5(backend="numpy"), epoch=1)
    good = ckpt.save_checkpoint(tmp_path / "g.npz", models.dlt(backend="numpy", seed=4), epoch=1)
    truncated = tmp_path / "t.npz"
    truncated.write_bytes(good.read_bytes()[:-100])
    bad_calls = [
        (
            lambda: net.compute_gradients(_x((2, 1, 28, 28)), _x((2, 9))),
            ValueError,
            r"targets must have shape \(2, 10\)",
        ),
        (
            lambda: net.compute_gradients(_x((3, 1, 28, 28)), _x((2, 10))),
            ValueError,
            r"targets must have shape \(3, 10\)",
        ),
        (
            lambda: net.compute_gradients(_x((2, 1, 32, 32)), _x((2, 10))),
            ValueError,
            r"expects a batch of shape \(N, 1, 28, 28\)",
        ),
        (
            lambda: net.compute_gradients(_with(np.nan, (0, 0, 0, 0)), _x((2, 10))),
            ValueError,
            r"x holds 1 non-finite",
        ),
        (
            lambda: net.set_parameter("conv1.kernel", _x((6, 1, 4, 4))),
            ValueError,
            r"expected shape \(6, 1, 5, 5\)",
        ),
        (
            lambda: net.set_parameter("conv1.kernel", _x((6, 1, 5, 5), "float64")),
            TypeError,
            r"expected dtype float32",
        ),
        (
            lambda: net.set_parameter("conv1.bias", _with(np.inf, 0, (6,))),
            ValueError,
            r"set_parameter\(conv1.bias\): the value holds 1 non-finite",
        ),
        (
            lambda: ckpt.load_checkpoint(wrong_shape, network=net),
            ckpt.CheckpointError,
            r"parameter 'fc5.bias' has shape \(9,\), the model 'dlt' expects \(10,\)",
        ),
        (
            lambda: ckpt.load_checkpoint(other, network=net),
            ckpt.CheckpointError,
            r"this checkpoint is of another model: it holds 'lenet5'",
        ),
        (
            lambda: ckpt.load_checkpoint(truncated, network=net),
            ckpt.CheckpointError,
            r"truncated or corrupt",
        ),
        (
            lambda: opt.load_state_dict(
                {
                    "steps": np.int64(9),
                    "velocity/conv1.bias": np.ones(6, np.float32),
                    "velocity/fc5.bias": np.ones(3, np.float32),
                }
            ),
            ValueError,
            r"'velocity/fc5.bias' must be float32 of shape \(10,\)",
        ),
        (
            lambda: train.train(
                net, _dataset(num_classes=12), epochs=1, optimizer=opt, progress=False
            ),
            ValueError,
            r"labels out of range",
        ),
        (
            lambda: train.train(
                net,
                _dataset(),
                epochs=1,
                optimizer=opt,
                progress=False,
                checkpoint_dir=tmp_path / "resume",
                resume=True,
                preprocessing="zscore",
            ),
            ValueError,
            r"preprocessing must be",
        ),
    ]
    for call, error, pattern in bad_calls:
        with pytest.raises(error, match=pattern):
            call()
        after = _host(net)
        for name, value in before.items():
            np.testing.assert_array_equal(after[name], value, err_msg=name)
    again = opt.state_dict()
    assert again.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_numpy_array_into_a_cupy_network():
    """GPU only: a host array handed to a CuPy network is refused, naming both backends."""
    record = lookup("cupy")
    if not record.available:
        pytest.skip(f"cupy unavailable: {record.unavailable_reason}")
    net = models.dlt(backend="cupy")
    with pytest.raises(
        TypeError,
        match=r"x is a numpy array but the network lives on cupy; "
        r"use net.backend.asarray\(x\)",
    ):
        net.forward(_x((2, 1, 28, 28)))
    with pytest.raises(TypeError, match=r"targets are a numpy array but the network lives on cupy"):
        net.compute_gradients(net.backend.asarray(_x((2, 1, 28, 28))), _x((2, 10)))


def test_torch_tensor_into_a_numpy_network():
    torch = pytest.importorskip("torch")
    with pytest.raises(
        TypeError,
        match=r"Network.forward: x is a torch array but the network "
        r"lives on numpy; use net.backend.asarray",
    ):
        _dlt().forward(torch.zeros((2, 1, 28, 28)))


def test_unknown_backend_in_the_environment(monkeypatch):
    import anycnn.backend.registry as registry

    monkeypatch.setattr(registry, "_process_default", None)
    monkeypatch.setenv("ANYCNN_BACKEND", "tpu")
    with pytest.raises(
        ValueError,
        match=r"ANYCNN_BACKEND='tpu': unknown backend 'tpu'; known "
        r"backends: auto, numpy",
    ):
        anycnn.get_backend()


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


# --- file cases: IDX data and checkpoints ---------------------------------------------------------
class _Marker:
    """A pickle payload: unpickling it creates the file ``path`` (so a test can see whether
    anything was ever unpickled)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _idx_bytes(array, code=0x08, kind=">u1"):
    header = b"\x00\x00" + struct.pack(">BB", code, array.ndim)
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(kind).tobytes()


def _checkpoint(tmp_path, name="c.npz"):
    net = models.dlt(backend="numpy")
    return ckpt.save_checkpoint(tmp_path / name, net, epoch=1, optimizer=optim.SGD(net, 0.1))


def _raw_pickle(tmp_path):
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"param/conv1.kernel": _Marker(tmp_path / "MARKER")}))
    return path


def _object_npz(tmp_path):
    """A real checkpoint with one parameter replaced by an object array of pickled payloads."""
    path = _checkpoint(tmp_path, "objects.npz")
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    payload = np.empty(6, dtype=object)
    payload[:] = [_Marker(tmp_path / "MARKER") for _ in range(6)]
    arrays["param/conv1.bias"] = payload
    np.savez(path, **arrays)
    return path


def _object_npy(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([_Marker(tmp_path / "MARKER")], dtype=object), allow_pickle=True)
    return path.rename(tmp_path / "objects-renamed.npz")


def _zip_without_npy(tmp_path):
    path = tmp_path / "plain.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta/info", b'{"format": "anycnn-checkpoint"}')
    return path


def _truncated_checkpoint(tmp_path):
    path = _checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _write(name, data):
    def make(tmp_path):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return make


# (id, make(tmp_path) -> path, load(path), exception, regex; "{path}" is the file's path)
FILE_CASES = [
    (
        "IDX truncated data",
        _write("a.idx", _idx_bytes(np.zeros((4, 3, 3)))[:-5]),
        datasets.read_idx,
        datasets.DatasetError,
        r"{path}: truncated IDX file: header announces 4x3x3 uint8 = 36 bytes of data, found 31",
    ),
    (
        "IDX wrong magic",
        _write("b.idx", b"\x01\x02" + _idx_bytes(np.zeros(4))[2:]),
        datasets.read_idx,
        datasets.DatasetError,
        r"{path}: not an IDX file: magic 0x01020801 does not start with two zero bytes",
    ),
    (
        "IDX unknown type code",
        _write("c.idx", _idx_bytes(np.zeros(4), code=0x07)),
        datasets.read_idx,
        datasets.DatasetError,
        r"{path}: not an IDX file: unknown type code 0x07 .* \(expected one of 0x08 uint8",
    ),
    (
        "IDX truncated header",
        _write("d.idx", _idx_bytes(np.zeros((2, 2, 2)))[:9]),
        datasets.read_idx,
        datasets.DatasetError,
        r"{path}: truncated IDX header: 3 dimension\(s\) need 12 bytes of sizes, found 5",
    ),
    (
        "IDX trailing bytes",
        _write("e.idx", _idx_bytes(np.zeros(3)) + b"\x00\x00"),
        datasets.read_idx,
        datasets.DatasetError,
        r"{path}: trailing bytes after IDX data",
    ),
    (
        "IDX empty file",
        _write("f.idx", b""),
        datasets.read_idx,
        datasets.DatasetError,
        r"{path}: not an IDX file: expected a 4-byte header",
    ),
    (
        "IDX truncated gzip",
        _write("g.idx.gz", gzip.compress(_idx_bytes(np.zeros(50)))[:-12]),
        datasets.read_idx,
        datasets.DatasetError,
        r"{path}: corrupt gzip stream",
    ),
    (
        "checkpoint truncated",
        _truncated_checkpoint,
        ckpt.load_checkpoint,
        ckpt.CheckpointError,
        r"{path}: truncated or corrupt checkpoint",
    ),
    (
        "checkpoint raw pickle renamed .npz",
        _raw_pickle,
        ckpt.load_checkpoint,
        ckpt.CheckpointError,
        r"{path}: not an anycnn checkpoint: the file is a Python pickle, which "
        r"is never loaded \(allow_pickle=False\)",
    ),
    (
        "checkpoint with an object array",
        _object_npz,
        ckpt.load_checkpoint,
        ckpt.CheckpointError,
        r"{path}: not an anycnn checkpoint: the file is an .npz archive holding an array of pickled "
        r"Python objects, which is never loaded",
    ),
    (
        "checkpoint an .npy of objects",
        _object_npy,
        ckpt.load_checkpoint,
        ckpt.CheckpointError,
        r"{path}: not an anycnn checkpoint: the file is an .npy array of pickled Python objects",
    ),
    (
        "checkpoint info of a raw pickle",
        _raw_pickle,
        ckpt.read_info,
        ckpt.CheckpointError,
        r"{path}: not an anycnn checkpoint: the file is a Python pickle",
    ),
    (
        "checkpoint zip member not .npy",
        _zip_without_npy,
        ckpt.load_checkpoint,
        ckpt.CheckpointError,
        r"{path}: not an anycnn checkpoint: member 'meta/info' is not an .npy",
    ),
    (
        "checkpoint is a directory",
        lambda tmp_path: tmp_path,
        ckpt.load_checkpoint,
        ckpt.CheckpointError,
        r"{path}: a directory, not a checkpoint file",
    ),
    (
        "checkpoint missing",
        lambda tmp_path: tmp_path / "nowhere.npz",
        ckpt.load_checkpoint,
        ckpt.CheckpointError,
        r"{path}: no such checkpoint file",
    ),
    (
        "checkpoint of another model",
        _checkpoint,
        lambda path: ckpt.load_checkpoint(path, network=models.lenet5(backend="numpy")),
        ckpt.CheckpointError,
        r"{path}: this checkpoint is of another model: it holds 'dlt' "
        r"\(input \(1, 28, 28\), 6 layers\), the network is 'lenet5' \(input \(1, 32, 32\)",
    ),
    (
        "checkpoint of another model by name",
        _checkpoint,
        lambda path: ckpt.load_checkpoint(path, model="lenet5"),
        ckpt.CheckpointError,
        r"{path}: this is a checkpoint of model 'dlt', not 'lenet5'",
    ),
    (
        "checkpoint loaded as float16",
        _checkpoint,
        lambda path: ckpt.load_checkpoint(path, dtype="float16"),
        ckpt.CheckpointError,
        r"{path}: cannot rebuild the network .* dtype must be 'float32' or 'float64', got 'float16'",
    ),
    (
        "checkpoint onto an unknown backend",
        _checkpoint,
        lambda path: ckpt.load_checkpoint(path, backend="tpu"),
        ckpt.CheckpointError,
        r"{path}: cannot rebuild the network .* unknown backend 'tpu'",
    ),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_file_bad_input(case, tmp_path):

    _, make, load, error, pattern = case
    path = make(tmp_path)
    with pytest.raises(error, match=pattern.replace("{path}", re.escape(str(path)))):
        load(path)
    assert not (tmp_path / "MARKER").exists(), "a pickle was loaded"


def test_the_pickle_payloads_are_live(tmp_path):
    """The payloads above do create the marker when unpickled, so its absence means something."""
    for make in (_raw_pickle, _object_npz, _object_npy):
        path = make(tmp_path)
        if path.read_bytes()[:2] == b"PK":
            with np.load(path, allow_pickle=True) as archive:
                archive["param/conv1.bias"]
        elif path.read_bytes()[:1] == b"\x93":
            np.load(path, allow_pickle=True)
        else:
            pickle.loads(path.read_bytes())
        assert (tmp_path / "MARKER").exists(), make.__name__
        (tmp_path / "MARKER").unlink()


# --- CLI cases: exit status 2 and one line on stderr ---------------------------------------------
def _idx_dir(tmp_path, *, labels_max=9, images=None, broken=None):
    """A data directory with the four gzip IDX files (30 images of 28x28); ``broken`` maps a file
    name to bytes written instead."""
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)
    if images is None:
        images = _idx_bytes(rng.integers(0, 256, (30, 28, 28)))
    labels = _idx_bytes(np.arange(30) % (labels_max + 1))
    content = {
        "train-images-idx3-ubyte.gz": images,
        "train-labels-idx1-ubyte.gz": labels,
        "t10k-images-idx3-ubyte.gz": images,
        "t10k-labels-idx1-ubyte.gz": labels,
    }
    content.update(broken or {})
    for name, data in content.items():
        (folder / name).write_bytes(gzip.compress(data))
    return folder


def _nan_images():
    images = np.random.default_rng(1).random((30, 28, 28))
    images[4, 10, 11] = np.nan
    return _idx_bytes(images, code=0x0D, kind=">f4")


def _checkpoint_dir_of(model):
    def make(tmp_path):
        folder = tmp_path / "run"
        folder.mkdir()
        net = models.build(model, backend="numpy")
        ckpt.save_checkpoint(
            folder / "epoch-0001.npz",
            net,
            epoch=1,
            optimizer=optim.build_optimizer("sgd", net, lr=0.1),
        )
        return folder

    return make


def _truncated_latest(tmp_path):
    folder = _checkpoint_dir_of("dlt")(tmp_path)
    path = folder / "epoch-0001.npz"
    path.write_bytes(path.read_bytes()[:500])
    return folder


def _a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a directory")
    return path


DLT = ["train", "--model", "dlt", "--limit", "20", "--quiet"]
# (id, setup(tmp_path) -> path substituted for "{p}" or None, argv, regex of the error line)
CLI_CASES = [
    (
        "unknown backend",
        None,
        ["train", "--backend", "tpu"],
        r"unknown backend 'tpu'; known backends: auto, numpy",
    ),
    (
        "unknown backend, gradcheck",
        None,
        ["gradcheck", "--backend", "metal"],
        r"unknown backend 'metal'",
    ),
    (
        "float16",
        None,
        ["train", "--dtype", "float16"],
        r"argument --dtype: invalid choice: 'float16' \(choose from 'float32', 'float64'\)",
    ),
    (
        "learning rate 0",
        None,
        [*DLT, "--lr", "0"],
        r"the learning rate must be > 0 \(a zero rate never changes the parameters\), got 0.0",
    ),
    (
        "learning rate negative",
        None,
        ["train", "--lr", "-1"],
        r"argument --lr: must be a finite number >= 0, got -1",
    ),
    (
        "learning rate NaN",
        None,
        ["train", "--lr", "nan"],
        r"argument --lr: must be a finite number >= 0, got nan",
    ),
    (
        "learning rate Inf",
        None,
        ["train", "--lr", "inf"],
        r"argument --lr: must be a finite number >= 0, got inf",
    ),
    (
        "momentum 1",
        None,
        ["train", "--optimizer", "momentum", "--momentum", "1"],
        r"--momentum must be in \[0, 1\), got 1.0",
    ),
    (
        "momentum negative",
        None,
        ["train", "--momentum", "-0.5"],
        r"argument --momentum: must be a finite number >= 0, got -0.5",
    ),
    (
        "momentum with sgd",
        None,
        ["train", "--optimizer", "sgd", "--momentum", "0.5"],
        r"--momentum needs --optimizer momentum",
    ),
    (
        "batch size 0",
        None,
        ["train", "--batch-size", "0"],
        r"argument --batch-size: must be >= 1, got 0",
    ),
    (
        "batch size negative",
        None,
        ["train", "--batch-size", "-3"],
        r"argument --batch-size: must be >= 1, got -3",
    ),
    ("epochs 0", None, ["train", "--epochs", "0"], r"argument --epochs: must be >= 1, got 0"),
    (
        "epochs negative",
        None,
        ["train", "--epochs", "-2"],
        r"argument --epochs: must be >= 1, got -2",
    ),
    ("limit 0", None, ["train", "--limit", "0"], r"argument --limit: must be >= 1, got 0"),
    (
        "seed not a number",
        None,
        ["train", "--seed", "abc"],
        r"argument --seed: invalid int value: 'abc'",
    ),
    (
        "layer rate without =",
        None,
        ["train", "--layer-rate", "conv1"],
        r"argument --layer-rate: expected LAYER=MULTIPLIER, got 'conv1'",
    ),
    (
        "layer rate of no layer",
        None,
        [*DLT, "--layer-rate", "conv9=0.5"],
        r"layer_rates: 'conv9' is neither a layer nor a parameter of dlt",
    ),
    (
        "unknown model",
        None,
        ["train", "--model", "alexnet"],
        r"argument --model: invalid choice: 'alexnet' \(choose from",
    ),
    ("unknown data set", None, ["train", "--dataset", "cifar-10"], r"unknown data set 'cifar-10'"),
    (
        "data dir not a directory",
        _a_file,
        ["train", "--data-dir", "{p}"],
        r"data_dir '.*a-file' is not a directory",
    ),
    (
        "labels out of range",
        lambda t: _idx_dir(t, labels_max=11),
        [*DLT, "--dataset", "{p}"],
        r"labels out of range: data set 'idx' has labels up to 11 \(12 classes\) but model 'dlt' has "
        r"10 outputs",
    ),
    (
        "truncated IDX file",
        lambda t: _idx_dir(t, broken={"train-labels-idx1-ubyte.gz": _idx_bytes(np.zeros(30))[:-4]}),
        [*DLT, "--dataset", "{p}"],
        r"train-labels-idx1-ubyte.gz: truncated gzip-compressed IDX file: header announces 30 uint8 = "
        r"30 bytes of data, found 26",
    ),
    (
        "wrong IDX magic",
        lambda t: _idx_dir(
            t,
            broken={
                "t10k-images-idx3-ubyte.gz": b"\x08\x03" + _idx_bytes(np.zeros((30, 28, 28)))[2:]
            },
        ),
        [*DLT, "--dataset", "{p}"],
        r"t10k-images-idx3-ubyte.gz: not an IDX file: magic 0x08030803",
    ),
    (
        "NaN in the images",
        lambda t: _idx_dir(t, images=_nan_images()),
        [*DLT, "--dataset", "{p}"],
        r"train: data set 'idx': train_images hold 1 non-finite value\(s\) \(NaN or Inf\); the first "
        r"is nan at index \(4, 10, 11\)",
    ),
    (
        "evaluate a truncated checkpoint",
        _truncated_checkpoint,
        ["evaluate", "{p}"],
        r"c.npz: truncated or corrupt checkpoint",
    ),
    (
        "evaluate a raw pickle",
        _raw_pickle,
        ["evaluate", "{p}"],
        r"evil.npz: not an anycnn checkpoint: the file is a Python pickle, which is never loaded",
    ),
    (
        "evaluate an object array",
        _object_npz,
        ["evaluate", "{p}"],
        r"objects.npz: not an anycnn checkpoint: the file is an .npz archive holding an array of "
        r"pickled Python objects",
    ),
    (
        "evaluate a directory",
        _checkpoint_dir_of("dlt"),
        ["evaluate", "{p}"],
        r"run: a directory, not a checkpoint file; pass one of its epoch-NNNN.npz files",
    ),
    (
        "evaluate on labels out of range",
        lambda t: (_checkpoint(t), _idx_dir(t, labels_max=11))[1],
        ["evaluate", "{p}/../c.npz", "--dataset", "{p}"],
        r"labels out of range: data set 'idx' has labels up to 11 but model 'dlt' has 10 outputs",
    ),
    (
        "resume another model",
        _checkpoint_dir_of("dlt"),
        [
            "train",
            "--model",
            "lenet5",
            "--limit",
            "20",
            "--quiet",
            "--optimizer",
            "sgd",
            "--checkpoint-dir",
            "{p}",
            "--resume",
        ],
        r"epoch-0001.npz: this checkpoint is of another model: it holds 'dlt'",
    ),
    (
        "resume another optimizer",
        _checkpoint_dir_of("dlt"),
        [*DLT, "--optimizer", "momentum", "--checkpoint-dir", "{p}", "--resume"],
        r"epoch-0001.npz: written with the 'sgd' optimizer; resume with the same one "
        r"\(got 'momentum'\)",
    ),
    (
        "resume a truncated checkpoint",
        _truncated_latest,
        [*DLT, "--optimizer", "sgd", "--checkpoint-dir", "{p}", "--resume"],
        r"epoch-0001.npz: truncated or corrupt checkpoint",
    ),
    (
        "checkpoint dir in use",
        _checkpoint_dir_of("dlt"),
        [*DLT, "--checkpoint-dir", "{p}"],
        r"run already holds checkpoints; pass --resume",
    ),
    (
        "checkpoint dir is a file",
        _a_file,
        [*DLT, "--checkpoint-dir", "{p}"],
        r"--checkpoint-dir .*a-file is a file; expected a directory",
    ),
    (
        "metrics under a file",
        _a_file,
        [*DLT, "--metrics", "{p}/m.json"],
        r"--metrics .*a-file/m.json: .*a-file is a file, not a directory",
    ),
    (
        "plots is a file",
        _a_file,
        [*DLT, "--plots", "{p}"],
        r"--plots .*a-file is a file; expected a directory",
    ),
    (
        "SDLM mu 0",
        None,
        [*DLT, "--optimizer", "sdlm", "--mu", "0"],
        r"SDLM: mu must be > 0 \(it bounds the step by epsilon / mu\), got 0.0",
    ),
    ("unknown command", None, ["frobnicate"], r"invalid choice: 'frobnicate'"),
]


def _cli(capsys, argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(case, tmp_path, capsys, monkeypatch):
    _, setup, argv, pattern = case
    monkeypatch.chdir(tmp_path)  # nothing a failed run might create lands in the checkout
    where = setup(tmp_path) if setup is not None else None
    argv = [a.replace("{p}", str(where)) for a in argv]
    code, out, err = _cli(capsys, argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USAGE, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    assert not (tmp_path / "MARKER").exists(), "a pickle was loaded"


def test_cli_cuda_without_a_gpu_says_why(capsys):
    record = lookup("cupy")
    if record.available:
        pytest.skip("a CUDA device is usable here")
    for argv in (
        ["train", "--backend", "cuda", "--limit", "10"],
        ["gradcheck", "--backend", "gpu"],
        ["evaluate", "x.npz", "--backend", "cupy"],
    ):
        code, out, err = _cli(capsys, argv)
        assert code == EXIT_USAGE
        assert err.count("\n") == 1 and "Traceback" not in err
        # the reason is the registry's: not installed (with the pip command) or not usable
        assert re.match(
            r"error: backend 'cupy' is unavailable: cupy is (not installed: pip install"
            r" \"anycnn\[cuda|installed but not usable: )",
            err,
        ), err
        assert record.unavailable_reason in err


# the cases that fail after parsing (argparse errors never reach a traceback)
DEBUG_CASES = [
    "learning rate 0",
    "unknown data set",
    "NaN in the images",
    "evaluate a raw pickle",
    "resume another model",
    "metrics under a file",
    "unknown backend",
]


@pytest.mark.parametrize("name", DEBUG_CASES)
def test_cli_debug_adds_the_traceback(name, tmp_path, capsys, monkeypatch):
    _, setup, argv, pattern = next(c for c in CLI_CASES if c[0] == name)
    monkeypatch.chdir(tmp_path)
    where = setup(tmp_path) if setup is not None else None
    argv = [a.replace("{p}", str(where)) for a in argv]
    code, out, err = _cli(capsys, [*argv, "--debug"])
    assert code == EXIT_USAGE
    assert "Traceback (most recent call last)" in err
    assert re.search(pattern, err.splitlines()[-1]), err
    assert not (tmp_path / "MARKER").exists()
