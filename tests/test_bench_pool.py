"""bench/pool.py runs and its four ways of running the NumPy backend's slices (the pool, the
pool without spinning, Numba prange drivers, one thread) give the same bits.

This checks the benchmark's plumbing and the prange variant's results, never its timings. Slow
(Numba compiles six parallel drivers): outside the default suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import anycnn

BENCH = Path(__file__).resolve().parents[1] / "bench" / "pool.py"


@pytest.mark.slow
def test_pool_benchmark_modes_give_the_same_bits(tmp_path):
    pytest.importorskip("numba")
    import anycnn_numpy

    roots = [str(Path(m.__file__).resolve().parent.parent) for m in (anycnn, anycnn_numpy)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANYCNN_")}
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(roots))
    out = tmp_path / "pool.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--batch-sizes", "1,64", "--reps", "1", "--warmup", "0"]
        + ["--block-seconds", "0.01", "--gap-seconds", "0", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"bench/pool.py failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["model"], r["batch"]) for r in rows] == [
        ("dlt", 1),
        ("dlt", 64),
        ("lenet5", 1),
        ("lenet5", 64),
    ]
    for row in rows:
        assert row["same_bits"] is True, row
        for mode in ("pool", "pool-nospin", "prange", "one-thread"):
            assert row[mode]["median_s"] > 0
    assert report["machine"]["pool_threads"] >= 1
