"""Check back-propagation against finite differences (section 4.4 of the notes).

    python examples/gradcheck.py                  # LeNet-5 and DLT, float64, on the CPU
    python examples/gradcheck.py --backend torch  # the same layers on another namespace

Same as ``anycnn gradcheck --model lenet5``; shown here with the library API.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from anycnn import datasets, gradcheck, models, train


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    failed = False
    for name in ("lenet5", "dlt"):
        net = models.build(name, backend=args.backend, dtype="float64")
        x = rng.standard_normal((args.batch, *net.input_shape))
        low, high = train.target_values(net)  # +-1 targets for tanh outputs, else 0/1
        t = datasets.one_hot(
            rng.integers(0, 10, args.batch), 10, low=low, high=high, dtype="float64"
        )
        report = gradcheck(
            net, net.backend.asarray(x, dtype="float64"), net.backend.asarray(t, dtype="float64")
        )
        print(f"== {name} ({net.num_parameters()} parameters, backend {net.backend.name})")
        print(report)
        failed |= not report.passed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
