"""Does the NumPy backend's own thread pool (with spin-waiting helpers) earn its complexity
against Numba's ``parallel=True`` / ``prange``?  Training steps of the zoo models, interleaved.

Usage::

    python bench/pool.py                                   # dlt and lenet5 at batch 1, 16, 256
    python bench/pool.py --models dlt --batch-sizes 256 --reps 9
    python bench/pool.py --threading-layer workqueue       # Numba's own layer, not OpenMP
    python bench/pool.py --quick --out x.json              # tiny run (tests/test_bench_pool.py)

Four ways of running the same ops, on the same batch slices (the slicing depends on the batch
only, ``_threads.slices``), so that all four give the same bits (checked before timing):

* ``pool``: the backend as it ships: ``_threads``' pool, helpers that spin-wait between jobs
  (``Note [Spinning helpers]``), the compiled kernels' slices taken in compiled drivers (``Note
  [Slices taken in compiled code]``), BLAS held to one thread while slices run;
* ``pool-nospin``: the same pool with spinning off (``ANYCNN_SPIN_US=0``): helpers and caller
  block on a condition variable at once;
* ``prange``: no pool. The slices of every compiled kernel (direct convolutions, their fused
  gradients, resampling, f', the subsampling sums) run in one ``numba.njit(parallel=True)``
  driver per kernel, a ``prange`` over the slices on Numba's threading layer; the per-slice
  partial sums come back in slice order, as the pool's do. Slices of NumPy/BLAS work (the
  fully connected layers, LeNet-5's C5) run one after the other on the calling thread, with
  BLAS's own threads (what a backend without a pool would do);
* ``one-thread``: the pool set to one thread (``set_num_threads(1)``): everything on the
  calling thread, for scale.

Each cell is timed A, B, C, D, A, B, ... in blocks of about ``--block-seconds`` (calibrated after
a warm-up), the median over ``--reps`` blocks reported with the load average (bench/train.py's
``interleaved``). The same number of threads everywhere: the pool's (``get_num_threads()``) and
``numba.set_num_threads`` to it. The benchmark asserts nothing about speed; it writes
``bench/results/pool-numpy-<machine>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info, machine_slug  # bench/ is sys.path[0] when run as a script
from train import AnycnnRunner, interleaved, random_batch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODELS = ("dlt", "lenet5")
BATCH_SIZES = (1, 16, 256)
MODES = ("pool", "pool-nospin", "prange", "one-thread")


# --- prange drivers: one per compiled kernel, a prange over the slices ---------------------------
def _drivers() -> dict[str, Any]:
    import numba
    from anycnn_numpy import _direct, _kernels

    correlate_into, correlate_grad = _direct.correlate_into, _direct.correlate_grad
    subsample_sums_into = _direct.subsample_sums_into
    sensitivity_into, block_sum_into = _direct.sensitivity_into, _kernels.block_sum_into
    kron_into = _kernels.kron_into
    prange = numba.prange
    jit = numba.njit(parallel=True, nogil=True)

    @jit
    def each_correlate_into(x, pad_h, pad_w, wts, bias, active, act, out, starts, stops, chunk):
        for s in prange(starts.shape[0]):
            correlate_into(x, pad_h, pad_w, wts, bias, active, act, out, starts[s], stops[s], chunk)

    @jit
    def each_correlate_grad(x, dy, y, sens, up, active, starts, stops, chunk, delta, grads, bias):
        for s in prange(starts.shape[0]):
            g, b = correlate_grad(x, dy, y, sens, up, active, starts[s], stops[s], chunk, delta)
            grads[s] = g
            bias[s] = b

    @jit
    def each_subsample_sums_into(delta, d, beta, out, starts, stops, sums, plain):
        for s in prange(starts.shape[0]):
            g, b = subsample_sums_into(delta, d, beta, out, starts[s], stops[s])
            sums[s] = g
            plain[s] = b

    @jit
    def each_sensitivity_into(dy, y, kind, p0, p1, scaled, out, starts, stops):
        for s in prange(starts.shape[0]):
            sensitivity_into(dy, y, kind, p0, p1, scaled, out, starts[s], stops[s])

    @jit
    def each_block_sum_into(x, n, scale, out, starts, stops):
        for s in prange(starts.shape[0]):
            block_sum_into(x, n, scale, out, starts[s], stops[s])

    @jit
    def each_kron_into(x, n, out, starts, stops):
        for s in prange(starts.shape[0]):
            kron_into(x, n, out, starts[s], stops[s])

    return {
        "correlate_into": (8, each_correlate_into),
        "correlate_grad": (6, each_correlate_grad),
        "subsample_sums_into": (4, each_subsample_sums_into),
        "sensitivity_into": (7, each_sensitivity_into),
        "block_sum_into": (4, each_block_sum_into),
        "kron_into": (3, each_kron_into),
    }


class _Recorder:
    """In ``prange`` mode, the ops' work functions run slice after slice on the calling thread;
    a call of a compiled kernel is recorded instead of run (its results are placeholders), and
    all slices' calls are then run by one prange driver, which fills the placeholders."""

    calls: list | None = None


def _placeholder(name: str, args: tuple) -> Any:
    if name == "correlate_grad":  # (x, dy, y, ...) -> kernel gradient (O, C, kh, kw), bias (O,)
        x, y = args[0], args[2]
        o, c = y.shape[1], x.shape[1]
        kh, kw = x.shape[2] - y.shape[2] + 1, x.shape[3] - y.shape[3] + 1
        return np.empty((o, c, kh, kw), x.dtype), np.empty(o)
    if name == "subsample_sums_into":  # (delta, ...) -> per-map sums (C,), (C,)
        c = args[0].shape[1]
        return np.empty(c), np.empty(c)
    return None


def _recording(name: str, kernel: Any) -> Any:
    def call(*args: Any) -> Any:
        if _Recorder.calls is None:
            return kernel(*args)
        result = _placeholder(name, args)
        _Recorder.calls.append((name, args, result))
        return result

    return call


def _replay(calls: list, drivers: dict[str, Any]) -> None:
    name, first, _ = calls[0]
    at, driver = drivers[name]
    assert all(c[0] == name for c in calls), "one op, one kernel"
    starts = np.array([c[1][at] for c in calls], np.int64)
    stops = np.array([c[1][at + 1] for c in calls], np.int64)
    args = [*first[:at], starts, stops, *first[at + 2 :]]
    count = len(calls)
    if name in ("correlate_grad", "subsample_sums_into"):
        one, two = calls[0][2]
        firsts = np.empty((count, *one.shape), one.dtype)
        seconds = np.empty((count, *two.shape), two.dtype)
        driver(*args, firsts, seconds)
        for index, (_, _, (a, b)) in enumerate(calls):
            a[...] = firsts[index]
            b[...] = seconds[index]
    else:
        driver(*args)


class Modes:
    """Switches the NumPy backend between the four ways of running its slices."""

    def __init__(self) -> None:
        import numba
        from anycnn_numpy import _activation, _conv, _im2col, _jit, _resample, _threads

        self.numba = numba
        self.threads = _threads
        self.jit = _jit
        self.users = {"run": (_im2col, _activation, _resample), "run_direct": (_conv,)}
        self.original = {"run": _threads.run, "run_direct": _threads.run_direct}
        self.kernels = {name: getattr(_jit, name) for name in _drivers_names()}
        # The backend's own compiled drivers (Note [Slices taken in compiled code] in _direct):
        # off in the prange mode, whose slices go through run / run_direct as they once did.
        self.sliced = {name: getattr(_jit, name) for name in _SLICED}
        self.wrapped = {name: _recording(name, k) for name, k in self.kernels.items()}
        self.drivers = _drivers()
        self.pool_threads = _threads.get_num_threads()
        self.spin = (_threads._spin.turns, _threads._spin.helper_turns, _threads._spin.caller_turns)
        numba.set_num_threads(min(self.pool_threads, numba.config.NUMBA_NUM_THREADS))
        self.mode = "pool"

    def _set_runners(self, run: Any, run_direct: Any) -> None:
        for module in self.users["run"]:
            module.run = run
        for module in self.users["run_direct"]:
            module.run_direct = run_direct

    def switch(self, mode: str) -> None:
        if mode == self.mode:
            return
        threads, spin = self.threads, self.threads._spin
        threads.set_num_threads(1 if mode == "one-thread" else self.pool_threads)
        spin.calibrate()
        turns = (0, 0, 0) if mode == "pool-nospin" else self.spin
        spin.turns, spin.helper_turns, spin.caller_turns = turns
        if mode == "prange":
            self._set_runners(self._run_prange, self._run_direct_prange)
            for name, kernel in self.wrapped.items():
                setattr(self.jit, name, kernel)
            for name in self.sliced:
                setattr(self.jit, name, None)
        else:
            self._set_runners(self.original["run"], self.original["run_direct"])
            for name, kernel in self.kernels.items():
                setattr(self.jit, name, kernel)
            for name, driver in self.sliced.items():
                setattr(self.jit, name, driver)
        self.mode = mode

    def _slices_prange(self, work: Any, parts: list[tuple[int, int]]) -> None:
        _Recorder.calls = calls = []
        try:
            for index, (start, stop) in enumerate(parts):
                work(index, start, stop)
        finally:
            _Recorder.calls = None
        if calls:
            _replay(calls, self.drivers)

    def _run_prange(self, work: Any, n: int, bytes_per_item: int, gemm_per_item: int) -> None:
        t = self.threads
        if n * bytes_per_item <= t._SLICE_BYTES and n * gemm_per_item <= t._BLAS_SPLIT_SIZE:
            work(0, 0, n)
            return
        self._slices_prange(work, t.slices(n, bytes_per_item))

    def _run_direct_prange(self, work: Any, n: int, macs_per_item: int) -> None:
        t = self.threads
        total = n * macs_per_item
        if n == 1 or total < t.DIRECT_PARALLEL_MACS:
            work(0, 0, n)
            return
        count = max(t._PARALLEL_SLICES, -(-total // t.DIRECT_SLICE_MACS))
        count = min(n, -(-count // t._PARALLEL_SLICES) * t._PARALLEL_SLICES)
        bounds = [n * i // count for i in range(count + 1)]
        self._slices_prange(work, [(bounds[i], bounds[i + 1]) for i in range(count)])


#: The backend's compiled drivers of sliced jobs, by their names in ``_jit``.
_SLICED = (
    "correlate_into_sliced",
    "correlate_grad_sliced",
    "subsample_backward_sliced",
    "block_sum_sliced",
)


def _drivers_names() -> tuple[str, ...]:
    return (
        "correlate_into",
        "correlate_grad",
        "subsample_sums_into",
        "sensitivity_into",
        "block_sum_into",
        "kron_into",
    )


def _gradient_bits(runner: AnycnnRunner, x: Any, t: Any) -> list[bytes]:
    runner.net.compute_gradients(x, t, check=False)
    return [np.asarray(g).tobytes() for g in runner.net.gradients().values()]


def time_cell(model: str, batch: int, modes: Modes, args: argparse.Namespace) -> dict[str, Any]:
    runner = AnycnnRunner(model, "numpy", seed=args.seed)
    x, t = random_batch(model, batch, args.seed + batch)
    saved = runner.snapshot()
    bits = {}
    for mode in MODES:
        modes.switch(mode)
        bits[mode] = _gradient_bits(runner, x, t)
    same = all(bits[mode] == bits["pool"] for mode in MODES)
    candidates = {}
    for mode in MODES:

        def call(mode: str = mode) -> None:
            modes.switch(mode)
            runner.step(x, t)

        candidates[mode] = call
    restore = {mode: (lambda: runner.restore(saved)) for mode in MODES}
    timed = interleaved(candidates, args.reps, args.block_seconds, args.warmup, args.gap, restore)
    modes.switch("pool")
    row: dict[str, Any] = {"model": model, "batch": batch, "same_bits": same}
    for mode, entry in timed.items():
        entry["ms"] = entry["median_s"] * 1e3
        row[mode] = entry
    row["prange_over_pool"] = timed["prange"]["median_s"] / timed["pool"]["median_s"]
    row["nospin_over_pool"] = timed["pool-nospin"]["median_s"] / timed["pool"]["median_s"]
    row["load_average_1min"] = timed["pool"]["load_average_1min"]
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 and 16, 2 reps (tests)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,16,256)")
    parser.add_argument("--reps", type=int, default=None, help="timed blocks per mode (default 9)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--block-seconds", type=float, default=None)
    parser.add_argument("--gap-seconds", dest="gap", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threading-layer",
        choices=("default", "omp", "workqueue", "tbb"),
        default="default",
        help="Numba's threading layer for the prange drivers (default: Numba's choice)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threading_layer != "default":
        import numba

        numba.config.THREADING_LAYER = args.threading_layer

    from anycnn_numpy import _jit

    if _jit.correlate_into is None:
        print("bench/pool.py: the compiled kernels are off (no Numba, or ANYCNN_NUMBA=0)")
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.batch_sizes:
        batches = [int(b) for b in args.batch_sizes.split(",")]
    else:
        batches = [1, 16] if args.quick else list(BATCH_SIZES)
    args.reps = args.reps or (2 if args.quick else 9)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.block_seconds = args.block_seconds or (0.02 if args.quick else 0.25)
    args.gap = args.gap if args.gap is not None else (0.02 if args.quick else 0.2)
    slug = machine_slug()
    layer = "" if args.threading_layer == "default" else f"-{args.threading_layer}"
    out = args.out or RESULTS / f"pool-numpy-{slug}{layer}{'-quick' if args.quick else ''}.json"
    info = machine_info("numpy")
    modes = Modes()
    info["pool_threads"] = modes.pool_threads
    info["numba_threads"] = modes.numba.get_num_threads()
    info["numba_threading_layer_requested"] = modes.numba.config.THREADING_LAYER
    print(
        f"bench/pool.py: {info['cpu_model']} ({info['cpu_count']} CPUs), pool threads "
        f"{info['pool_threads']}, Numba threads {info['numba_threads']}, load average "
        f"{info['load_average_at_start']}; train steps, float32, median ms of {args.reps} blocks"
    )
    header = f"{'model':8} {'batch':>5} " + " ".join(f"{m:>12}" for m in MODES)
    print(header + f" {'prange/pool':>12} {'bits':>5} {'load':>5}")
    rows = []
    for model in models:
        for batch in batches:
            row = time_cell(model, batch, modes, args)
            rows.append(row)
            print(
                f"{model:8} {batch:5d} "
                + " ".join(f"{row[m]['ms']:12.3f}" for m in MODES)
                + f" {row['prange_over_pool']:12.2f} {'same' if row['same_bits'] else 'DIFF':>5}"
                + f" {row['load_average_1min']:5.2f}",
                flush=True,
            )
    try:
        info["numba_threading_layer"] = modes.numba.threading_layer()
    except ValueError:
        info["numba_threading_layer"] = None
    payload = {"machine": info, "command": "python " + " ".join(sys.argv), "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
