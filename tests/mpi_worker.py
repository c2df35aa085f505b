"""The program tests/test_distributed.py starts under a real ``mpiexec`` (not a test module).

    mpiexec -n N python tests/mpi_worker.py TASK OUT [ARGS...]

Each task writes what rank 0 found as JSON to OUT (and may end the job on purpose).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path

import numpy as np

from anycnn import datasets, distributed, layers, models, optim, train
from anycnn.network import Network

LIMIT, BATCH = 48, 10  # batches 10, 10, 10, 10, 8: shards 3/3/4 and 2/3/3 on 3 processes


def data():
    return datasets.load("mnist", limit=LIMIT)


def combination_net(seed: int = 4) -> Network:
    """A small net with a learned-combination layer (notes 3.3) on MNIST digits."""
    return Network(
        [
            layers.Convolution(3, 5, activation="tanh"),
            layers.Subsampling(2, "mean", activation="identity"),
            layers.LearnedCombination(4, 3, kernels="per_pair", lam=0.01, activation="tanh"),
            layers.Flatten(),
            layers.FullyConnected(10, activation="identity"),
        ],
        (1, 28, 28),
        loss="cross_entropy",
        dtype="float64",
        backend="numpy",
        seed=seed,
        name="combination",
    )


def build(model: str) -> Network:
    if model == "combination":
        return combination_net()
    return models.build(model, backend="numpy", dtype="float64", seed=1)


def make_optimizer(kind: str, net: Network) -> optim.Optimizer:
    if kind == "sgd":
        return optim.SGD(net, 0.1, layer_rates={net.layers[0].name: 0.5})
    if kind == "momentum":
        return optim.Momentum(net, 0.05, momentum=0.9)
    return optim.SDLM(net, 0.003, samples=23, momentum=0.5)


def params(net: Network) -> dict[str, np.ndarray]:
    return {k: np.array(v, copy=True) for k, v in net.parameters().items()}


def relative(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-300)) for k in b)


def write(out: str, payload: dict) -> None:
    Path(out).write_text(json.dumps(payload, indent=1))


# --------------------------------------------------------------------------------------------
def task_equivalence(comm, out: str, files: str) -> None:
    """N processes vs one on the same global batches; exact sharded evaluation; rank-0 files;
    the NCCL reducer's protocol on a NumPy stand-in."""
    ds = data()
    found: dict = {"size": comm.size, "threads": None, "runs": {}}
    from anycnn_numpy import get_num_threads

    found["threads"] = get_num_threads()
    cases = [
        ("dlt", "sgd"),
        ("lenet5", "momentum"),
        ("lenet5", "sdlm"),
        ("dlt", "sdlm"),
        ("combination", "sgd"),
        ("combination", "momentum"),
    ]
    for model, kind in cases:
        net = build(model)
        opt = make_optimizer(kind, net)
        folder = Path(files) / f"{model}-{kind}-rank{comm.rank}"
        result = train.train(
            net,
            ds,
            epochs=1,
            batch_size=BATCH,
            optimizer=opt,
            seed=5,
            progress=False,
            evaluate_test=model == "dlt",
            checkpoint_dir=folder,
            metrics_path=folder / "metrics.json",
            distributed=comm,
        )
        mine = params(net)
        gathered = comm.comm.gather(mine, root=0)
        if comm.rank == 0:
            single = build(model)
            reference = train.train(
                single,
                ds,
                epochs=1,
                batch_size=BATCH,
                optimizer=make_optimizer(kind, single),
                seed=5,
                progress=False,
                evaluate_test=model == "dlt",
                distributed=distributed.SingleCommunicator(),
            )
            found["runs"][f"{model}/{kind}"] = {
                "relative": relative(mine, params(single)),
                "ranks_identical": all(
                    all(np.array_equal(g[k], mine[k]) for k in mine) for g in gathered
                ),
                "train_loss": [r.train_loss for r in result.history],
                "train_loss_single": [r.train_loss for r in reference.history],
                "train_error": [r.train_error for r in result.history],
                "train_error_single": [r.train_error for r in reference.history],
                "test_error": [r.test_error for r in result.history],
                "test_error_single": [r.test_error for r in reference.history],
            }
    # A global batch smaller than the world is refused on every rank, before any collective.
    try:
        train.train(build("dlt"), ds, epochs=1, batch_size=comm.size - 1, distributed=comm)
    except ValueError as error:
        found["small_batch"] = str(error)
    # Sharded evaluation: the counts summed over the ranks are the single-process counts.
    net = models.build("lenet5", backend="numpy", dtype="float64", seed=2)
    full = datasets.load("mnist", limit=301)
    prep = train.Preprocessing.fit(net, full.train_images)
    sharded = train.evaluate(net, full.test_images, full.test_labels, prep, comm=comm)
    whole = train.evaluate(net, full.test_images, full.test_labels, prep)
    found["evaluate"] = {"sharded": sharded, "single": whole}
    # NCCL's protocol on a stand-in: pointers and counts of host buffers, summed by MPI.
    found["nccl"] = nccl_stand_in(comm)
    comm.barrier()
    if comm.rank == 0:
        found["files"] = sorted(
            str(p.relative_to(files)) for p in Path(files).rglob("*") if p.is_file()
        )
        write(out, found)


class _FakeNccl:
    """A stand-in for ``cupy.cuda.nccl``: same calls and constants; the reduction itself is
    MPI's, on the memory the pointer names (a NumPy buffer here, a CuPy one on a GPU)."""

    NCCL_SUM = 0
    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT32, NCCL_INT64 = 6, 7, 8, 2, 4
    _ctypes = {7: ctypes.c_float, 8: ctypes.c_double, 4: ctypes.c_int64, 2: ctypes.c_int32}

    def __init__(self, mpi):
        self.mpi, self.calls, self.uids = mpi, [], []

    def get_unique_id(self):
        return tuple(int(b) for b in os.urandom(8))

    def NcclCommunicator(self, size, uid, rank):  # noqa: N802 - cupy's name
        self.uids.append(uid)
        fake = self

        class Comm:
            def allReduce(self, send, recv, count, kind, op, stream):  # noqa: N802
                fake.calls.append(("allReduce", send == recv, count, kind, op, stream))
                array = np.ctypeslib.as_array((fake._ctypes[kind] * count).from_address(recv))
                fake.mpi.comm.Allreduce(fake.mpi.MPI.IN_PLACE, array, op=fake.mpi.MPI.SUM)

            def bcast(self, pointer, count, kind, root, stream):
                fake.calls.append(("bcast", count, kind, root))
                array = np.ctypeslib.as_array((fake._ctypes[kind] * count).from_address(pointer))
                fake.mpi.comm.Bcast(array, root=root)

        return Comm()


def nccl_stand_in(comm) -> dict:
    fake = _FakeNccl(comm)
    reducer = distributed.NCCLReducer(comm, nccl=fake, stream=lambda: 1234)
    uids = comm.comm.allgather(fake.uids[0])
    net = models.build("dlt", backend="numpy", dtype="float64", seed=1)
    # A stand-in device array: the communicator sends "device" arrays to NCCL.
    comm._nccl = reducer
    comm._is_device = lambda array: True
    try:
        rng = np.random.default_rng(comm.rank)
        for g in net.gradients().values():
            g[...] = 0
        for layer in net.layers:
            for role, p in layer.params.items():
                layer.grads[role] = rng.standard_normal(p.shape)
        mine = {k: np.array(v, copy=True) for k, v in net.gradients().items()}
        everyone = comm.comm.allgather(mine)
        averager = distributed.GradientAverager(comm, net)
        weight = 1.0 / comm.size
        averager.average(weight)
        expected = {k: sum(e[k] * weight for e in everyone) for k in mine}
        error = max(float(np.max(np.abs(net.gradients()[k] - expected[k]))) for k in mine)
        buffer = np.arange(5.0) * (comm.rank + 1)
        comm.broadcast_(buffer, root=0)
    finally:
        del comm._is_device
        comm._nccl = None
    return {
        "uids_equal": all(u == uids[0] for u in uids),
        "calls": fake.calls,
        "error": error,
        "buffer_size": int(next(iter(averager.buffers.values())).size),
        "parameters": sum(int(np.prod(p.shape)) for p in net.parameters().values()),
        "broadcast": buffer.tolist(),
    }


# --------------------------------------------------------------------------------------------
def task_train(comm, out: str, folder: str, epochs: str) -> None:
    """Train DLT with momentum up to EPOCHS, resuming from FOLDER (any world size)."""
    net = build("dlt")
    result = train.train(
        net,
        data(),
        epochs=int(epochs),
        batch_size=BATCH,
        optimizer=make_optimizer("momentum", net),
        seed=5,
        progress=False,
        evaluate_test=False,
        checkpoint_dir=folder,
        resume=True,
        distributed=comm,
    )
    if comm.rank == 0:
        write(
            out,
            {
                "resumed_from": str(result.resumed_from),
                "params": {k: v.tolist() for k, v in params(net).items()},
            },
        )


def task_raise(comm, out: str) -> None:
    """Rank 1 raises in its third step while the others wait in the allreduce."""
    net = build("dlt")

    def fail(trainer):
        if comm.rank == 1 and trainer.optimizer.steps == 2:
            raise ValueError("a deliberate failure on one rank")

    train.train(
        net,
        data(),
        epochs=50,
        batch_size=BATCH,
        optimizer=optim.SGD(net, 0.1),
        progress=False,
        gradient_hooks=[fail],
        distributed=comm,
    )
    write(out, {"finished": True})  # never reached


def task_diverge(comm, out: str, folder: str) -> None:
    """Rank 1 alone sees a NaN loss in the second epoch; every rank must stop there."""
    net = build("dlt")

    class OneBadRank(train.Trainer):
        def step(self, x, t, *, check=False):
            loss, y = super().step(x, t, check=check)
            if comm.rank == 1 and self.optimizer.steps == 7:  # epoch 2, batch 2
                loss = loss * float("nan")
            return loss, y

    trainer = OneBadRank(
        net,
        data(),
        epochs=3,
        batch_size=BATCH,
        optimizer=optim.SGD(net, 0.1),
        progress=False,
        report_every=1,
        evaluate_test=False,
        checkpoint_dir=folder,
        distributed=comm,
    )
    try:
        trainer.run()
    except train.DivergenceError as error:
        # Only reached together: the launcher ends the job when the first rank exits non-zero.
        where = comm.comm.gather((error.epoch, error.batch, str(error.checkpoint)), root=0)
        if comm.rank == 0:
            write(out, {"where": where})
        comm.barrier()
        sys.exit(3)


def task_kill(comm, out: str, folder: str) -> None:
    """Rank 1 is killed with SIGKILL in the second epoch, after the first checkpoint."""
    net = build("dlt")

    def die(trainer):
        if comm.rank == 1 and trainer.optimizer.steps == 7:
            os.kill(os.getpid(), signal.SIGKILL)

    train.train(
        net,
        data(),
        epochs=50,
        batch_size=BATCH,
        optimizer=optim.SGD(net, 0.1),
        progress=False,
        evaluate_test=False,
        checkpoint_dir=folder,
        gradient_hooks=[die],
        distributed=comm,
    )


def main() -> None:
    comm = distributed.init("mpi")
    task, *args = sys.argv[1:]
    globals()[f"task_{task}"](comm, *args)


if __name__ == "__main__":
    main()
