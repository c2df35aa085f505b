"""Growth: one convolution + subsampling stage against PyTorch as images, kernels and maps grow.

Usage::

    python bench/shapes.py                  # the issue's grid: writes the JSON and the plot
    python bench/shapes.py --quick          # three small rows, 3 repetitions (plumbing check)
    python bench/shapes.py --sizes 64,128 --kernels 11 --maps 64 --channels 3 --batches 64
    python bench/shapes.py --plot bench/results/shapes-numpy-intel-xeon-2c.json  # redraw only
    python bench/shapes.py --table bench/results/shapes-numpy-intel-xeon-2c.json # README table

The grid (issue 16, "Growth"): images of 28, 64, 128 and 256 pixels a side, kernels 3, 5, 7
and 11, 6, 16 and 64 output maps, 1 and 3 input channels, batches of 1 and 64 (192 rows).

A *stage* is bench/nd.py's in 2-D: the notes' convolution layer ``x_j = f(sum_i x_i * k_ij +
b_j)`` (section 3.1, tanh, all input maps) and a trainable 2x mean subsampling ``beta down(x) +
b`` (section 3.2), then a squared error against a fixed target (eq. 1). One step is the forward
pass and back-propagation to every parameter (not to the input: the stage sees images);
``Network.compute_gradients`` in anycnn, and in PyTorch ``conv2d`` + ``tanh`` + ``avg_pool2d``
times beta plus b, the same loss, ``backward()``, the same weights (``to_cross_correlation``).
Both are checked to agree (loss and kernel gradient, to float32 rounding) before timing. Each row
also names the path the NumPy backend's cost model took for the forward convolution and for the
kernel gradient (Note [Choosing a path] in ``anycnn_numpy._plan``).

Time: anycnn and PyTorch interleaved in one process (A, B, A, B, ...) after two warm-up steps
each, the same number of threads (``--threads``, default anycnn's); each timed block repeats the
step for 0.1 s (or once) after 0.1 s of sleep, so that neither library's idle threads still spin
on the cores when the other starts; the median of ``--reps`` blocks (2 for steps over a second),
and the ratio PyTorch / anycnn (above 1: anycnn is faster).

Peak memory: per library, one child process runs every row once after a warm-up on small maps:
before each row's step the freed memory is given back (``malloc_trim``) and the kernel's peak
resident set is reset (``/proc/self/clear_refs``); the row's figure is the peak during the step
above the resident set before it (inputs and parameters already there): what the step itself
needs, in MiB. Linux only (elsewhere the columns are left out).

Both libraries run in a process with the setting ``anycnn train`` makes (as bench/train.py
does): for the NumPy backend, malloc keeps freed memory, large blocks included (Note [Fresh
pages] in ``anycnn_numpy._memory``). It is process-wide, so PyTorch's tensors (glibc's malloc
too) get it as well, in the timing process and in both memory children.

The JSON records the machine and the load average before and after; the plot is time against
image size, log-log, both libraries. It never asserts.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import load_average, machine_info, machine_slug  # bench/ is sys.path[0]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

SIZES = (28, 64, 128, 256)
KERNELS = (3, 5, 7, 11)
MAPS = (6, 16, 64)
CHANNELS = (1, 3)
BATCHES = (1, 64)
#: (size, kernel, maps, channels, batch) of --quick
QUICK = [(16, 3, 4, 1, 1), (16, 5, 6, 3, 4), (32, 11, 6, 3, 2)]


def grid(args: argparse.Namespace) -> list[tuple[int, int, int, int, int]]:
    if args.quick:
        return list(QUICK)
    rows = [
        (s, k, o, c, n)
        for n in args.batches
        for s in args.sizes
        for k in args.kernels
        for c in args.channels
        for o in args.maps
    ]
    # cheapest first (multiply-adds of the forward pass), so that a run cut short by --budget
    # has the most rows
    return sorted(rows, key=lambda r: r[4] * r[2] * r[3] * r[1] ** 2 * (r[0] - r[1] + 1) ** 2)


def stage(size: int, k: int, c: int, o: int):
    from anycnn import Convolution, Network, Subsampling

    return Network(
        [Convolution(o, k, activation="tanh"), Subsampling(2, "mean", remainder="drop")],
        (c, size, size),
        loss="squared_error",
        dtype="float32",
        backend="numpy",
        seed=0,
    )


def data(net, size: int, c: int, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, c, size, size)).astype(np.float32)
    t = rng.uniform(-0.5, 0.5, (batch, *net.output_shape)).astype(np.float32)
    return x, t


def torch_step(torch, net, x, t):
    """The stage in PyTorch with the network's weights: a function running one step."""
    from anycnn import to_cross_correlation

    tf = torch.nn.functional
    params = net.parameters()
    leaves = {
        "kernel": torch.tensor(to_cross_correlation(params["conv1.kernel"]).copy()),
        "bias": torch.tensor(params["conv1.bias"]),
        "beta": torch.tensor(params["sub2.beta"]),
        "sub_bias": torch.tensor(params["sub2.bias"]),
    }
    for leaf in leaves.values():
        leaf.requires_grad_()
    per_map = (slice(None), None, None)

    def step():
        for leaf in leaves.values():
            leaf.grad = None
        h = torch.tanh(tf.conv2d(x, leaves["kernel"], leaves["bias"]))
        y = tf.avg_pool2d(h, 2) * leaves["beta"][per_map] + leaves["sub_bias"][per_map]
        loss = 0.5 * ((y - t) ** 2).sum() / x.shape[0]
        loss.backward()
        return loss, leaves

    return step


def chosen_paths(size: int, k: int, c: int, o: int, batch: int) -> dict[str, str]:
    """The NumPy backend's paths for the stage's forward convolution and kernel gradient."""
    from anycnn_numpy import _conv

    direct = _conv._jit.correlate_into is not None
    args = (batch, c, o, size, size, k, k, 0, 0, True)
    return {op: _conv._path(op, direct, np.dtype(np.float32), *args) for op in ("valid", "grad")}


#: Seconds of sleep before each timed block: the other library's threads (PyTorch's OpenMP
#: workers, anycnn's spinning helpers) stop spinning on the cores first (bench/train.py's gap).
GAP = 0.1
#: A timed block repeats a step for at least this long (one call when a step is longer).
BLOCK = 0.1


def time_pair(a, b, reps: int) -> tuple[float, float, int]:
    """Median seconds per step of ``a`` and ``b``: blocks of calls, A, B, A, B, ..., each after
    a GAP of sleep, after two warm-up calls each (one for steps over a second, then 2 blocks)."""
    first = []
    for f in (a, b):
        start = time.perf_counter()
        f()
        took = time.perf_counter() - start
        if took < 1.0:  # a second warm-up call where they are cheap (the first compiles)
            start = time.perf_counter()
            f()
            took = time.perf_counter() - start
        first.append(took)
    if max(first) > 1.0:
        reps = min(reps, 2)
    counts = [max(1, int(BLOCK / max(t, 1e-6))) for t in first]
    times: list[list[float]] = [[], []]
    for _ in range(reps):
        for index, f in enumerate((a, b)):
            time.sleep(GAP)
            start = time.perf_counter()
            for _ in range(counts[index]):
                f()
            times[index].append((time.perf_counter() - start) / counts[index])
    return statistics.median(times[0]), statistics.median(times[1]), reps


def run_row(torch, size, k, o, c, batch, reps, seed) -> dict[str, Any]:
    from anycnn import to_cross_correlation

    net = stage(size, k, c, o)
    be = net.backend
    x_host, t_host = data(net, size, c, batch, seed)
    x, t = be.asarray(x_host, dtype="float32"), be.asarray(t_host, dtype="float32")
    step_torch = torch_step(torch, net, torch.tensor(x_host), torch.tensor(t_host))

    def step_anycnn():
        return net.compute_gradients(x, t, check=False)

    loss = float(step_anycnn())
    t_loss, leaves = step_torch()
    grad = be.to_host(net.gradients()["conv1.kernel"])
    t_grad = to_cross_correlation(leaves["kernel"].grad.numpy())
    scale = float(np.abs(t_grad).max()) or 1.0
    agree = bool(
        abs(loss - float(t_loss.detach())) <= 1e-4 * max(abs(loss), 1e-3)
        and np.abs(grad - t_grad).max() <= 1e-3 * scale
    )
    ours, theirs, used = time_pair(step_anycnn, step_torch, reps)
    return {
        "size": size,
        "kernel": k,
        "maps": o,
        "channels": c,
        "batch": batch,
        "paths": chosen_paths(size, k, c, o, batch),
        "anycnn_ms": ours * 1e3,
        "torch_ms": theirs * 1e3,
        "speedup": theirs / ours,
        "reps": used,
        "agree": agree,
        "load_average_1min": load_average()[:1],
    }


# --- peak memory, one child process per library -------------------------------------------------
def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


def _release() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)


def tune_process() -> bool:
    """The process-wide setting ``anycnn train`` makes for the NumPy backend (Note [Fresh
    pages], ``Backend.tune_process``), as bench/train.py does. True if made.

    Freed blocks then stay in the heap, and a grid whose rows grow leaves each row's behind,
    fragmented: the 2026-12-08 02:00 run reached 16.3 GB resident and was killed by the OOM
    killer after its last row. So each row starts after ``malloc_trim`` (:func:`_release`), as
    the memory children's rows do; within a row the steps reuse their blocks, as training does.
    """
    import anycnn_numpy

    return anycnn_numpy.keep_freed_memory()


def memory_child(library: str, rows: list[list[int]], threads: int, seed: int) -> None:
    """Run in a subprocess: each row's step once; print one JSON list of MiB (None: failed)."""
    tune_process()
    if library == "torch":
        import torch

        torch.set_num_threads(threads)
    import anycnn_numpy

    anycnn_numpy.set_num_threads(threads)
    peaks: list[float | None] = []

    def make(size, k, o, c, batch):
        net = stage(size, k, c, o)
        x_host, t_host = data(net, size, c, batch, seed)
        if library == "anycnn":
            be = net.backend
            x, t = be.asarray(x_host, dtype="float32"), be.asarray(t_host, dtype="float32")
            return lambda: net.compute_gradients(x, t, check=False)
        return torch_step(torch, net, torch.tensor(x_host), torch.tensor(t_host))

    # warm-up: every path's kernels compiled or loaded, PyTorch's primitives set up
    from anycnn_numpy import _plan

    for path in _plan.PATHS:
        with _plan.forced(path):
            make(16, 3, 4, 2, 2)()
            make(16, 5, 4, 1, 1)()
    for size, k, o, c, batch in rows:
        step = make(size, k, o, c, batch)
        _release()
        before = _rss_kib("VmRSS")
        _reset_peak()
        step()
        peaks.append((_rss_kib("VmHWM") - before) / 1024.0)
        del step
        _release()
    print(json.dumps(peaks))


def peak_memory(rows, threads: int, seed: int) -> dict[str, list[float | None]]:
    if not Path("/proc/self/clear_refs").exists():
        return {}
    out = {}
    for library in ("anycnn", "torch"):
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--memory-child",
            library,
            "--memory-rows",
            json.dumps([list(r) for r in rows]),
            "--threads",
            str(threads),
            "--seed",
            str(seed),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"memory child {library} failed: {done.stderr.strip()[-2000:]}", flush=True)
            out[library] = [None] * len(rows)
            continue
        out[library] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


# --- plot ---------------------------------------------------------------------------------------
def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    batches = sorted({r["batch"] for r in rows})
    kernels = sorted({r["kernel"] for r in rows})
    combos = sorted({(r["channels"], r["maps"]) for r in rows})
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(1, len(combos))))
    fig, axes = plt.subplots(
        len(batches),
        len(kernels),
        figsize=(3.2 * len(kernels), 3.0 * len(batches)),
        squeeze=False,
        sharex=True,
    )
    for bi, batch in enumerate(batches):
        for ki, k in enumerate(kernels):
            ax = axes[bi][ki]
            for color, (c, o) in zip(colors, combos, strict=True):
                line = sorted(
                    (r for r in rows if (r["batch"], r["kernel"], r["channels"], r["maps"])
                     == (batch, k, c, o)),
                    key=lambda r: r["size"],
                )  # fmt: skip
                if not line:
                    continue
                sizes = [r["size"] for r in line]
                label = f"{c}->{o}"
                ax.plot(sizes, [r["anycnn_ms"] for r in line], "-o", color=color, ms=3,
                        label=f"anycnn {label}")  # fmt: skip
                ax.plot(sizes, [r["torch_ms"] for r in line], "--x", color=color, ms=3,
                        label=f"PyTorch {label}")  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"kernel {k}, batch {batch}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            if bi == len(batches) - 1:
                ax.set_xlabel("image size (px)")
            if ki == 0:
                ax.set_ylabel("ms per step")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7)
    machine = report.get("machine", {})
    fig.suptitle(
        "conv + subsampling stage, forward + backward, float32: anycnn (solid) vs PyTorch "
        f"(dashed), {report.get('threads')} threads, {machine.get('cpu_model', '')}",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary(rows: list[dict[str, Any]]) -> str:
    lines = []
    slow = [r for r in rows if r["speedup"] < 1.0]
    ratios = [r["speedup"] for r in rows]
    lines.append(
        f"{len(rows)} rows: PyTorch / anycnn min {min(ratios):.2f}, median "
        f"{statistics.median(ratios):.2f}, max {max(ratios):.2f}; below 1.0: {len(slow)}"
    )
    heavy = [
        r
        for r in rows
        if r.get("anycnn_peak_mib") is not None
        and r.get("torch_peak_mib") is not None
        and r["anycnn_peak_mib"] > r["torch_peak_mib"]
    ]
    lines.append(f"peak memory above PyTorch's: {len(heavy)} rows")
    return "\n".join(lines)


def table(report: dict[str, Any]) -> str:
    """The README's table of a run: per batch and image size, the ratios, the rows behind, the
    paths taken (forward / kernel gradient) and the median peak memory of each library."""
    lines = [
        "| batch | image | rows | PyTorch / anycnn: min | median | max | rows below 1.0 | paths "
        "taken (forward / kernel gradient) | peak MiB, median: anycnn / PyTorch | rows above "
        "PyTorch's peak |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = report["rows"]
    for batch in sorted({r["batch"] for r in rows}):
        for size in sorted({r["size"] for r in rows}):
            group = [r for r in rows if (r["batch"], r["size"]) == (batch, size)]
            if not group:
                continue
            ratios = [r["speedup"] for r in group]
            paths: dict[str, int] = {}
            for r in group:
                key = f"{r['paths']['valid']}/{r['paths']['grad']}"
                paths[key] = paths.get(key, 0) + 1
            taken = ", ".join(f"{k} {v}" for k, v in sorted(paths.items(), key=lambda i: -i[1]))
            peaks = [r for r in group if r.get("anycnn_peak_mib") is not None
                     and r.get("torch_peak_mib") is not None]  # fmt: skip
            if peaks:
                ours = statistics.median(r["anycnn_peak_mib"] for r in peaks)
                theirs = statistics.median(r["torch_peak_mib"] for r in peaks)
                memory = f"{ours:.1f} / {theirs:.1f}"
                above = str(sum(r["anycnn_peak_mib"] > r["torch_peak_mib"] for r in peaks))
            else:
                memory = above = "-"
            lines.append(
                f"| {batch} | {size} px | {len(group)} | {min(ratios):.2f} | "
                f"{statistics.median(ratios):.2f} | {max(ratios):.2f} | "
                f"{sum(v < 1.0 for v in ratios)} | {taken} | {memory} | {above} |"
            )
    return "\n".join(lines)


def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=parse_ints, default=SIZES)
    parser.add_argument("--kernels", type=parse_ints, default=KERNELS)
    parser.add_argument("--maps", type=parse_ints, default=MAPS)
    parser.add_argument("--channels", type=parse_ints, default=CHANNELS)
    parser.add_argument("--batches", type=parse_ints, default=BATCHES)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument(
        "--budget", type=float, default=None, help="minutes after which no new row starts"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    parser.add_argument("--plot", type=Path, default=None, help="redraw the plot of a JSON")
    parser.add_argument("--table", type=Path, default=None, help="print the README table of a JSON")
    parser.add_argument("--memory-child", choices=("anycnn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-rows", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_child:
        memory_child(args.memory_child, json.loads(args.memory_rows), args.threads, args.seed)
        return 0
    if args.table is not None:
        report = json.loads(args.table.read_text())
        print(table(report))
        print(summary(report["rows"]))
        return 0
    if args.plot is not None:
        report = json.loads(args.plot.read_text())
        plot(report, args.plot.with_suffix(".png"))
        print(f"wrote {args.plot.with_suffix('.png')}")
        return 0

    import torch

    import anycnn

    anycnn.set_backend("numpy")
    tuned = tune_process()
    import anycnn_numpy

    threads = args.threads or anycnn_numpy.get_num_threads()
    anycnn_numpy.set_num_threads(threads)
    torch.set_num_threads(threads)
    reps = 3 if args.quick else args.reps
    out = args.out or (None if args.quick else RESULTS / f"shapes-numpy-{machine_slug()}.json")
    load_before = os.getloadavg()
    rows = []
    started = time.perf_counter()
    skipped = []
    for size, k, o, c, batch in grid(args):
        if args.budget is not None and time.perf_counter() - started > args.budget * 60:
            skipped.append({"size": size, "kernel": k, "maps": o, "channels": c, "batch": batch})
            continue
        _release()  # the last row's freed blocks back to the system (see tune_process)
        row = run_row(torch, size, k, o, c, batch, reps, args.seed)
        rows.append(row)
        print(
            f"{size:4d}px k{k:<2d} {c}->{o:<2d} batch {batch:<3d} "
            f"anycnn {row['anycnn_ms']:10.2f} ms  torch {row['torch_ms']:10.2f} ms  "
            f"torch/anycnn {row['speedup']:5.2f}x  paths {row['paths']['valid']}/"
            f"{row['paths']['grad']}" + ("" if row["agree"] else "  DISAGREE"),
            flush=True,
        )
        if out is not None:  # what is done so far, should the run be cut short
            partial = {"benchmark": "bench/shapes.py", "partial": True, "rows": rows}
            out.with_suffix(".partial.json").write_text(json.dumps(partial, indent=1) + "\n")
    if args.memory:
        shapes = [(r["size"], r["kernel"], r["maps"], r["channels"], r["batch"]) for r in rows]
        peaks = peak_memory(shapes, threads, args.seed)
        for library, values in peaks.items():
            for row, value in zip(rows, values, strict=True):
                row[f"{library}_peak_mib"] = value
    report = {
        "benchmark": "bench/shapes.py",
        "command": "python bench/shapes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("numpy"),
        "threads": threads,
        "keep_freed_memory": tuned,
        "torch": torch.__version__,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
        "not_run": skipped,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }
    print(summary(rows))
    if skipped:
        print(f"not run (--budget {args.budget} min): {len(skipped)} rows")
    if out is not None:
        out.with_suffix(".partial.json").unlink(missing_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        plot(report, out.with_suffix(".png"))
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
