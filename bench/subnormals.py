"""Training steps of a saturated logistic network: anycnn (subnormals flushed, its training
default) against the same network unsaturated and against PyTorch's default, side by side.

Usage::

    python bench/subnormals.py                  # 128x128 inputs, maps (6, 12), batch 32
    python bench/subnormals.py --quick          # tiny run (tests/test_subnormals.py)

The network is DeepLearnToolbox's shape on 128x128 inputs: 6 maps of 5x5 logistic
convolutions, 2x2 mean subsampling, 12 maps of 5x5, 2x2 mean, a fully connected logistic layer
of 10 units, squared error, float32, plain SGD at the reference code's learning rate of 1.0.
*Saturated* means the second convolution's units sit at ``u ~ -85`` (its biases set to -85):
``y = f(u) ~ 1e-37``, a normal float, but ``f'(u) = y (1 - y)`` times anything below 0.01 is
subnormal, so every sensitivity below the fully connected layer, the kernel gradients and most
of the fully connected layer's weight gradient are subnormal floats (the counts are printed).
Training at rate 1.0 walks into such states (issue 23: one step went from 0.067 s to 0.95 s);
setting the bias makes the state reproducible. *Unsaturated* is the same network as initialised.

Timed, interleaved in blocks (``bench/train.py``'s :func:`interleaved`, medians over ``--reps``),
one step being forward, loss, backward and ``p -= lr g``, the parameters restored before each
block: anycnn saturated and unsaturated inside :func:`anycnn.subnormals.flushing` (what
``anycnn.train`` does by default, Note [Subnormals]), PyTorch saturated and unsaturated with its
defaults (no ``torch.set_flush_denormal``), and with ``--all`` anycnn saturated without flushing
(slow: seconds per step). Targets (issue 23): anycnn saturated at >= 0.8x its unsaturated speed
and >= 3x PyTorch's saturated speed. The benchmark prints and writes JSON; it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _machine import machine_info, machine_slug  # bench/ is sys.path[0] when run as a script
from train import interleaved

import anycnn
from anycnn import Convolution, Flatten, FullyConnected, Network, Subsampling, subnormals

RESULTS = Path(__file__).resolve().parent / "results"
SATURATING_BIAS = -85.0


def network(size: int, seed: int = 0) -> Network:
    return Network(
        [
            Convolution(6, 5, activation="sigmoid"),
            Subsampling(2, "mean", trainable=False),
            Convolution(12, 5, activation="sigmoid"),
            Subsampling(2, "mean", trainable=False),
            Flatten(),
            FullyConnected(10, activation="sigmoid"),
        ],
        input_shape=(1, size, size),
        loss="squared_error",
        dtype="float32",
        backend="numpy",
        seed=seed,
    )


def subnormal_count(a: Any) -> int:
    a = np.abs(np.asarray(a))
    return int(((a > 0) & (a < np.finfo(a.dtype).tiny)).sum())


class AnycnnSteps:
    def __init__(self, net: Network, x: np.ndarray, t: np.ndarray, lr: float, flush: bool):
        self.net, self.lr, self.flush = net, lr, flush
        self.x = net.backend.asarray(x, dtype="float32")
        self.t = net.backend.asarray(t, dtype="float32")
        self.saved = {k: np.array(v, copy=True) for k, v in net.parameters().items()}

    def restore(self) -> None:
        for name, value in self.saved.items():
            self.net.set_parameter(name, value.copy())

    def step(self) -> None:
        context = subnormals.flushing() if self.flush else contextlib.nullcontext()
        with context:
            self.net.compute_gradients(self.x, self.t, check=False)
            for layer in self.net.layers:
                for role, p in layer.params.items():
                    p -= self.lr * layer.grads[role]

    def counts(self) -> dict[str, int]:
        """Subnormal entries of each gradient after one step from the saved parameters."""
        self.restore()
        self.step()
        counts = {k: subnormal_count(v) for k, v in self.net.gradients().items()}
        self.restore()
        return counts


class TorchSteps:
    """The same network in PyTorch (conv2d of the rot180 kernels, avg_pool2d), its defaults."""

    def __init__(self, steps: AnycnnSteps, threads: int):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.lr = steps.lr
        self.saved = {k: torch.tensor(v) for k, v in steps.saved.items()}
        for name in self.saved:
            if name.endswith(".kernel"):
                self.saved[name] = torch.flip(self.saved[name], (2, 3))
        self.x = torch.tensor(np.asarray(steps.x))
        self.t = torch.tensor(np.asarray(steps.t))
        self.restore()

    def restore(self) -> None:
        self.p = {k: v.clone().requires_grad_(True) for k, v in self.saved.items()}

    def step(self) -> None:
        torch, p = self.torch, self.p
        functional = torch.nn.functional
        h = torch.sigmoid(functional.conv2d(self.x, p["conv1.kernel"], p["conv1.bias"]))
        h = functional.avg_pool2d(h, 2)
        h = torch.sigmoid(functional.conv2d(h, p["conv3.kernel"], p["conv3.bias"]))
        h = functional.avg_pool2d(h, 2).flatten(1)
        y = torch.sigmoid(functional.linear(h, p["fc5.weight"], p["fc5.bias"]))
        loss = 0.5 * ((y - self.t) ** 2).sum() / y.shape[0]
        params = list(p.values())
        for q in params:
            q.grad = None
        loss.backward()
        with torch.no_grad():
            torch._foreach_add_(params, [q.grad for q in params], alpha=-self.lr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--block-seconds", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="PyTorch's (anycnn's count)")
    parser.add_argument("--all", action="store_true", help="also anycnn saturated, not flushed")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.reps, args.block_seconds = 32, 4, 1, 0.01
    anycnn.set_backend("numpy")
    from anycnn_numpy import get_num_threads

    threads = args.threads or get_num_threads()
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 1, args.size, args.size)).astype(np.float32)
    t = np.eye(10, dtype=np.float32)[rng.integers(0, 10, args.batch)]

    unsaturated = network(args.size)
    saturated = network(args.size)
    saturated.set_parameter(
        "conv3.bias", saturated.backend.asarray(np.full(12, SATURATING_BIAS), dtype="float32")
    )
    runners = {
        "anycnn saturated": AnycnnSteps(saturated, x, t, args.lr, flush=True),
        "anycnn unsaturated": AnycnnSteps(unsaturated, x, t, args.lr, flush=True),
    }
    if args.all:
        runners["anycnn saturated, not flushed"] = AnycnnSteps(saturated, x, t, args.lr, False)
    counts = {
        "flushed": runners["anycnn saturated"].counts(),
        "not flushed": AnycnnSteps(saturated, x, t, args.lr, flush=False).counts(),
    }
    if not args.no_torch:
        runners["torch saturated"] = TorchSteps(runners["anycnn saturated"], threads)
        runners["torch unsaturated"] = TorchSteps(runners["anycnn unsaturated"], threads)
    timings = interleaved(
        {name: r.step for name, r in runners.items()},
        reps=args.reps,
        seconds=args.block_seconds,
        warmup=1,
        gap=0.1,
        before_block={name: r.restore for name, r in runners.items()},
    )
    median = {name: cell["median_s"] for name, cell in timings.items()}
    ratios = {
        "saturated vs unsaturated speed (target >= 0.8)": median["anycnn unsaturated"]
        / median["anycnn saturated"]
    }
    if "torch saturated" in median:
        ratios["vs PyTorch saturated (target >= 3)"] = (
            median["torch saturated"] / median["anycnn saturated"]
        )
        ratios["PyTorch saturated vs unsaturated speed"] = (
            median["torch unsaturated"] / median["torch saturated"]
        )
    print(f"subnormal gradient entries after one saturated step: {counts}")
    for name, seconds in median.items():
        print(f"{name:32s} {seconds * 1e3:10.1f} ms/step")
    for name, value in ratios.items():
        print(f"{name:48s} {value:6.2f}")
    result = {
        "machine": machine_info("numpy"),
        "settings": {
            "size": args.size,
            "batch": args.batch,
            "lr": args.lr,
            "reps": args.reps,
            "saturating_bias": SATURATING_BIAS,
            "torch_threads": threads,
            "argv": sys.argv[1:] if argv is None else argv,
        },
        "subnormal_gradient_entries": counts,
        "timings": timings,
        "ratios": ratios,
    }
    out = args.out or RESULTS / f"subnormals-numpy-{machine_slug()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
