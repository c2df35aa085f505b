"""bench/ucr.py's baselines against plain dynamic programming, and bench/nd.py's plumbing
(issue 18). The baselines are the oracle of the UCR table in the README, so they are tested
like the code they are compared with."""

from __future__ import annotations

import importlib.util
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
