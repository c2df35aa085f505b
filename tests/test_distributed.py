"""Data-parallel training (anycnn.distributed) under a real ``mpiexec``, and the size-1 path.

The multi-process tests start tests/mpi_worker.py with the ``mpiexec`` of the environment
(the ``mpi`` extra installs mpi4py and Open MPI wheels: it lives next to the Python
executable). Bounds: float64 parameters of N processes and of one process on the same global
batches agree to 1e-13 relative (seen: ~2e-15, the order of the sums differing); error counts
agree exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anycnn import distributed, models, optim, train
from anycnn.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("mpi_worker.py")
BOUND = 1e-13  # relative, float64


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    if beside.exists():
        return str(beside)
    return shutil.which("mpiexec")


def _mpi_ready() -> str | None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'anycnn[mpi]')"
    if _mpiexec() is None:
        return "no mpiexec next to the Python executable or on PATH"
    return None


needs_mpi = pytest.mark.skipif(_mpi_ready() is not None, reason=str(_mpi_ready()))


def _launch(n: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    for name in list(env):  # a test run under mpiexec must not leak its launch into ours
        if name.startswith(("OMPI_COMM_WORLD", "PMIX_", "PMI_")):
            del env[name]
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends"), env.get("PYTHONPATH", "")]),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    env.pop("ANYCNN_NUM_THREADS", None)
    command = [str(_mpiexec()), "--oversubscribe", "-n", str(n), sys.executable, *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _params(net):
    return {k: np.array(v, copy=True) for k, v in net.parameters().items()}


def _relative(a, b):
    return max(float(np.max(np.abs(a[k] - b[k])) / max(np.max(np.abs(b[k])), 1e-300)) for k in b)


# --------------------------------------------------------------------------------------------
# N processes train like one
# --------------------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_n_processes_give_the_parameters_of_one(tmp_path, n):
    """SGD, momentum and SDLM on LeNet-5, DLT and a learned-combination net: N ranks on a
    global batch give one process's parameters (uneven shards with 3 ranks: 3/3/4 and 2/3/3),
    identical on every rank; sharded evaluation counts exactly; only rank 0 writes files; the
    NCCL reducer's protocol on a stand-in; threads = cores / ranks."""
    out = tmp_path / "out.json"
    done = _launch(n, str(WORKER), "equivalence", str(out), str(tmp_path / "files"))
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(out.read_text())
    assert found["size"] == n
    assert set(found["runs"]) == {
        "dlt/sgd",
        "lenet5/momentum",
        "lenet5/sdlm",
        "dlt/sdlm",
        "combination/sgd",
        "combination/momentum",
    }
    for case, run in found["runs"].items():
        assert run["relative"] <= BOUND, (case, run["relative"])
        assert run["ranks_identical"], case
        assert run["train_error"] == run["train_error_single"], case
        assert run["test_error"] == run["test_error_single"], case
        np.testing.assert_allclose(run["train_loss"], run["train_loss_single"], rtol=1e-13)
    sharded, single = found["evaluate"]["sharded"], found["evaluate"]["single"]
    assert (sharded["mistakes"], sharded["count"], sharded["error"]) == (
        single["mistakes"],
        single["count"],
        single["error"],
    )
    assert sharded["loss"] == pytest.approx(single["loss"], rel=1e-13)
    # Each rank was given its own folder: only rank 0's exists.
    assert found["files"], "rank 0 wrote nothing"
    assert all(path.split("/")[0].endswith("-rank0") for path in found["files"])
    assert "smaller than the" in found["small_batch"]
    nccl = found["nccl"]
    assert nccl["uids_equal"]
    assert nccl["error"] <= 1e-15
    # One in-place allreduce of the whole flat buffer (every parameter + the count slot).
    assert [c for c in nccl["calls"] if c[0] == "allReduce"] == [
        ["allReduce", True, nccl["parameters"] + 1, 8, 0, 1234]
    ]
    assert nccl["buffer_size"] == nccl["parameters"] + 1
    assert nccl["broadcast"] == [0.0, 1.0, 2.0, 3.0, 4.0]
    cores = len(os.sched_getaffinity(0))
    assert found["threads"] == max(1, cores // n)


@needs_mpi
def test_a_checkpoint_resumes_with_another_world_size(tmp_path):
    """Saved by 3 processes, resumed by 2, then by 1: the parameters of one uninterrupted
    single-process run."""
    from mpi_worker import BATCH, build, data, make_optimizer

    folder = tmp_path / "run"
    first = _launch(3, str(WORKER), "train", str(tmp_path / "a.json"), str(folder), "1")
    assert first.returncode == 0, first.stderr[-3000:]
    second = _launch(2, str(WORKER), "train", str(tmp_path / "b.json"), str(folder), "2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((tmp_path / "b.json").read_text())["resumed_from"].endswith("0001.npz")
    net = build("dlt")
    result = train.train(
        net,
        data(),
        epochs=3,
        batch_size=BATCH,
        optimizer=make_optimizer("momentum", net),
        seed=5,
        progress=False,
        evaluate_test=False,
        checkpoint_dir=folder,
        resume=True,
        distributed=False,
    )
    assert result.resumed_from is not None and result.resumed_from.name == "epoch-0002.npz"
    whole = build("dlt")
    train.train(
        whole,
        data(),
        epochs=3,
        batch_size=BATCH,
        optimizer=make_optimizer("momentum", whole),
        seed=5,
        progress=False,
        evaluate_test=False,
        distributed=False,
    )
    assert _relative(_params(net), _params(whole)) <= BOUND


# --------------------------------------------------------------------------------------------
# Faults end the job
# --------------------------------------------------------------------------------------------
@needs_mpi
def test_an_exception_on_one_rank_ends_the_job(tmp_path):
    """Rank 1 raises while rank 0 waits in the allreduce: the job ends, non-zero, with one
    line naming the rank (the timeout would catch a hang)."""
    done = _launch(2, str(WORKER), "raise", str(tmp_path / "o.json"), timeout=90)
    assert done.returncode != 0
    assert "anycnn: rank 1 of 2 failed: ValueError: a deliberate failure on one rank" in (
        done.stderr
    )
    assert not (tmp_path / "o.json").exists()


@needs_mpi
def test_divergence_on_one_rank_stops_every_rank(tmp_path):
    """Only rank 1's loss is NaN (epoch 2, batch 2): both ranks raise DivergenceError at that
    batch, exit 3, and the epoch-1 checkpoint is intact."""
    out, folder = tmp_path / "o.json", tmp_path / "run"
    done = _launch(2, str(WORKER), "diverge", str(out), str(folder), timeout=120)
    assert done.returncode == 3, done.stderr[-3000:]
    where = json.loads(out.read_text())["where"]
    assert where == [[2, 2, str(folder / "epoch-0001.npz")]] * 2
    assert ckpt.load_checkpoint(folder / "epoch-0001.npz").epoch == 1
    assert ckpt.latest_checkpoint(folder).name == "epoch-0001.npz"


@needs_mpi
def test_a_killed_rank_ends_the_job_and_the_checkpoint_loads(tmp_path):
    folder = tmp_path / "run"
    done = _launch(2, str(WORKER), "kill", str(tmp_path / "o.json"), str(folder), timeout=120)
    assert done.returncode != 0
    assert ckpt.latest_checkpoint(folder).name == "epoch-0001.npz"
    assert ckpt.load_checkpoint(folder / "epoch-0001.npz").epoch == 1


# --------------------------------------------------------------------------------------------
# anycnn train under mpiexec
# --------------------------------------------------------------------------------------------
@needs_mpi
def test_anycnn_train_under_mpiexec(tmp_path):
    """The command runs unchanged; the header names the world and appears once; the result
    is the single-process one."""
    common = ["--model", "dlt", "--dtype", "float64", "--limit", "60", "--batch-size", "12"]
    done = _launch(
        2,
        "-m",
        "anycnn",
        "train",
        *common,
        "--checkpoint-dir",
        str(tmp_path / "two"),
        "--metrics",
        str(tmp_path / "two.json"),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("anycnn train: dlt on mnist") == 1
    assert "world: 2 processes x " in done.stdout
    assert json.loads((tmp_path / "two.json").read_text())["world_size"] == 2
    from anycnn.cli import main

    assert main(["train", *common, "--checkpoint-dir", str(tmp_path / "one"), "--quiet"]) == 0
    two = ckpt.load_checkpoint(tmp_path / "two" / "epoch-0001.npz").network
    one = ckpt.load_checkpoint(tmp_path / "one" / "epoch-0001.npz").network
    assert _relative(_params(two), _params(one)) <= BOUND


# --------------------------------------------------------------------------------------------
# The size-1 path and the engine choice (no mpiexec needed)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_world(monkeypatch):
    monkeypatch.setattr(distributed, "_world", None)
    for name in distributed.LAUNCH_SIZE_VARIABLES + distributed.LAUNCH_RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_process_needs_no_mpi4py(fresh_world):
    """Outside a launcher the engine is "single" and trains without mpi4py; asking for MPI
    then says how to install it."""
    fresh_world.setitem(sys.modules, "mpi4py", None)  # import mpi4py fails
    comm = distributed.init()
    assert isinstance(comm, distributed.SingleCommunicator)
    assert (comm.rank, comm.size, comm.local_rank) == (0, 1, 0)
    buffer = np.arange(3.0)
    assert comm.allreduce_(buffer) is buffer and comm.broadcast_(buffer) is buffer
    from anycnn import datasets

    net = models.build("dlt", backend="numpy", dtype="float64", seed=1)
    result = train.train(
        net,
        datasets.load("mnist", limit=20),
        epochs=1,
        batch_size=10,
        optimizer=optim.SGD(net, 0.1),
        progress=False,
    )
    assert result.history[0].epoch == 1
    with pytest.raises(distributed.DistributedError, match=r"pip install 'anycnn\[mpi\]'"):
        distributed.init("mpi")


def test_a_launch_without_mpi4py_is_refused_not_run_alone(fresh_world):
    """Under mpiexec -n 4 without mpi4py, four independent single runs would be wrong."""
    fresh_world.setitem(sys.modules, "mpi4py", None)
    fresh_world.setenv("OMPI_COMM_WORLD_SIZE", "4")
    fresh_world.setenv("OMPI_COMM_WORLD_RANK", "1")
    assert distributed.launched_by_mpi()
    with pytest.raises(distributed.DistributedError, match="mpi4py"):
        distributed.init()
    with pytest.raises(distributed.DistributedError, match="unknown distributed engine"):
        distributed.init("nccl2")


def test_threads_are_cores_over_ranks_on_the_host(fresh_world):
    comm = distributed.SingleCommunicator()
    comm.local_size = 2
    fresh_world.delenv("ANYCNN_NUM_THREADS", raising=False)
    assert distributed.rank_threads(comm, cores=2) == 1
    assert distributed.rank_threads(comm, cores=16) == 8
    comm.local_size = 3
    assert distributed.rank_threads(comm, cores=2) == 1
    fresh_world.setenv("ANYCNN_NUM_THREADS", "3")
    assert distributed.rank_threads(comm, cores=2) == 3


def test_shards_cover_a_batch_once():
    for size in (1, 2, 3, 5):
        for count in (1, 4, 10, 11):
            comm = distributed.SingleCommunicator()
            comm.size = size
            bounds = []
            for rank in range(size):
                comm.rank = rank
                bounds.append(distributed.shard(count, comm))
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(bounds[i][1] == bounds[i + 1][0] for i in range(size - 1))
            sizes = [b - a for a, b in bounds]
            assert max(sizes) - min(sizes) <= 1


def test_each_process_takes_the_gpu_of_its_local_rank(fresh_world):
    """select_device on a backend with two stand-in GPUs (Backend.device_count / use_device):
    local rank modulo the GPUs of the host, made current and given as the backend's device; a
    named device and the CPU backend (no devices to choose from) are kept."""
    from anycnn import Backend
    from anycnn import backend as registry

    used = []
    gpus = Backend(
        name="gpus",
        array_module="numpy",
        device=lambda: "gpu0",
        device_for=lambda spec: f"gpu{spec}",
        device_count=lambda: 2,
        use_device=used.append,
    )
    comm = distributed.SingleCommunicator()
    chosen = []
    for local_rank in range(3):
        comm.local_rank = local_rank
        chosen.append(distributed.select_device(gpus, comm))
    assert used == ["gpu0", "gpu1", "gpu0"]
    assert chosen[0] is gpus and chosen[2] is gpus
    assert chosen[1].parent is gpus and chosen[1].default_device == "gpu1"
    named = gpus.on("1")
    comm.local_rank = 0
    assert distributed.select_device(named, comm) is named and used[-1] == "gpu1"
    cpu = registry.lookup("numpy")
    assert distributed.select_device(cpu, comm) is cpu
