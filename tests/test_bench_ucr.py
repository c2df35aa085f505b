"""bench/ucr.py's baselines against plain dynamic programming, and bench/nd.py's plumbing
(issue 18). The baselines are the oracle of the UCR table in the README, so they are tested
like the code they are compared with."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def _dtw(a, b, window=None):
    """The textbook recurrence, cell by cell."""
    n = len(a)
    cost = np.full((n + 1, n + 1), np.inf)
    cost[0, 0] = 0.0
    for i in range(1, n + 1):
        for j in range(1, n + 1):
            if window is not None and abs(i - j) > window:
                continue
            step = min(cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1])
            cost[i, j] = (a[i - 1] - b[j - 1]) ** 2 + step
    return cost[n, n]


@pytest.mark.parametrize("window", [None, 0, 1, 3])
def test_dtw_matches_the_recurrence(window):
    ucr = _bench("ucr")
    rng = np.random.default_rng(window or 7)
    test, train = rng.standard_normal((5, 11)), rng.standard_normal((4, 11))
    expected = np.array([[_dtw(a, b, window) for b in train] for a in test])
    np.testing.assert_allclose(
        ucr.dtw_distances(test, train, window, chunk=2), expected, rtol=1e-12
    )
    np.testing.assert_allclose(
        ucr.dtw_distances_compiled(test, train, window), expected, rtol=1e-12
    )


def test_euclidean_and_nn1():
    ucr = _bench("ucr")
    rng = np.random.default_rng(1)
    test, train = rng.standard_normal((6, 9)), rng.standard_normal((5, 9))
    d = ucr.euclidean_distances(test, train)
    np.testing.assert_allclose(d, ((test[:, None] - train[None]) ** 2).sum(-1), atol=1e-12)
    np.testing.assert_allclose(ucr.dtw_distances(test, train, 0), d, atol=1e-12)  # no warping
    labels = np.arange(5)
    assert ucr.nn1_error(d, labels, np.argmin(d, axis=1)) == 0.0
    assert ucr.nn1_error(d, labels, np.argmin(d, axis=1) + 1) == 1.0


@pytest.mark.slow
def test_nd_bench_quick_run(tmp_path):
    pytest.importorskip("torch", reason="the peer of bench/nd.py")
    nd = _bench("nd")
    out = tmp_path / "nd.json"
    assert nd.main(["--quick", "--out", str(out)]) == 0
    assert out.exists()


def test_ucr_variants_augmentations():
    """bench/ucr_variants.py's wrapped shifts rotate each series, and its stretch of 1 with a
    gain of 1 is the recipe's edge-held shift: the variants change only what they name."""
    from anycnn.data.augment import Shift

    roll, stretch, jitter = _bench("ucr_variants")._augmentations()
    x = np.arange(20.0).reshape(2, 1, 10)
    np.testing.assert_array_equal(
        roll(0.5).apply(x, np.array([3, -2])),
        np.stack([np.roll(x[0], 3, axis=-1), np.roll(x[1], -2, axis=-1)]),
    )
    shifts = Shift(0.2).offsets(2, 10, seed=0, epoch=1)
    same = np.stack([shifts, np.ones(2), np.ones(2)], axis=1).astype(np.float64)
    np.testing.assert_array_equal(stretch(0.2).apply(x, same), Shift(0.2).apply(x, shifts))
    offsets = stretch(0.2, 0.5, 0.5).offsets(50, 10, seed=0, epoch=1)
    assert offsets.shape == (50, 3) and np.all(np.abs(offsets[:, 0]) <= 2)
    assert np.all(np.abs(offsets[:, 1:] - 1) <= 0.5) and np.ptp(offsets[:, 1]) > 0.1
    # reversals without noise: the library's Shift with reversals
    flips = jitter(0.2, 0.0, 0.5).offsets(2, 10, seed=0, epoch=1)
    flips[:, 2] = [1, 0]
    np.testing.assert_array_equal(
        jitter(0.2, 0.0, 0.5).apply(x, flips), Shift(0.2, 0.5).apply(x, flips[:, [0, 2]])
    )


def test_ucr_variants_quick_run(capsys):
    """One short run of a variant with every kind of option prints its JSON line."""
    variants = _bench("ucr_variants")
    argv = ["--dataset", "gunpoint", "--updates", "28", "--maps", "4,4,4", "--combine", "2"]
    argv += ["--inputs", "raw,diff,smooth5", "--stretch", "0.1", "--decay", "0.5", "--tta", "1"]
    assert variants.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epochs"] == 4 and report["options"]["maps"] == "4,4,4"
    assert 0 <= report["test_error"] <= 1 and 0 <= report["test_error_tta"] <= 1


def test_ucr_variants_third_round_options(capsys):
    """The third round's options (weight decay, noise, reversals, weight averaging, snapshots,
    SDLM, an ensemble of two) run and report their errors."""
    variants = _bench("ucr_variants")
    argv = ["--dataset", "gunpoint", "--updates", "28", "--maps", "4,4,4", "--wd", "0.001"]
    argv += ["--jitter", "0.1", "--flip", "0.5", "--swa", "0.5", "--snapshots", "2"]
    argv += ["--optimizer", "sdlm", "--lr", "0.003", "--ensemble", "2"]
    assert variants.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert 0 <= report["test_error_ensemble"] <= 1 and len(report["test_errors"]) == 2


def test_ucr_bench_trains_other_maps():
    """bench/ucr.py's --maps reaches cnn1d_global (4, 4, 4 maps: 178 parameters on GunPoint's two
    classes) and its scores are one softmax per test series."""
    from anycnn import data

    ucr = _bench("ucr")
    ds = data.load("gunpoint")
    run = ucr.train_cnn(ds, 0, 1, "cnn1d_global", (4, 4, 4))
    assert run["parameters"] == 8 * 4 + (5 * 4 + 1) * 4 + (3 * 4 + 1) * 4 + 2 * (4 + 1) == 178
    assert run["scores"].shape == (150, 2)
    np.testing.assert_allclose(run["scores"].sum(axis=1), 1.0, rtol=1e-12)
    assert ucr.train_cnn(ds, 0, 1, "cnn1d_global")["parameters"] == 9058


def test_ucr_bench_reversals_are_the_recipes_unless_asked():
    """bench/ucr.py trains with the recipe's reversals by default; --reverse 0 is the recipe
    before them (different scores after one pass of GunPoint's first 50 series)."""
    from anycnn import data

    ucr = _bench("ucr")
    ds = data.load("gunpoint")
    default = ucr.train_cnn(ds, 0, 1, "cnn1d_global", (4, 4, 4))["scores"]
    half = ucr.train_cnn(ds, 0, 1, "cnn1d_global", (4, 4, 4), 0.5)["scores"]
    none = ucr.train_cnn(ds, 0, 1, "cnn1d_global", (4, 4, 4), 0.0)["scores"]
    np.testing.assert_array_equal(default, half)
    assert not np.array_equal(default, none)
