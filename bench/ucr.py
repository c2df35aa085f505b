"""UCR time series: anycnn's 1-D zoo model against 1-nearest-neighbour baselines on the same split.

Usage::

    python bench/ucr.py                         # GunPoint, ArrowHead, OSULeaf; 5 seeds
    python bench/ucr.py --datasets gunpoint --seeds 2 --epochs 20   # a quick look
    python bench/ucr.py --datasets osuleaf --models cnn1d_global --out bench/results/x.json

For each problem, on the archive's own train/test split (``data/ucr``, ``anycnn.data.load``),
in one run: the test error of

* **1-NN Euclidean**: each test series takes the label of its nearest training series in
  Euclidean distance (:func:`nn1_euclidean`);
* **1-NN DTW**: the same under dynamic time warping with a full window (no Sakoe-Chiba band, the
  UCR archive's "DTW (w=100)" column; ``--window`` gives a band) (:func:`dtw_distances`);
* **cnn1d** and **cnn1d_global**: ``anycnn.models.cnn1d`` (three convolution / subsampling
  stages and a fully connected output on the positions left, the notes' design) and
  ``anycnn.models.cnn1d_global`` (the same with ReLU units and a last subsampling over the whole
  signal; the UCR recipe of issue 18) trained with the settings of ``anycnn train --dataset
  <name> --model <model>`` (``anycnn.training.loop.TRAINING_DEFAULTS``: for cnn1d_global 8,000
  updates, random shifts of up to 10 % of the length and reversals with probability 1/2,
  ``anycnn.data.augment``) from several
  seeds: the mean, the standard deviation and each seed's test error after the last epoch (no
  early stopping, no model selection on the test set), and the error of the seeds' ensemble
  (each test series takes the class of the largest softmax score averaged over the seeds'
  networks, :func:`ensemble_error`).

The figures print as a table and go to JSON with the machine they ran on. The benchmark never
asserts. Published orientation (Fawaz et al. 2019, ResNet on the UCR 2018 archive, mean test
error over runs): GunPoint ~0.7 %, OSULeaf ~2 %, ArrowHead ~15 %.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info  # bench/ is sys.path[0] when run as a script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DATASETS = ("gunpoint", "arrowhead", "osuleaf")
MODELS = ("cnn1d", "cnn1d_global")


# --- 1-nearest-neighbour baselines ---------------------------------------------------------------
def euclidean_distances(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances ``(N_test, N_train)`` between series ``(N, L)``."""
    sq = np.sum(test**2, axis=1)[:, None] + np.sum(train**2, axis=1)[None, :]
    return np.maximum(sq - 2.0 * test @ train.T, 0.0)


def dtw_distances(
    test: np.ndarray, train: np.ndarray, window: int | None = None, chunk: int = 8
) -> np.ndarray:
    """Dynamic time warping distances ``(N_test, N_train)`` (squared pointwise costs, the UCR
    convention), every pair at once, one row of the cost matrix at a time.

    ``D[i, j] = c[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1])`` with ``c[i, j] = (a_i -
    b_j)^2``. Within a row the recurrence ``D[i, j] = c[i, j] + min(m[j], D[i, j-1])``, ``m[j] =
    min(D[i-1, j-1], D[i-1, j])``, unrolls to ``D[i, j] = S[j] + min_{k <= j}(m[k] - S[k-1])``
    with ``S`` the running sum of the row's costs: one cumulative sum and one cumulative minimum
    per row (``np.minimum.accumulate``), vectorised over all pairs and columns; only the rows are
    a Python loop. ``window`` (a Sakoe-Chiba band: ``|i - j| <= window``) is None for the full
    window. Test series go ``chunk`` at a time to bound memory (``chunk * N_train * L`` floats).
    """
    test = np.asarray(test, dtype=np.float64)
    train = np.asarray(train, dtype=np.float64)
    n_test, length = test.shape
    out = np.empty((n_test, train.shape[0]))
    columns = np.arange(length)
    for start in range(0, n_test, chunk):
        a = test[start : start + chunk]
        prev = np.full((a.shape[0], train.shape[0], length), np.inf)
        for i in range(length):
            cost = (a[:, i, None, None] - train[None, :, :]) ** 2  # (T, R, L)
            outside = None if window is None else np.abs(columns - i) > window
            if outside is not None:  # the band: no path enters a cell outside it
                cost[..., outside] = 0.0  # (finite, so that the running sum stays finite)
            running = np.cumsum(cost, axis=-1)
            diagonal = np.empty_like(prev)  # D[i-1, j-1]; D[-1, -1] = 0 starts the path
            diagonal[..., 0] = 0.0 if i == 0 else np.inf
            diagonal[..., 1:] = prev[..., :-1]
            m = np.minimum(diagonal, prev)
            if outside is not None:
                m[..., outside] = np.inf
            prev = running + np.minimum.accumulate(m - (running - cost), axis=-1)
            if outside is not None:
                prev[..., outside] = np.inf
        out[start : start + chunk] = prev[..., -1]
    return out


def _dtw_compiled():
    """A Numba-compiled DTW over all pairs, or None without Numba: the textbook recurrence cell
    by cell, one row of the cost matrix kept (OSULeaf's 242 x 200 pairs of 427 samples took 24
    minutes through :func:`dtw_distances`' NumPy rows on a loaded core; this is ~100x faster)."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(cache=False, nogil=True)
    def pairs(test, train, window):  # pragma: no cover - compiled
        n_test, length = test.shape
        out = np.empty((n_test, train.shape[0]))
        prev = np.empty(length + 1)
        row = np.empty(length + 1)
        for t in range(n_test):
            a = test[t]
            for r in range(train.shape[0]):
                b = train[r]
                prev[:] = np.inf
                prev[0] = 0.0
                for i in range(length):
                    row[0] = np.inf
                    low = 0 if window < 0 else max(0, i - window)
                    high = length if window < 0 else min(length, i + window + 1)
                    for j in range(low):
                        row[j + 1] = np.inf
                    for j in range(low, high):
                        step = min(prev[j], prev[j + 1], row[j])  # D[i-1,j-1], D[i-1,j], D[i,j-1]
                        diff = a[i] - b[j]
                        row[j + 1] = diff * diff + step
                    for j in range(high, length):
                        row[j + 1] = np.inf
                    prev, row = row, prev
                out[t, r] = prev[length]
        return out

    return pairs


def dtw_distances_compiled(
    test: np.ndarray, train: np.ndarray, window: int | None = None
) -> np.ndarray:
    """:func:`dtw_distances`, compiled with Numba where it is installed (else that function)."""
    pairs = _dtw_compiled()
    if pairs is None:
        return dtw_distances(test, train, window)
    test = np.ascontiguousarray(test, dtype=np.float64)
    train = np.ascontiguousarray(train, dtype=np.float64)
    return pairs(test, train, -1 if window is None else int(window))


def nn1_error(distances: np.ndarray, train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Test error of 1-NN: each test series takes its nearest training series' label (the first
    of equally near ones)."""
    predicted = train_labels[np.argmin(distances, axis=1)]
    return float(np.mean(predicted != test_labels))


# --- the CNN --------------------------------------------------------------------------------------
def train_cnn(
    dataset: Any,
    seed: int,
    epochs: int | None,
    model: str = "cnn1d",
    maps: tuple[int, ...] | None = None,
    reverse: float | None = None,
) -> dict[str, Any]:
    """Train the zoo model with ``anycnn train``'s defaults on the dataset (its optimizer, rate,
    batch, passes, random shifts and reversals); its final test error and its test outputs
    (``"scores"``, the softmax of the network's outputs, for :func:`ensemble_error`).
    ``maps``: cnn1d_global's three stages' maps, if not the recipe's; ``reverse``: the
    reversals' probability, if not the defaults' (0: shifts only, the recipe before them)."""
    from anycnn import models
    from anycnn.data.augment import Shift
    from anycnn.training import loop, optim

    defaults = loop.TRAINING_DEFAULTS[model]
    options = {} if maps is None else {"maps": tuple(maps)}
    net = models.build_for(dataset, model, seed=seed, **options)
    opt = optim.build_optimizer(
        defaults["optimizer"], net, lr=defaults["lr"], momentum=defaults["momentum"]
    )
    shift = defaults.get("augment_shift", 0.0)
    if reverse is None:
        reverse = defaults.get("augment_reverse", 0.0)
    start = time.perf_counter()
    result = loop.train(
        net,
        dataset,
        optimizer=opt,
        epochs=epochs
        or loop.default_epochs(defaults, dataset.train_images.shape[0], defaults["batch_size"]),
        batch_size=defaults["batch_size"],
        seed=seed,
        progress=False,
        augment=Shift(shift, reverse) if shift or reverse else None,
        evaluate_test=False,  # the test set once, after the last pass (each pass: 2-4x the work)
    )
    seconds = time.perf_counter() - start
    last = result.history[-1]
    test = loop.evaluate(net, dataset.test_images, dataset.test_labels, result.preprocessing)
    x = result.preprocessing(dataset.test_images, net.dtype_name)
    outputs = np.asarray(
        net.backend.to_host(net.forward(net.backend.asarray(x, dtype=net.dtype_name))), np.float64
    )
    scores = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return {
        "seed": seed,
        "test_error": float(test["error"]),
        "train_error": float(last.train_error),
        "seconds": seconds,
        "parameters": net.num_parameters(),
        "scores": scores / scores.sum(axis=1, keepdims=True),
    }


def ensemble_error(scores: list[np.ndarray], labels: np.ndarray) -> float:
    """Test error of the few-seed ensemble: each series takes the class of the largest mean
    score over the networks (the softmax of each network's outputs, averaged)."""
    predicted = np.argmax(np.mean(scores, axis=0), axis=1)
    return float(np.mean(predicted != np.asarray(labels)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", type=int, default=5, help="CNN runs per data set (seeds 0..)")
    parser.add_argument("--epochs", type=int, default=None, help="default: anycnn train's")
    parser.add_argument("--window", type=int, default=None, help="DTW band (default: full)")
    parser.add_argument(
        "--maps", type=int, nargs=3, default=None, help="cnn1d_global's maps (default: 16 32 64)"
    )
    parser.add_argument(
        "--reverse",
        type=float,
        default=None,
        help="the reversals' probability (default: anycnn train's, cnn1d_global 0.5; 0: none)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "ucr.json")
    args = parser.parse_args(argv)

    from anycnn import data as datasets

    rows = []
    for name in args.datasets:
        ds = datasets.load(name)
        train_x = ds.train_images.reshape(ds.train_images.shape[0], -1)
        test_x = ds.test_images.reshape(ds.test_images.shape[0], -1)
        t0 = time.perf_counter()
        ed = nn1_error(euclidean_distances(test_x, train_x), ds.train_labels, ds.test_labels)
        t1 = time.perf_counter()
        dtw = nn1_error(
            dtw_distances_compiled(test_x, train_x, args.window), ds.train_labels, ds.test_labels
        )
        t2 = time.perf_counter()
        row: dict[str, Any] = {
            "dataset": name,
            "train": int(ds.train_images.shape[0]),
            "test": int(ds.test_images.shape[0]),
            "length": int(ds.train_images.shape[-1]),
            "classes": ds.num_classes,
            "nn1_euclidean": ed,
            "nn1_dtw": dtw,
            "dtw_window": args.window,
            "nn1_seconds": {"euclidean": t1 - t0, "dtw": t2 - t1},
        }
        print(f"{name:10s} 1-NN ED {ed:6.1%}  1-NN DTW {dtw:6.1%}", flush=True)
        for model in args.models:
            maps = args.maps if model == "cnn1d_global" else None
            runs = [
                train_cnn(ds, seed, args.epochs, model, maps, args.reverse)
                for seed in range(args.seeds)
            ]
            errors = [r["test_error"] for r in runs]
            ensemble = ensemble_error([r.pop("scores") for r in runs], ds.test_labels)
            row[model] = {
                "maps": maps,
                "reverse": args.reverse,
                "mean": statistics.fmean(errors),
                "std": statistics.pstdev(errors),
                "ensemble": ensemble,
                "runs": runs,
            }
            print(
                f"{name:10s} {model:12s} {row[model]['mean']:6.1%} +- {row[model]['std']:.1%}"
                f" ({len(runs)} seeds: "
                + ", ".join(f"{e:.1%}" for e in errors)
                + f"; their ensemble {ensemble:.1%}; {runs[0]['parameters']} parameters, "
                f"{statistics.fmean(r['seconds'] for r in runs):.1f} s per run)",
                flush=True,
            )
        rows.append(row)
    report = {
        "benchmark": "bench/ucr.py",
        "command": "python bench/ucr.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("numpy"),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
