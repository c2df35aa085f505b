"""Time the hot operations at LeNet-5 sizes, and the up/down-sampling alternatives of section
3.4 of the notes, on NumPy.

Usage::

    python bench/ops.py                      # numpy, batch 256, writes bench/results/ops-numpy.json
    python bench/ops.py --backend strict     # the reference ops on array-api-strict
    python bench/ops.py --backend torch      # the reference ops on PyTorch (CPU)
    python bench/ops.py --quick --out x.json # tiny sizes, 2 repetitions (tests/test_bench_ops.py)

What is timed
-------------
* **Hot ops**, per backend, float32, batch 256: the backend's own implementation
  (``record.ops.<name>``, what a layer calls after dispatch; ``Note [Hot-op dispatch]``) at the
  sizes of LeNet-5: C1 (1 -> 6 maps, 5x5 on 32x32), S2 (6@28x28 down by 2), C3 (6 -> 16, 5x5 on
  14x14, with the LeNet-5 connection table and with all maps), S4 (16@10x10), and the backward
  ops (``conv_full``, ``conv_kernel_grad``, ``kron_upsample``, ``decimate_transpose``) at the
  same layers.
* **Section 3.4 alternatives**, NumPy only (``--backend numpy``): up-sampling 6@14x14 -> 28x28
  (anycnn, ``np.kron``, ``np.repeat`` twice, broadcast + reshape, ``scipy.ndimage.zoom`` with
  ``order=0`` standing in for MATLAB's ``imresize``) and block-sum down-sampling 6@28x28 ->
  14x14 (anycnn, convolution with ones then strided indexing, reshape + sum, four strided
  slices, and a Python loop over the 14x14 blocks standing in for ``blkproc``).
* **Kernel-gradient sums** (NumPy with Numba installed): eq. (7)'s per-example products
  ``sum_n D[n] @ C[n].T`` at the zoo's layer shapes, 64 examples, on one thread, by OpenBLAS
  and by the compiled kernel of ``anycnn_numpy._jit`` (Note [Kernel gradient as dot products]).
* **Direct convolutions** (NumPy with Numba installed): ``conv_valid``, ``conv_kernel_grad`` and
  (below the first layer) ``conv_full`` of the NumPy backend at DLT's and LeNet-5's C1 and C3,
  batch 256, on one thread, on the compiled direct kernels and on im2col + BLAS (Note [Direct
  convolutions] in ``anycnn_numpy._direct``).
* **A plain copy** of the output bytes (``np.copyto`` into a preallocated array) next to each
  memory-bound op: the ratio says how far from memory speed the op is. The ops allocate their
  output and the copy does not, so a ratio near 1 is the floor, not a target.

Every group of candidates is timed interleaved (A, B, C, A, B, C, ...) with
``time.perf_counter`` after a warm-up, and the median of the repetitions is reported. Every
alternative is checked once against the anycnn result and the JSON says whether it agrees.
The benchmark never asserts: it prints figures, ratios and a verdict on the notes' two
"order of magnitude" claims, and writes the same to JSON with the machine it ran on.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info  # bench/ is sys.path[0] when run as a script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: An order-of-magnitude claim holds when the measured speed-up is nearer 10x than 1x on a log
#: scale, i.e. at least sqrt(10) ~ 3.2x.
ORDER_OF_MAGNITUDE = math.sqrt(10.0)


# --- timing ---------------------------------------------------------------------------------
def synchronizer(record: Any) -> Callable[[], None]:
    """Wait for queued device work (CuPy runs asynchronously); a no-op on the CPU."""
    if record.array_module == "cupy":
        import cupy

        return cupy.cuda.Device().synchronize
    return lambda: None


def time_interleaved(
    candidates: dict[str, Callable[[], Any]], *, reps: int, warmup: int, sync: Callable[[], None]
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, measured round-robin: A, B, C, A, B, C, ..."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(warmup + reps):
        for name, function in candidates.items():
            sync()
            start = time.perf_counter()
            function()
            sync()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in seconds]
    return {"median_ms": statistics.median(ms), "min_ms": min(ms), "times_ms": ms}


# --- copies of the output bytes ---------------------------------------------------------------
def copy_of(record: Any, shape: tuple[int, ...]) -> tuple[str, Callable[[], Any]]:
    """A plain device copy of an array of ``shape`` (float32) into preallocated memory."""
    xp = record.xp
    src = record.asarray(np.ones(shape, dtype=np.float32))
    dst = record.asarray(np.zeros(shape, dtype=np.float32))
    native = importlib.import_module(record.array_module)
    if hasattr(native, "copyto"):  # NumPy, CuPy
        label = f"{record.array_module}.copyto"
        return label, lambda: native.copyto(dst, src)
    if hasattr(dst, "copy_"):  # PyTorch
        return "Tensor.copy_", lambda: dst.copy_(src)
    return "asarray(copy=True)", lambda: xp.asarray(src, copy=True)  # allocates, as ops do


# --- the LeNet-5 workload ---------------------------------------------------------------------
def lenet5_table() -> np.ndarray:
    """The C3 connection table of LeNet-5, boolean (16, 6)."""
    from anycnn.layers import lenet5_table as table

    return table()


def hot_op_cases(batch: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """(layer, op, host arguments, memory-bound?) at LeNet-5 sizes."""

    def maps(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    n = batch
    c1_x, c1_k, c1_d = maps(n, 1, 32, 32), maps(6, 1, 5, 5), maps(n, 6, 28, 28)
    s2_x, s2_d = maps(n, 6, 28, 28), maps(n, 6, 14, 14)
    c3_x, c3_k, c3_d = maps(n, 6, 14, 14), maps(16, 6, 5, 5), maps(n, 16, 10, 10)
    s4_x, s4_d = maps(n, 16, 10, 10), maps(n, 16, 5, 5)
    table = lenet5_table()
    cases = [
        ("C1", "conv_valid", (c1_x, c1_k, None), ""),
        ("C1", "conv_full", (c1_d, c1_k, None), ""),
        ("C1", "conv_kernel_grad", (c1_x, c1_d, None), ""),
        ("S2", "block_sum", (s2_x, 2), ""),
        ("S2", "block_mean", (s2_x, 2), ""),
        ("S2", "decimate", (s2_x, 2), ""),
        ("S2", "kron_upsample", (s2_d, 2), ""),
        ("S2", "decimate_transpose", (s2_d, 2), ""),
        ("C3", "conv_valid", (c3_x, c3_k, table), "lenet5 table"),
        ("C3", "conv_valid", (c3_x, c3_k, None), "full"),
        ("C3", "conv_full", (c3_d, c3_k, table), "lenet5 table"),
        ("C3", "conv_full", (c3_d, c3_k, None), "full"),
        ("C3", "conv_kernel_grad", (c3_x, c3_d, table), "lenet5 table"),
        ("C3", "conv_kernel_grad", (c3_x, c3_d, None), "full"),
        ("S4", "block_sum", (s4_x, 2), ""),
        ("S4", "kron_upsample", (s4_d, 2), ""),
    ]
    memory_bound = {"block_sum", "block_mean", "decimate", "kron_upsample", "decimate_transpose"}
    return [
        {
            "layer": layer,
            "op": op,
            "args": args,
            "variant": variant,
            "memory_bound": op in memory_bound,
        }
        for layer, op, args, variant in cases
    ]


def shape_of(value: Any) -> Any:
    return list(value.shape) if hasattr(value, "shape") else value


def run_hot_ops(record: Any, batch: int, reps: int, warmup: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    sync = synchronizer(record)
    rows = []
    for case in hot_op_cases(batch, rng):
        args = [record.asarray(a) if isinstance(a, np.ndarray) else a for a in case["args"]]
        function = getattr(record.ops, case["op"])
        out = function(*args)
        candidates: dict[str, Callable[[], Any]] = {"op": lambda f=function, a=args: f(*a)}
        copy_label = None
        if case["memory_bound"]:
            copy_label, candidates["copy"] = copy_of(record, tuple(out.shape))
        times = time_interleaved(candidates, reps=reps, warmup=warmup, sync=sync)
        row = {
            "layer": case["layer"],
            "op": case["op"],
            "variant": case["variant"],
            "backend": record.name,
            "implementation": f"{function.__module__}.{function.__name__}",
            "inputs": [shape_of(a) for a in case["args"]],
            "output": list(out.shape),
            **summary(times["op"]),
            "copy": None,
            "ratio_vs_copy": None,
        }
        if copy_label is not None:
            copy = summary(times["copy"])
            row["copy"] = {"how": copy_label, "bytes": 4 * math.prod(out.shape), **copy}
            row["ratio_vs_copy"] = row["median_ms"] / copy["median_ms"]
        rows.append(row)
    return rows


# --- section 3.4: the alternatives on NumPy ---------------------------------------------------
def upsampling_alternatives(x: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    from scipy import ndimage

    from anycnn.backend import lookup

    b, c, h, w = x.shape
    ones = np.ones((1, 1, 2, 2), dtype=x.dtype)
    anycnn_op = lookup("numpy").ops.kron_upsample
    return {
        "anycnn kron_upsample": lambda: anycnn_op(x, 2),
        "np.kron(x, ones)": lambda: np.kron(x, ones),
        "np.repeat(np.repeat)": lambda: np.repeat(np.repeat(x, 2, axis=2), 2, axis=3),
        "broadcast + reshape": lambda: np.broadcast_to(
            x[:, :, :, None, :, None], (b, c, h, 2, w, 2)
        ).reshape(b, c, 2 * h, 2 * w),
        # imresize(x, 2, 'nearest'): grid_mode aligns pixel edges, so each pixel becomes a 2x2
        # block exactly as kron does (checked below, recorded as "agrees").
        "ndimage.zoom order=0 (imresize)": lambda: ndimage.zoom(
            x, (1, 1, 2, 2), order=0, grid_mode=True, mode="nearest"
        ),
    }


def downsampling_alternatives(x: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    from scipy import signal

    from anycnn.backend import lookup

    b, c, h, w = x.shape
    ones = np.ones((1, 1, 2, 2), dtype=x.dtype)
    anycnn_op = lookup("numpy").ops.block_sum

    def block_loop() -> np.ndarray:
        # blkproc: a call per distinct 2x2 block; vectorised over batch and maps only.
        out = np.empty((b, c, h // 2, w // 2), dtype=x.dtype)
        for i in range(h // 2):
            for j in range(w // 2):
                out[:, :, i, j] = x[:, :, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].sum(axis=(2, 3))
        return out

    return {
        "anycnn block_sum": lambda: anycnn_op(x, 2),
        "signal.convolve valid [::2,::2]": lambda: signal.convolve(
            x, ones, mode="valid", method="direct"
        )[:, :, ::2, ::2],
        "signal.convolve full [1::2,1::2]": lambda: signal.convolve(
            x, ones, mode="full", method="direct"
        )[:, :, 1::2, 1::2],
        "signal.fftconvolve valid [::2,::2]": lambda: signal.fftconvolve(
            x, ones, mode="valid", axes=(2, 3)
        )[:, :, ::2, ::2],
        "reshape + sum": lambda: x.reshape(b, c, h // 2, 2, w // 2, 2).sum(axis=(3, 5)),
        "4 strided slices": lambda: (
            x[:, :, ::2, ::2] + x[:, :, 1::2, ::2] + x[:, :, ::2, 1::2] + x[:, :, 1::2, 1::2]
        ),
        "per-block loop (blkproc)": block_loop,
    }


CONVOLUTION_WITH_ONES = ("signal.convolve", "signal.fftconvolve")

#: (name, C_out, C_in kh kw, positions P of the wide grid) of eq. (7)'s per-example products.
KERNEL_GRAD_SHAPES = [
    ("DLT C1", 6, 25, 24 * 28),
    ("LeNet-5 C1", 6, 25, 28 * 32),
    ("DLT C3", 12, 150, 8 * 12),
    ("LeNet-5 C3", 16, 150, 10 * 14),
]


def kernel_grad_comparisons(batch: int, reps: int, warmup: int, seed: int) -> list[dict[str, Any]]:
    """Note [Kernel gradient as dot products]: sum_n D[n] @ C[n].T by OpenBLAS (what the
    backend does without Numba) and by the compiled kernel, on the calling thread alone."""
    from anycnn_numpy import _jit

    if _jit.kernel_grad_sum is None:
        return []
    dots = _jit.kernel_grad_sum
    rng = np.random.default_rng(seed + 2)
    comparisons = []
    for name, o, k, p in KERNEL_GRAD_SHAPES:
        d = rng.standard_normal((batch, o, p)).astype(np.float32)
        c = rng.standard_normal((batch, k, p)).astype(np.float32)
        candidates = {
            "BLAS: matmul per example, summed": lambda d=d, c=c: np.matmul(
                d, c.transpose(0, 2, 1)
            ).sum(axis=0),
            "Numba: 3x2-blocked dot products": lambda d=d, c=c: dots(d, c),
        }
        # float32 sums of batch * P products, in two orders: agreement to 1e-5 of the largest
        scale = float(np.abs(candidates["BLAS: matmul per example, summed"]()).max())
        comparisons.append(
            run_comparison(
                f"kernel gradient sums, {name}", d, candidates, reps, warmup, atol=1e-5 * scale
            )
        )
    return comparisons


DIRECT_LAYERS = [  # (name, input (C, H, W), kernel (C_out, C_in, kh, kw), LeNet-5 table?)
    ("DLT C1", (1, 28, 28), (6, 1, 5, 5), False),
    ("DLT C3", (6, 12, 12), (12, 6, 5, 5), False),
    ("LeNet-5 C1", (1, 32, 32), (6, 1, 5, 5), False),
    ("LeNet-5 C3", (6, 14, 14), (16, 6, 5, 5), True),
]


def direct_comparisons(batch: int, reps: int, warmup: int, seed: int) -> list[dict[str, Any]]:
    """Note [Direct convolutions]: the NumPy backend's three convolutions on its compiled direct
    kernels and on im2col + BLAS (what it does without Numba), on the calling thread alone."""
    from anycnn_numpy import _conv, _jit, _threads

    if _jit.correlate_into is None:
        return []
    direct = _jit.correlate_into

    def on_blas(function: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        def run() -> np.ndarray:
            _jit.correlate_into = None
            try:
                return function()
            finally:
                _jit.correlate_into = direct

        return run

    rng = np.random.default_rng(seed + 3)
    comparisons = []
    previous = _threads.set_num_threads(1)
    try:
        for name, (c, h, w), kshape, table in DIRECT_LAYERS:
            x = rng.standard_normal((batch, c, h, w)).astype(np.float32)
            k = (rng.standard_normal(kshape) * 0.2).astype(np.float32)
            oh, ow = h - kshape[2] + 1, w - kshape[3] + 1
            d = rng.standard_normal((batch, kshape[0], oh, ow)).astype(np.float32)
            sel = lenet5_table() if table else None
            ops = {
                "conv_valid": (x, lambda x=x, k=k, sel=sel: _conv.conv_valid(x, k, sel)),
                "conv_kernel_grad": (
                    x,
                    lambda x=x, d=d, sel=sel: _conv.conv_kernel_grad(x, d, sel),
                ),
            }
            if c > 1:  # a first layer needs no input gradient
                ops["conv_full"] = (d, lambda d=d, k=k, sel=sel: _conv.conv_full(d, k, sel))
            for op, (first, function) in ops.items():
                candidates = {"im2col + BLAS": on_blas(function), "direct (Numba)": function}
                scale = float(np.abs(candidates["im2col + BLAS"]()).max())
                comparisons.append(
                    run_comparison(
                        f"{op}, {name}", first, candidates, reps, warmup, atol=1e-5 * scale
                    )
                )
    finally:
        _threads.set_num_threads(previous)
    return comparisons


def run_comparison(
    title: str,
    x: np.ndarray,
    candidates: dict[str, Callable[[], np.ndarray]],
    reps: int,
    warmup: int,
    atol: float = 1e-5,
) -> dict[str, Any]:
    from anycnn.backend import lookup

    reference_name = next(iter(candidates))
    expected = candidates[reference_name]()
    agrees = {}
    for name, function in candidates.items():
        result = np.asarray(function())
        agrees[name] = bool(
            result.shape == expected.shape
            and result.dtype == expected.dtype
            and np.allclose(result, expected, rtol=1e-5, atol=atol)
        )
    copy_label, copy = copy_of(lookup("numpy"), expected.shape)
    timed = dict(candidates)
    timed["copy"] = copy
    times = time_interleaved(timed, reps=reps, warmup=warmup, sync=lambda: None)
    copy_summary = summary(times.pop("copy"))
    rows = [{"name": name, **summary(t), "agrees": agrees[name]} for name, t in times.items()]
    fastest = min(row["median_ms"] for row in rows)
    for row in rows:
        row["ratio_vs_fastest"] = row["median_ms"] / fastest
        row["ratio_vs_copy"] = row["median_ms"] / copy_summary["median_ms"]
    return {
        "title": title,
        "input": list(x.shape),
        "output": list(expected.shape),
        "dtype": str(x.dtype),
        "copy": {"how": copy_label, "bytes": expected.nbytes, **copy_summary},
        "candidates": rows,
    }


def median_of(comparison: dict[str, Any], name: str) -> float:
    return next(r["median_ms"] for r in comparison["candidates"] if r["name"] == name)


def judge_claims(up: dict[str, Any], down: dict[str, Any]) -> list[dict[str, Any]]:
    kron = median_of(up, "np.kron(x, ones)")
    zoom = median_of(up, "ndimage.zoom order=0 (imresize)")
    convolutions = [r for r in down["candidates"] if r["name"].startswith(CONVOLUTION_WITH_ONES)]
    best_conv = min(convolutions, key=lambda r: r["median_ms"])
    loop = median_of(down, "per-block loop (blkproc)")
    claims = []
    for text, slow_name, slow, fast_name, fast in [
        (
            "up-sampling with kron is an order of magnitude faster than imresize",
            "ndimage.zoom order=0 (imresize)",
            zoom,
            "np.kron(x, ones)",
            kron,
        ),
        (
            "down-sampling by convolution with ones + strided indexing is an order of "
            "magnitude faster than blkproc",
            "per-block loop (blkproc)",
            loop,
            best_conv["name"],
            best_conv["median_ms"],
        ),
    ]:
        speedup = slow / fast
        claims.append(
            {
                "claim": text,
                "faster": fast_name,
                "slower": slow_name,
                "speedup": speedup,
                "holds": speedup >= ORDER_OF_MAGNITUDE,
                "criterion": f"speed-up >= sqrt(10) = {ORDER_OF_MAGNITUDE:.2f}x",
            }
        )
    return claims


# --- machine and output -----------------------------------------------------------------------
def format_table(hot: list[dict[str, Any]], comparisons: list[dict[str, Any]]) -> str:
    lines = []
    header = f"{'op':<44} {'backend':<17} {'median ms':>10} {'ratio':>16}"
    lines.append(header)
    lines.append("-" * len(header))
    for row in hot:
        name = f"{row['layer']} {row['op']}" + (f" ({row['variant']})" if row["variant"] else "")
        ratio = f"{row['ratio_vs_copy']:.1f}x copy" if row["ratio_vs_copy"] is not None else ""
        lines.append(f"{name:<44} {row['backend']:<17} {row['median_ms']:>10.3f} {ratio:>16}")
        if row["copy"] is not None:
            copy_name = f"  copy of the output ({row['copy']['how']})"
            lines.append(
                f"{copy_name:<44} {row['backend']:<17} {row['copy']['median_ms']:>10.3f} "
                f"{'1.0x copy':>16}"
            )
    for comparison in comparisons:
        lines.append("")
        lines.append(
            f"{comparison['title']}: {tuple(comparison['input'])} -> "
            f"{tuple(comparison['output'])} {comparison['dtype']}"
        )
        header = f"{'alternative':<44} {'median ms':>10} {'x fastest':>10} {'x copy':>8}  agrees"
        lines.append(header)
        lines.append("-" * len(header))
        for row in sorted(comparison["candidates"], key=lambda r: r["median_ms"]):
            lines.append(
                f"{row['name']:<44} {row['median_ms']:>10.3f} {row['ratio_vs_fastest']:>9.1f}x "
                f"{row['ratio_vs_copy']:>7.1f}x  {'yes' if row['agrees'] else 'NO'}"
            )
        copy = comparison["copy"]
        lines.append(f"{'copy of the output (' + copy['how'] + ')':<44} {copy['median_ms']:>10.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numpy", help="backend name or alias (default numpy)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repetitions (tests)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 11)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 2)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default bench/results/ops-<backend>.json; with --quick, "
        "ops-<backend>-quick.json so that a quick run never replaces a full one)",
    )
    args = parser.parse_args(argv)

    from anycnn.backend import BackendUnavailableError, lookup

    try:
        record = lookup(args.backend).require()
    except (ValueError, BackendUnavailableError) as error:
        print(f"bench/ops.py: {error}", file=sys.stderr)
        return 2
    batch = args.batch or (2 if args.quick else 256)
    reps = args.reps or (2 if args.quick else 11)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    out = args.out or RESULTS / f"ops-{record.name}{'-quick' if args.quick else ''}.json"

    info = machine_info(record.name, record.array_module)
    print(
        f"anycnn bench/ops.py: backend {record.name} ({info['backend_library']}), float32, "
        f"batch {batch}, median of {reps} after {warmup} warm-up round(s), interleaved"
    )
    print(
        f"{info['cpu_model']} ({info['cpu_count']} CPUs), Python {info['python']}, "
        f"NumPy {info['numpy']} ({info['blas']}), SciPy {info['scipy']}, {info['date']}"
    )
    print()

    hot = run_hot_ops(record, batch, reps, warmup, args.seed)
    comparisons: list[dict[str, Any]] = []
    claims: list[dict[str, Any]] = []
    if record.name == "numpy":
        rng = np.random.default_rng(args.seed + 1)
        small = rng.standard_normal((batch, 6, 14, 14)).astype(np.float32)
        large = rng.standard_normal((batch, 6, 28, 28)).astype(np.float32)
        up = run_comparison("up-sampling by 2", small, upsampling_alternatives(small), reps, warmup)
        down = run_comparison(
            "down-sampling by 2 (block sums)", large, downsampling_alternatives(large), reps, warmup
        )
        comparisons = [up, down]
        claims = judge_claims(up, down)
        comparisons += kernel_grad_comparisons(min(batch, 64), reps, warmup, args.seed)
        comparisons += direct_comparisons(batch, reps, warmup, args.seed)

    print(format_table(hot, comparisons))
    if claims:
        print()
        print("Section 3.4 of the notes, on NumPy today:")
        for claim in claims:
            verdict = "HOLDS" if claim["holds"] else "DOES NOT HOLD"
            print(
                f"  {verdict}: {claim['claim']}: {claim['faster']} is {claim['speedup']:.1f}x "
                f"faster than {claim['slower']} ({claim['criterion']})"
            )
        print(
            "  (the block loop is vectorised over batch and maps, 196 Python iterations; "
            "MATLAB's blkproc called a function per block of every map)"
        )
    else:
        print("\n(section 3.4 alternatives run on NumPy only: --backend numpy)")

    report = {
        "benchmark": "bench/ops.py",
        "command": " ".join([Path(sys.executable).name, "bench/ops.py", *(argv or sys.argv[1:])]),
        "backend": record.name,
        "quick": args.quick,
        "dtype": "float32",
        "batch": batch,
        "reps": reps,
        "warmup": warmup,
        "machine": info,
        "hot_ops": hot,
        "comparisons": comparisons,
        "claims": claims,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
