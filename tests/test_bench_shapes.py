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


def test_shapes_table_summarises_a_report_per_batch_and_size(tmp_path):
    """``--table JSON`` prints the README's table: per (batch, image size) the ratios' min,
    median and max, the rows below 1.0, the paths taken and the median peaks, rows above."""

    def row(size, batch, speedup, paths, ours, theirs):
        return {"size": size, "kernel": 3, "maps": 6, "channels": 1, "batch": batch,
                "paths": {"valid": paths[0], "grad": paths[1]}, "anycnn_ms": 1.0,
                "torch_ms": speedup, "speedup": speedup, "anycnn_peak_mib": ours,
                "torch_peak_mib": theirs}  # fmt: skip

    rows = [
        row(28, 1, 0.5, ("direct", "direct"), 2.0, 1.0),
        row(28, 1, 2.0, ("direct", "blocked"), 1.0, 3.0),
        row(28, 1, 3.0, ("direct", "blocked"), 4.0, 5.0),
        row(64, 64, 1.5, ("blocked", "fft"), 10.0, 20.0),
    ]
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"rows": rows}))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "shapes.py"), "--table", str(path)],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| batch | image | rows |")
    assert lines[2] == (
        "| 1 | 28 px | 3 | 0.50 | 2.00 | 3.00 | 1 | direct/blocked 2, direct/direct 1 | "
        "2.0 / 3.0 | 1 |"
    )
    assert (
        lines[3] == "| 64 | 64 px | 1 | 1.50 | 1.50 | 1.50 | 0 | blocked/fft 1 | 10.0 / 20.0 | 0 |"
    )
    assert "4 rows: PyTorch / anycnn min 0.50, median 1.75, max 3.00; below 1.0: 1" in done.stdout
    assert "peak memory above PyTorch's: 1 rows" in done.stdout
