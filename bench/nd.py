"""Time a 1-D and a 3-D convolution stage, forward + backward, against PyTorch (float32, CPU).

Usage::

    python bench/nd.py                        # every row, writes bench/results/nd-numpy.json
    python bench/nd.py --quick                # small rows, 3 repetitions (a smoke test)
    python bench/nd.py --dims 1 --reps 15

A *stage* is the notes' pair of layers, a convolution ``x_j = f(sum_i x_i * k_ij + b_j)``
(section 3.1, tanh, all input maps) and a trainable 2x mean subsampling ``f(beta down(x) + b)``
(section 3.2, identity f), then a squared error against a fixed target (eq. 1, averaged over
the batch). One step is the forward pass and back-propagation to every parameter (not to the
input, which needs no gradient): ``Network.compute_gradients`` in anycnn, and in PyTorch
``conv1d``/``conv3d`` + ``tanh`` + ``avg_pool1d``/``avg_pool3d`` times beta plus b, the same
loss, ``backward()``, the same weights (anycnn's kernels converted with
``to_cross_correlation``). The two are checked to agree (loss and kernel gradient, to float32
rounding) before timing.

anycnn and PyTorch run interleaved in one process (A, B, A, B, ...) after a warm-up, each with
the same number of threads (``--threads``, default: anycnn's); the median of ``--reps`` steps
is reported with the ratio PyTorch / anycnn (above 1: anycnn is faster). The figures depend on
the load of the machine: the JSON records the load average before and after. It never asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _machine import machine_info  # bench/ is sys.path[0] when run as a script

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: (spatial sizes, kernel size, C_in, C_out, batch)
ROWS_1D = [
    ((150,), 3, 1, 8, 64),
    ((427,), 7, 8, 16, 32),
    ((1024,), 15, 16, 32, 16),
    ((4096,), 31, 16, 64, 8),
    ((16384,), 31, 32, 64, 4),
]
ROWS_3D = [
    ((16, 16, 16), 3, 1, 8, 16),
    ((32, 32, 32), 3, 8, 16, 4),
    ((32, 32, 32), 5, 4, 8, 4),
    ((64, 64, 64), 3, 1, 8, 2),
    ((64, 64, 64), 5, 8, 8, 1),
]
QUICK_1D = [((150,), 3, 1, 8, 8), ((427,), 7, 4, 8, 4)]
QUICK_3D = [((8, 8, 8), 3, 1, 4, 2), ((12, 12, 12), 5, 2, 4, 1)]


def _stage(sizes, k, c_in, c_out):
    from anycnn import Convolution, Network, Subsampling

    return Network(
        [
            Convolution(c_out, k, activation="tanh"),
            Subsampling(2, "mean", remainder="drop"),
        ],
        (c_in, *sizes),
        loss="squared_error",
        dtype="float32",
        seed=0,
    )


def _torch_step(torch, net, x, t):
    """The stage in PyTorch with the network's weights: returns a function running one step."""
    from anycnn import to_cross_correlation

    tf = torch.nn.functional
    d = x.dim() - 2
    conv = tf.conv1d if d == 1 else tf.conv3d
    pool = tf.avg_pool1d if d == 1 else tf.avg_pool3d
    params = net.parameters()
    weight = torch.tensor(to_cross_correlation(params["conv1.kernel"], dims=d).copy())
    leaves = {
        "kernel": weight.requires_grad_(),
        "bias": torch.tensor(params["conv1.bias"]).requires_grad_(),
        "beta": torch.tensor(params["sub2.beta"]).requires_grad_(),
        "sub_bias": torch.tensor(params["sub2.bias"]).requires_grad_(),
    }
    per_map = (slice(None),) + (None,) * d

    def step():
        for leaf in leaves.values():
            leaf.grad = None
        h = torch.tanh(conv(x, leaves["kernel"], leaves["bias"]))
        y = pool(h, 2) * leaves["beta"][per_map] + leaves["sub_bias"][per_map]
        loss = 0.5 * ((y - t) ** 2).sum() / x.shape[0]
        loss.backward()
        return loss, leaves

    return step


def _time_pair(a, b, reps):
    ta, tb = [], []
    for _ in range(2):  # warm-up
        a()
        b()
    for _ in range(reps):
        s = time.perf_counter()
        a()
        ta.append(time.perf_counter() - s)
        s = time.perf_counter()
        b()
        tb.append(time.perf_counter() - s)
    return statistics.median(ta), statistics.median(tb)


def run_row(torch, sizes, k, c_in, c_out, batch, reps, rng):
    from anycnn import to_cross_correlation

    net = _stage(sizes, k, c_in, c_out)
    be = net.backend
    x_host = rng.standard_normal((batch, c_in, *sizes)).astype(np.float32)
    t_host = rng.uniform(-0.5, 0.5, (batch, *net.output_shape)).astype(np.float32)
    x, t = be.asarray(x_host, dtype="float32"), be.asarray(t_host, dtype="float32")
    tx, tt = torch.tensor(x_host), torch.tensor(t_host)
    torch_step = _torch_step(torch, net, tx, tt)

    def anycnn_step():
        return net.compute_gradients(x, t, check=False)

    # agreement first: the loss and the kernel gradient (float32 rounding)
    loss = float(anycnn_step())
    t_loss, leaves = torch_step()
    grad = be.to_host(net.gradients()["conv1.kernel"])
    t_grad = to_cross_correlation(leaves["kernel"].grad.numpy(), dims=len(sizes))
    scale = float(np.abs(t_grad).max()) or 1.0
    agree = bool(
        abs(loss - float(t_loss.detach())) <= 1e-4 * max(abs(loss), 1e-3)
        and np.abs(grad - t_grad).max() <= 1e-3 * scale
    )
    ours, theirs = _time_pair(anycnn_step, torch_step, reps)
    return {
        "sizes": list(sizes),
        "kernel": k,
        "maps": [c_in, c_out],
        "batch": batch,
        "anycnn_ms": ours * 1e3,
        "torch_ms": theirs * 1e3,
        "speedup": theirs / ours,
        "agree": agree,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 3], choices=[1, 3])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    import anycnn

    anycnn.set_backend("numpy")
    import anycnn_numpy

    threads = args.threads or anycnn_numpy.get_num_threads()
    anycnn_numpy.set_num_threads(threads)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    rows = []
    for d in args.dims:
        table = (
            (QUICK_1D if d == 1 else QUICK_3D) if args.quick else (ROWS_1D if d == 1 else ROWS_3D)
        )
        reps = 3 if args.quick else args.reps
        for sizes, k, c_in, c_out, batch in table:
            row = run_row(torch, sizes, k, c_in, c_out, batch, reps, rng)
            row["dims"] = d
            rows.append(row)
            size = "x".join(map(str, sizes))
            print(
                f"{d}-D {size:>10s} k{k:<2d} {c_in:>2d}->{c_out:<2d} batch {batch:<3d}"
                f" anycnn {row['anycnn_ms']:9.2f} ms  torch {row['torch_ms']:9.2f} ms"
                f"  torch/anycnn {row['speedup']:5.2f}x" + ("" if row["agree"] else "  DISAGREE"),
                flush=True,
            )
    report = {
        "benchmark": "bench/nd.py",
        "command": "python bench/nd.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info("numpy"),
        "threads": threads,
        "torch": torch.__version__,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "rows": rows,
    }
    out = args.out or (None if args.quick else RESULTS / "nd-numpy.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
