"""Hardening (issue 8): divergence, crash safety, checkpoint security, determinism and the
tolerance between backends. The bad-input catalogue itself is tests/test_bad_input.py.

Training processes run as real subprocesses where what is tested is the process: its exit status
and stderr (a warning printed by a helper thread shows only there), a SIGKILL, and bitwise
determinism between two fresh interpreters.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from anycnn import datasets, models, optim, train
from anycnn.backend import lookup
from anycnn.cli import EXIT_DIVERGED, EXIT_OK, main
from anycnn.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    env.pop("ANYCNN_NUM_THREADS", None)
    env.update(extra)
    return env


def _anycnn(*argv):
    return [sys.executable, "-m", "anycnn", *argv]


def _arrays(path, prefixes=("param/", "optim/")):
    """The parameter and optimizer arrays of a checkpoint file (or a complete temporary one)."""
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files if k.startswith(prefixes)}


def _assert_bitwise_equal(a, b, what=""):
    assert a.keys() == b.keys(), what
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (what, key)
        assert a[key].tobytes() == b[key].tobytes(), (what, key)


def _host(net):
    return {k: np.array(net.backend.to_host(v), copy=True) for k, v in net.parameters().items()}


# --------------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------------
# The rate is 0.01 in epoch 1 and 0.01 * 1e40 = 1e38 from epoch 2 on: epoch 1 trains and writes
# a good checkpoint, epoch 2 diverges within a few batches. (A rate of 1e6 diverged only through
# the cross-entropy's 0 x -inf = NaN, fixed in issue 13: its loss is now huge but finite.)
DIVERGE = [
    "train",
    "--model",
    "lenet5",
    "--limit",
    "200",
    "--optimizer",
    "sgd",
    "--lr",
    "0.01",
    "--schedule",
    "step",
    "--step-every",
    "1",
    "--gamma",
    "1e40",
    "--epochs",
    "3",
    "--batch-size",
    "32",
    "--seed",
    "3",
    "--quiet",
]


def test_divergence_names_epoch_and_batch_and_keeps_the_last_good_checkpoint(tmp_path):
    """API: DivergenceError at epoch 2; the epoch-1 file is byte for byte what was written at the
    end of epoch 1 (snapshot taken by a callback, which runs after the checkpoint is written),
    loads, and holds the parameters the network had then; nothing else is left in the folder."""
    ds = datasets.load("mnist", limit=200)
    net = models.lenet5(backend="numpy", seed=3)
    opt = optim.SGD(net, optim.Step(0.01, every=1, gamma=1e40))
    folder = tmp_path / "ck"
    saved = {}

    def snapshot(record):
        if record.epoch == 1:
            saved["bytes"] = (folder / "epoch-0001.npz").read_bytes()
            saved["params"] = _host(net)

    with pytest.raises(train.DivergenceError) as caught:
        train.train(
            net,
            ds,
            epochs=3,
            batch_size=32,
            optimizer=opt,
            seed=3,
            progress=False,
            checkpoint_dir=folder,
            callbacks=[snapshot],
        )
    error = caught.value
    good = folder / "epoch-0001.npz"
    assert error.epoch == 2 and 1 <= error.batch <= 7 and not math.isfinite(error.value)
    assert error.checkpoint == good
    assert f"at epoch 2, batch {error.batch}" in str(error) and str(good) in str(error)
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.npz"]
    assert good.read_bytes() == saved["bytes"]
    loaded = ckpt.load_checkpoint(good)
    assert loaded.epoch == 1
    _assert_bitwise_equal(_host(loaded.network), saved["params"], "epoch-1 parameters")


def test_cli_divergence_exits_3_with_one_line(tmp_path):
    """A real process: exit 3, stderr is exactly one line (no overflow warnings from the NumPy
    backend's helper threads, which once leaked past np.errstate), naming epoch, batch and the
    last good checkpoint; that checkpoint loads and equals a run that stops after epoch 1."""
    folder = tmp_path / "diverged"
    done = subprocess.run(
        _anycnn(*DIVERGE, "--checkpoint-dir", str(folder)),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == EXIT_DIVERGED, done.stderr
    good = folder / "epoch-0001.npz"
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: training diverged: the loss is ")
    assert " at epoch 2, batch " in done.stderr and f"last good checkpoint is {good}" in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.npz"]
    assert ckpt.load_checkpoint(good).epoch == 1

    reference = tmp_path / "one-epoch"
    stop_after_one = [
        *DIVERGE[: DIVERGE.index("--epochs")],
        "--epochs",
        "1",
        *DIVERGE[DIVERGE.index("--epochs") + 2 :],
    ]
    assert main([*stop_after_one, "--checkpoint-dir", str(reference)]) == EXIT_OK
    _assert_bitwise_equal(_arrays(good), _arrays(reference / "epoch-0001.npz"), "epoch 1")


@pytest.mark.filterwarnings("error::RuntimeWarning")  # the loop's np.errstate covers all threads
def test_a_huge_rate_diverges_in_the_first_epoch(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "lenet5",
            "--limit",
            "200",
            "--lr",
            "1e38",  # overflows the weights (1e6 stays finite since issue 13's loss fix)
            "--optimizer",
            "sgd",
            "--epochs",
            "2",
            "--quiet",
            "--checkpoint-dir",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == EXIT_DIVERGED
    assert err.count("\n") == 1 and "at epoch 1, batch" in err
    assert "no checkpoint was written" in err
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Crash safety
# --------------------------------------------------------------------------------------------
def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_and_resume_works(tmp_path):
    """SIGKILL between writing epoch 2's temporary file and renaming it (the writer is held
    there by a monkeypatched os.replace in the child): epoch 1's file is intact and the latest; --resume
    then finishes epoch 2 with exactly the arrays the killed process had written (its temporary
    file was complete and fsync-ed, only the rename was missing)."""
    folder = tmp_path / "run"
    argv = [
        "train",
        "--model",
        "dlt",
        "--limit",
        "200",
        "--epochs",
        "2",
        "--batch-size",
        "20",
        "--optimizer",
        "momentum",
        "--lr",
        "0.5",
        "--seed",
        "4",
        "--quiet",
        "--checkpoint-dir",
        str(folder),
    ]
    # The child is `anycnn train` with os.replace held for 120 s on epoch 2's file: the writer
    # then sits between its fsync-ed temporary file and the rename (what a crash there leaves).
    stall = (
        "import os, sys, time\n"
        "from anycnn.cli import main\n"
        "real = os.replace\n"
        "def replace(src, dst, *args, **kwargs):\n"
        "    if os.path.basename(dst) == 'epoch-0002.npz':\n"
        "        time.sleep(120)\n"
        "    return real(src, dst, *args, **kwargs)\n"
        "os.replace = replace\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", stall, *argv],
        env=_env(),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    temporary = []
    killed = None
    try:
        while time.monotonic() < deadline and process.poll() is None:
            temporary = list(folder.glob(".epoch-0002.npz.*.tmp"))
            if temporary and (folder / "epoch-0001.npz").exists():
                # The file shows up when writing starts: wait until it is whole (its zip
                # directory comes last), i.e. the writer is in the stall before the rename.
                try:
                    killed = _arrays(temporary[0])  # what epoch 2 had reached before the kill
                    break
                except Exception:
                    pass
            time.sleep(0.02)
        assert process.poll() is None, process.stderr.read().decode()
        assert temporary, "the epoch-2 temporary file never appeared"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    assert not (folder / "epoch-0002.npz").exists()
    assert ckpt.latest_checkpoint(folder) == folder / "epoch-0001.npz"
    assert ckpt.load_checkpoint(folder / "epoch-0001.npz").epoch == 1
    assert killed is not None, "the epoch-2 temporary file was never complete"
    _assert_bitwise_equal(_arrays(temporary[0]), killed, "the temporary file after the kill")

    assert main([*argv, "--resume"]) == EXIT_OK
    resumed = ckpt.load_checkpoint(folder / "epoch-0002.npz")
    assert resumed.epoch == 2 and len(resumed.info["history"]) == 2
    _assert_bitwise_equal(_arrays(folder / "epoch-0002.npz"), killed, "resumed epoch 2")
    assert not temporary[0].exists(), "the killed run's temporary file was left behind"


# --------------------------------------------------------------------------------------------
# Security: no pickles, and validation before assignment
# --------------------------------------------------------------------------------------------
def test_every_load_refuses_pickles(tmp_path, monkeypatch):
    """No checkpoint path can unpickle: loading, reading the info and resuming training all
    succeed with ``np.load`` and NumPy's ``read_array`` (the only places NumPy unpickles) made to
    fail: the reader parses the .npy headers itself and reads raw bytes."""
    from numpy.lib import format as npy_format

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args[:1])
        raise AssertionError("a checkpoint path called np.load or read_array")

    net = models.dlt(backend="numpy")
    opt = optim.SGD(net, 0.1)
    folder = tmp_path / "ck"
    folder.mkdir()
    ckpt.save_checkpoint(folder / "epoch-0001.npz", net, epoch=1, optimizer=opt)
    for module, name in ((npy_format, "read_array"), (np, "load")):
        monkeypatch.setattr(module, name, refuse)
    ckpt.load_checkpoint(folder / "epoch-0001.npz")
    ckpt.read_info(folder / "epoch-0001.npz")
    result = train.train(
        net,
        datasets.load("mnist", limit=20),
        epochs=2,
        optimizer=opt,
        progress=False,
        checkpoint_dir=folder,
        resume=True,
        evaluate_test=False,
    )
    assert result.resumed_from == folder / "epoch-0001.npz" and calls == []


@pytest.mark.parametrize("name", ["conv1.kernel", "conv3.bias", "fc5.weight"])
@pytest.mark.parametrize("fault", ["shape", "dtype", "missing", "NaN"])
def test_one_bad_array_leaves_the_network_untouched(tmp_path, name, fault):
    """One wrong array, first, in the middle or near the end of the parameter order: nothing is
    assigned (every array is checked against the model before the first assignment)."""
    source = models.dlt(backend="numpy", seed=1)
    path = ckpt.save_checkpoint(tmp_path / "c.npz", source, epoch=1)
    arrays = _arrays(path, prefixes=("",))
    key = f"param/{name}"
    if fault == "shape":
        arrays[key] = arrays[key][..., :1]
    elif fault == "dtype":
        arrays[key] = arrays[key].astype(np.float64)
    elif fault == "missing":
        del arrays[key]
    else:
        arrays[key] = np.full_like(arrays[key], np.nan)
    np.savez(path, **arrays)
    target = models.dlt(backend="numpy", seed=2)
    before = _host(target)
    with pytest.raises(ckpt.CheckpointError, match=name.replace(".", r"\.")):
        ckpt.load_checkpoint(path, network=target)
    _assert_bitwise_equal(_host(target), before, "after a refused load")


# --------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------
def _train_side_by_side(tmp_path, runs):
    """Train LeNet-5 (--limit 2000 --epochs 1, NumPy backend, seed 11) in one fresh process per
    entry of ``runs`` (name -> extra environment), all at once; their checkpoint arrays."""
    processes = {}
    for index, (name, extra) in enumerate(runs.items()):
        folder = tmp_path / f"run{index}"
        processes[name] = (
            folder,
            subprocess.Popen(
                _anycnn(
                    "train",
                    "--limit",
                    "2000",
                    "--epochs",
                    "1",
                    "--backend",
                    "cpu",
                    "--seed",
                    "11",
                    "--quiet",
                    "--checkpoint-dir",
                    str(folder),
                ),
                env=_env(**extra),
                cwd=tmp_path,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            ),
        )
    results = {}
    for name, (folder, process) in processes.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, (name, err.decode())
        results[name] = _arrays(folder / "epoch-0001.npz")
    return results


def test_same_seed_gives_bit_identical_parameters_run_to_run(tmp_path):
    """Two fresh processes, LeNet-5, --limit 2000 --epochs 1, the NumPy backend with its default
    threads: identical parameter and momentum bits. The runs go side by side, so the backend's
    helper threads interleave differently in each."""
    results = _train_side_by_side(tmp_path, {"first": {}, "second": {}})
    assert any(k.startswith("optim/velocity/") for k in results["first"])
    _assert_bitwise_equal(results["second"], results["first"], "second run")


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    runs = {n: {"ANYCNN_NUM_THREADS": n} for n in ("1", "2", "4")}
    results = _train_side_by_side(tmp_path, runs)
    _assert_bitwise_equal(results["2"], results["1"], "2 threads vs 1")
    _assert_bitwise_equal(results["4"], results["1"], "4 threads vs 1")


# --------------------------------------------------------------------------------------------
# Tolerance between backends
# --------------------------------------------------------------------------------------------
@pytest.fixture
def one_torch_thread():
    torch = pytest.importorskip("torch")
    saved = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine, 2 threads made this 100x slower
    yield
    torch.set_num_threads(saved)


def _twenty_steps(backend, dtype, images, labels):
    net = models.lenet5(backend=backend, dtype=dtype, seed=0)
    prep = train.Preprocessing.fit(net, images)
    low, high = train.target_values(net)
    table = datasets.one_hot(np.arange(10), 10, low=low, high=high, dtype=dtype)
    opt = optim.SGD(net, 0.05)
    be = net.backend
    for step in range(20):
        picks = slice(8 * step, 8 * step + 8)
        net.compute_gradients(
            be.asarray(prep(images[picks], dtype), dtype=dtype),
            be.asarray(table[labels[picks]], dtype=dtype),
        )
        opt.step()
    return {k: v.astype(np.float64) for k, v in _host(net).items()}


# Measured on the 2-core x86_64 CPU box (numpy 2.4, array-api-strict, torch CPU): LeNet-5, the same
# initial parameters and the same 20 batches of 8 MNIST images, plain SGD at rate 0.05; the figure
# is max over parameters of max|a - b| / max|a|:
#   float64: numpy-strict 2.3e-15, numpy-torch 4.6e-16, strict-torch 2.6e-15
#   float32: numpy-strict 2.2e-06, numpy-torch 3.9e-07, strict-torch 2.3e-06
# The bounds asserted are far looser (rounding grows with steps and with the data), but tight
# enough to catch an op that differs between backends.
TOLERANCE = {"float64": 1e-10, "float32": 1e-4}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_backends_agree_after_twenty_sgd_steps(dtype, one_torch_thread):
    ds = datasets.load("mnist", limit=160)
    names = [n for n in ("numpy", "array_api_strict", "torch") if lookup(n).available]
    if len(names) < 2:
        pytest.skip("needs two CPU backends")
    results = {n: _twenty_steps(n, dtype, ds.train_images, ds.train_labels) for n in names}
    report = []
    for a, b in itertools.combinations(names, 2):
        difference = max(
            np.max(np.abs(results[a][k] - results[b][k])) / np.max(np.abs(results[a][k]))
            for k in results[a]
        )
        report.append(f"{dtype} {a} vs {b}: max relative parameter difference {difference:.2g}")
        assert difference < TOLERANCE[dtype], report[-1]
    print("\n".join(report))  # the measurement: pytest -rP tests/test_hardening.py shows it
