"""The training loop: preprocessing, shuffled mini-batches, updates, evaluation, progress,
divergence checks, checkpoints and metrics.

::

    import anycnn
    from anycnn import datasets, models, optim, train

    ds = datasets.load("mnist")
    net = models.lenet5(backend="auto")
    opt = optim.Momentum(net, optim.Step(0.02, every=4, gamma=0.3), momentum=0.9)
    result = train.train(net, ds, epochs=10, batch_size=32, optimizer=opt, seed=0)
    print(result.history[-1].test_error)

Memory: the host keeps the data set as it was loaded (``uint8`` for MNIST) and preprocesses each
mini-batch when it is drawn (:class:`Preprocessing`), so at most one batch exists in float on
the host; ``network.backend.asarray`` moves it to the device as it is used.

Synchronisation: the loss and the error count of each batch stay on the device; they are brought
to the host every ``report_every`` batches (one transfer for the whole window), which is also
when a non-finite loss is detected (:class:`DivergenceError` names the first bad batch).

Resuming: with ``checkpoint_dir`` a checkpoint is written after every epoch
(:mod:`anycnn.training.checkpoint`), holding the parameters, the optimizer state, the state of the
NumPy generator that shuffles, the preprocessing and the history. ``resume=True`` continues from the
latest one; on the CPU an interrupted and resumed run ends with exactly the parameters of an
uninterrupted one with the same seed.

Structure: :class:`Trainer` holds the loop in three parts, setup and resume (its constructor),
one pass (:meth:`Trainer.run_epoch`) and one update (:meth:`Trainer.step`), with gradient hooks
between back-propagation and the optimizer's update; :func:`train` is ``Trainer(...).run()``.

Data parallelism: under ``mpiexec`` (or with ``distributed=True``) ``batch_size`` is the global
batch, each process takes its slice of every batch, a gradient hook averages the gradients,
and only rank 0 writes files (``Note [Data-parallel step]`` in :mod:`anycnn.training.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anycnn import data as datasets
from anycnn import subnormals
from anycnn.backend import resolve_dtype
from anycnn.network import Network, check_label_range
from anycnn.training import checkpoint as ckpt
from anycnn.training.optim import SGD, Optimizer

__all__ = [
    "DivergenceError",
    "EpochRecord",
    "Preprocessing",
    "TRAINING_DEFAULTS",
    "GradientHook",
    "default_epochs",
    "TrainResult",
    "Trainer",
    "evaluate",
    "target_values",
    "train",
]

#: Per-model defaults of ``anycnn train``. DLT: DeepLearnToolbox's ``test_example_CNN`` (batch
#: 50, rate 1, plain SGD, one epoch: 11.3% test error). LeNet-5: mini-batch SGD with momentum
#: 0.9, rate 0.02 halved every 4 epochs, batch 32: under 2% test error after the default 2 epochs
#: and 0.88% after 20 on MNIST (the README's results table has the commands and times).
TRAINING_DEFAULTS: dict[str, dict[str, Any]] = {
    "dlt": {
        "optimizer": "sgd",
        "lr": 1.0,
        "batch_size": 50,
        "epochs": 1,
        "momentum": None,
        "schedule": "constant",
        "step_every": 1,
        "gamma": 1.0,
    },
    "lenet5": {
        "optimizer": "momentum",
        "lr": 0.02,
        "batch_size": 32,
        "epochs": 2,
        "momentum": 0.9,
        "schedule": "step",
        "step_every": 4,
        "gamma": 0.5,
    },
}
# cnn1d on the UCR time series (issue 18): the archive's training sets are small (36 to 200
# series), so small batches and many passes; the error at the last epoch is what bench/ucr.py
# reports (no early stopping on the test set).
TRAINING_DEFAULTS["cnn1d"] = {
    "optimizer": "momentum",
    "lr": 0.01,
    "batch_size": 4,
    "epochs": 300,
    "momentum": 0.9,
    "schedule": "constant",
    "step_every": 1,
    "gamma": 1.0,
}
# cnn1d_global, the UCR recipe (issue 18; bench/ucr.py and the README have its figures): ReLU
# units and a mean over the whole signal learn slowly from a start where every class gets about
# the same score, so the passes are set by updates, not epochs: 8,000 updates of 8 series (300
# epochs of OSULeaf's 200 series, 1,143 of GunPoint's 50, 1,600 of ArrowHead's 36: with 300
# epochs the two small sets were still at 8-33 % training error), rate 0.03, momentum 0.9; and
# every series is shifted by up to 10 % of its length each pass (anycnn.data.augment.Shift):
# the training sets are a few dozen series; and read backwards with probability 1/2 (the
# archive's outline problems, ArrowHead and OSULeaf, trace a shape's contour: backwards, its
# mirror image's, of the same class; README "Variants tried", third round).
TRAINING_DEFAULTS["cnn1d_global"] = {
    **TRAINING_DEFAULTS["cnn1d"],
    "lr": 0.03,
    "batch_size": 8,
    "updates": 8000,
    "augment_shift": 0.1,
    "augment_reverse": 0.5,
}


def default_epochs(defaults: Mapping[str, Any], train_size: int, batch_size: int) -> int:
    """The passes of a model's defaults: ``defaults["epochs"]``, or, where the defaults give
    ``"updates"``, as many passes as make that many updates of ``batch_size`` on ``train_size``
    patterns (at least one).

    >>> default_epochs(TRAINING_DEFAULTS["cnn1d_global"], 50, 8)   # GunPoint: 7 batches a pass
    1143
    >>> default_epochs(TRAINING_DEFAULTS["lenet5"], 60000, 32)
    2
    """
    updates = defaults.get("updates")
    if updates is None:
        return int(defaults["epochs"])
    per_pass = -(-int(train_size) // max(1, min(int(batch_size), int(train_size))))
    return max(1, -(-int(updates) // per_pass))


#: Fallback for networks outside the zoo.
GENERIC_DEFAULTS: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.05,
    "batch_size": 32,
    "epochs": 1,
    "momentum": None,
    "schedule": "constant",
    "step_every": 1,
    "gamma": 1.0,
}


class DivergenceError(RuntimeError):
    """Training produced a NaN or infinite loss; the message names the epoch and the batch.

    Attributes: ``epoch`` and ``batch`` (1-based), ``value`` (the bad loss), ``checkpoint`` (the
    last good checkpoint file, left untouched, or None).

    Examples
    --------
    >>> from anycnn.training.loop import DivergenceError
    >>> error = DivergenceError(3, 12, float("nan"))
    >>> error.epoch, error.batch
    (3, 12)
    >>> print(error)
    training diverged: the loss is nan at epoch 3, batch 12; lower the learning rate; no
    checkpoint was written
    """

    def __init__(self, epoch: int, batch: int, value: float, checkpoint: Path | None = None):
        self.epoch, self.batch, self.value, self.checkpoint = epoch, batch, value, checkpoint
        where = (
            f"; the last good checkpoint is {checkpoint}"
            if checkpoint is not None
            else "; no checkpoint was written"
        )
        super().__init__(
            f"training diverged: the loss is {value} at epoch {epoch}, batch {batch}; lower the "
            f"learning rate{where}"
        )


# --------------------------------------------------------------------------------------------
# Preprocessing and targets
# --------------------------------------------------------------------------------------------
#: How each zoo model's inputs are prepared: DeepLearnToolbox divides by 255; LeNet-5 (and any
#: other network) uses zero mean and unit variance (notes 2.1) with the training statistics.
MODEL_PREPROCESSING = {"dlt": "scale01", "lenet5": "normalize"}


@dataclass
class Preprocessing:
    """Turns host images (``(N, H, W)`` or ``(N, C, H, W)``, any number) into a float batch
    ``(N, C, H', W')`` for the network, one batch at a time.

    ``kind`` is ``"scale01"`` (``x / 255``, uint8 images only), ``"normalize"``
    (``(x - mean) / std`` with the training set's statistics) or ``"none"`` (float inputs cast to
    the network's dtype: :meth:`anycnn.Network.fit` without a preprocessing). Images smaller
    than the network's input are padded, centred, with the background value, before
    normalising: a 0 border becomes ``-mean / std`` as LeCun pads MNIST's 28x28 digits to 32x32.

    >>> import numpy as np, anycnn
    >>> prep = Preprocessing.fit(anycnn.models.dlt(), np.full((2, 28, 28), 51, np.uint8))
    >>> prep.kind, prep(np.full((1, 28, 28), 255, np.uint8)).shape
    ('scale01', (1, 1, 28, 28))
    """

    kind: str
    input_shape: tuple[int, ...]
    mean: float | None = None
    std: float | None = None

    @classmethod
    def fit(cls, network: Network, images: np.ndarray, kind: str = "auto") -> Preprocessing:
        """Choose and fit the preprocessing of ``network`` on the training ``images``.

        ``kind="auto"`` takes :data:`MODEL_PREPROCESSING` by the network's name (normalize for
        unknown names). Raises :class:`ValueError` when the images cannot feed the network."""
        if kind == "auto":
            kind = MODEL_PREPROCESSING.get(network.name, "normalize")
        if kind not in ("scale01", "normalize", "none"):
            raise ValueError(
                f"preprocessing must be 'auto', 'scale01', 'normalize' or 'none', got {kind!r}"
            )
        shape = tuple(network.input_shape)
        _check_fits(images, shape, network.name)
        if kind == "none":
            return cls(kind, shape)
        if kind == "scale01":
            if images.dtype != np.uint8:
                raise ValueError(
                    f"scale01 preprocessing needs uint8 images, got {images.dtype}; use 'normalize'"
                )
            return cls(kind, shape)
        mean, std = datasets.mean_std(images)
        return cls(kind, shape, mean, std)

    def __call__(self, images: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """A float batch ``(N, *input_shape)`` from raw images."""
        c, h, w = self.input_shape if len(self.input_shape) == 3 else (None, None, None)
        x = images
        if c is not None:
            if x.ndim == 3:
                x = x[:, None, :, :]
            if x.shape[-2:] != (h, w):
                assert h is not None and w is not None
                x = datasets.pad(x, (h, w))  # background 0 before normalising
        if self.kind == "scale01":
            out = datasets.scale01(x, dtype=dtype)
        elif self.kind == "none":
            out = np.asarray(x, dtype=dtype)
        else:
            out, _, _ = datasets.normalize(x, mean=self.mean, std=self.std, dtype=dtype)
        return out.reshape((out.shape[0], *self.input_shape))

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "mean": self.mean,
            "std": self.std,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Preprocessing:
        if config.get("kind") not in ("scale01", "normalize", "none"):
            raise ValueError(
                f"preprocessing kind must be 'scale01', 'normalize' or 'none', got "
                f"{config.get('kind')!r}"
            )
        return cls(
            config["kind"], tuple(config["input_shape"]), config.get("mean"), config.get("std")
        )


def _check_fits(images: np.ndarray, shape: tuple[int, ...], model: str) -> None:
    per_example = tuple(images.shape[1:])
    if len(shape) == 3:
        c, h, w = shape
        image_c = 1 if len(per_example) == 2 else per_example[0]
        if (
            len(per_example) not in (2, 3)
            or image_c != c
            or per_example[-2] > h
            or per_example[-1] > w
        ):
            raise ValueError(
                f"images of shape {per_example} cannot feed model {model!r}, whose input is "
                f"{shape} (C, H, W); images may be smaller (they are padded), not larger"
            )
    elif math.prod(per_example) != math.prod(shape):
        raise ValueError(f"images of shape {per_example} cannot feed model {model!r} ({shape})")


def _check_finite_host(images: np.ndarray, where: str) -> None:
    """Reject NaN or Inf in float host data, once, before any step: the loop's steps run
    unchecked (``check=False``), so a bad pixel would otherwise surface as a diverged loss."""
    if images.dtype.kind != "f":  # integer grey levels are always finite
        return
    finite = np.isfinite(images)
    if not finite.all():
        bad = np.argwhere(~finite)
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{where} hold {bad.shape[0]} non-finite value(s) (NaN or Inf); the first is "
            f"{images[first]} at index {first} (example {first[0]})"
        )


def target_values(network: Network) -> tuple[float, float]:
    """The one-of-c target values (other classes, the class) for this network's outputs.

    -1/+1 for a squared error on tanh outputs (notes 2.1: LeCun's tanh reaches +-1 at its point
    of maximum curvature); 0/1 otherwise (sigmoid outputs, softmax cross-entropy).

    >>> import anycnn
    >>> target_values(anycnn.models.dlt()), target_values(anycnn.models.lenet5())
    ((0.0, 1.0), (0.0, 1.0))
    """
    last = network.layers[-1]
    activation = getattr(last, "activation", None)
    if (
        network.loss.name == "squared_error"
        and activation is not None
        and activation.name in ("tanh", "lecun_tanh")
    ):
        return -1.0, 1.0
    return 0.0, 1.0


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
@dataclass
class EpochRecord:
    """The figures of one epoch (errors are fractions; ``train_error`` is counted on the fly,
    over the batches of the epoch, while the weights change).

    Examples
    --------
    >>> from anycnn.training.loop import EpochRecord
    >>> record = EpochRecord(epoch=2, lr=0.05, train_loss=0.25, train_error=0.125,
    ...                      test_error=0.1, test_loss=0.2, seconds=1.5, images_per_second=400)
    >>> print(record.line(epochs=10))
    epoch 2/10  lr 0.05  loss 0.2500  train error (running)  12.50%  test error  10.00%
    1.5 s (400 img/s)
    """

    epoch: int
    lr: float
    train_loss: float
    train_error: float
    test_error: float | None
    test_loss: float | None
    seconds: float
    images_per_second: float
    eval_seconds: float = 0.0
    hessian_seconds: float = 0.0

    def line(self, epochs: int | None = None) -> str:
        total = f"/{epochs}" if epochs else ""
        test = "" if self.test_error is None else f"  test error {100 * self.test_error:6.2f}%"
        return (
            f"epoch {self.epoch}{total}  lr {self.lr:.3g}  loss {self.train_loss:.4f}  "
            f"train error (running) {100 * self.train_error:6.2f}%{test}  "
            f"{self.seconds:.1f} s ({self.images_per_second:.0f} img/s)"
        )


@dataclass
class TrainResult:
    """What :func:`train` (:meth:`Trainer.run`) returns: the trained ``network``, its
    ``optimizer`` and ``preprocessing``, the per-epoch ``history`` (:class:`EpochRecord`), the
    ``checkpoints`` written, the checkpoint ``resumed_from`` (or None) and the wall time.

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn import Flatten, FullyConnected, Network, datasets
    >>> rng = np.random.default_rng(0)
    >>> ds = datasets.Dataset("toy", rng.integers(0, 256, (8, 4, 4), dtype=np.uint8),
    ...                       np.arange(8) % 2, rng.integers(0, 256, (4, 4, 4), dtype=np.uint8),
    ...                       np.arange(4) % 2, num_classes=2)
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 4, 4), dtype="float64")
    >>> from anycnn.training.loop import train
    >>> result = train(net, ds, epochs=2, batch_size=4, progress=False)
    >>> last = result.history[-1]
    >>> result.network is net, len(result.history), result.test_error == last.test_error
    (True, 2, True)
    >>> result.preprocessing.kind, result.checkpoints
    ('normalize', [])
    """

    network: Network
    optimizer: Optimizer
    preprocessing: Preprocessing
    history: list[EpochRecord] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    resumed_from: Path | None = None
    seconds: float = 0.0

    @property
    def test_error(self) -> float | None:
        """The last epoch's test error (a fraction)."""
        return self.history[-1].test_error if self.history else None


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def evaluate(
    network: Network,
    images: np.ndarray,
    labels: np.ndarray,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 1000,
    comm: Any = None,
) -> dict[str, float]:
    """Error rate and mean loss on a labelled set, in chunks of ``batch_size`` patterns.

    Returns ``{"error": fraction, "mistakes": count, "count": n, "loss": mean loss}``.

    With ``comm`` (an :mod:`anycnn.training.distributed` communicator of more than one process)
    every rank evaluates its contiguous slice of the set and the counts are summed: the error is
    exactly the single-process figure (the loss differs in the last bits: other sum order).

    >>> import anycnn
    >>> ds = anycnn.datasets.load("mnist", limit=50)
    >>> net = anycnn.models.dlt()
    >>> prep = Preprocessing.fit(net, ds.train_images)
    >>> sorted(evaluate(net, ds.test_images, ds.test_labels, prep))
    ['count', 'error', 'loss', 'mistakes']
    """
    if comm is not None and comm.size > 1:
        return _evaluate_sharded(network, images, labels, preprocessing, batch_size, comm)
    backend, xp = network.backend, network.backend.xp
    low, high = target_values(network)
    table = datasets.one_hot(
        np.arange(network.output_shape[0]),
        network.output_shape[0],
        low=low,
        high=high,
        dtype=network.dtype_name,
    )
    labels = np.asarray(labels)
    _check_finite_host(images, "evaluate: images")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size must be an int >= 1, got {batch_size!r}")
    classes = network.output_shape[0]
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        raise ValueError(
            f"evaluate: expected {images.shape[0]} integer labels, one per image, got "
            f"{labels.dtype} labels of shape {labels.shape}"
        )
    check_label_range(labels, classes, "evaluate: labels out of range: ", f"model {network.name!r}")
    mistakes, loss_total, n = 0, 0.0, images.shape[0]
    # A chunk holds at most ~2**25 values of its largest layer (input included), whatever
    # batch_size says: a network of huge maps (a crafted checkpoint) is evaluated a few
    # examples at a time instead of exhausting memory. LeNet-5 and DLT keep 1000.
    widest = max([math.prod(network.input_shape)] + [_size(layer) for layer in network.layers])
    batch_size = max(1, min(batch_size, 2**25 // widest))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x = backend.asarray(
                preprocessing(images[start:stop], network.dtype_name), dtype=network.dtype_name
            )
            t = backend.asarray(table[labels[start:stop]], dtype=network.dtype_name)
            y = network.forward(x, check=start == 0)
            predicted = np.asarray(backend.to_host(xp.argmax(y, axis=1)))
            mistakes += int(np.count_nonzero(predicted != labels[start:stop]))
            loss_total += float(network.loss_value(y, t)) * (stop - start)
    return {
        "error": mistakes / n if n else float("nan"),
        "mistakes": mistakes,
        "count": n,
        "loss": loss_total / n if n else float("nan"),
    }


def _size(layer: Any) -> int:
    shape = getattr(layer, "output_shape", None)
    return math.prod(shape) if shape else 1


def _evaluate_sharded(
    network: Network,
    images: np.ndarray,
    labels: np.ndarray,
    preprocessing: Preprocessing,
    batch_size: int,
    comm: Any,
) -> dict[str, float]:
    from anycnn.training.distributed import shard

    n = int(images.shape[0])
    start, stop = shard(n, comm)
    sums = np.zeros(3, dtype=np.float64)  # mistakes, patterns, loss sum
    if stop > start:
        local = evaluate(
            network, images[start:stop], labels[start:stop], preprocessing, batch_size=batch_size
        )
        sums[:] = (local["mistakes"], local["count"], local["loss"] * local["count"])
    comm.allreduce_(sums)
    mistakes, count = int(round(sums[0])), int(round(sums[1]))
    return {
        "error": mistakes / count if count else float("nan"),
        "mistakes": mistakes,
        "count": count,
        "loss": float(sums[2]) / count if count else float("nan"),
    }


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (:func:`anycnn.training.checkpoint.atomic_write`). A file there that is
    not JSON (a checkpoint given as ``--metrics``) is never replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    why = ckpt.not_replaceable(path)  # never open a FIFO or a device to read it: it may block
    if why is not None:
        raise ValueError(f"cannot write the metrics file {path}: it {why}; expected a regular file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    with contextlib.suppress(FileNotFoundError), open(os.open(path, flags), "rb") as existing:
        if not stat.S_ISREG(os.fstat(existing.fileno()).st_mode):  # swapped since the check
            raise ValueError(f"cannot write the metrics file {path}: it is not a regular file")
        head = existing.read(1)
        if head and head != b"{":
            raise ValueError(
                f"{path}: the metrics file would replace a file that is not a metrics file "
                "(JSON); choose another metrics path"
            )
    text = json.dumps(payload, indent=1) + "\n"
    ckpt.atomic_write(path, lambda stream: stream.write(text.encode()), what="metrics file")


class _Meter:
    """The losses and error counts of an epoch's batches, kept on the device and brought to the
    host a window at a time (one transfer per window), where non-finite losses are caught."""

    def __init__(
        self, backend: Any, epoch: int, checkpoint: Path | None, bar: Any, comm: Any = None
    ):
        self.backend, self.epoch, self.checkpoint, self.bar = backend, epoch, checkpoint, bar
        self.comm = comm if comm is not None and comm.size > 1 else None
        self.losses: list[Any] = []
        self.wrong: list[Any] = []
        self.sizes: list[int] = []
        self.done = 0  # batches already flushed
        self.loss_sum, self.wrong_sum = 0.0, 0

    @property
    def pending(self) -> int:
        return len(self.losses)

    def add(self, loss: Any, wrong: Any, size: int) -> None:
        self.losses.append(loss)
        self.wrong.append(wrong)
        self.sizes.append(size)

    def flush(self) -> None:
        if not self.losses:
            return
        xp = self.backend.xp
        values = np.asarray(self.backend.to_host(xp.stack(self.losses)), dtype=np.float64)
        if self.comm is not None:
            self._flush_collective(values)
            return
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            self.bar.close()
            first = int(bad[0])
            raise DivergenceError(
                self.epoch, self.done + first + 1, float(values[first]), self.checkpoint
            )
        counts = np.asarray(self.backend.to_host(xp.stack(self.wrong)))
        sizes = np.asarray(self.sizes, dtype=np.float64)
        self.loss_sum += float(values @ sizes)
        self.wrong_sum += int(counts.sum())
        self.done += len(values)
        self.bar.set_postfix(
            loss=f"{float(values @ sizes) / float(sizes.sum()):.4f}", refresh=False
        )
        self.bar.update(int(sizes.sum()))
        self.losses.clear()
        self.wrong.clear()
        self.sizes.clear()

    def _flush_collective(self, values: np.ndarray) -> None:
        """The window's loss sums, error counts and sizes summed over the ranks (one
        allreduce), so every rank sees a NaN of any rank and stops at the same batch."""
        xp = self.backend.xp
        k = len(values)
        sizes = np.asarray(self.sizes, dtype=np.float64)
        counts = np.asarray(self.backend.to_host(xp.stack(self.wrong)), dtype=np.float64)
        window = np.concatenate([values * sizes, counts, sizes])
        assert self.comm is not None, "only a meter of several processes flushes collectively"
        self.comm.allreduce_(window)
        sums, counts, sizes = window[:k], window[k : 2 * k], window[2 * k :]
        bad = np.flatnonzero(~np.isfinite(sums))
        if bad.size:
            self.bar.close()
            first = int(bad[0])
            value = float(sums[first] / sizes[first]) if sizes[first] else float(sums[first])
            raise DivergenceError(self.epoch, self.done + first + 1, value, self.checkpoint)
        self.loss_sum += float(sums.sum())
        self.wrong_sum += int(round(float(counts.sum())))
        self.done += k
        self.bar.set_postfix(loss=f"{float(sums.sum()) / float(sizes.sum()):.4f}", refresh=False)
        self.bar.update(int(round(float(sizes.sum()))))
        self.losses.clear()
        self.wrong.clear()
        self.sizes.clear()


def _curvature_batches(
    network: Network,
    images: np.ndarray,
    targets: np.ndarray,
    preprocessing: Preprocessing,
    chunk: int = 100,
) -> Iterator[tuple[Any, Any]]:
    backend = network.backend
    for start in range(0, images.shape[0], chunk):
        yield (
            backend.asarray(
                preprocessing(images[start : start + chunk], network.dtype_name),
                dtype=network.dtype_name,
            ),
            backend.asarray(targets[start : start + chunk], dtype=network.dtype_name),
        )


#: A gradient hook: called by :meth:`Trainer.step` with the trainer after back-propagation and
#: before the optimizer's update; it may read and change ``trainer.network.gradients()`` in
#: place (data-parallel averaging, clipping, accumulation...).
GradientHook = Callable[["Trainer"], Any]


class Trainer:
    """The training loop in three parts: setup and resume (the constructor), one pass
    (:meth:`run_epoch`) and one update (:meth:`step`); :meth:`run` runs the passes.

    The arguments are those of :func:`train`, plus ``gradient_hooks``: callables run by
    :meth:`step` between back-propagation and the optimizer's update (:data:`GradientHook`).
    ``Trainer(...).run()`` is ``train(...)``.

    Attributes set up here and read by hooks and subclasses: ``network``, ``optimizer``,
    ``prep`` (the :class:`Preprocessing`), ``rng`` (the generator that shuffles), ``history``,
    ``start`` (the first epoch to run, 0-based, after a resume), ``batch_size``, ``epochs``,
    ``images``/``labels`` (the training set after ``limit``), ``table`` (one-of-c targets by
    class), ``last_checkpoint`` and ``result``.

    Examples
    --------
    A gradient hook sees every step (here it counts them) on a toy data set of 8 examples:

    >>> import numpy as np
    >>> from anycnn import Flatten, FullyConnected, Network, datasets
    >>> rng = np.random.default_rng(0)
    >>> ds = datasets.Dataset("toy", rng.integers(0, 256, (8, 4, 4), dtype=np.uint8),
    ...                       np.arange(8) % 2, rng.integers(0, 256, (4, 4, 4), dtype=np.uint8),
    ...                       np.arange(4) % 2, num_classes=2)
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 4, 4), dtype="float64")
    >>> from anycnn.training.loop import Trainer
    >>> steps = []
    >>> trainer = Trainer(net, ds, epochs=2, batch_size=4, progress=False,
    ...                   gradient_hooks=[lambda trainer: steps.append(trainer.shard_weight)])
    >>> result = trainer.run()
    >>> len(steps), [record.epoch for record in result.history]
    (4, [1, 2])
    """

    def __init__(
        self,
        network: Network,
        dataset: datasets.Dataset,
        *,
        epochs: int,
        batch_size: int = 50,
        optimizer: Optimizer | None = None,
        seed: int = 0,
        limit: int | None = None,
        progress: bool = True,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        resume: bool = False,
        metrics_path: str | os.PathLike[str] | None = None,
        callbacks: Sequence[Callable[[EpochRecord], Any]] = (),
        preprocessing: str | Preprocessing = "auto",
        report_every: int | None = None,
        evaluate_test: bool = True,
        run_info: Mapping[str, Any] | None = None,
        gradient_hooks: Sequence[GradientHook] = (),
        distributed: Any = None,
        shuffle: bool = True,
        flush_subnormals: bool | None = None,
        augment: Any = None,
    ):
        from anycnn.data.augment import augmentation_from_config
        from anycnn.training import distributed as dist

        for name, value in (("epochs", epochs), ("batch_size", batch_size), ("limit", limit)):
            if name == "limit" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train: {name} must be an int >= 1, got {value!r}")
        if resume and checkpoint_dir is None:
            raise ValueError("train: resume=True needs a checkpoint_dir")
        self.network, self.dataset, self.epochs, self.seed = network, dataset, epochs, seed
        self.progress, self.callbacks = progress, list(callbacks)
        self.gradient_hooks = list(gradient_hooks)
        self.shuffle = bool(shuffle)
        #: random shifts of the training examples (:mod:`anycnn.data.augment`), or None
        self.augment = augmentation_from_config(augment)
        self._offsets: np.ndarray | None = None
        self.flush_subnormals = (
            subnormals.default_enabled() if flush_subnormals is None else bool(flush_subnormals)
        )
        self.evaluate_test, self.limit = evaluate_test, limit
        self.metrics_path = Path(metrics_path) if metrics_path is not None else None
        if self.metrics_path is not None and ckpt.epoch_of(self.metrics_path) is not None:
            raise ValueError(
                f"train: the metrics path {self.metrics_path} is named like a checkpoint "
                "(epoch-NNNN.npz): metrics would replace it; choose another name"
            )
        self._load_data(dataset, limit)
        if optimizer is None:
            optimizer = SGD(network)
        if optimizer.network is not network:
            raise ValueError("train: the optimizer updates another network")
        self.optimizer = optimizer
        self.batch_size = min(batch_size, self.n)
        # Note [Data-parallel step] in anycnn.distributed: batch_size is the global batch.
        self.comm = dist.init("auto" if distributed is None else distributed)
        self.distributed = self.comm.size > 1
        self.is_root = self.comm.rank == 0
        #: This rank's share of the current global batch (b_r / B; 1 in one process).
        self.shard_weight = 1.0
        self.averager: dist.GradientAverager | None = None
        if self.distributed:
            if self.batch_size < self.comm.size:
                raise ValueError(
                    f"train: the global batch_size {self.batch_size} is smaller than the "
                    f"{self.comm.size} processes; give every process at least one pattern "
                    f"(batch_size >= {self.comm.size})"
                )
            self.averager = dist.GradientAverager(self.comm, network)
            self.gradient_hooks.insert(0, self.averager)
            self.progress = progress and self.is_root

        self.rng = np.random.default_rng(seed)
        #: names this run in its checkpoints and metrics (kept across resumes)
        self.run_id = uuid.uuid4().hex
        self.history: list[EpochRecord] = []
        self.start = 0
        self.resumed_from: Path | None = None
        self.prep: Preprocessing | None = (
            preprocessing if isinstance(preprocessing, Preprocessing) else None
        )
        self.checkpoint_folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.last_checkpoint: Path | None = None
        if self.distributed:
            self._setup_distributed(resume, preprocessing)
        else:
            self._setup(resume, preprocessing)
        assert self.prep is not None, "set up by _setup / _setup_distributed"

        self.dtype = network.dtype_name
        low, high = target_values(network)
        self.table = datasets.one_hot(
            np.arange(self.classes), self.classes, low=low, high=high, dtype=self.dtype
        )
        self.report_every = report_every or max(1, math.ceil(1000 / self.batch_size))
        self.settings: dict[str, Any] = {
            "model": network.name,
            "dataset": dataset.name,
            "epochs": epochs,
            "batch_size": self.batch_size,
            "seed": seed,
            "limit": limit,
            "dtype": self.dtype,
            "backend": network.backend.name,
            "device": str(network.backend.default_device),
            "optimizer": optimizer.config(),
            "preprocessing": self.prep.config(),
            "targets": [low, high],
            "train_size": self.n,
            "test_size": int(self.test_images.shape[0]),
            "run_id": self.run_id,
            "world_size": self.comm.size,
            "augment": None if self.augment is None else self.augment.config(),
            **dict(run_info or {}),
        }
        self.result = TrainResult(
            network, optimizer, self.prep, self.history, resumed_from=self.resumed_from
        )

    # -- setup ------------------------------------------------------------------------------
    def _setup(self, resume: bool, preprocessing: str | Preprocessing) -> None:
        """Checkpoint folder, resume, preprocessing."""
        if self.checkpoint_folder is not None:
            self.checkpoint_folder.mkdir(parents=True, exist_ok=True)
        if resume and self.checkpoint_folder is not None:
            self._resume(self.checkpoint_folder)
        if self.prep is None:
            self.prep = Preprocessing.fit(self.network, self.images, str(preprocessing))
        else:
            _check_fits(self.images, tuple(self.network.input_shape), self.network.name)

    def _setup_distributed(self, resume: bool, preprocessing: str | Preprocessing) -> None:
        """Rank 0 sets up (and resumes) alone, then broadcasts parameters, optimizer state,
        generator state, history and preprocessing; an error there is raised on every rank."""
        payload: Any = None
        if self.is_root:
            try:
                self._setup(resume, preprocessing)
                payload = self._state_payload()
            except Exception as error:  # re-raised below, on every rank
                payload = error
        payload = self.comm.broadcast_object(payload, root=0)
        if isinstance(payload, Exception):
            raise payload
        if not self.is_root:
            _check_fits(self.images, tuple(self.network.input_shape), self.network.name)
            self._load_payload(payload)

    def _state_payload(self) -> dict[str, Any]:
        backend = self.network.backend
        assert self.prep is not None
        return {
            "parameters": {
                name: np.array(backend.to_host(value), copy=True)
                for name, value in self.network.parameters().items()
            },
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "history": [asdict(r) for r in self.history],
            "preprocessing": self.prep.config(),
            "start": self.start,
            "resumed_from": None if self.resumed_from is None else str(self.resumed_from),
            "run_id": self.run_id,
        }

    def _load_payload(self, payload: Mapping[str, Any]) -> None:
        network = self.network
        for name, value in payload["parameters"].items():
            network.set_parameter(
                name, network.backend.asarray(value, dtype=network.dtype_name), check=False
            )
        self.optimizer.load_state_dict(payload["optimizer"])
        # The same allow-list of bit generators as a checkpoint's (never getattr by name).
        self.rng = ckpt._generator_from_state(payload["rng"], "rank 0's generator state")
        self.history[:] = [EpochRecord(**record) for record in payload["history"]]
        self.prep = Preprocessing.from_config(payload["preprocessing"])
        self.start = int(payload["start"])
        self.run_id = str(payload["run_id"])
        if payload["resumed_from"] is not None:
            self.resumed_from = self.last_checkpoint = Path(payload["resumed_from"])

    def _load_data(self, dataset: datasets.Dataset, limit: int | None) -> None:
        network = self.network
        images, labels = dataset.train_images, dataset.train_labels
        test_images, test_labels = dataset.test_images, dataset.test_labels
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
            test_images, test_labels = test_images[:limit], test_labels[:limit]
        self.n = int(images.shape[0])
        if self.n == 0:
            raise ValueError("train: the training set is empty")
        _check_finite_host(images, f"train: data set {dataset.name!r}: train_images")
        _check_finite_host(test_images, f"train: data set {dataset.name!r}: test_images")
        classes = network.output_shape[0] if len(network.output_shape) == 1 else None
        if classes is None:
            raise ValueError(f"train: {network.name} must end with a vector of class scores")
        largest = int(max(labels.max(initial=0), test_labels.max(initial=0)))
        if dataset.num_classes > classes or largest >= classes:
            raise ValueError(
                f"labels out of range: data set {dataset.name!r} has labels up to {largest} "
                f"({dataset.num_classes} classes) but model {network.name!r} has {classes} outputs"
            )
        self.classes = classes
        self.images, self.labels = images, labels
        self.test_images, self.test_labels = test_images, test_labels

    def _resume(self, folder: Path) -> None:
        """Restore the latest checkpoint in ``folder``, if there is one: parameters, optimizer
        state, generator state, history and preprocessing."""
        network, optimizer = self.network, self.optimizer
        latest = ckpt.latest_checkpoint(folder)
        if latest is None:
            return
        stored_info = ckpt.read_info(latest)
        if stored_info.get("model") != network.name:
            raise ckpt.CheckpointError(
                f"{latest}: this checkpoint is of another model: it holds "
                f"{stored_info.get('model')!r}, the network is {network.name!r}"
            )
        stored = stored_info.get("optimizer") or {}
        if stored.get("name") != optimizer.name:
            raise ckpt.CheckpointError(
                f"{latest}: written with the {stored.get('name')!r} optimizer; resume with "
                f"the same one (got {optimizer.name!r})"
            )
        restored = ckpt.load_checkpoint(latest, network=network)
        if restored.epoch != ckpt.epoch_of(latest):  # a file copied in under another name
            raise ckpt.CheckpointError(
                f"{latest}: the file name says epoch {ckpt.epoch_of(latest)} but it holds epoch "
                f"{restored.epoch}; it is not this run's checkpoint of that epoch: move it away"
            )
        if restored.optimizer is None:
            raise ckpt.CheckpointError(f"{latest}: holds no optimizer state to resume from")
        try:
            optimizer.load_state_dict(restored.optimizer.state_dict())
        except ValueError as error:
            raise ckpt.CheckpointError(f"{latest}: {error}") from None
        generator = restored.rng()
        if generator is not None:
            self.rng = generator
        try:
            self.history[:] = [EpochRecord(**r) for r in restored.info.get("history", [])]
            if restored.info.get("preprocessing"):
                self.prep = Preprocessing.from_config(restored.info["preprocessing"])
        except (TypeError, ValueError, KeyError) as error:
            raise ckpt.CheckpointError(f"{latest}: bad history or preprocessing: {error}") from None
        self.run_id = str(restored.info.get("run_id") or self.run_id)
        self.start = restored.epoch
        self.resumed_from = self.last_checkpoint = latest

    # -- one update -------------------------------------------------------------------------
    def step(self, x: Any, t: Any, *, check: bool = False) -> tuple[Any, Any]:
        """One update on the batch ``x`` (inputs) and ``t`` (targets), arrays of the network's
        backend: forward, loss, back-propagation, the gradient hooks, the optimizer's update.

        Returns the batch's mean loss and the outputs ``y``, both left on the device."""
        network = self.network
        y = network.forward(x, check=check)
        if check:
            network.check_targets(t, y.shape[0])
        loss = network._objective_and_backward(y, t)  # objective + backward, one log-softmax
        for hook in self.gradient_hooks:
            hook(self)
        self.optimizer.step()
        return loss, y

    # -- one pass ---------------------------------------------------------------------------
    def batch_arrays(self, picks: np.ndarray) -> tuple[Any, Any]:
        """The device inputs and targets of the training examples ``picks``."""
        backend, dtype = self.network.backend, self.dtype
        assert self.prep is not None
        images = self.images[picks]
        if self._offsets is not None:  # this pass's offsets, drawn for every example
            assert self.augment is not None
            images = self.augment.apply(images, self._offsets[picks])
        x = backend.asarray(self.prep(images, dtype), dtype=dtype)
        t = backend.asarray(self.table[self.labels[picks]], dtype=dtype)
        return x, t

    def start_epoch(self, epoch: int) -> float:
        """Prepare the optimizer for pass ``epoch`` (SDLM: its curvature estimate on samples
        drawn from ``rng``); returns the seconds spent estimating curvature."""
        optimizer = self.optimizer
        samples = getattr(optimizer, "samples", None)
        if samples is None:
            optimizer.start_epoch(epoch)
            return 0.0
        began = time.perf_counter()
        picks = np.sort(self.rng.choice(self.n, size=min(int(samples), self.n), replace=False))
        assert self.prep is not None
        if self.distributed:
            # Every rank drew the same sample; each estimates on its slice, and the sums and
            # counts are added across ranks before dividing (Note [Data-parallel step]).
            from anycnn.training.distributed import shard

            lo, hi = shard(len(picks), self.comm)
            picks = picks[lo:hi]
            assert self.averager is not None
            optimizer.start_epoch(  # type: ignore[call-arg]
                epoch,
                _curvature_batches(
                    self.network, self.images[picks], self.table[self.labels[picks]], self.prep
                ),
                reduce=self.averager.reduce_curvature,
            )
            return time.perf_counter() - began
        optimizer.start_epoch(
            epoch,
            _curvature_batches(
                self.network, self.images[picks], self.table[self.labels[picks]], self.prep
            ),
        )
        return time.perf_counter() - began

    def run_epoch(self, epoch: int) -> EpochRecord:
        """Pass ``epoch`` (0-based) over the shuffled training set, then the test error,
        the checkpoint, the metrics file and the callbacks. Returns the epoch's record."""
        from tqdm.auto import tqdm

        network, optimizer = self.network, self.optimizer
        xp = network.backend.xp
        epoch_began = time.perf_counter()
        # Note [Subnormals] in anycnn.subnormals: saturated units must not slow training down.
        with (
            np.errstate(over="ignore", invalid="ignore", divide="ignore"),
            subnormals.flushing(self.flush_subnormals),
        ):
            hessian_seconds = self.start_epoch(epoch)
            if self.augment is not None:  # from (seed, epoch): the same for any batching
                length = int(self.images.shape[-1])
                self._offsets = self.augment.offsets(self.n, length, self.seed, epoch)
            order = datasets.batches(self.n, self.batch_size, rng=self.rng, shuffle=self.shuffle)
            bar = tqdm(
                total=self.n,
                unit="img",
                desc=f"epoch {epoch + 1}/{self.epochs}",
                disable=not self.progress,
                leave=False,
                dynamic_ncols=True,
                mininterval=0.5,
            )
            meter = _Meter(network.backend, epoch + 1, self.last_checkpoint, bar, self.comm)
            for index, picks in enumerate(order):
                if self.distributed:
                    picks = self._shard(picks)
                    if not picks.size:
                        meter.add(*self._empty_step(), 0)
                        continue
                x, t = self.batch_arrays(picks)
                loss, y = self.step(x, t, check=epoch == self.start and index == 0)
                meter.add(
                    loss,
                    xp.sum(xp.astype(xp.argmax(y, axis=1) != xp.argmax(t, axis=1), xp.int64)),
                    int(picks.shape[0]),
                )
                if meter.pending >= self.report_every:
                    meter.flush()
            meter.flush()
            bar.close()
        seconds = time.perf_counter() - epoch_began
        eval_began = time.perf_counter()
        test = self.evaluate() if self.evaluate_test and self.test_images.shape[0] else None
        record = EpochRecord(
            epoch=epoch + 1,
            lr=optimizer.lr,
            train_loss=meter.loss_sum / self.n,
            train_error=meter.wrong_sum / self.n,
            test_error=None if test is None else test["error"],
            test_loss=None if test is None else test["loss"],
            seconds=seconds,
            images_per_second=self.n / seconds if seconds > 0 else float("inf"),
            eval_seconds=time.perf_counter() - eval_began,
            hessian_seconds=hessian_seconds,
        )
        self.history.append(record)
        self.save_checkpoint(epoch + 1)
        self.write_metrics()
        for callback in self.callbacks:
            callback(record)
        return record

    def _shard(self, picks: np.ndarray) -> np.ndarray:
        """This rank's slice of a global batch; sets :attr:`shard_weight` to ``b_r / B``."""
        from anycnn.training.distributed import shard

        lo, hi = shard(len(picks), self.comm)
        self.shard_weight = (hi - lo) / len(picks)
        return picks[lo:hi]

    def _empty_step(self) -> tuple[Any, Any]:
        """A step of a rank without patterns in this (last, small) global batch: it adds zeros
        to the gradient sum (its weight is 0) and applies the same update as the others."""
        for hook in self.gradient_hooks:
            hook(self)
        self.optimizer.step()
        xp, device = self.network.backend.xp, self.network.backend.default_device
        return (
            xp.zeros((), dtype=resolve_dtype(xp, self.dtype), device=device),
            xp.zeros((), dtype=xp.int64, device=device),
        )

    def evaluate(self) -> dict[str, float]:
        """The test error and loss of the current parameters (:func:`evaluate`; sharded over
        the ranks when distributed)."""
        assert self.prep is not None
        return evaluate(self.network, self.test_images, self.test_labels, self.prep, comm=self.comm)

    # -- files ------------------------------------------------------------------------------
    def save_checkpoint(self, epoch: int) -> Path | None:
        """Write ``epoch-NNNN.npz`` in the checkpoint folder (if there is one)."""
        if self.checkpoint_folder is None:
            return None
        if self.distributed:
            path = ckpt.checkpoint_path(self.checkpoint_folder, epoch)
            if self.is_root:
                self._save(epoch)
            self.comm.barrier()  # no rank goes on before the checkpoint is complete
            self.last_checkpoint = path
            return path
        return self._save(epoch)

    def _save(self, epoch: int) -> Path:
        assert self.checkpoint_folder is not None
        self.last_checkpoint = ckpt.save_checkpoint(
            ckpt.checkpoint_path(self.checkpoint_folder, epoch),
            self.network,
            epoch=epoch,
            optimizer=self.optimizer,
            rng=self.rng,
            info={"history": [asdict(r) for r in self.history], **self.settings},
        )
        self.result.checkpoints.append(self.last_checkpoint)
        return self.last_checkpoint

    def write_metrics(self) -> None:
        """Write the metrics JSON (settings and history), if a path was given."""
        if self.metrics_path is None or not self.is_root:
            return
        tests = [r.test_error for r in self.history if r.test_error is not None]
        _write_json(
            self.metrics_path,
            {
                **self.settings,
                "anycnn_version": ckpt._version(),
                "history": [asdict(r) for r in self.history],
                "final_test_error": tests[-1] if tests else None,
                "best_test_error": min(tests) if tests else None,
                "seconds": sum(r.seconds + r.eval_seconds for r in self.history),
            },
        )

    def _claim_checkpoint_folder(self) -> Any:
        """Lock the checkpoint folder for the passes
        (:class:`anycnn.training.checkpoint.DirectoryLock`) and check that it still holds what
        setup found there: the checkpoint resumed from as the latest, or no checkpoint at all for
        a fresh run, so no run ever overwrites the checkpoints of another."""
        folder = self.checkpoint_folder
        if folder is None or not self.is_root or self.start >= self.epochs:
            return contextlib.nullcontext()
        lock = ckpt.DirectoryLock(folder)
        latest = ckpt.latest_checkpoint(folder)
        if latest != self.resumed_from:
            lock.release()
            if self.resumed_from is None:
                raise ckpt.CheckpointError(
                    f"{folder}: holds checkpoints of another run (latest {latest}); resume it, "
                    "or choose another checkpoint directory"
                )
            raise ckpt.CheckpointError(
                f"{folder}: changed while this run set up (it resumed from "
                f"{self.resumed_from}, the latest is now "
                f"{'none' if latest is None else latest.name}); another run wrote there"
            )
        return lock

    # -- the whole run ----------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Run the passes from ``start`` up to ``epochs``; returns the :class:`TrainResult`."""
        began = time.perf_counter()
        with self._claim_checkpoint_folder():
            for epoch in range(self.start, self.epochs):
                self.run_epoch(epoch)
        self.result.seconds = time.perf_counter() - began
        if self.start >= self.epochs:
            self.write_metrics()
        return self.result


def train(
    network: Network,
    dataset: datasets.Dataset,
    *,
    epochs: int,
    batch_size: int = 50,
    optimizer: Optimizer | None = None,
    seed: int = 0,
    limit: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    metrics_path: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Callable[[EpochRecord], Any]] = (),
    preprocessing: str | Preprocessing = "auto",
    report_every: int | None = None,
    evaluate_test: bool = True,
    run_info: Mapping[str, Any] | None = None,
    gradient_hooks: Sequence[GradientHook] = (),
    distributed: Any = None,
    shuffle: bool = True,
    flush_subnormals: bool | None = None,
    augment: Any = None,
) -> TrainResult:
    """Train ``network`` on ``dataset`` for ``epochs`` passes (in total, counting resumed ones).

    ``train(...)`` is ``Trainer(...).run()`` (:class:`Trainer` splits the loop into setup,
    pass and update, with gradient hooks between back-propagation and the update).

    Parameters
    ----------
    network : Network
    dataset : anycnn.datasets.Dataset
        Training and test images on the host (``uint8`` as loaded, or floats).
    epochs : int
        The number of passes the run should have when it ends (a resumed run continues up to it).
    batch_size : int
        1 is online learning (one pattern per update, LeCun); more is mini-batch SGD.
    optimizer : Optimizer, optional
        Plain SGD at its default rate (:attr:`anycnn.training.optim.SGD.default_lr`) by default. An
        optimizer with a ``samples`` attribute (SDLM) gets that many random training patterns
        before each pass to estimate its curvature.
    seed : int
        Seeds the NumPy generator that shuffles the training set and draws SDLM's samples.
    limit : int, optional
        Use only the first ``limit`` training and test examples.
    progress : bool
        Show a tqdm progress bar (loss, images per second, time left) on stderr.
    checkpoint_dir : path, optional
        Write ``epoch-NNNN.npz`` there after every epoch (atomically).
    resume : bool
        Continue from the latest checkpoint in ``checkpoint_dir`` (if there is one): parameters,
        optimizer state, generator state, preprocessing and history are restored.
    metrics_path : path, optional
        Write the history and the run's settings as JSON after every epoch.
    callbacks : sequence of callables
        Called with each :class:`EpochRecord` after the epoch's checkpoint is written.
    preprocessing : "auto", "scale01", "normalize" or Preprocessing
    report_every : int, optional
        Batches between two transfers of the running loss to the host (progress and divergence
        checks); about 1000 patterns' worth by default.
    evaluate_test : bool
        Compute the test error after each epoch.
    run_info : mapping, optional
        Extra JSON-able fields for the metrics file and checkpoints (command line, device...).
    gradient_hooks : sequence of callables
        Each is called with the :class:`Trainer` after every back-propagation, before the
        optimizer's update (:data:`GradientHook`).
    distributed : None, bool, "auto", "mpi", "single" or a communicator
        Data parallelism (:mod:`anycnn.training.distributed`): None or "auto" uses MPI when an MPI
        launcher started this process; True forces MPI, False one process. With N processes
        ``batch_size`` is the global batch, each process takes its slice of every batch, the
        gradients are averaged, and only rank 0 writes checkpoints, metrics and progress.
    shuffle : bool
        Visit the training examples in a new random order each epoch (in order otherwise).
    flush_subnormals : bool, optional
        Run each pass with subnormal floats flushed to zero on the CPU (Note [Subnormals] in
        :mod:`anycnn.subnormals`: saturated logistic units otherwise slow steps down many
        times; a change below 1.2e-38 per operation). On by default; ``False`` or
        ``ANYCNN_FLUSH_SUBNORMALS=0`` turns it off. FTZ/DAZ are restored after each pass.
    augment : anycnn.data.augment.Shift, its config, or None
        Random shifts of the training examples along their last axis (:mod:`anycnn.data.augment`;
        the offsets of a pass come from ``(seed, epoch)``, so batching, processes and resumes do
        not change them). Test examples are never shifted.

    Returns
    -------
    TrainResult

    Raises
    ------
    DivergenceError
        A NaN or infinite loss; no checkpoint is written for the failed epoch.
    ValueError
        Bad arguments, images that cannot feed the network, or more classes in the data than
        the network has outputs; :class:`anycnn.training.checkpoint.CheckpointError` for a
        checkpoint of another model.

    Examples
    --------
    >>> import anycnn
    >>> ds = anycnn.datasets.load("mnist", limit=100)
    >>> result = train(anycnn.models.dlt(), ds, epochs=1, batch_size=50, progress=False)
    >>> [record.epoch for record in result.history]
    [1]
    """
    return Trainer(
        network,
        dataset,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=optimizer,
        seed=seed,
        limit=limit,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        metrics_path=metrics_path,
        callbacks=callbacks,
        preprocessing=preprocessing,
        report_every=report_every,
        evaluate_test=evaluate_test,
        run_info=run_info,
        gradient_hooks=gradient_hooks,
        distributed=distributed,
        shuffle=shuffle,
        flush_subnormals=flush_subnormals,
        augment=augment,
    ).run()
