"""Float64 bit-identity across a refactor: train, save every parameter, compare bit for bit.

    python .ci/bitexact.py save  DIR      # on the commit before the change
    python .ci/bitexact.py check DIR      # on the commit after it: exit 1 on any differing bit

Each case trains a network in float64 on the first MNIST images of the embedded copy (``data/``)
for a few hundred online or mini-batch steps with one optimizer, then stores its
``state_dict()``. The cases cover both zoo models, the three optimizers, a learned combination
(3.3) with its L1 penalty (3.3.1), padding and a subsampling remainder, on NumPy and on
array-api-strict (the reference ops). The comparison is ``tobytes()`` equality, not a tolerance.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import anycnn
from anycnn import Convolution, Flatten, FullyConnected, LearnedCombination, Network, Subsampling


def _combo(backend: str) -> Network:
    layers = [
        Convolution(4, 5, activation="tanh", padding=1),
        Subsampling(2, "mean", activation="sigmoid", remainder="pad"),
        LearnedCombination(6, 3, lam=0.01),
        Subsampling(2, "sum", remainder="drop"),
        Flatten(),
        FullyConnected(10, activation="identity"),
    ]
    return Network(
        layers,
        (1, 28, 28),
        loss="cross_entropy",
        dtype="float64",
        backend=backend,
        seed=3,
        name="combo",
    )


def _cases() -> list[tuple[str, object, str, int, int]]:
    """(name, factory, optimizer, steps, batch size)."""
    out: list[tuple[str, object, str, int, int]] = []
    for backend, steps in (("numpy", 200), ("strict", 20)):
        for model in ("dlt", "lenet5"):
            for opt in ("sgd", "momentum", "sdlm"):
                out.append(
                    (
                        f"{backend}-{model}-{opt}",
                        (
                            lambda m=model, b=backend: anycnn.models.build(
                                m, dtype="float64", backend=b, seed=7
                            )
                        ),
                        opt,
                        steps,
                        5,
                    )
                )
        out.append((f"{backend}-combo-sgd", (lambda b=backend: _combo(b)), "sgd", steps, 1))
        out.append((f"{backend}-combo-sdlm", (lambda b=backend: _combo(b)), "sdlm", steps // 2, 4))
    return out


def _train(factory, opt: str, steps: int, batch: int) -> dict[str, np.ndarray]:
    net = factory()
    data = anycnn.datasets.load("mnist", limit=steps * batch)
    x = data.train_images[: steps * batch]
    y = data.train_labels[: steps * batch]
    net.fit(
        x, y, epochs=1, batch_size=batch, optimizer=opt, shuffle=True, seed=11, preprocessing="auto"
    )
    return net.state_dict()


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("save", "check"):
        print(__doc__)
        return 2
    mode, folder = argv[1], Path(argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    bad = 0
    for name, factory, opt, steps, batch in _cases():
        t = time.perf_counter()
        state = _train(factory, opt, steps, batch)
        path = folder / f"{name}.npz"
        if mode == "save":
            np.savez(path, **state)
            verdict = "saved"
        else:
            with np.load(path) as ref:
                same = set(ref.files) == set(state) and all(
                    ref[k].dtype == state[k].dtype
                    and ref[k].shape == state[k].shape
                    and ref[k].tobytes() == state[k].tobytes()
                    for k in state
                )
            verdict = "bit-identical" if same else "DIFFERENT"
            bad += not same
        print(
            f"{name:28s} {steps:4d} steps x {batch}: {verdict} ({time.perf_counter() - t:.1f} s)",
            flush=True,
        )
    if mode == "check":
        print("all bit-identical" if not bad else f"{bad} case(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
