"""UCR time series: one training run of a variant of the UCR recipe (``cnn1d_global`` and its
training defaults), for the exploratory runs behind the README's "Variants tried" table.

Usage::

    python bench/ucr_variants.py --dataset osuleaf --maps 32,64,128 --seed 1
    python bench/ucr_variants.py --dataset arrowhead --stretch 0.1

Prints one JSON line: the options, the test error after the last pass (no early stopping, nothing
chosen on the test set), the training error, the seconds of training and the parameters. With
no option the run is the recipe itself (``anycnn train --dataset <name>``'s defaults: three ReLU
stages 16@7, 32@5, 64@3 ``"same"`` with 2x means, the last a mean over the signal, a softmax
output; momentum 0.9, rate 0.03, batches of 8, 8,000 updates, random shifts of up to 10 %).
Options change one thing at a time:

* ``--maps``, ``--kernels``: the three stages' maps and kernel sizes; ``--pool``: the first two
  subsamplings' factor; ``--combine 2,3``: those stages are learned combinations of the input
  maps (section 3.3, one kernel per input map, ``LearnedCombination(kernels="per_input")``, no
  padding) instead of convolutions;
* ``--optimizer sdlm`` (``--mu``): LeCun's per-parameter rates ``lr / (mu + h_kk)`` (section
  4's stochastic diagonal Levenberg-Marquardt, the curvature estimated before each pass), with
  ``--momentum`` on top;
* ``--lr``, ``--batch``, ``--updates``, ``--momentum``; ``--decay g``: the rate times ``g`` after
  half the passes and times ``g**2`` after three quarters;
* ``--shift``: the shifts' largest fraction (0: none); ``--stretch s``: each pass also stretches
  every series in time about its middle by a random factor in ``[1 - s, 1 + s]`` (linear
  interpolation, edges held); ``--scale g``: multiplies it by a factor in ``[1 - g, 1 + g]``;
  ``--circular``: the shifts wrap around (a rotation of the series) instead of holding the edge;
* ``--inputs raw,diff`` / ``raw,smooth9``: input channels: the series, its first difference, its
  moving mean over 9 samples (each channel standardised on the training set);
* ``--loss squared_error``: scaled tanh outputs and the squared error (section 4.3);
* ``--wd l``: weight decay, ``l * w`` added to every kernel's and weight's gradient (the
  penalty ``l/2 |w|^2`` of eq. 11; biases free), a gradient hook;
* ``--jitter s``: each pass also adds Gaussian noise of standard deviation ``s`` to every
  sample of every (standardised) series;
* ``--flip p``: each pass also reverses every series in time with probability ``p`` (before
  the shift; a mirrored outline of the same shape);
* ``--swa f``: also the error of the network whose weights are the mean of its weights after
  each of the last ``f`` of the passes (stochastic weight averaging; ``test_error_swa``);
* ``--snapshots k``: also the error of the softmax scores averaged over ``k`` snapshots taken
  evenly over the second half of the passes, the last included (``test_error_snapshots``);
* ``--ensemble k``: train ``k`` networks (seeds ``seed .. seed + k - 1``), also report the error
  of their averaged softmax scores (``test_error_ensemble``) and each one's error;
* ``--tta k``: also the error of the scores averaged over ``2k + 1`` shifts of the test series
  spread over the training shifts' range (test-time averaging).

Run with ``ANYCNN_NUM_THREADS=1``. Never asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np


def _augmentations() -> tuple[type, type, type]:
    from anycnn.data.augment import Shift

    class Roll(Shift):
        """Shifts that wrap around: sample ``t`` comes from ``t - offset`` modulo the length."""

        def apply(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
            images = np.asarray(images)
            length = images.shape[-1]
            source = (np.arange(length)[None, :] - np.asarray(offsets)[:, None]) % length
            flat = images.reshape(images.shape[0], -1, length)
            return np.take_along_axis(flat, source[:, None, :], axis=2).reshape(images.shape)

    class ShiftStretch(Shift):
        """Shifts, then a stretch about the middle and a gain, drawn per example and pass."""

        def __init__(self, fraction: float, stretch: float = 0.0, scale: float = 0.0) -> None:
            super().__init__(fraction)
            object.__setattr__(self, "stretch", float(stretch))  # (Shift is a frozen dataclass)
            object.__setattr__(self, "scale", float(scale))

        def offsets(self, n: int, length: int, seed: int, epoch: int) -> np.ndarray:
            shift = super().offsets(n, length, seed, epoch).astype(np.float64)
            rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x5818, epoch])
            stretch = rng.uniform(1 - self.stretch, 1 + self.stretch, size=n)
            gain = rng.uniform(1 - self.scale, 1 + self.scale, size=n)
            return np.stack([shift, stretch, gain], axis=1)

        def apply(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
            images = np.asarray(images)
            length = images.shape[-1]
            shift, stretch, gain = offsets[:, 0], offsets[:, 1], offsets[:, 2]
            t, middle = np.arange(length), (length - 1) / 2
            src = middle + (t[None, :] - middle) / stretch[:, None] - shift[:, None]
            src = np.clip(src, 0, length - 1)
            i0 = np.floor(src).astype(np.int64)
            i1 = np.minimum(i0 + 1, length - 1)
            w = (src - i0)[:, None, :]
            flat = images.reshape(images.shape[0], -1, length)
            x0 = np.take_along_axis(flat, i0[:, None, :], 2)
            x1 = np.take_along_axis(flat, i1[:, None, :], 2)
            moved = (x0 * (1 - w) + x1 * w) * gain[:, None, None]
            return moved.astype(images.dtype).reshape(images.shape)

    class ShiftJitter(Shift):
        """Time reversal with probability ``flip``, then shifts (wrapped if ``circular``), then
        Gaussian noise of standard deviation ``jitter``, drawn per example and pass (the
        noise's seed and the reversal travel in the offsets' second and third columns)."""

        def __init__(
            self, fraction: float, jitter: float, flip: float = 0.0, circular: bool = False
        ) -> None:
            super().__init__(fraction)
            object.__setattr__(self, "jitter", float(jitter))
            object.__setattr__(self, "flip", float(flip))
            object.__setattr__(self, "circular", bool(circular))

        def offsets(self, n: int, length: int, seed: int, epoch: int) -> np.ndarray:
            shift = super().offsets(n, length, seed, epoch)
            rng = np.random.default_rng([seed & 0xFFFFFFFF, 0x5819, epoch])
            noise = rng.integers(0, 2**62, size=n)
            flips = rng.random(n) < self.flip
            return np.stack([shift, noise, flips.astype(np.int64)], axis=1)

        def apply(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
            images = np.asarray(images)
            flipped = np.where(
                offsets[:, 2].reshape((-1,) + (1,) * (images.ndim - 1)) == 1,
                images[..., ::-1],
                images,
            )
            shift = Roll.apply if self.circular else Shift.apply
            moved = shift(self, flipped, offsets[:, 0]).astype(np.float64)
            if self.jitter:
                for i, s in enumerate(offsets[:, 1]):
                    rng = np.random.default_rng(int(s))
                    moved[i] += rng.normal(0, self.jitter, moved[i].shape)
            return moved.astype(images.dtype)

    return Roll, ShiftStretch, ShiftJitter


def _channels(ds: Any, inputs: str) -> Any:
    """The data set with the input channels named in ``inputs`` (standardised on training)."""
    from anycnn import data as datasets

    def channels(x: np.ndarray) -> np.ndarray:
        x = x[:, 0, :]
        out = []
        for kind in inputs.split(","):
            if kind == "raw":
                out.append(x)
            elif kind == "diff":
                out.append(np.diff(x, axis=1, prepend=x[:, :1]))
            elif kind.startswith("smooth"):
                w = int(kind[6:] or 5)
                padded = np.pad(x, ((0, 0), (w // 2, w - 1 - w // 2)), mode="edge")
                c = np.cumsum(np.pad(padded, ((0, 0), (1, 0))), axis=1)
                out.append((c[:, w:] - c[:, :-w]) / w)
            else:
                raise SystemExit(f"--inputs: unknown channel {kind!r}")
        return np.stack(out, axis=1)

    train, test = channels(ds.train_images), channels(ds.test_images)
    mean = train.mean(axis=(0, 2), keepdims=True)
    std = train.std(axis=(0, 2), keepdims=True)
    return datasets.Dataset(
        ds.name,
        ((train - mean) / std).astype(np.float32),
        ds.train_labels,
        ((test - mean) / std).astype(np.float32),
        ds.test_labels,
        ds.num_classes,
    )


def run(a: argparse.Namespace) -> dict[str, Any]:
    """One network (``--ensemble 1``) or several, with their averaged scores' error."""
    reports, total = [], None
    for k in range(max(1, a.ensemble)):
        report, scores = run_one(a, a.seed + k)
        reports.append(report)
        total = scores if total is None else total + scores
    if len(reports) == 1:
        return reports[0]
    from anycnn import data as datasets

    labels = datasets.load(a.dataset).test_labels
    return {
        "options": vars(a),
        "test_error_ensemble": float(np.mean(total.argmax(1) != labels)),
        "test_errors": [r["test_error"] for r in reports],
        "train_errors": [r["train_error"] for r in reports],
        "seconds": sum(r["seconds"] for r in reports),
        "parameters": reports[0]["parameters"],
    }


def run_one(a: argparse.Namespace, seed: int) -> tuple[dict[str, Any], np.ndarray]:
    from anycnn import data as datasets
    from anycnn.data.augment import Shift
    from anycnn.layers import (
        Convolution,
        Flatten,
        FullyConnected,
        LearnedCombination,
        Subsampling,
    )
    from anycnn.network import Network
    from anycnn.training import loop, optim

    Roll, ShiftStretch, ShiftJitter = _augmentations()
    ds = datasets.load(a.dataset)
    if a.inputs != "raw":
        ds = _channels(ds, a.inputs)
    length, classes = ds.train_images.shape[-1], ds.num_classes
    maps = [int(m) for m in a.maps.split(",")]
    kernels = [int(k) for k in a.kernels.split(",")]
    combine = [int(c) for c in a.combine.split(",") if c]
    layers: list[Any] = []
    for stage, (m, k) in enumerate(zip(maps, kernels, strict=True), 1):
        if stage in combine:
            layer = LearnedCombination(m, k, kernels="per_input", activation="relu", init="glorot")
        else:
            layer = Convolution(m, k, padding="same", activation="relu", init="glorot")
        layers += [layer, Subsampling(a.pool, "mean", trainable=False, remainder="pad")]
    layers[-1] = Subsampling(length, "mean", trainable=False, remainder="pad")
    out_act = "identity" if a.loss == "cross_entropy" else "lecun_tanh"
    layers += [Flatten(), FullyConnected(classes, activation=out_act, init="glorot")]
    net = Network(
        layers,
        tuple(ds.train_images.shape[1:]),
        loss=a.loss,
        dtype="float32",
        seed=seed,
        name="cnn1d_global_variant",
    )
    n = ds.train_images.shape[0]
    epochs = max(1, -(-a.updates // -(-n // a.batch)))
    lr: Any = a.lr
    if a.decay != 1.0:
        lr = optim.Piecewise(
            [a.lr, a.lr * a.decay],
            [max(1, epochs // 2), max(1, epochs // 4)],
            final=a.lr * a.decay**2,
        )
    if a.optimizer == "sdlm":
        opt = optim.build_optimizer("sdlm", net, lr=lr, momentum=a.momentum, mu=a.mu)
    else:
        opt = optim.build_optimizer("momentum", net, lr=lr, momentum=a.momentum)
    augment: Any
    if a.jitter or a.flip:
        augment = ShiftJitter(a.shift, a.jitter, a.flip, a.circular)
    elif a.circular:
        augment = Roll(a.shift)
    elif a.stretch or a.scale:
        augment = ShiftStretch(a.shift, a.stretch, a.scale)
    else:
        augment = Shift(a.shift) if a.shift else None
    hooks: list[Any] = []
    if a.wd:
        weights = [k for k in net.parameters() if not k.endswith(".bias")]

        def decay(trainer: Any) -> None:
            params, grads = net.parameters(), net.gradients()
            for k in weights:
                grads[k] += a.wd * params[k]

        hooks.append(decay)
    # weight averages (SWA) and snapshot scores over the last passes, taken by an epoch callback
    averages: dict[str, np.ndarray] = {}
    snapshots: list[np.ndarray] = []
    first_avg = epochs - max(1, int(round(a.swa * epochs))) if a.swa else epochs
    snap_every = max(1, (epochs // 2) // a.snapshots) if a.snapshots else 0

    def scores(x: np.ndarray) -> np.ndarray:
        o = net.backend.to_host(net.forward(net.backend.asarray(x, dtype=net.dtype_name)))
        e = np.exp(np.asarray(o, np.float64) - np.max(o, axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def averaging(record: Any) -> None:
        if record.epoch > first_avg:
            for k, v in net.parameters().items():
                host = np.asarray(net.backend.to_host(v), np.float64)
                averages[k] = host if k not in averages else averages[k] + host
        late = record.epoch > epochs - snap_every * a.snapshots
        if snap_every and late and (epochs - record.epoch) % snap_every == 0:
            snapshots.append(scores(trainer.prep(ds.test_images, net.dtype_name)))

    start = time.perf_counter()
    trainer = loop.Trainer(
        net,
        ds,
        optimizer=opt,
        epochs=epochs,
        batch_size=a.batch,
        seed=seed,
        progress=False,
        augment=augment,
        evaluate_test=False,
        gradient_hooks=hooks,
        callbacks=[averaging] if (a.swa or a.snapshots) else [],
    )
    result = trainer.run()
    seconds = time.perf_counter() - start
    x = result.preprocessing(ds.test_images, net.dtype_name)

    s0 = scores(x)
    report: dict[str, Any] = {
        "options": {**vars(a), "seed": seed},
        "test_error": float(np.mean(s0.argmax(1) != ds.test_labels)),
        "train_error": result.history[-1].train_error,
        "seconds": seconds,
        "parameters": net.num_parameters(),
        "epochs": epochs,
    }
    if snapshots:
        snap = np.mean(snapshots, axis=0)
        report["test_error_snapshots"] = float(np.mean(snap.argmax(1) != ds.test_labels))
        report["snapshots_taken"] = len(snapshots)
    if averages:
        n_avg = epochs - first_avg
        for k, v in averages.items():
            net.set_parameter(k, net.backend.asarray(v / n_avg, dtype=net.dtype_name))
        s_swa = scores(x)
        report["test_error_swa"] = float(np.mean(s_swa.argmax(1) != ds.test_labels))
    if a.tta:
        largest = int(round(a.shift * length))
        total = s0.copy()
        for offset in np.linspace(-largest, largest, 2 * a.tta + 1).round().astype(int):
            if offset:
                total += scores(Shift(0.5).apply(x, np.full(x.shape[0], offset)))
        report["test_error_tta"] = float(np.mean(total.argmax(1) != ds.test_labels))
    return report, s0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--maps", default="16,32,64")
    p.add_argument("--kernels", default="7,5,3")
    p.add_argument("--pool", type=int, default=2)
    p.add_argument("--combine", default="")
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--updates", type=int, default=8000)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--decay", type=float, default=1.0)
    p.add_argument("--shift", type=float, default=0.1)
    p.add_argument("--stretch", type=float, default=0.0)
    p.add_argument("--scale", type=float, default=0.0)
    p.add_argument("--circular", action="store_true")
    p.add_argument("--inputs", default="raw")
    p.add_argument("--loss", default="cross_entropy")
    p.add_argument("--tta", type=int, default=0)
    p.add_argument("--wd", type=float, default=0.0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--ensemble", type=int, default=1)
    p.add_argument("--flip", type=float, default=0.0)
    p.add_argument("--optimizer", default="momentum", choices=["momentum", "sdlm"])
    p.add_argument("--mu", type=float, default=0.02)
    p.add_argument("--swa", type=float, default=0.0)
    p.add_argument("--snapshots", type=int, default=0)
    print(json.dumps(run(p.parse_args(argv))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
