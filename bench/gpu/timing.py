"""Speed of anycnn's CuPy backend on a GPU, against PyTorch CUDA (the timing part of the GPU
proof; its correctness part is tests/test_cuda_proof.py, the ``cuda``-marked tests).

Meant to run on a lent GPU through bench/gpu/run_gpu_proof.sh (which also runs the test suite
and records nvidia-smi); every section runs in its own try/except, prints what failed and goes
on, and everything lands in ``OUT/timing.json``.

Sections
--------
environment
    Versions, the device, the registry's verdict on CuPy.
twin
    The PyTorch model of the timing section against anycnn on the CPU in float64 (outputs and
    gradients): the peer computes the same function.
timing
    Training steps (forward, loss, backward, SGD) of lenet5 and dlt at batch 256, float32:
    anycnn-cupy eager (cuBLAS), anycnn-cupy eager with the elementwise GEMM, anycnn-cupy
    replaying a CUDA graph (bench/gpu/cuda_graph.py), PyTorch CUDA eager, PyTorch CUDA graph;
    same architecture and initial weights. Interleaved (A, B, C, ... repeated ``--reps`` times,
    blocks of about ``--block-seconds``, the device synchronised around each block); medians per
    step and the ratio to PyTorch eager.

Usage::

    python bench/gpu/timing.py --out DIR [--batch 256] [--reps 9] [--sections environment,timing]
    python bench/gpu/timing.py --cpu-selftest   # no GPU: checks the PyTorch model on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for path in (str(ROOT / "backends"), str(ROOT), str(Path(__file__).resolve().parent)):
    if path not in sys.path:
        sys.path.insert(0, path)

MODELS = ("lenet5", "dlt")
LR = 0.01  # small: timing only needs steps that stay finite
SECTIONS = ("environment", "twin", "timing")


# --- bookkeeping ------------------------------------------------------------------------------
class Report:
    def __init__(self, out: Path | None):
        self.out = out
        self.data: dict[str, Any] = {"errors": []}

    @contextlib.contextmanager
    def section(self, name: str):
        print(f"\n=== {name}", flush=True)
        start = time.perf_counter()
        try:
            yield self.data.setdefault(name, {})
        except Exception as error:  # record and go on: one broken section must not hide others
            text = traceback.format_exc()
            print(f"FAILED section {name}: {type(error).__name__}: {error}\n{text}", flush=True)
            self.data["errors"].append(
                {"section": name, "error": f"{type(error).__name__}: {error}", "traceback": text}
            )
        finally:
            self.data.setdefault(name, {})["seconds"] = round(time.perf_counter() - start, 2)
            self.save()

    def save(self) -> None:
        if self.out is not None:
            (self.out / "timing.json").write_text(json.dumps(self.data, indent=1, default=str))


def relative(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.linalg.norm(b))
    return float(np.linalg.norm(np.asarray(a, np.float64) - b)) / (scale if scale else 1.0)


def batch(net: Any, n: int, seed: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, *net.input_shape)).astype(dtype)  # MNIST-like values in [0, 1)
    t = np.zeros((n, *net.output_shape), dtype=dtype)
    t[np.arange(n), rng.integers(0, net.output_shape[0], n)] = 1.0
    if net.loss.name == "squared_error" and net.name == "lenet5":
        t = 2.0 * t - 1.0  # scaled-tanh outputs train to +-1
    return x, t


def host(net: Any, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(net.backend.to_host(v), dtype=np.float64) for k, v in arrays.items()}


def sgd(net: Any, lr: float) -> None:
    """The in-place update of every parameter with the backend's fused kernel (what
    anycnn.optim.SGD calls on CuPy: Note [Fused updates] in anycnn.ops)."""
    update = net.backend.ops.updates["sgd_update_"]
    grads = net.gradients()
    for name, p in net.parameters().items():
        update(p, grads[name], lr)


# --- the PyTorch twin of an anycnn network ----------------------------------------------------
class TorchNet:
    """The network of an anycnn ``Network`` in PyTorch: same layers, same initial weights.

    Convolutions become ``conv2d`` with every kernel rotated by 180 degrees (anycnn follows
    MATLAB's conv2, PyTorch cross-correlates), an input-map table a fixed mask on the weight,
    sum/mean subsampling ``avg_pool2d`` (times n^2 for the sum) with the per-map beta and bias,
    decimation a strided slice; the activations and losses are anycnn's formulas.
    """

    def __init__(self, net: Any, device: str, dtype: Any):
        import torch

        from anycnn.layers import Identity, ReLU, Sigmoid, Tanh

        self.torch, self.net = torch, net
        values = host(net, net.parameters())

        def tensor(value: np.ndarray, grad: bool = True) -> Any:
            return torch.tensor(
                np.ascontiguousarray(value), dtype=dtype, device=device, requires_grad=grad
            )

        def activation(act: Any) -> Any:
            kind = type(act)
            if kind is Identity:
                return lambda u: u
            if kind is Sigmoid:
                return lambda u: torch.sigmoid(u * act.gain)
            if issubclass(kind, Tanh):
                return lambda u: act.a * torch.tanh(u * act.b)
            if kind is ReLU:
                return torch.relu
            raise NotImplementedError(f"TorchNet: activation {act!r}")

        self.steps: list[tuple[Any, ...]] = []
        self.params: list[Any] = []
        self.names: list[str] = []
        for layer in net.layers:
            kind = type(layer).__name__
            if kind == "Convolution":
                w = tensor(values[f"{layer.name}.kernel"][:, :, ::-1, ::-1])
                b = tensor(values[f"{layer.name}.bias"])
                mask = (
                    None
                    if layer.table.all()
                    else tensor(layer.table[:, :, None, None].astype(np.float64), grad=False)
                )
                self.steps.append(("conv", w, b, mask, activation(layer.activation)))
                self._keep(layer.name, kernel=w, bias=b)
            elif kind == "Subsampling":
                beta = bias = None
                if layer.trainable:
                    beta, bias = (
                        tensor(values[f"{layer.name}.beta"]),
                        tensor(values[f"{layer.name}.bias"]),
                    )
                    self._keep(layer.name, beta=beta, bias=bias)
                self.steps.append(
                    ("sub", layer.n, layer.mode, beta, bias, activation(layer.activation))
                )
            elif kind == "Flatten":
                self.steps.append(("flatten",))
            elif kind == "FullyConnected":
                w, b = tensor(values[f"{layer.name}.weight"]), tensor(values[f"{layer.name}.bias"])
                self.steps.append(("fc", w, b, activation(layer.activation)))
                self._keep(layer.name, weight=w, bias=b)
            else:
                raise NotImplementedError(f"TorchNet: layer {kind}")

    def _keep(self, layer: str, **tensors: Any) -> None:
        for role, t in tensors.items():
            self.params.append(t)
            self.names.append(f"{layer}.{role}")

    def forward(self, x: Any) -> Any:
        F = self.torch.nn.functional
        for step in self.steps:
            if step[0] == "conv":
                _, w, b, mask, f = step
                x = f(F.conv2d(x, w if mask is None else w * mask, b))
            elif step[0] == "sub":
                _, n, mode, beta, bias, f = step
                if mode == "decimate":
                    h, w = x.shape[2] - x.shape[2] % n, x.shape[3] - x.shape[3] % n
                    d = x[:, :, :h:n, :w:n]
                else:
                    d = F.avg_pool2d(x, n) * (n * n if mode == "sum" else 1)
                if beta is not None:
                    d = d * beta[None, :, None, None] + bias[None, :, None, None]
                x = f(d)
            elif step[0] == "flatten":
                x = x.reshape(x.shape[0], -1)
            else:
                _, w, b, f = step
                x = f(F.linear(x, w, b))
        return x

    def loss(self, y: Any, t: Any) -> Any:
        if self.net.loss.name == "squared_error":
            return 0.5 * ((y - t) ** 2).sum() / y.shape[0]
        return -(t * self.torch.nn.functional.log_softmax(y, dim=1)).sum() / y.shape[0]

    def gradients(self, x: Any, t: Any) -> dict[str, np.ndarray]:
        for p in self.params:
            p.grad = None
        self.loss(self.forward(x), t).backward()
        out = {}
        for name, p in zip(self.names, self.params, strict=True):
            g = p.grad.detach().cpu().double().numpy()
            # conv2d weights are the kernels rotated by 180 degrees: rotate their gradient back
            out[name] = g[:, :, ::-1, ::-1] if name.endswith(".kernel") else g
        return out


def torch_matches_anycnn(model: str, device: str) -> dict[str, Any]:
    """The PyTorch twin against anycnn (NumPy backend) in float64: outputs and gradients."""
    import torch

    from anycnn import models

    net = models.build(model, backend="numpy", dtype="float64")
    twin = TorchNet(net, device, torch.float64)
    x, t = batch(net, 8, 1, "float64")
    xt, tt = torch.tensor(x, device=device), torch.tensor(t, device=device)
    y = twin.forward(xt).detach().cpu().numpy()
    out = {"outputs": relative(y, np.asarray(net.forward(x)))}
    net.compute_gradients(x, t)
    grads = twin.gradients(xt, tt)
    want = host(net, net.gradients())
    out["gradients"] = max(relative(grads[n], want[n]) for n in want)
    out["ok"] = out["outputs"] < 1e-12 and out["gradients"] < 1e-10
    return out


# --- sections ---------------------------------------------------------------------------------
def environment(report: dict[str, Any]) -> None:
    import cupy

    report["python"] = sys.version.split()[0]
    report["platform"] = platform.platform()
    report["numpy"] = np.__version__
    report["cupy"] = cupy.__version__
    report["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    report["cuda_driver"] = cupy.cuda.runtime.driverGetVersion()
    properties = cupy.cuda.runtime.getDeviceProperties(0)
    report["device"] = (
        properties["name"].decode() if isinstance(properties["name"], bytes) else properties["name"]
    )
    report["multiprocessors"] = properties.get("multiProcessorCount")
    with contextlib.suppress(Exception):
        import torch

        report["torch"] = torch.__version__
        report["torch_cuda"] = torch.version.cuda
    with contextlib.suppress(Exception):
        report["git"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or None
        )
    import anycnn.backend.registry as registry

    record = registry.lookup("cupy")
    report["cupy_backend"] = "available" if record.available else record.unavailable_reason
    for key, value in report.items():
        print(f"  {key}: {value}")


def twin(report: dict[str, Any]) -> None:
    for model in MODELS:
        with contextlib.suppress(ImportError):
            report[model] = torch_matches_anycnn(model, "cpu")
            print(f"  {model} PyTorch twin vs anycnn (CPU float64): {report[model]}")


def interleaved(candidates: dict[str, Any], sync: Any, reps: int, seconds: float) -> dict[str, Any]:
    steps = {}
    for name, fn in candidates.items():
        for _ in range(3):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(5):
            fn()
        sync()
        per_step = (time.perf_counter() - start) / 5
        steps[name] = int(min(5000, max(5, seconds / max(per_step, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            fn, k = candidates[name], steps[name]
            sync()
            start = time.perf_counter()
            for _ in range(k):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / k * 1e3)
    return {
        name: {
            "median_ms": statistics.median(v),
            "min_ms": min(v),
            "max_ms": max(v),
            "steps_per_block": steps[name],
            "samples_ms": v,
        }
        for name, v in samples.items()
    }


def timing(report: dict[str, Any], batch_size: int, reps: int, seconds: float) -> None:
    import cupy
    from anycnn_cupy import _kernels
    from cuda_graph import capture_step

    from anycnn import models

    try:
        import torch

        torch_cuda = torch.cuda.is_available()
    except ImportError:
        torch, torch_cuda = None, False
    report["batch"], report["reps"], report["block_seconds"] = batch_size, reps, seconds
    report["torch"] = torch.__version__ if torch is not None else None

    def sync() -> None:
        cupy.cuda.Device().synchronize()
        if torch_cuda:
            torch.cuda.synchronize()

    for model in MODELS:
        candidates: dict[str, Any] = {}
        reference = models.build(model, backend="numpy", dtype="float32")
        x, t = batch(reference, batch_size, 0, "float32")

        def anycnn_step(net: Any, xd: Any, td: Any) -> Any:
            def step(*_: Any) -> None:
                net.compute_gradients(xd, td)
                sgd(net, LR)

            return step

        net = models.build(model, backend="cupy", dtype="float32")
        xd, td = net.backend.asarray(x), net.backend.asarray(t)
        candidates["anycnn-cupy eager"] = anycnn_step(net, xd, td)

        net_k = models.build(model, backend="cupy", dtype="float32")
        step_k = anycnn_step(net_k, xd, td)

        def kernel_gemm_step(step: Any = step_k) -> None:
            with _kernels.gemm_mode("kernel"):
                step()

        candidates["anycnn-cupy eager, elementwise GEMM"] = kernel_gemm_step
        try:
            net_g = models.build(model, backend="cupy", dtype="float32")
            xg, tg = cupy.array(xd), cupy.array(td)
            replay = capture_step(anycnn_step(net_g, xg, tg), xg, tg)
            candidates["anycnn-cupy CUDA graph"] = replay.replay
        except Exception as error:
            report.setdefault("errors", []).append(f"{model} anycnn graph: {error!r}")
            print(f"  {model}: anycnn graph capture FAILED: {error!r}")
        if torch_cuda:
            twin = TorchNet(reference, "cuda", torch.float32)
            sx, st = torch.tensor(x, device="cuda"), torch.tensor(t, device="cuda")
            opt = torch.optim.SGD(twin.params, lr=LR)

            def torch_step(twin: Any = twin, opt: Any = opt, sx: Any = sx, st: Any = st) -> None:
                opt.zero_grad(set_to_none=True)
                twin.loss(twin.forward(sx), st).backward()
                opt.step()

            candidates["torch eager"] = torch_step
            try:
                twin_g = TorchNet(reference, "cuda", torch.float32)
                opt_g = torch.optim.SGD(twin_g.params, lr=LR)
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        opt_g.zero_grad(set_to_none=True)
                        twin_g.loss(twin_g.forward(sx), st).backward()
                        opt_g.step()
                torch.cuda.current_stream().wait_stream(side)
                graph_t = torch.cuda.CUDAGraph()
                opt_g.zero_grad(set_to_none=True)
                with torch.cuda.graph(graph_t):
                    twin_g.loss(twin_g.forward(sx), st).backward()
                    opt_g.step()
                candidates["torch CUDA graph"] = graph_t.replay
            except Exception as error:
                report.setdefault("errors", []).append(f"{model} torch graph: {error!r}")
                print(f"  {model}: torch graph capture FAILED: {error!r}")
        results = interleaved(candidates, sync, reps, seconds)
        base = results.get("torch eager", {}).get("median_ms")
        for r in results.values():
            r["ratio_to_torch_eager"] = r["median_ms"] / base if base else None
        report[model] = results


def summary(data: dict[str, Any]) -> str:
    lines = ["", "=== summary"]
    env = data.get("environment", {})
    lines.append(f"device: {env.get('device')}, CuPy {env.get('cupy')}, torch {env.get('torch')}")
    timing_data = data.get("timing", {})
    for model in MODELS:
        results = timing_data.get(model)
        if not isinstance(results, dict):
            continue
        lines.append(
            f"timing {model}, batch {timing_data.get('batch')} (median ms/step, "
            "ratio to torch eager):"
        )
        for name, r in results.items():
            ratio = r.get("ratio_to_torch_eager")
            lines.append(
                f"  {name:<38} {r['median_ms']:8.3f} ms" + (f"   x{ratio:.2f}" if ratio else "")
            )
    if data.get("errors"):
        lines.append(f"errors in sections: {[e['section'] for e in data['errors']]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for timing.json")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--block-seconds", type=float, default=0.25)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument(
        "--cpu-selftest",
        action="store_true",
        help="no GPU: check the PyTorch twin against anycnn on the CPU and exit",
    )
    args = parser.parse_args(argv)
    if args.cpu_selftest:
        results = {m: torch_matches_anycnn(m, "cpu") for m in MODELS}
        print(json.dumps(results, indent=1))
        return 0 if all(r["ok"] for r in results.values()) else 1
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    wanted = set(args.sections.split(","))
    runs = {
        "environment": lambda r: environment(r),
        "twin": lambda r: twin(r),
        "timing": lambda r: timing(r, args.batch, args.reps, args.block_seconds),
    }
    for name in SECTIONS:
        if name in wanted:
            with report.section(name) as entry:
                runs[name](entry)
    text = summary(report.data)
    print(text)
    if out is not None:
        (out / "timing-summary.txt").write_text(text + "\n")
    return 1 if report.data["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
