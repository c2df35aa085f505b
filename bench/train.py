"""Time training steps and inference of the zoo models on anycnn and on PyTorch, side by side.

Usage::

    python bench/train.py                          # numpy backend, full run, writes JSON
    python bench/train.py --quick                  # tiny run (tests/test_bench_train.py)
    python bench/train.py --models dlt --batch-sizes 1,256 --reps 9
    python bench/train.py --backend cupy           # another anycnn backend (PyTorch stays CPU)
    python bench/train.py --dtype float64          # both libraries in float64

What is timed
-------------
* **Training steps** of ``dlt`` (DeepLearnToolbox's 6c-2s-12c-2s net, squared error) and
  ``lenet5`` (C3 connection table, trainable sum-pooling, LeCun tanh, cross-entropy) at batch
  sizes 1, 16, 50, 64 and 256: forward, loss, backward and the plain SGD update
  ``p -= lr * g`` of every parameter. anycnn runs ``Network.compute_gradients(x, t,
  check=False)``, as its training loop does (the data are checked once, on the host), and the
  update on the layers' ``params`` / ``grads`` (what ``Network.parameters()`` returns).
* **Inference** (forward only) at batch 1000.
* **One DLT epoch** on MNIST: 60000 images in a random order, batch 50, learning rate 1 (the
  toolbox's setting), wall time of the whole loop including the batch gathering.
* **Peak memory** (peak resident set, ``VmHWM``) of a one-epoch LeNet-5 run at batch 256, each
  library in its own subprocess, so that one library's allocations never count for the other.
  The images stay ``uint8`` on the host and each batch is padded and scaled when it is drawn,
  the same way for both, so the data set costs both runs the same 47 MB.

The peer is PyTorch (CPU, ``torch.set_num_threads(2)``... or the ``--threads`` given) with the
same architecture, the same dtype (``--dtype``, float32 by default), the same initial weights:
convolutions are ``conv2d`` with the kernels rotated by 180 degrees (anycnn follows MATLAB's
``conv2``), LeNet-5's C3 table is a masked weight, sum-pooling is ``avg_pool2d * 4`` times a
per-map beta plus a bias, LeCun's tanh is ``1.7159 tanh(2u/3)``. Its update is the same plain
SGD, written as the fused ``torch._foreach_add_`` (the fastest of the obvious ways;
``--torch-update loop`` times a Python loop of ``p.sub_(lr * g)`` instead).

**Arithmetic rate.** Each row also gives both libraries' GFLOP/s: the multiply-adds of the
convolutions and fully connected layers a step must do (``step_flops``: forward, kernel and
weight gradients, input gradients of every layer but the first; only the pairs of maps a
selection connects), times two, per second. The yardstick is the machine's GEMM rate, the median
GFLOP/s of ``np.matmul`` on 2048-square matrices of the same dtype (NumPy's BLAS on its own
threads), measured before and after the rows; the faster of the two divides anycnn's rate into
the "of GEMM" column.

Every cell is timed interleaved, A, B, A, B, ...: a repetition is a block of steps lasting about
``--block-seconds`` on each side, the steps per block are calibrated after a warm-up, and the
median over ``--reps`` repetitions (at least 5 outside ``--quick``) is reported with the load
average read at the same time. The machine may be shared: the ratio of two medians measured
side by side is the figure to read. The benchmark never asserts anything about speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _machine import (  # bench/ is sys.path[0] when run as a script
    load_average,
    machine_info,
    machine_slug,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODELS = ("dlt", "lenet5")
BATCH_SIZES = (1, 16, 50, 64, 256)
INFERENCE_BATCH = 1000
INPUT_SIZE = {"dlt": 28, "lenet5": 32}
LEARNING_RATE = {"dlt": 1.0, "lenet5": 0.01}


# --- data -------------------------------------------------------------------------------------
def random_batch(
    model: str, batch: int, seed: int, dtype: str = "float32"
) -> tuple[np.ndarray, np.ndarray]:
    """Host images in [0, 1] and one-of-10 targets (0/1 for dlt, as the toolbox)."""
    rng = np.random.default_rng(seed)
    size = INPUT_SIZE[model]
    x = rng.random((batch, 1, size, size), dtype=np.float32).astype(dtype, copy=False)
    labels = rng.integers(0, 10, batch)
    t = np.zeros((batch, 10), dtype=dtype)
    t[np.arange(batch), labels] = 1.0
    return x, t


def batch_from_uint8(
    images: np.ndarray, labels: np.ndarray, pad: int, dtype: str = "float32"
) -> tuple[Any, Any]:
    """Scale to [0, 1] (``scale01``), pad by ``pad`` pixels, one-of-10 targets; ``dtype``."""
    n = images.shape[0]
    size = images.shape[1] + 2 * pad
    x = np.zeros((n, 1, size, size), dtype=dtype)
    scale = np.dtype(dtype).type(1.0 / 255.0)
    np.multiply(images, scale, out=x[:, 0, pad : size - pad, pad : size - pad])
    t = np.zeros((n, 10), dtype=dtype)
    t[np.arange(n), labels] = 1.0
    return x, t


# --- anycnn -----------------------------------------------------------------------------------
class AnycnnRunner:
    """One zoo network on an anycnn backend: train steps and inference."""

    name = "anycnn"

    def __init__(self, model: str, backend: str, seed: int = 0, dtype: str = "float32"):
        from anycnn import models

        self.dtype = dtype
        self.net = models.build(model, backend=backend, seed=seed, dtype=dtype)
        self.backend = self.net.backend
        self.lr = LEARNING_RATE[model]
        # The layer protocol's params/grads dicts (what Network.parameters()/gradients() read),
        # listed once instead of rebuilding two dicts per step.
        self.slots = [
            (layer.params, layer.grads, role) for layer in self.net.layers for role in layer.params
        ]

    def to_device(self, x: np.ndarray, t: np.ndarray) -> tuple[Any, Any]:
        return self.backend.asarray(x), self.backend.asarray(t)

    def step(self, x: Any, t: Any) -> None:
        lr = self.lr
        # Unchecked, as anycnn's training loop runs its steps (it checks the data once).
        self.net.compute_gradients(x, t, check=False)
        for params, grads, role in self.slots:
            params[role] -= lr * grads[role]  # in place: the layer holds this very array

    def infer(self, x: Any) -> None:
        self.net.forward(x)

    def snapshot(self) -> Any:
        return {k: self.backend.xp.asarray(v, copy=True) for k, v in self.net.parameters().items()}

    def restore(self, saved: Any) -> None:
        for name, p in self.net.parameters().items():
            p[...] = saved[name]

    def sync(self, value: Any = None) -> None:
        """Wait for the device (a no-op on the CPU; CuPy runs asynchronously)."""
        synchronize = getattr(self.backend.xp, "cuda", None)
        if synchronize is not None and hasattr(synchronize, "Device"):
            synchronize.Device().synchronize()

    def kernels_host(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(self.backend.to_host(v)) for k, v in self.net.parameters().items()}


# --- PyTorch ----------------------------------------------------------------------------------
def torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


class TorchRunner:
    """The same architecture in PyTorch (CPU), built from the anycnn network's parameters."""

    name = "torch"

    def __init__(
        self,
        model: str,
        params: dict[str, np.ndarray],
        table: np.ndarray | None,
        threads: int,
        update: str = "foreach",
        dtype: str = "float32",
    ):
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.dtype = dtype
        tdtype = getattr(torch, dtype)
        self.model = model
        self.lr = LEARNING_RATE[model]
        self.update = update

        def tensor(name: str, rotate: bool = False) -> Any:
            value = params[name]
            if rotate:  # anycnn kernels are conv2 kernels; conv2d cross-correlates
                value = np.ascontiguousarray(value[..., ::-1, ::-1])
            return torch.tensor(value, dtype=tdtype, requires_grad=True)

        if model == "dlt":
            self.p = {
                "c1w": tensor("conv1.kernel", True),
                "c1b": tensor("conv1.bias"),
                "c3w": tensor("conv3.kernel", True),
                "c3b": tensor("conv3.bias"),
                "fw": tensor("fc5.weight"),
                "fb": tensor("fc5.bias"),
            }
        else:
            self.p = {
                "c1w": tensor("conv1.kernel", True),
                "c1b": tensor("conv1.bias"),
                "s2beta": tensor("sub2.beta"),
                "s2b": tensor("sub2.bias"),
                "c3w": tensor("conv3.kernel", True),
                "c3b": tensor("conv3.bias"),
                "s4beta": tensor("sub4.beta"),
                "s4b": tensor("sub4.bias"),
                "c5w": tensor("conv5.kernel", True),
                "c5b": tensor("conv5.bias"),
                "f6w": tensor("fc6.weight"),
                "f6b": tensor("fc6.bias"),
                "f7w": tensor("fc7.weight"),
                "f7b": tensor("fc7.bias"),
            }
            self.mask = torch.tensor(table, dtype=tdtype)[:, :, None, None]
        self.params = list(self.p.values())

    def forward(self, x: Any) -> Any:
        F = self.torch.nn.functional
        p = self.p
        if self.model == "dlt":
            h = self.torch.sigmoid(F.conv2d(x, p["c1w"], p["c1b"]))
            h = F.avg_pool2d(h, 2)
            h = self.torch.sigmoid(F.conv2d(h, p["c3w"], p["c3b"]))
            h = F.avg_pool2d(h, 2).flatten(1)
            return self.torch.sigmoid(F.linear(h, p["fw"], p["fb"]))

        def lecun(u: Any) -> Any:
            return 1.7159 * self.torch.tanh(u * (2.0 / 3.0))

        def sum_pool(h: Any, beta: Any, b: Any) -> Any:
            return (F.avg_pool2d(h, 2) * 4.0) * beta[None, :, None, None] + b[None, :, None, None]

        h = lecun(F.conv2d(x, p["c1w"], p["c1b"]))
        h = lecun(sum_pool(h, p["s2beta"], p["s2b"]))
        h = lecun(F.conv2d(h, p["c3w"] * self.mask, p["c3b"]))
        h = lecun(sum_pool(h, p["s4beta"], p["s4b"]))
        h = lecun(F.conv2d(h, p["c5w"], p["c5b"])).flatten(1)
        h = lecun(F.linear(h, p["f6w"], p["f6b"]))
        return F.linear(h, p["f7w"], p["f7b"])

    def loss(self, y: Any, t: Any) -> Any:
        if self.model == "dlt":
            return 0.5 * ((y - t) ** 2).sum() / y.shape[0]
        return self.torch.nn.functional.cross_entropy(y, t)  # t: one-of-10 probabilities

    def to_device(self, x: np.ndarray, t: np.ndarray) -> tuple[Any, Any]:
        return self.torch.from_numpy(x), self.torch.from_numpy(t)

    def step(self, x: Any, t: Any) -> None:
        torch = self.torch
        for q in self.params:
            q.grad = None
        self.loss(self.forward(x), t).backward()
        with torch.no_grad():
            if self.update == "foreach":
                torch._foreach_add_(self.params, [q.grad for q in self.params], alpha=-self.lr)
            else:
                for q in self.params:
                    q.sub_(self.lr * q.grad)

    def infer(self, x: Any) -> None:
        with self.torch.no_grad():
            self.forward(x)

    def snapshot(self) -> Any:
        return [q.detach().clone() for q in self.params]

    def restore(self, saved: Any) -> None:
        with self.torch.no_grad():
            for q, value in zip(self.params, saved, strict=True):
                q.copy_(value)

    def sync(self, value: Any = None) -> None:
        pass


def torch_runner_like(runner: AnycnnRunner, model: str, threads: int, update: str) -> TorchRunner:
    table = None
    if model == "lenet5":
        table = next(layer.table for layer in runner.net.layers if layer.name == "conv3")
    return TorchRunner(model, runner.kernels_host(), table, threads, update, runner.dtype)


# --- FLOPs and the machine's GEMM rate ---------------------------------------------------------
def step_flops(net: Any, inference: bool = False) -> int:
    """Floating-point operations per example of the network's convolutions and fully connected
    layers: 2 per multiply-add of the forward products, and for a training step also of the
    kernel (weight) gradients and of the input gradients of every layer but the first (which
    ``Network.backward`` skips). Only the map pairs in a convolution's selection count (LeNet-5's
    C3: 60 of 96); elementwise work (activations, subsampling, the loss, the update) does not.
    The same count serves both libraries, so it rates the arithmetic a step must do, not what
    either library chooses to compute."""
    total = 0
    for index, layer in enumerate(net.layers):
        table = getattr(layer, "table", None)
        kernel = layer.params.get("kernel")
        weight = layer.params.get("weight")
        if table is not None and kernel is not None:
            taps = math.prod(kernel.shape[2:])
            macs = int(np.sum(table)) * taps * math.prod(layer.output_shape[1:])
        elif weight is not None:
            macs = math.prod(weight.shape)
        else:
            continue
        passes = 1 if inference else (3 if index > 0 else 2)
        total += 2 * macs * passes
    return total


def gemm_rate(dtype: str, size: int, reps: int) -> dict[str, Any]:
    """The machine's GEMM rate: the median GFLOP/s of ``np.matmul`` on ``size``-square matrices
    of ``dtype`` (NumPy's BLAS with its own thread count), ``reps`` timed calls after one
    warm-up; the yardstick the training steps' rates are read against (issue 16)."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size)).astype(dtype)
    b = rng.random((size, size)).astype(dtype)
    c = np.empty((size, size), dtype=dtype)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - start)
    flops = 2 * size**3
    return {
        "what": f"np.matmul {size}x{size} @ {size}x{size} {dtype}",
        "size": size,
        "dtype": dtype,
        "reps": reps,
        "median_s": statistics.median(times),
        "gflop_s": flops / statistics.median(times) / 1e9,
        "best_gflop_s": flops / min(times) / 1e9,
        "load_average_1min": load_average()[:1],
    }


# --- timing -----------------------------------------------------------------------------------
def calibrate(fn: Callable[[], None], seconds: float, warmup: int) -> int:
    """Run ``warmup`` calls, then return how many calls last about ``seconds``."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    fn()
    one = max(time.perf_counter() - start, 1e-6)
    return max(1, min(10_000, round(seconds / one)))


def interleaved(
    candidates: dict[str, Callable[[], None]],
    reps: int,
    seconds: float,
    warmup: int,
    gap: float,
    before_block: dict[str, Callable[[], None]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Median seconds per call of each candidate, timed A, B, A, B, ... in blocks.

    ``before_block[name]()`` runs untimed before each block (it restores the parameters, so
    every block starts from the same weights and thousands of repeated steps on one batch never
    drift into saturated units and denormal arithmetic). ``gap`` seconds of sleep separate two
    blocks: the worker threads of a BLAS or OpenMP runtime spin for a while after their last
    task (OpenBLAS about 0.1 s), and would otherwise steal the cores from the next library.
    """
    before_block = before_block or {}
    counts = {}
    for name, fn in candidates.items():
        counts[name] = calibrate(fn, seconds, warmup)
        time.sleep(gap)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    loads = []
    for _ in range(reps):
        for name, fn in candidates.items():
            count = counts[name]
            if name in before_block:
                before_block[name]()
            time.sleep(gap)
            start = time.perf_counter()
            for _ in range(count):
                fn()
            times[name].append((time.perf_counter() - start) / count)
        loads.append(os.getloadavg()[0])
    return {
        name: {
            "median_s": statistics.median(values),
            "min_s": min(values),
            "max_s": max(values),
            "calls_per_rep": counts[name],
            "reps": len(values),
            "load_average_1min": round(statistics.median(loads), 2),
        }
        for name, values in times.items()
    }


def time_cell(model: str, batch: int, args: argparse.Namespace, inference: bool) -> dict[str, Any]:
    anycnn_run = AnycnnRunner(model, args.backend, seed=args.seed, dtype=args.dtype)
    runners: list[Any] = [anycnn_run]
    if args.torch:
        runners.append(torch_runner_like(anycnn_run, model, args.threads, args.torch_update))
    x, t = random_batch(model, batch, args.seed + batch, args.dtype)
    candidates = {}
    restore = {}
    for runner in runners:
        dx, dt = runner.to_device(x, t)
        saved = runner.snapshot()
        restore[runner.name] = lambda runner=runner, saved=saved: runner.restore(saved)
        if inference:

            def call(runner=runner, dx=dx) -> None:
                runner.infer(dx)
                runner.sync()
        else:

            def call(runner=runner, dx=dx, dt=dt) -> None:
                runner.step(dx, dt)
                runner.sync()

        candidates[runner.name] = call
    timed = interleaved(
        candidates,
        args.reps,
        args.block_seconds,
        args.warmup,
        args.gap,
        None if inference else restore,
    )
    row: dict[str, Any] = {
        "model": model,
        "batch": batch,
        "what": "inference" if inference else "train step",
    }
    for name, entry in timed.items():
        entry["images_per_s"] = batch / entry["median_s"]
        row[name] = entry
    row["torch"] = timed.get("torch")
    row["ratio"] = (
        row["torch"]["median_s"] / row["anycnn"]["median_s"] if row["torch"] is not None else None
    )
    row["load_average_1min"] = row["anycnn"]["load_average_1min"]
    flops = step_flops(anycnn_run.net, inference)
    row["flops_per_image"] = flops
    for entry in timed.values():
        entry["gflop_s"] = flops * entry["images_per_s"] / 1e9
    return row


# --- one DLT epoch on MNIST ---------------------------------------------------------------------
def mnist_train() -> tuple[np.ndarray, np.ndarray]:
    from anycnn import datasets

    data = datasets.load("mnist")
    return data.train_images, data.train_labels


def epoch_loop(
    runner: Any, images: np.ndarray, labels: np.ndarray, batch: int, pad: int, seed: int
) -> float:
    """Wall seconds of one epoch: shuffle, gather and convert each batch, step."""
    order = np.random.default_rng(seed).permutation(images.shape[0])
    start = time.perf_counter()
    for i in range(0, images.shape[0], batch):
        index = order[i : i + batch]
        x, t = runner.to_device(*batch_from_uint8(images[index], labels[index], pad, runner.dtype))
        runner.step(x, t)
    runner.sync()
    return time.perf_counter() - start


def time_epoch(args: argparse.Namespace) -> dict[str, Any]:
    images, labels = mnist_train()
    anycnn_run = AnycnnRunner("dlt", args.backend, seed=args.seed, dtype=args.dtype)
    runners: list[Any] = [anycnn_run]
    if args.torch:
        runners.append(torch_runner_like(anycnn_run, "dlt", args.threads, args.torch_update))
    saved = {}
    for runner in runners:  # warm-up: a few batches
        saved[runner.name] = runner.snapshot()
        epoch_loop(runner, images[:500], labels[:500], 50, 0, args.seed)
    walls: dict[str, list[float]] = {r.name: [] for r in runners}
    loads = []
    for rep in range(args.epoch_reps):
        for runner in runners:
            runner.restore(saved[runner.name])  # every epoch starts from the same weights
            time.sleep(args.gap)
            walls[runner.name].append(epoch_loop(runner, images, labels, 50, 0, args.seed + rep))
        loads.append(os.getloadavg()[0])
    result: dict[str, Any] = {
        "model": "dlt",
        "images": int(images.shape[0]),
        "batch": 50,
        "learning_rate": 1.0,
        "reps": args.epoch_reps,
        "load_average_1min": round(statistics.median(loads), 2),
    }
    for name, values in walls.items():
        result[name] = {"median_s": statistics.median(values), "all_s": values}
    result.setdefault("torch", None)
    result["ratio"] = (
        result["torch"]["median_s"] / result["anycnn"]["median_s"] if result["torch"] else None
    )
    return result


# --- peak memory of a LeNet-5 epoch, one subprocess per library ----------------------------------
def peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def memory_child(library: str, args: argparse.Namespace) -> None:
    """Run in a subprocess: one LeNet-5 epoch at batch 256; print a JSON line."""
    images, labels = mnist_train()
    before_import = current_rss_mib()
    if library == "anycnn":
        runner: Any = AnycnnRunner("lenet5", args.backend, seed=args.seed, dtype=args.dtype)
    else:
        # The same initial parameters, without importing anycnn's network in this process.
        import torch  # noqa: F401  (imported first, as a PyTorch user would)

        from anycnn import models

        net = models.lenet5(backend="numpy", seed=args.seed, dtype=args.dtype)
        params = {k: np.asarray(v) for k, v in net.parameters().items()}
        table = next(layer.table for layer in net.layers if layer.name == "conv3")
        del net
        runner = TorchRunner("lenet5", params, table, args.threads, args.torch_update, args.dtype)
    ready = current_rss_mib()
    limit = args.memory_images or images.shape[0]
    wall = epoch_loop(runner, images[:limit], labels[:limit], 256, 2, args.seed)
    print(
        json.dumps(
            {
                "library": library,
                "peak_rss_mib": peak_rss_mib(),
                "rss_after_data_mib": before_import,
                "rss_before_epoch_mib": ready,
                "epoch_s": wall,
                "images": int(limit),
            }
        )
    )


def time_memory(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "model": "lenet5",
        "batch": 256,
        "load_average_1min": load_average()[:1],
    }
    libraries = ["anycnn"] + (["torch"] if args.torch else [])
    for library in libraries:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--memory-child",
            library,
            "--backend",
            args.backend,
            "--threads",
            str(args.threads),
            "--seed",
            str(args.seed),
            "--dtype",
            args.dtype,
        ]
        if args.memory_images:
            command += ["--memory-images", str(args.memory_images)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            result[library] = {"error": done.stderr.strip().splitlines()[-1:]}
            continue
        result[library] = json.loads(done.stdout.strip().splitlines()[-1])
    result.setdefault("torch", None)
    return result


# --- report -----------------------------------------------------------------------------------
def format_rows(rows: list[dict[str, Any]], gemm: dict[str, Any] | None = None) -> str:
    """The table; with ``gemm`` (:func:`gemm_rate`), each library's GFLOP/s (:func:`step_flops`)
    and anycnn's as a fraction of the GEMM rate."""
    header = (
        f"{'model':<8}{'what':<12}{'batch':>6}{'anycnn img/s':>14}{'torch img/s':>13}"
        f"{'ratio':>8}{'GFLOP/s':>9}{'torch':>7}{'of GEMM':>9}{'load':>7}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        torch = row["torch"]
        fraction = row["anycnn"]["gflop_s"] / gemm["gflop_s"] if gemm else math.nan
        lines.append(
            f"{row['model']:<8}{row['what']:<12}{row['batch']:>6}"
            f"{row['anycnn']['images_per_s']:>14,.0f}"
            f"{torch['images_per_s'] if torch else math.nan:>13,.0f}"
            f"{row['ratio'] if row['ratio'] is not None else math.nan:>8.2f}"
            f"{row['anycnn']['gflop_s']:>9.1f}"
            f"{torch['gflop_s'] if torch else math.nan:>7.1f}"
            f"{fraction:>9.1%}"
            f"{row['load_average_1min']:>7.2f}"
        )
    return "\n".join(lines)


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _tune_process(backend: str) -> None:
    """The process-wide settings ``anycnn train`` makes for this backend (for NumPy, malloc
    keeping freed memory: Note [Fresh pages]), so that the steps are timed as users train."""
    from anycnn import cli
    from anycnn.backend import lookup

    try:
        cli._tune_process(lookup(backend))
    except ValueError:  # an unknown backend: main() says so
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="numpy", help="anycnn backend (default numpy)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="batch sizes 1 and 16, 2 repetitions, no epoch, no memory (tests)",
    )
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
    parser.add_argument("--batch-sizes", default=None, help="comma-separated training batches")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 7)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up calls (default 3)")
    parser.add_argument(
        "--block-seconds",
        type=float,
        default=None,
        help="length of one timed block per library (default 0.25 s)",
    )
    parser.add_argument(
        "--gap-seconds",
        dest="gap",
        type=float,
        default=None,
        help="sleep between two timed blocks (default 0.3 s; see interleaved)",
    )
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    parser.add_argument("--torch-update", choices=("foreach", "loop"), default="foreach")
    parser.add_argument("--no-torch", dest="torch", action="store_false", help="time anycnn alone")
    parser.add_argument("--no-epoch", dest="epoch", action="store_false")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--no-inference", dest="inference", action="store_false")
    parser.add_argument("--epoch-reps", type=int, default=3, help="DLT epochs per library")
    parser.add_argument("--memory-images", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", choices=("anycnn", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="precision of both libraries (default float32; float64 is the precision of the "
        "notes' reference code and of gradient checks)",
    )
    parser.add_argument(
        "--gemm-size",
        type=int,
        default=None,
        help="side of the square np.matmul that measures the machine's GEMM rate "
        "(default 2048; 256 with --quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON path (default bench/results/train-<backend>-<machine>.json; "
        "with --quick, ...-quick.json so a quick run never replaces a full one)",
    )
    args = parser.parse_args(argv)
    args.torch = args.torch and torch_available()

    _tune_process(args.backend)
    if args.memory_child:
        memory_child(args.memory_child, args)
        return 0

    from anycnn.backend import BackendUnavailableError, lookup

    try:
        record = lookup(args.backend).require()
    except (ValueError, BackendUnavailableError) as error:
        print(f"bench/train.py: {error}", file=sys.stderr)
        return 2
    args.backend = record.name
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    if args.batch_sizes:
        batches = parse_ints(args.batch_sizes)
    else:
        batches = [1, 16] if args.quick else list(BATCH_SIZES)
    args.reps = args.reps or (2 if args.quick else 7)
    if not args.quick:
        args.reps = max(args.reps, 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.block_seconds = args.block_seconds or (0.02 if args.quick else 0.25)
    args.gap = args.gap if args.gap is not None else (0.02 if args.quick else 0.3)
    inference_batch = 16 if args.quick else INFERENCE_BATCH
    slug = machine_slug()
    suffix = "" if args.dtype == "float32" else f"-{args.dtype}"
    suffix += "-quick" if args.quick else ""
    out = args.out or RESULTS / f"train-{record.name}-{slug}{suffix}.json"
    gemm_size = args.gemm_size or (256 if args.quick else 2048)
    gemm_reps = 3 if args.quick else 7

    info = machine_info(record.name)
    if args.torch:
        import torch

        torch.set_num_threads(args.threads)
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    print(
        f"anycnn bench/train.py: backend {record.name}, {args.dtype}, "
        f"PyTorch {info.get('torch', 'not installed')} ({args.threads} threads), "
        f"median of {args.reps}, interleaved"
    )
    print(
        f"{info['cpu_model']} ({info['cpu_count']} CPUs, {slug}), NumPy {info['numpy']} "
        f"({info['blas']}), load average {info['load_average_at_start']}"
    )
    if "numba_kernels" in info:
        state = "on" if info["numba_kernels"] else "off (BLAS only)"
        print(f"compiled kernel gradients (Numba {info['numba'] or 'not installed'}): {state}")
    gemm = {"start": gemm_rate(args.dtype, gemm_size, gemm_reps)}
    print(
        f"machine's GEMM rate ({gemm['start']['what']}, NumPy's BLAS threads): "
        f"{gemm['start']['gflop_s']:.0f} GFLOP/s (median of {gemm_reps})"
    )
    print()

    rows = []
    for model in models:
        for batch in batches:
            rows.append(time_cell(model, batch, args, inference=False))
            print(format_rows(rows[-1:], gemm["start"]).splitlines()[-1], flush=True)
    if args.inference:
        for model in models:
            rows.append(time_cell(model, inference_batch, args, inference=True))
            print(format_rows(rows[-1:], gemm["start"]).splitlines()[-1], flush=True)
    # Measured again after the rows; the faster of the two is the yardstick (the smaller
    # fraction: a loaded moment at the start does not flatter the steps).
    gemm["end"] = gemm_rate(args.dtype, gemm_size, gemm_reps)
    yardstick = max((gemm["start"], gemm["end"]), key=lambda g: g["gflop_s"])
    gemm["gflop_s"] = yardstick["gflop_s"]
    for row in rows:
        row["anycnn"]["fraction_of_gemm"] = row["anycnn"]["gflop_s"] / gemm["gflop_s"]
        if row["torch"] is not None:
            row["torch"]["fraction_of_gemm"] = row["torch"]["gflop_s"] / gemm["gflop_s"]
    print()
    print(
        f"GEMM rate {gemm['gflop_s']:.0f} GFLOP/s (the faster of {gemm['start']['gflop_s']:.0f} "
        f"before and {gemm['end']['gflop_s']:.0f} after the rows); GFLOP/s counts the "
        "convolutions' and fully connected layers' multiply-adds (bench/train.py step_flops)"
    )
    print(format_rows(rows, gemm))

    epoch = None
    memory = None
    if not args.quick and args.epoch:
        epoch = time_epoch(args)
        torch_s = epoch["torch"]["median_s"] if epoch["torch"] else math.nan
        print(
            f"\nDLT epoch on MNIST (60000 images, batch 50, lr 1): anycnn "
            f"{epoch['anycnn']['median_s']:.2f} s, torch {torch_s:.2f} s "
            f"(median of {epoch['reps']}, load {epoch['load_average_1min']})"
        )
    if not args.quick and args.memory:
        memory = time_memory(args)
        for library in ("anycnn", "torch"):
            entry = memory.get(library)
            if entry and "peak_rss_mib" in entry:
                print(
                    f"LeNet-5 epoch at batch 256, {library}: peak RSS "
                    f"{entry['peak_rss_mib']:.0f} MiB (before the epoch "
                    f"{entry['rss_before_epoch_mib']:.0f} MiB; data loaded "
                    f"{entry['rss_after_data_mib']:.0f} MiB), {entry['epoch_s']:.1f} s"
                )
            elif entry:
                print(f"LeNet-5 epoch at batch 256, {library}: failed: {entry['error']}")

    report = {
        "benchmark": "bench/train.py",
        "command": " ".join(
            ["python", "bench/train.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "backend": record.name,
        "quick": args.quick,
        "dtype": args.dtype,
        "gemm": gemm,
        "reps": args.reps,
        "block_seconds": args.block_seconds,
        "torch_update": args.torch_update,
        "machine": info,
        "rows": rows,
        "epoch": epoch,
        "memory": memory,
        "load_average_at_end": load_average(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
