"""Train LeNet-5 on MNIST with a plain Python loop over the library API.

    python examples/train_lenet5.py                   # 2 epochs on the current backend
    python examples/train_lenet5.py --epochs 10 --backend cuda

The loop is what ``anycnn train`` does (anycnn.train.train), spelled out: load the data set on
the host, preprocess it as LeCun did (zero mean, unit variance, 28x28 padded to 32x32 with the
background value), build the network, pick an optimizer and a learning-rate schedule, then for
each epoch shuffle, move one mini-batch at a time to the device, back-propagate, update, and
measure the test error in chunks of 1000.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import anycnn
from anycnn import datasets, models, optim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    # 1. Data on the host: uint8 images, int64 labels.
    ds = datasets.load("mnist", limit=args.limit)
    mean, std = datasets.mean_std(ds.train_images)  # training statistics only

    def prepare(images: np.ndarray) -> np.ndarray:
        """uint8 (N, 28, 28) -> float32 (N, 1, 32, 32): pad with 0, then normalise, so the
        border becomes the background value -mean/std. One batch at a time: the host never
        holds a float copy of the whole data set."""
        padded = datasets.pad(images, 32)[:, None, :, :]
        x, _, _ = datasets.normalize(padded, mean=mean, std=std)
        return x

    # 2. The network (softmax cross-entropy outputs: one-hot 0/1 targets) and the optimizer.
    backend = anycnn.backend.lookup(args.backend)
    net = models.lenet5(backend=backend, seed=0)
    print(net.summary())
    opt = optim.Momentum(net, optim.Step(args.lr, every=2, gamma=0.5), momentum=0.9)
    targets = datasets.one_hot(np.arange(10), 10)  # row k is the target of class k
    rng = np.random.default_rng(0)

    for epoch in range(args.epochs):
        opt.start_epoch(epoch)
        began, total, count = time.perf_counter(), 0.0, 0
        for picks in datasets.batches(len(ds.train_labels), args.batch_size, rng=rng):
            x = net.backend.asarray(prepare(ds.train_images[picks]))
            t = net.backend.asarray(targets[ds.train_labels[picks]])
            loss = net.compute_gradients(x, t)  # forward, loss, backward: a 0-d device array
            opt.step()
            total, count = total + loss, count + 1  # stays on the device; no sync per batch
        seconds = time.perf_counter() - began

        # 3. Test error in chunks of 1000.
        mistakes = 0
        for start in range(0, len(ds.test_labels), 1000):
            x = net.backend.asarray(prepare(ds.test_images[start : start + 1000]))
            predicted = net.backend.to_host(net.predict_classes(x))
            mistakes += int(np.count_nonzero(predicted != ds.test_labels[start : start + 1000]))
        print(
            f"epoch {epoch + 1}: lr {opt.lr:.3g}, mean loss {float(total) / count:.4f}, "
            f"test error {100 * mistakes / len(ds.test_labels):.2f}%, {seconds:.1f} s"
        )


if __name__ == "__main__":
    main()
