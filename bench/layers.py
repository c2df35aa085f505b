"""Where a training step's time goes: each layer's forward and backward, timed inside the step.

Usage::

    python bench/layers.py dlt 256              # DLT at batch 256, 25 steps after 5 warm-ups
    python bench/layers.py lenet5 64 --steps 40
    python bench/layers.py dlt 2 --steps 2 --warmup 1 --json   # tiny run (tests)

A step is what ``bench/train.py`` times (``Network.compute_gradients(x, t, check=False)`` and the
SGD update ``p -= lr * g``), on random float32 images; every layer's ``forward`` and
``backward`` is wrapped in a ``time.perf_counter`` pair, and the median over the steps after the
warm-up is printed per layer, with the median of the whole step. The wrappers cost about a
microsecond per call, which matters at batch 1 only. No peer is timed: this is a profile, read
it next to ``bench/train.py``'s ratios. It never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

import numpy as np

INPUT_SIZE = {"dlt": 28, "lenet5": 32}


def profile(model: str, batch: int, steps: int, warmup: int, backend: str) -> dict[str, Any]:
    from anycnn import models

    net = models.build(model, backend=backend, seed=0)
    rng = np.random.default_rng(0)
    size = INPUT_SIZE[model]
    x = net.backend.asarray(rng.random((batch, 1, size, size), dtype=np.float32))
    labels = rng.integers(0, 10, batch)
    t = net.backend.asarray(np.eye(10, dtype=np.float32)[labels])
    times: dict[str, list[float]] = {}
    for layer in net.layers:
        for method in ("forward", "backward"):
            function = getattr(layer, method)
            key = f"{layer.name}.{method}"
            times[key] = []

            def timed(*args: Any, _function: Any = function, _key: str = key, **kwargs: Any) -> Any:
                start = time.perf_counter()
                result = _function(*args, **kwargs)
                times[_key].append(time.perf_counter() - start)
                return result

            setattr(layer, method, timed)
    slots = [(layer.params, layer.grads, role) for layer in net.layers for role in layer.params]
    step_times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        net.compute_gradients(x, t, check=False)
        for params, grads, role in slots:
            params[role] -= 0.01 * grads[role]
        step_times.append(time.perf_counter() - start)
    order = [f"{layer.name}.forward" for layer in net.layers]
    order += [f"{layer.name}.backward" for layer in reversed(net.layers)]
    return {
        "model": model,
        "batch": batch,
        "backend": net.backend.name,
        "steps": steps,
        "step_ms": statistics.median(step_times[warmup:]) * 1e3,
        "layers_ms": {key: statistics.median(times[key][warmup:]) * 1e3 for key in order},
    }


def _tune_process(backend: str) -> None:
    """The process-wide settings ``anycnn train`` (and bench/train.py) make for the backend: for
    NumPy, malloc keeping freed memory (Note [Fresh pages]). Without them a profile at batch 256
    times the kernel's page faults: DLT's C1 forward took 1.8 ms there against 0.8 ms in
    bench/train.py's steps."""
    from anycnn import cli
    from anycnn.backend import lookup

    try:
        cli._tune_process(lookup(backend))
    except ValueError:  # an unknown backend: profile() says so
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=sorted(INPUT_SIZE))
    parser.add_argument("batch", type=int)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    _tune_process(args.backend)
    result = profile(args.model, args.batch, args.steps, args.warmup, args.backend)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{result['model']} at batch {result['batch']} on {result['backend']}: "
        f"{result['step_ms']:.3f} ms a step (median of {result['steps']})"
    )
    for key, ms in result["layers_ms"].items():
        print(f"  {key:<24} {ms:8.3f} ms")
    print(f"  {'sum of the layers':<24} {sum(result['layers_ms'].values()):8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
