"""bench/scale.py runs (--quick) and writes a report of the documented structure (slow: it
launches mpiexec and PyTorch DDP). Its plumbing only: no timing is compared with another."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scale_quick_writes_its_report(tmp_path):
    pytest.importorskip("mpi4py")
    pytest.importorskip("torch")
    out = tmp_path / "scale.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "backends")])
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--quick", "--output", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["steps"]) == {"anycnn 2x1", "anycnn 1x2", "torch ddp 2x1"}
    assert report["steps"]["anycnn 2x1"]["threads"] == 1
    assert report["steps"]["anycnn 1x2"]["threads"] == 2
    for model in ("lenet5", "dlt"):
        assert report["steps"]["anycnn 2x1"][model]["allreduce_alone_median_s"] > 0
    assert set(report["allreduce"]) == {"1000", "100000"}
    assert {row["processes"] for row in report["projections"]} == {8, 64, 512}
