"""Data-parallel overhead on one machine, and a cost model for many.

Usage::

    python bench/scale.py                 # full run: writes bench/results/scale-<machine>.json
    python bench/scale.py --quick         # a few steps of each (plumbing check)

What is timed (LeNet-5, float32, global batch 256, plain SGD, one step = forward, loss,
back-propagation, gradient averaging where there is any, update):

* ``anycnn 2x1``: ``mpiexec -n 2``, one thread each (anycnn.distributed's default on 2 cores),
  each rank a shard of 128, gradients averaged by
  :class:`anycnn.training.distributed.GradientAverager` (one flat buffer, one in-place
  ``MPI_Allreduce``). The allreduce is also timed alone inside the step, which gives its share
  of the step.
* ``anycnn 1x2``: one process, two threads (``ANYCNN_NUM_THREADS=2``), batch 256.
* ``torch ddp 2x1``: PyTorch ``DistributedDataParallel``, gloo backend, 2 processes of one
  thread, shards of 128, the same net and initial weights as bench/train.py's peer.

The three are launched in turn, round after round (A, B, C, A, B, C, ...); each launch warms
up, then times ``--steps`` steps one by one; a round's figure is the median step, the reported
figure the median over rounds, with the load average seen at the time. On a 2-core machine
two processes cannot beat one process with two threads: the first ratio measures overhead.

Also: ``MPI_Allreduce`` (in place, float32, 2 processes) against the message size, 1e3 to 1e7
floats, and the per-pattern compute time of LeNet-5 and DLT on one thread, which feed the cost
model printed at the end (README, "Scaling out")::

    step(N) = compute(B) / N + 2 (N - 1) / N * bytes / bandwidth + latency * log2(N)

The benchmark asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _machine import load_average, machine_info, machine_slug  # bench/ is sys.path[0]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GLOBAL_BATCH = 256
LR = 0.01
SIZES = [1_000, 10_000, 100_000, 1_000_000, 10_000_000]
#: The networks of the projection: (name, bandwidth in bytes/s, latency in s). Latencies are
#: assumptions (typical small-message allreduce step over TCP on 10 GbE, RDMA on 100 Gbit/s).
NETWORKS = [("10 Gbit/s", 10e9 / 8, 25e-6), ("100 Gbit/s", 100e9 / 8, 5e-6)]
#: Model sizes (float32 parameters) added to the allreduce sweep.
MODEL_SIZES = {"dlt": 3_898, "lenet5": 61_750}
WORLDS = [8, 64, 512]


def _env(threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "backends"), str(HERE), env.get("PYTHONPATH", "")]
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("ANYCNN_NUM_THREADS", None)
    if threads is not None:
        env["ANYCNN_NUM_THREADS"] = str(threads)
    return env


def _mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else "mpiexec"


def _child(args: list[str], n: int | None, threads: int | None = None) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    if n is not None:
        command = [_mpiexec(), "--oversubscribe", "-n", str(n), *command]
    done = subprocess.run(
        command, env=_env(threads), capture_output=True, text=True, timeout=1800, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


# --------------------------------------------------------------------------------------------
# children
# --------------------------------------------------------------------------------------------
def _anycnn_step_fn(model: str, rank: int, size: int, comm: Any = None):
    from train import random_batch  # bench/train.py

    from anycnn import distributed, models

    net = models.build(model, backend="numpy", seed=0)
    x, t = random_batch(model, GLOBAL_BATCH, seed=1)
    lo, hi = GLOBAL_BATCH * rank // size, GLOBAL_BATCH * (rank + 1) // size
    x, t = net.backend.asarray(x[lo:hi]), net.backend.asarray(t[lo:hi])
    slots = [(layer.params, layer.grads, role) for layer in net.layers for role in layer.params]
    averager = distributed.GradientAverager(comm, net) if comm is not None else None
    spent = {"allreduce": 0.0}

    def step() -> None:
        net.compute_gradients(x, t, check=False)
        if averager is not None:
            began = time.perf_counter()
            averager.average((hi - lo) / GLOBAL_BATCH)
            spent["allreduce"] += time.perf_counter() - began
        for params, grads, role in slots:
            params[role] -= LR * grads[role]

    def reduce_alone() -> None:
        if averager is not None:
            averager.average((hi - lo) / GLOBAL_BATCH)

    count = sum(int(np.prod(p.shape)) for p in net.parameters().values())
    return step, spent, count, reduce_alone


def _time_steps(step, steps: int, warmup: int, barrier=None, spent=None) -> dict[str, Any]:
    for _ in range(warmup):
        step()
    if barrier is not None:
        barrier()
    times, shares = [], []
    for _ in range(steps):
        before = spent["allreduce"] if spent is not None else 0.0
        began = time.perf_counter()
        step()
        elapsed = time.perf_counter() - began
        times.append(elapsed)
        if spent is not None:
            shares.append(spent["allreduce"] - before)
    result = {"median_s": statistics.median(times), "min_s": min(times)}
    if spent is not None:
        result["allreduce_median_s"] = statistics.median(shares)
    return result


def child_anycnn_mpi(args: argparse.Namespace) -> dict[str, Any]:
    from anycnn_numpy import get_num_threads

    from anycnn.training import distributed

    comm = distributed.init("mpi")
    found: dict[str, Any] = {"threads": get_num_threads(), "size": comm.size}
    for model in args.models.split(","):
        step, spent, count, reduce_alone = _anycnn_step_fn(model, comm.rank, comm.size, comm)
        timing = _time_steps(step, args.steps, args.warmup, comm.barrier, spent)
        # The averaging alone, both ranks released together by a barrier: what the reduction
        # costs without the wait for a rank that is late (the rest of the in-step figure).
        alone = []
        for _ in range(args.steps):
            comm.barrier()
            began = time.perf_counter()
            reduce_alone()
            alone.append(time.perf_counter() - began)
        timing["allreduce_alone_median_s"] = statistics.median(alone)
        # every rank's view: the slowest rank sets the pace
        gathered = comm.comm.gather(timing, root=0)
        if comm.rank == 0:
            timing["per_rank_median_s"] = [g["median_s"] for g in gathered]
            timing["parameters"] = count
            timing["compute_median_s"] = timing["median_s"] - timing["allreduce_median_s"]
            found[model] = timing
    return found if comm.rank == 0 else {}


def child_anycnn_threads(args: argparse.Namespace) -> dict[str, Any]:
    from anycnn_numpy import get_num_threads

    found: dict[str, Any] = {"threads": get_num_threads()}
    for model in args.models.split(","):
        step, _, count, _ = _anycnn_step_fn(model, 0, 1)
        found[model] = _time_steps(step, args.steps, args.warmup)
        found[model]["parameters"] = count
    return found


def _ddp_timing(model: str, rank: int, size: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from train import AnycnnRunner, random_batch, torch_runner_like

    peer = torch_runner_like(AnycnnRunner(model, "numpy", seed=0), model, 1, "foreach")

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = torch.nn.ParameterDict(
                {k: torch.nn.Parameter(v.detach().clone()) for k, v in peer.p.items()}
            )

        def forward(self, x: Any) -> Any:
            peer.p = dict(self.p.items())
            return peer.forward(x)

    module = torch.nn.parallel.DistributedDataParallel(Net())
    optimizer = torch.optim.SGD(module.parameters(), lr=LR, foreach=True)
    x, t = random_batch(model, GLOBAL_BATCH, seed=1)
    lo, hi = GLOBAL_BATCH * rank // size, GLOBAL_BATCH * (rank + 1) // size
    xs, ts = torch.from_numpy(x[lo:hi]), torch.from_numpy(t[lo:hi])

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        peer.loss(module(xs), ts).backward()
        optimizer.step()

    return _time_steps(step, args.steps, args.warmup, dist.barrier)


def child_torch_ddp(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    rank = int(os.environ["OMPI_COMM_WORLD_RANK"])
    size = int(os.environ["OMPI_COMM_WORLD_SIZE"])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=size)
    found: dict[str, Any] = {"threads": torch.get_num_threads(), "size": size}
    for model in args.models.split(","):
        found[model] = _ddp_timing(model, rank, size, args)
    dist.destroy_process_group()
    return found if rank == 0 else {}


def child_allreduce(args: argparse.Namespace) -> dict[str, Any]:
    from anycnn.training import distributed

    comm = distributed.init("mpi")
    sizes = [int(s) for s in args.sizes.split(",")]
    buffers = {n: np.ones(n, dtype=np.float32) for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for n in sizes:  # warm-up
        for _ in range(3):
            comm.allreduce_(buffers[n])
    for _ in range(args.reps):  # sizes interleaved
        for n in sizes:
            repeat = max(1, min(50, int(2e7 // (n * 4))))
            comm.barrier()
            began = time.perf_counter()
            for _ in range(repeat):
                comm.allreduce_(buffers[n])
            times[n].append((time.perf_counter() - began) / repeat)
    if comm.rank != 0:
        return {}
    return {
        str(n): {"median_s": statistics.median(v), "min_s": min(v), "bytes": 4 * n}
        for n, v in times.items()
    }


CHILDREN = {
    "anycnn-mpi": child_anycnn_mpi,
    "anycnn-threads": child_anycnn_threads,
    "torch-ddp": child_torch_ddp,
    "allreduce": child_allreduce,
}


# --------------------------------------------------------------------------------------------
# the cost model
# --------------------------------------------------------------------------------------------
def fit_allreduce(points: dict[str, Any]) -> tuple[float, float]:
    """Latency (s) and bandwidth (bytes/s) of ``t = latency + 2 (N-1)/N bytes / bw`` (N = 2)
    fitted by least squares on the fastest repetition of each size (on a shared machine the
    medians carry the waits for a descheduled rank)."""
    sizes = np.array([p["bytes"] for p in points.values()], dtype=float)
    seconds = np.array([p["min_s"] for p in points.values()], dtype=float)
    a = np.stack([np.ones_like(sizes), sizes * (2 * (2 - 1) / 2)], axis=1)
    (latency, inverse), *_ = np.linalg.lstsq(a, seconds, rcond=None)
    return float(max(latency, 0.0)), float(1.0 / inverse) if inverse > 0 else float("inf")


def allreduce_time(n: int, nbytes: float, bandwidth: float, latency: float) -> float:
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * nbytes / bandwidth + latency * math.log2(n)


def projections(
    per_pattern: dict[str, float], parameters: dict[str, int], networks: list[tuple]
) -> list[dict]:
    """Scaling efficiency compute(B) / (N * step(N)) at global batch 256, and the smallest
    global batch with efficiency >= 90% (compute(B)/N >= 9 * allreduce(N))."""
    rows = []
    for model, c in per_pattern.items():
        nbytes = 4.0 * parameters[model]
        for network, bandwidth, latency in networks:
            for n in WORLDS:
                reduce = allreduce_time(n, nbytes, bandwidth, latency)
                compute = c * GLOBAL_BATCH
                efficiency = (compute / n) / (compute / n + reduce)
                b90 = math.ceil(9 * n * reduce / c)
                rows.append(
                    {
                        "model": model,
                        "network": network,
                        "processes": n,
                        "allreduce_s": reduce,
                        "efficiency_at_256": efficiency if GLOBAL_BATCH >= n else None,
                        "batch_for_90pct": max(b90, n),
                        "per_process_batch_for_90pct": max(b90, n) / n,
                    }
                )
    return rows


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--models", default="lenet5,dlt")
    parser.add_argument(
        "--sizes", default=",".join(str(s) for s in sorted([*SIZES, *MODEL_SIZES.values()]))
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](args)
        if result:
            print("RESULT " + json.dumps(result), flush=True)
        return 0
    if args.quick:
        args.rounds, args.steps, args.warmup, args.reps = 1, 2, 1, 1
        args.sizes = "1000,100000"
    passed = [
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--models",
        args.models,
    ]
    configs = {
        "anycnn 2x1": (["anycnn-mpi", *passed], 2, None),
        "anycnn 1x2": (["anycnn-threads", *passed], None, 2),
    }
    if not args.no_torch:
        configs["torch ddp 2x1"] = (["torch-ddp", *passed], 2, None)
    report: dict[str, Any] = {"machine": machine_info("numpy"), "global_batch": GLOBAL_BATCH}
    report["command"] = "python bench/scale.py " + " ".join(argv or sys.argv[1:])
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    loads = []
    for _ in range(args.rounds):
        for name, (child, n, threads) in configs.items():
            if name.startswith("torch"):
                port = socket.socket()
                port.bind(("127.0.0.1", 0))
                os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = (
                    "127.0.0.1",
                    str(port.getsockname()[1]),
                )
                port.close()
            rounds[name].append(_child(child, n, threads))
            loads.append(load_average()[0] if load_average() else None)
    summary: dict[str, Any] = {}
    for name, runs in rounds.items():
        summary[name] = {"threads": runs[0].get("threads")}
        for model in args.models.split(","):
            summary[name][model] = {
                "median_s": statistics.median(r[model]["median_s"] for r in runs),
                "rounds": [r[model]["median_s"] for r in runs],
            }
            if "allreduce_median_s" in runs[0][model]:
                summary[name][model]["allreduce_median_s"] = statistics.median(
                    r[model]["allreduce_median_s"] for r in runs
                )
                summary[name][model]["compute_median_s"] = statistics.median(
                    r[model]["compute_median_s"] for r in runs
                )
                summary[name][model]["allreduce_alone_median_s"] = statistics.median(
                    r[model]["allreduce_alone_median_s"] for r in runs
                )
                summary[name][model]["parameters"] = runs[0][model]["parameters"]
    report["steps"] = summary
    report["load_average_1min_during"] = loads
    report["allreduce"] = _child(["allreduce", "--reps", str(args.reps), "--sizes", args.sizes], 2)
    latency, bandwidth = fit_allreduce(report["allreduce"])
    report["allreduce_fit"] = {"latency_s": latency, "bandwidth_bytes_per_s": bandwidth}
    two = summary["anycnn 2x1"]
    per_pattern = {
        m: two[m]["compute_median_s"] / (GLOBAL_BATCH / 2) for m in args.models.split(",")
    }
    parameters = {m: two[m]["parameters"] for m in args.models.split(",")}
    report["compute_per_pattern_s_1thread"] = per_pattern
    report["projections"] = projections(per_pattern, parameters, NETWORKS)
    # The model on this machine, N = 2: compute / 2 + the fitted allreduce, against the step.
    report["model_check_n2"] = {
        m: {
            "predicted_s": per_pattern[m] * GLOBAL_BATCH / 2
            + allreduce_time(2, 4.0 * parameters[m], bandwidth, latency),
            "measured_s": two[m]["median_s"],
        }
        for m in per_pattern
    }
    report["load_average_at_end"] = load_average()

    lines = []
    for model in args.models.split(","):
        a = summary["anycnn 2x1"][model]
        b = summary["anycnn 1x2"][model]
        row = (
            f"{model}: anycnn 2x1 {1e3 * a['median_s']:.1f} ms/step "
            f"(averaging {1e3 * a['allreduce_median_s']:.2f} ms in the step, "
            f"{100 * a['allreduce_median_s'] / a['median_s']:.1f}%; alone "
            f"{1e3 * a['allreduce_alone_median_s']:.3f} ms, "
            f"{100 * a['allreduce_alone_median_s'] / a['median_s']:.2f}%), "
            f"anycnn 1x2 {1e3 * b['median_s']:.1f} ms; 2x1 speed / 1x2 = "
            f"{b['median_s'] / a['median_s']:.2f}"
        )
        if "torch ddp 2x1" in summary:
            c = summary["torch ddp 2x1"][model]
            row += (
                f"; torch ddp 2x1 {1e3 * c['median_s']:.1f} ms; anycnn 2x1 / ddp speed = "
                f"{c['median_s'] / a['median_s']:.2f}"
            )
        lines.append(row)
    for n, p in report["allreduce"].items():
        lines.append(
            f"allreduce {int(n):>9} floats: median {1e6 * p['median_s']:9.1f} us, "
            f"fastest {1e6 * p['min_s']:9.1f} us"
        )
    lines.append(f"fit: latency {1e6 * latency:.1f} us, bandwidth {bandwidth / 1e9:.2f} GB/s")
    for m, check in report["model_check_n2"].items():
        lines.append(
            f"{m}: model for N=2 here {1e3 * check['predicted_s']:.1f} ms/step, measured "
            f"{1e3 * check['measured_s']:.1f} ms"
        )
    for row in report["projections"]:
        eff = row["efficiency_at_256"]
        lines.append(
            f"{row['model']:>6} {row['network']:>12} N={row['processes']:>3}: allreduce "
            f"{1e6 * row['allreduce_s']:8.1f} us, efficiency at B=256 "
            + ("  n/a " if eff is None else f"{100 * eff:5.1f}%")
            + f", B for 90%: {row['batch_for_90pct']} ({row['per_process_batch_for_90pct']:.0f}"
            " per process)"
        )
    print("\n".join(lines))
    report["summary_lines"] = lines
    if not args.quick or args.output:
        out = Path(args.output or HERE / "results" / f"scale-{machine_slug()}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
