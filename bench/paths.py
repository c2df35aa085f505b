"""Fit the NumPy backend's cost model: every convolution path timed on a grid of shapes.

Usage::

    python bench/paths.py                  # measure, write the JSON, refit _costs.py
    python bench/paths.py --fit bench/results/paths-numpy-intel-xeon-2c.json   # refit only
    python bench/paths.py --quick          # a few shapes, nothing rewritten (plumbing check)
    python bench/paths.py --update bench/results/paths-numpy-intel-xeon-2c.json --only grad-blocked
                                           # one path's timings measured again, then refit

For each shape of the grid (2-D maps of 12 to 256 pixels, kernels 3 to 11, 1 to 16 input and 6
to 64 output maps, batches 1 and 8, 28 and 64 px at batch 64 (bench/shapes.py's), the zoo
models' layers at batches 1 to 256, and 1-D signals
as one-row maps, float32) and each of the three convolutions of the notes (``valid``: 3.1,
``grad``: eq. (7), ``full``: 3.2.1), every path the NumPy backend has (``direct``, ``im2col``,
``fft``; Note [Choosing a path] in ``anycnn_numpy._plan``) is forced in turn and timed, each
op as the layers call it (``conv_valid_activate`` with a bias and tanh, ``conv_backward`` with
tanh's f' and the bias sums, ``conv_full``), so that the direct kernels' fusions count: one
warm-up call each, then calls interleaved path by path, the median per path. A path whose
warm-up took ten times the fastest one's (and over 0.2 s) keeps its warm-up time alone. Shapes
over ``--max-macs`` multiply-adds are left out (the model's counts are linear in the batch and
the maps, so it extrapolates to them). ``--update JSON --only op-path[,op-path]`` measures only
those ops on those paths again, on the JSON's shapes, writes them into it and refits (after a
change to one path's kernels; the JSON's other timings and its machine record are kept, and
its ``updates`` list says what was measured again, when, and at what load).

The fit: for each op and path, the coefficients of ``_plan.features`` by non-negative least
squares on relative error (each row divided by its measured time), written to
``backends/anycnn_numpy/_costs.py`` with the fit's median error and how often the model's choice
is the measured fastest path, and how much slower its choice is where it is not. Threads: the
backend's default (``ANYCNN_NUM_THREADS``), recorded in the JSON. It never asserts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info, machine_slug  # bench/ is sys.path[0]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
COSTS = ROOT / "backends" / "anycnn_numpy" / "_costs.py"
OPS = ("valid", "grad", "full")


def shapes(quick: bool, max_macs: float) -> list[tuple[int, ...]]:
    """(n, c, o, h, w, kh, kw) of the grid."""
    if quick:
        return [(2, 1, 4, 16, 16, 3, 3), (1, 3, 6, 24, 24, 7, 7), (2, 2, 4, 1, 40, 1, 5)]
    rows = []
    for n, size, k, (c, o) in itertools.product(
        (1, 8), (12, 28, 64, 128, 256), (3, 5, 7, 11), ((1, 6), (3, 16), (3, 64), (6, 16), (16, 32))
    ):
        if k < size:
            rows.append((n, c, o, size, size, k, k))
    for size, k, (c, o) in itertools.product(
        (28, 64), (3, 5, 7, 11), ((1, 6), (3, 16), (3, 64), (16, 32))
    ):  # bench/shapes.py's batch (the model's batch terms fitted beyond 8)
        rows.append((64, c, o, size, size, k, k))
    for n in (1, 16, 64, 256):  # the zoo's layers: DLT C1, C3; LeNet-5 C1, C3
        rows += [(n, 1, 6, 28, 28, 5, 5), (n, 6, 12, 12, 12, 5, 5)]
        rows += [(n, 1, 6, 32, 32, 5, 5), (n, 6, 16, 14, 14, 5, 5)]
    for n, length, k, (c, o) in itertools.product(
        (4, 16), (150, 1024, 4096), (3, 15, 31), ((1, 8), (16, 32))
    ):  # 1-D signals as one-row maps (anycnn_numpy._nd)
        rows.append((n, c, o, 1, length, 1, k))
    return [r for r in rows if macs(*r) <= max_macs]


def macs(n, c, o, h, w, kh, kw) -> float:
    return float(n * c * o * kh * kw * (h - kh + 1) * (w - kw + 1))


def arrays(op: str, n, c, o, h, w, kh, kw, rng) -> tuple[np.ndarray, ...]:
    oh, ow = h - kh + 1, w - kw + 1
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    k = rng.standard_normal((o, c, kh, kw)).astype(np.float32) / np.float32(kh * kw * c)
    b = rng.standard_normal(o).astype(np.float32)
    d = rng.standard_normal((n, o, oh, ow)).astype(np.float32)
    y = np.tanh(d)
    return {"valid": (x, k, b), "grad": (x, d, y), "full": (d, k)}[op]


def op_functions() -> dict[str, Any]:
    """The ops as the layers call them: the forward pass with its bias and f (the direct kernels
    apply f themselves, the other paths after), eq. (7) fused with f' and the bias sums."""
    from anycnn_numpy import _conv

    from anycnn.layers.activations import get_activation

    tanh = get_activation("tanh")
    return {
        "valid": lambda x, k, b: _conv.conv_valid_activate(x, k, b, tanh),
        "grad": lambda x, d, y: _conv.conv_backward(x, d, y, tanh),
        "full": _conv.conv_full,
    }


def measure_again(row: dict[str, Any], path: str, rng, seconds: float) -> None:
    """``row``'s op on ``path`` timed again (--update): one warm-up call, then calls for about
    ``seconds`` (3 to 9), the fastest and the median written into the row."""
    from anycnn_numpy import _plan

    function = op_functions()[row["op"]]
    args = arrays(row["op"], *row["shape"], rng)
    with _plan.forced(path):
        start = time.perf_counter()
        function(*args)
        first = time.perf_counter() - start
        reps = max(3, min(9, int(seconds / max(first, 1e-6))))
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            function(*args)
            samples.append(time.perf_counter() - start)
    row["seconds"][path] = min(samples)
    row["median_seconds"][path] = statistics.median(samples)


def measure_shape(shape, rng, seconds: float) -> list[dict[str, Any]]:
    from anycnn_numpy import _plan

    functions = op_functions()
    out = []
    for op in OPS:
        args = arrays(op, *shape, rng)
        first: dict[str, float] = {}
        for path in _plan.PATHS:
            if op == "full" and path == "blocked":  # no such path (Note [Blocked 2-D path])
                continue
            with _plan.forced(path):
                start = time.perf_counter()
                functions[op](*args)
                first[path] = time.perf_counter() - start
        best = min(first.values())
        timed = [p for p in first if not (first[p] > 10 * best and first[p] > 0.2)]
        reps = max(3, min(9, int(seconds / max(sum(first[p] for p in timed), 1e-6))))
        samples: dict[str, list[float]] = {p: [] for p in timed}
        for _ in range(reps):
            for path in timed:
                with _plan.forced(path):
                    start = time.perf_counter()
                    functions[op](*args)
                    samples[path].append(time.perf_counter() - start)
        # the fastest call: on a loaded machine the other processes only ever add time
        times = {p: min(samples[p]) if p in samples else first[p] for p in first}
        medians = {p: statistics.median(samples[p]) for p in samples}
        row = {"op": op, "shape": list(shape), "seconds": times, "median_seconds": medians}
        out.append({**row, "reps": reps})
    return out


#: (batch, maps, size): the transforms of the FFT path compared between NumPy and SciPy
FFT_CASES = [(8, 3, 64), (8, 16, 64), (8, 3, 256), (4, 64, 128), (2, 64, 256)]


def compare_fft_libraries(quick: bool) -> list[dict[str, Any]]:
    """``numpy.fft`` against ``scipy.fft`` (one worker, as the pool's slices call them) on the
    FFT path's transforms: rfft2 of a batch of float32 maps and irfft2 back, median of 5, both
    interleaved; whether SciPy would buy the path anything (issue 16's SciPy question)."""
    import scipy.fft

    rng = np.random.default_rng(1)
    out = []
    for n, maps, size in FFT_CASES[:1] if quick else FFT_CASES:
        x = rng.standard_normal((n, maps, size, size)).astype(np.float32)
        spectra = np.fft.rfft2(x)
        shape = x.shape[2:]
        calls = {
            "numpy": (partial(np.fft.rfft2, x), partial(np.fft.irfft2, spectra, s=shape)),
            "scipy": (
                partial(scipy.fft.rfft2, x, workers=1),
                partial(scipy.fft.irfft2, spectra, s=shape, workers=1),
            ),
        }
        samples: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(1 if quick else 5):
            for name, (forward, inverse) in calls.items():
                start = time.perf_counter()
                forward()
                inverse()
                samples[name].append(time.perf_counter() - start)
        row = {"batch": n, "maps": maps, "size": size}
        row.update({f"{name}_ms": statistics.median(v) * 1e3 for name, v in samples.items()})
        row["numpy_over_scipy"] = row["numpy_ms"] / row["scipy_ms"]
        out.append(row)
        print(
            f"rfft2 + irfft2 float32 {n}x{maps}x{size}^2: numpy {row['numpy_ms']:.2f} ms, "
            f"scipy {row['scipy_ms']:.2f} ms (numpy / scipy {row['numpy_over_scipy']:.2f})",
            flush=True,
        )
    return out


def fit(rows: list[dict[str, Any]]) -> tuple[dict[str, tuple[float, ...]], dict[str, Any]]:
    from anycnn_numpy import _plan
    from scipy.optimize import nnls

    coefficients = {}
    errors = {}
    for op in OPS:
        for path in _plan.PATHS:
            a, names = [], []
            for row in rows:
                if row["op"] != op or path not in row["seconds"]:
                    continue
                t = row["seconds"][path]
                a.append([v / t for v in _plan.features(op, path, *row["shape"])])
                names.append(t)
            if not a:  # a path the op does not have ('full' on the blocked kernels)
                continue
            matrix = np.array(a)
            # columns scaled to unit norm for the solver, the solution scaled back
            norms = np.linalg.norm(matrix, axis=0)
            norms[norms == 0] = 1.0
            solution, _ = nnls(matrix / norms, np.ones(len(a)))
            weights = tuple(float(v) for v in solution / norms)
            coefficients[f"{op}-{path}"] = weights
            predicted = matrix @ np.array(weights)
            errors[f"{op}-{path}"] = float(np.median(np.abs(predicted - 1.0)))
    return coefficients, errors


def evaluate(rows, coefficients, errors) -> dict[str, Any]:
    """How often the model picks the measured fastest path, and its cost where it does not."""
    from anycnn_numpy import _plan

    hits, regrets = 0, []
    for row in rows:
        times = row["seconds"]
        predicted = {
            path: sum(
                w * f
                for w, f in zip(
                    coefficients[f"{row['op']}-{path}"],
                    _plan.features(row["op"], path, *row["shape"]),
                    strict=True,
                )
            )
            for path in times
        }
        n, c, o, h, w, kh, kw = row["shape"]
        choice = _plan.decide(row["op"], predicted, errors)
        if (h - kh + 1) * (w - kw + 1) == 1:
            choice = "im2col"
        best = min(times, key=times.get)
        hits += choice == best
        regrets.append(times[choice] / times[best])
    return {
        "rows": len(rows),
        "fastest_chosen": hits,
        "geomean_chosen_over_fastest": math.exp(statistics.fmean(math.log(r) for r in regrets)),
        "worst_chosen_over_fastest": max(regrets),
        "chosen_over_fastest_above_1.5": sum(r > 1.5 for r in regrets),
    }


def write_costs(coefficients, errors, quality, source, info: dict[str, Any], updates=()) -> None:
    again = "".join(
        f"\n{u['only']} measured again {u['date']}, {u['threads']} threads, load {u['load']}."
        for u in updates
    )
    lines = [
        '"""The cost model\'s coefficients (Note [Choosing a path] in ``_plan``): generated by',
        "``python bench/paths.py`` (measure and fit) or ``--fit JSON`` (refit); do not edit.",
        "",
        f"Fitted from {source}: {info.get('cpu_model', '?')}, {info.get('threads')} threads,",
        f"{info.get('date', '?')}, load average {info.get('load', '?')} at the start.{again}",
        f"The model chose the measured fastest path for {quality['fastest_chosen']} of "
        f"{quality['rows']} op timings;",
        f"its choice took {quality['geomean_chosen_over_fastest']:.3f}x the fastest time "
        f"(geometric mean), at worst {quality['worst_chosen_over_fastest']:.2f}x, over 1.5x for "
        f"{quality['chosen_over_fastest_above_1.5']}.",
        '"""',
        "",
        '#: ``"op-path"``: weights of ``_plan.features`` (seconds per count).',
        "COEFFICIENTS = {",
    ]
    for key, weights in coefficients.items():
        text = ", ".join(f"{v:.4g}" for v in weights)
        lines.append(f'    "{key}": ({text}),')
    lines += ["}", "", "#: Median relative error of each fit on its own timings.", "ERRORS = {"]
    for key, value in errors.items():
        lines.append(f'    "{key}": {value:.3f},')
    lines.append("}")
    COSTS.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--fit", type=Path, default=None, help="refit from this JSON")
    parser.add_argument("--max-macs", type=float, default=2e9)
    parser.add_argument("--seconds", type=float, default=0.3, help="timed per shape and op")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--update", type=Path, default=None, help="measure --only again in it")
    parser.add_argument("--only", default="", help="op-path pairs for --update, comma-separated")
    args = parser.parse_args(argv)

    if args.update is not None:
        import anycnn_numpy

        pairs = [tuple(item.split("-")) for item in args.only.split(",") if item]
        if not pairs or any(len(p) != 2 or p[0] not in OPS for p in pairs):
            parser.error("--update needs --only op-path[,op-path], e.g. grad-blocked")
        report = json.loads(args.update.read_text())
        rng = np.random.default_rng(0)
        chosen = [(row, path) for row in report["rows"] for op, path in pairs if row["op"] == op]
        for row, path in chosen[:1]:  # compile / load the kernels first
            measure_again({**row, "shape": [2, 2, 4, 12, 12, 3, 3], "seconds": {},
                           "median_seconds": {}}, path, rng, 0.0)  # fmt: skip
        load = os.getloadavg()[0]
        started = time.perf_counter()
        for index, (row, path) in enumerate(chosen):
            before = row["seconds"].get(path)
            measure_again(row, path, rng, args.seconds)
            was = "new" if before is None else f"was {before * 1e3:.2f} ms"
            print(f"[{index + 1}/{len(chosen)}] {row['op']} {tuple(row['shape'])} {path}: "
                  f"{row['seconds'][path] * 1e3:.2f} ms ({was})", flush=True)  # fmt: skip
        report.setdefault("updates", []).append({
            "only": args.only,
            "date": machine_info("numpy")["date"],
            "threads": anycnn_numpy.get_num_threads(),
            "load": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "minutes": round((time.perf_counter() - started) / 60, 1),
        })  # fmt: skip
        args.update.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.update}")
        args.fit = args.update
    if args.fit is not None:
        report = json.loads(args.fit.read_text())
        source = str(args.fit.relative_to(ROOT)) if args.fit.is_absolute() else str(args.fit)
    else:
        import anycnn_numpy

        rng = np.random.default_rng(0)
        grid = shapes(args.quick, args.max_macs)
        from anycnn_numpy import _plan

        for path in _plan.PATHS:  # compile / load every path's kernels first
            with _plan.forced(path):
                measure_shape((2, 2, 4, 12, 12, 3, 3), rng, 0.0)
        rows = []
        load = os.getloadavg()[0]
        started = time.perf_counter()
        for index, shape in enumerate(grid):
            found = measure_shape(shape, rng, args.seconds)
            rows += found
            summary = "  ".join(
                f"{r['op']} " + "/".join(f"{t * 1e3:.2f}" for t in r["seconds"].values())
                for r in found
            )
            print(f"[{index + 1}/{len(grid)}] {tuple(shape)} ms d/i/f/b: {summary}", flush=True)
        info = machine_info("numpy")
        info["threads"] = anycnn_numpy.get_num_threads()
        info["load"] = round(load, 2)
        info["load_after"] = round(os.getloadavg()[0], 2)
        info["minutes"] = round((time.perf_counter() - started) / 60, 1)
        libraries = compare_fft_libraries(args.quick)
        report = {
            "benchmark": "bench/paths.py",
            "machine": info,
            "rows": rows,
            "fft_libraries": libraries,
        }
        out = args.out or (None if args.quick else RESULTS / f"paths-numpy-{machine_slug()}.json")
        source = "a --quick run"
        if out is not None:
            out.write_text(json.dumps(report, indent=1) + "\n")
            source = str(out.relative_to(ROOT)) if out.is_relative_to(ROOT) else str(out)
            print(f"wrote {out}")
    coefficients, errors = fit(report["rows"])
    quality = evaluate(report["rows"], coefficients, errors)
    print(json.dumps({"errors": errors, "quality": quality}, indent=1))
    if not args.quick:
        write_costs(
            coefficients, errors, quality, source, report["machine"], report.get("updates", ())
        )
        print(f"wrote {COSTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
