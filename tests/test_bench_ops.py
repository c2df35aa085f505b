"""bench/ops.py runs (tiny sizes) and writes the JSON its README table and later runs rely on.

This checks the benchmark's plumbing and the structure of its report, never its timings.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import anycnn

BENCH = Path(__file__).resolve().parents[1] / "bench" / "ops.py"
HOT_OPS = {
    "conv_valid",
    "conv_full",
    "conv_kernel_grad",
    "kron_upsample",
    "block_sum",
    "block_mean",
    "decimate",
    "decimate_transpose",
}
MACHINE_KEYS = {"date", "platform", "processor", "cpu_count", "numpy", "scipy", "python"}


def _child_env() -> dict[str, str]:
    """Make the child import the anycnn (and NumPy plugin) this process imported."""
    import anycnn_numpy

    roots = [str(Path(m.__file__).resolve().parent.parent) for m in (anycnn, anycnn_numpy)]
    env = {k: v for k, v in os.environ.items() if k != "ANYCNN_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(
        list(dict.fromkeys(roots)) + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    return env


def run_bench(tmp_path: Path, *args: str) -> tuple[dict, str]:
    out = tmp_path / "ops.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out), *args],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"bench/ops.py failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(out.read_text()), done.stdout


def _check_timing(entry: dict, where: str) -> None:
    assert entry["median_ms"] > 0, where
    assert entry["min_ms"] <= entry["median_ms"], where
    assert len(entry["times_ms"]) == 2, f"{where}: --quick times 2 repetitions"


def test_quick_numpy_run_writes_the_report(tmp_path):
    report, stdout = run_bench(tmp_path)

    assert report["backend"] == "numpy"
    assert report["quick"] is True
    assert report["dtype"] == "float32"
    assert report["reps"] == 2
    assert MACHINE_KEYS <= set(report["machine"])
    assert report["machine"]["cpu_count"] >= 1

    hot = report["hot_ops"]
    assert {row["op"] for row in hot} == HOT_OPS
    assert {row["layer"] for row in hot} == {"C1", "S2", "C3", "S4"}
    for row in hot:
        where = f"{row['layer']} {row['op']} {row['variant']}"
        assert row["backend"] == "numpy"
        _check_timing(row, where)
        if row["op"] in {"kron_upsample", "block_sum", "block_mean", "decimate"}:
            assert row["ratio_vs_copy"] > 0, where
            assert row["copy"]["bytes"] == 4 * _prod(row["output"]), where
            _check_timing(row["copy"], where + " copy")
        if row["op"].startswith("conv"):
            assert row["ratio_vs_copy"] is None, where
    c3 = [r for r in hot if r["layer"] == "C3" and r["op"] == "conv_valid"]
    assert {r["variant"] for r in c3} == {"lenet5 table", "full"}
    assert c3[0]["output"][1:] == [16, 10, 10]

    titles = [c["title"] for c in report["comparisons"]]
    assert titles[:2] == ["up-sampling by 2", "down-sampling by 2 (block sums)"]
    up, down = report["comparisons"][:2]
    assert up["output"][2:] == [28, 28] and down["output"][2:] == [14, 14]
    # with Numba installed (the test extra has it): the kernel-gradient sums, then the direct
    # convolutions against im2col + BLAS (conv_full below the first layers only)
    kernel_sums = report["comparisons"][2:6]
    direct = report["comparisons"][6:]
    if importlib.util.find_spec("numba") is not None:
        layers = ["DLT C1", "LeNet-5 C1", "DLT C3", "LeNet-5 C3"]
        assert [t.split(", ")[1] for t in titles[2:6]] == layers
        for comparison in kernel_sums:
            assert {c["name"].split(":")[0] for c in comparison["candidates"]} == {"BLAS", "Numba"}
        assert titles[6:] == [
            f"{op}, {layer}"
            for layer in ["DLT C1", "DLT C3", "LeNet-5 C1", "LeNet-5 C3"]
            for op in ["conv_valid", "conv_kernel_grad"] + (["conv_full"] if "C3" in layer else [])
        ]
        for comparison in direct:
            names = {c["name"] for c in comparison["candidates"]}
            assert names == {"im2col + BLAS", "direct (Numba)"}
    else:
        assert kernel_sums == [] and direct == []
    for comparison in report["comparisons"]:
        names = [c["name"] for c in comparison["candidates"]]
        assert names[0].startswith("anycnn ") or comparison in kernel_sums + direct
        assert min(c["ratio_vs_fastest"] for c in comparison["candidates"]) == pytest.approx(1.0)
        for candidate in comparison["candidates"]:
            _check_timing(candidate, candidate["name"])
            assert candidate["agrees"] is True, f"{candidate['name']} computes something else"
    assert {"np.kron(x, ones)", "ndimage.zoom order=0 (imresize)"} <= {
        c["name"] for c in up["candidates"]
    }
    assert "per-block loop (blkproc)" in {c["name"] for c in down["candidates"]}

    assert len(report["claims"]) == 2
    for claim in report["claims"]:
        assert {"claim", "faster", "slower", "speedup", "holds", "criterion"} <= set(claim)
        assert isinstance(claim["holds"], bool)
        assert ("HOLDS" if claim["holds"] else "DOES NOT HOLD") in stdout
    assert "median ms" in stdout


def test_quick_run_on_the_reference_ops(tmp_path):
    report, _ = run_bench(tmp_path, "--backend", "strict")
    assert report["backend"] == "array_api_strict"
    assert {row["op"] for row in report["hot_ops"]} == HOT_OPS
    assert all(row["implementation"].startswith("anycnn.ops.") for row in report["hot_ops"])
    assert report["comparisons"] == [] and report["claims"] == []


def test_an_unavailable_backend_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--backend", "no_such_backend"],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown backend 'no_such_backend'" in done.stderr
    assert "Traceback" not in done.stderr


def _prod(shape: list[int]) -> int:
    result = 1
    for size in shape:
        result *= size
    return result
