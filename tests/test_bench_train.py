"""bench/train.py runs (--quick) and writes a report of the documented structure.

This checks the benchmark's plumbing, never its timings: no figure is compared with another.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import anycnn

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train.py"
TIMING_KEYS = {
    "median_s",
    "min_s",
    "max_s",
    "calls_per_rep",
    "reps",
    "images_per_s",
    "load_average_1min",
}
MACHINE_KEYS = {"date", "slug", "cpu_model", "cpu_count", "python", "numpy", "blas", "backend"}


def _child_env() -> dict[str, str]:
    """Make the child import the anycnn (and NumPy plugin) this process imported."""
    import anycnn_numpy

    roots = [str(Path(m.__file__).resolve().parent.parent) for m in (anycnn, anycnn_numpy)]
    env = {k: v for k, v in os.environ.items() if k != "ANYCNN_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(
        list(dict.fromkeys(roots)) + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    return env


def test_quick_run_writes_the_report(tmp_path):
    out = tmp_path / "train.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--out", str(out)],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"bench/train.py failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())

    assert report["benchmark"] == "bench/train.py"
    assert report["backend"] == "numpy" and report["quick"] is True
    assert report["dtype"] == "float32" and report["reps"] == 2
    assert MACHINE_KEYS <= set(report["machine"])
    assert report["machine"]["slug"].endswith(f"-{os.cpu_count()}c")
    assert report["epoch"] is None and report["memory"] is None  # --quick skips both

    has_torch = importlib.util.find_spec("torch") is not None
    cells = {(row["model"], row["what"], row["batch"]) for row in report["rows"]}
    assert cells == {
        ("dlt", "train step", 1),
        ("dlt", "train step", 16),
        ("lenet5", "train step", 1),
        ("lenet5", "train step", 16),
        ("dlt", "inference", 16),
        ("lenet5", "inference", 16),
    }
    for row in report["rows"]:
        where = f"{row['model']} {row['what']} batch {row['batch']}"
        assert TIMING_KEYS <= set(row["anycnn"]), where
        assert row["anycnn"]["median_s"] > 0 and row["anycnn"]["reps"] == 2, where
        assert row["anycnn"]["min_s"] <= row["anycnn"]["median_s"] <= row["anycnn"]["max_s"]
        if has_torch:
            assert TIMING_KEYS <= set(row["torch"]), where
            assert row["ratio"] == row["torch"]["median_s"] / row["anycnn"]["median_s"], where
        else:
            assert row["torch"] is None and row["ratio"] is None, where
    # the table is printed with one line per cell
    assert done.stdout.count("train step") >= 4
    assert f"wrote {out}" in done.stdout
    # the machine's GEMM rate, before and after the rows, and every row's rate against it
    gemm = report["gemm"]
    assert gemm["start"]["dtype"] == gemm["end"]["dtype"] == "float32"
    assert gemm["gflop_s"] == max(gemm["start"]["gflop_s"], gemm["end"]["gflop_s"]) > 0
    assert "GFLOP/s" in done.stdout and "of GEMM" in done.stdout
    for row in report["rows"]:
        entry = row["anycnn"]
        assert row["flops_per_image"] > 0
        assert entry["gflop_s"] == row["flops_per_image"] * entry["images_per_s"] / 1e9
        assert entry["fraction_of_gemm"] == entry["gflop_s"] / gemm["gflop_s"]


def _bench_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # train.py imports _machine from bench/
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_step_flops_count_the_products_of_the_zoo_models(monkeypatch):
    """The multiply-adds behind the GFLOP/s column, counted by hand from the architectures.

    DLT: C1 6 maps of 24x24 from 5x5 taps (86,400), C3 12x6 pairs on 8x8 (115,200), FC 192x10.
    LeNet-5: C1 6 maps of 28x28 (117,600), C3 the 60 pairs of LeCun's table on 10x10 (150,000,
    not 96 pairs), C5 120x16 on 1x1 (48,000), F6 120x84, F7 84x10. A training step does the
    forward product, the kernel gradient and, except in the first layer, the input gradient."""
    from anycnn import models

    bench = _bench_module(monkeypatch)
    dlt, lenet5 = models.build("dlt"), models.build("lenet5")
    assert bench.step_flops(dlt, inference=True) == 2 * (86_400 + 115_200 + 1_920)
    assert bench.step_flops(dlt) == 2 * (2 * 86_400 + 3 * 115_200 + 3 * 1_920)
    forward = 117_600 + 150_000 + 48_000 + 10_080 + 840
    assert bench.step_flops(lenet5, inference=True) == 2 * forward
    assert bench.step_flops(lenet5) == 2 * (3 * forward - 117_600)


def test_float64_run_times_both_libraries_in_float64(tmp_path, monkeypatch):
    """--dtype float64: both libraries' parameters and batches in float64, DGEMM as yardstick,
    and a report of its own (a float32 one is never replaced)."""
    bench = _bench_module(monkeypatch)
    x, t = bench.random_batch("dlt", 3, 0, "float64")
    assert x.dtype == t.dtype == "float64"
    runner = bench.AnycnnRunner("dlt", "numpy", dtype="float64")
    assert {str(p.dtype) for p in runner.net.parameters().values()} == {"float64"}
    if importlib.util.find_spec("torch") is not None:
        peer = bench.torch_runner_like(runner, "dlt", 1, "foreach")
        assert {str(p.dtype) for p in peer.params} == {"torch.float64"}
    out = tmp_path / "train64.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--dtype", "float64", "--models", "dlt",
         "--batch-sizes", "2", "--no-inference", "--out", str(out)],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"bench/train.py failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads(out.read_text())
    assert report["dtype"] == "float64" and report["gemm"]["start"]["dtype"] == "float64"
    assert [(row["model"], row["batch"]) for row in report["rows"]] == [("dlt", 2)]
    assert "float64" in done.stdout.splitlines()[0]


def test_machine_slug_is_short_and_safe():
    spec = importlib.util.spec_from_file_location("bench_machine", BENCH.parent / "_machine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    slug = module.machine_slug()
    assert slug == slug.lower() and " " not in slug and len(slug) <= 48
    assert all(ch.isalnum() or ch == "-" for ch in slug)


def test_layer_profile_runs_and_reports_every_layer(tmp_path):
    """bench/layers.py (the per-layer step profile the README cites) times every layer's forward
    and backward of both zoo models; its JSON names them in step order."""
    from anycnn import models

    script = BENCH.parent / "layers.py"
    for model in ("dlt", "lenet5"):
        done = subprocess.run(
            [sys.executable, str(script), model, "2", "--steps", "2", "--warmup", "1", "--json"],
            cwd=tmp_path,
            env=_child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        names = [layer.name for layer in models.build(model).layers]
        expected = [f"{n}.forward" for n in names] + [f"{n}.backward" for n in reversed(names)]
        assert list(report["layers_ms"]) == expected
        assert report["model"] == model and report["batch"] == 2 and report["steps"] == 2
        assert report["step_ms"] > 0 and all(ms > 0 for ms in report["layers_ms"].values())
