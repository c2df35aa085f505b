"""bench/shapes.py and bench/paths.py run (--quick) and write reports of the documented
structure: the benchmarks' plumbing, never their timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_bench_ops import _child_env

ROOT = Path(__file__).resolve().parents[1]


def test_shapes_quick_writes_rows_memory_and_plot(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out = tmp_path / "shapes.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shapes.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"bench/shapes.py failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())
    assert report["benchmark"] == "bench/shapes.py"
    assert report["threads"] >= 1
    rows = report["rows"]
    assert len(rows) == 3
    for row in rows:
        assert row["agree"], row
        assert row["anycnn_ms"] > 0 and row["torch_ms"] > 0
        assert row["speedup"] == pytest.approx(row["torch_ms"] / row["anycnn_ms"])
        assert set(row["paths"]) == {"valid", "grad"}
        assert set(row["paths"].values()) <= {"direct", "im2col", "fft", "blocked"}
        if Path("/proc/self/clear_refs").exists():
            assert row["anycnn_peak_mib"] is not None and row["torch_peak_mib"] is not None
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "rows: PyTorch / anycnn min" in done.stdout


def test_paths_quick_measures_every_path_and_fits(tmp_path):
    pytest.importorskip("scipy")
    out = tmp_path / "paths.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "paths.py"), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"bench/paths.py failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())
    assert {row["op"] for row in report["rows"]} == {"valid", "grad", "full"}
    for row in report["rows"]:
        # the blocked kernels have no 'full' convolution (Note [Blocked 2-D path])
        paths = {"direct", "im2col", "fft"} | ({"blocked"} if row["op"] != "full" else set())
        assert set(row["seconds"]) == paths
        assert all(v > 0 for v in row["seconds"].values())
    summary = json.loads(done.stdout[done.stdout.index("{") :].rsplit("}", 1)[0] + "}")
    assert summary["quality"]["rows"] == len(report["rows"])
