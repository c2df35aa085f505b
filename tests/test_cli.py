"""The ``anycnn`` command line, run in-process (``anycnn.cli.main``) and once as a subprocess."""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anycnn import datasets
from anycnn.backend import registry
from anycnn.cli import EXIT_CLOSED_PIPE, EXIT_DIVERGED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err):
    # "anycnn: ..." lines are the library's log (issue 15), shown under `anycnn train`
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("anycnn: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    return lines[0]


def _write_idx(path, array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.tobytes())


def _idx_dir(tmp_path, labels_max=9, n=30, files=None):
    folder = tmp_path / "idx"
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28))
    labels = np.arange(n) % (labels_max + 1)
    content = {
        "train-images-idx3-ubyte.gz": images,
        "train-labels-idx1-ubyte.gz": labels,
        "t10k-images-idx3-ubyte.gz": images,
        "t10k-labels-idx1-ubyte.gz": labels,
    }
    for name in files or content:
        _write_idx(folder / name, content[name])
    return folder


def test_train_dlt_prints_epochs_and_writes_metrics(capsys, tmp_path):
    metrics = tmp_path / "m.json"
    code, out, err = _run(
        capsys,
        "train",
        "--model",
        "dlt",
        "--limit",
        "200",
        "--epochs",
        "2",
        "--backend",
        "cpu",
        "--metrics",
        str(metrics),
        "--checkpoint-dir",
        str(tmp_path / "ck"),
    )
    assert code == EXIT_OK, err
    assert "backend numpy on cpu" in out
    assert "optimizer sgd, lr 1, batch 50" in out  # DeepLearnToolbox's settings by default
    assert "epoch 1/2" in out and "epoch 2/2" in out and "test error" in out
    data = json.loads(metrics.read_text())
    assert data["model"] == "dlt" and len(data["history"]) == 2
    assert data["command"].startswith("anycnn train --model dlt")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "epoch-0001.npz",
        "epoch-0002.npz",
    ]

    code, out, err = _run(
        capsys,
        "evaluate",
        str(tmp_path / "ck" / "epoch-0002.npz"),
        "--limit",
        "200",
        "--backend",
        "cpu",
    )
    assert code == EXIT_OK, err
    assert f"test error {100 * data['final_test_error']:.2f}%" in out

    # the same directory again without --resume would mix two runs: refused
    code, out, err = _run(
        capsys,
        "train",
        "--model",
        "dlt",
        "--limit",
        "200",
        "--epochs",
        "3",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
    )
    assert code == EXIT_USAGE and "pass --resume" in _one_line_error(err)
    code, out, err = _run(
        capsys,
        "train",
        "--model",
        "dlt",
        "--limit",
        "200",
        "--epochs",
        "3",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--resume",
        "--quiet",
    )
    assert code == EXIT_OK, err
    assert (tmp_path / "ck" / "epoch-0003.npz").exists()
    assert len(json.loads(metrics.read_text())["history"]) == 2  # --metrics was not given again


def test_train_with_plots(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = _run(
        capsys,
        "train",
        "--model",
        "dlt",
        "--limit",
        "50",
        "--epochs",
        "1",
        "--plots",
        str(tmp_path / "plots"),
        "--quiet",
    )
    assert code == EXIT_OK, err
    for name in ("learning_curves.png", "kernels.png", "feature_maps.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("model", [[], ["--model", "cnn1d"]], ids=["default", "cnn1d"])
def test_train_gunpoint_with_plots_and_checkpoints(capsys, tmp_path, model):
    """The 1-D zoo models on a UCR set train like MNIST: checkpoints, metrics and the three
    figures (issue 18); without --model a UCR set gets cnn1d_global and its random shifts and
    reversals."""
    pytest.importorskip("matplotlib")
    code, out, err = _run(
        capsys,
        "train",
        *model,
        "--dataset",
        "gunpoint",
        "--limit",
        "20",
        "--epochs",
        "1",
        "--checkpoint-dir",
        str(tmp_path / "ck"),
        "--metrics",
        str(tmp_path / "m.json"),
        "--plots",
        str(tmp_path / "plots"),
        "--quiet",
    )
    assert code == EXIT_OK, err
    assert (tmp_path / "ck" / "epoch-0001.npz").exists()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["history"][0]["epoch"] == 1
    recipe = ("cnn1d_global", {"kind": "shift", "fraction": 0.1, "reverse": 0.5})
    expected = recipe if not model else ("cnn1d", None)
    assert (metrics["model"], metrics["augment"]) == expected
    for name in ("learning_curves.png", "kernels.png", "feature_maps.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "alexnet"], "argument --model: invalid choice: 'alexnet'"),
        (["train", "--dataset", "cifar"], "unknown data set 'cifar'"),
        (["train", "--backend", "tpu"], "unknown backend 'tpu'"),
        (["train", "--lr", "nan"], "argument --lr: must be a finite number >= 0, got nan"),
        (["train", "--lr", "-0.1"], "argument --lr: must be a finite number >= 0"),
        (["train", "--lr", "inf"], "argument --lr: must be a finite number >= 0"),
        (["train", "--epochs", "0"], "argument --epochs: must be >= 1"),
        (["train", "--momentum", "1.5", "--optimizer", "momentum"], "--momentum must be in [0, 1)"),
        (["train", "--model", "dlt", "--loss", "cross_entropy"], "squared_error only"),
        (["train", "--layer-rate", "conv9=0.5", "--limit", "10"], "'conv9' is neither a layer"),
        (["train", "--resume"], "--resume needs --checkpoint-dir"),
        (["evaluate", "nowhere.npz", "--backend", "cpu"], "nowhere.npz: no such checkpoint file"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(capsys, argv, message):
    code, out, err = _run(capsys, *argv)
    assert code == EXIT_USAGE
    assert message in _one_line_error(err)


def test_unavailable_backend(capsys):
    cuda = registry.lookup("cuda")
    if cuda.available:
        pytest.skip("CUDA is usable here")
    code, out, err = _run(capsys, "train", "--backend", "cuda", "--limit", "10")
    assert code == EXIT_USAGE
    assert "backend 'cupy' is unavailable" in _one_line_error(err)


def test_data_directory_without_the_four_files(capsys, tmp_path):
    folder = _idx_dir(tmp_path, files=["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"])
    code, out, err = _run(capsys, "train", "--dataset", str(folder))
    assert code == EXIT_USAGE
    line = _one_line_error(err)
    assert "missing t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte" in line


def test_labels_out_of_range(capsys, tmp_path):
    folder = _idx_dir(tmp_path, labels_max=11)
    code, out, err = _run(capsys, "train", "--model", "dlt", "--dataset", str(folder), "--quiet")
    assert code == EXIT_USAGE
    assert "labels out of range" in _one_line_error(err)
    assert "'dlt' has 10 outputs" in err


def test_checkpoint_of_another_model(capsys, tmp_path):
    code, _, err = _run(
        capsys,
        "train",
        "--model",
        "dlt",
        "--limit",
        "20",
        "--quiet",
        "--checkpoint-dir",
        str(tmp_path),
    )
    assert code == EXIT_OK, err
    code, out, err = _run(
        capsys,
        "train",
        "--model",
        "lenet5",
        "--limit",
        "20",
        "--resume",
        "--checkpoint-dir",
        str(tmp_path),
        "--quiet",
    )
    assert code == EXIT_USAGE
    assert "this checkpoint is of another model: it holds 'dlt'" in _one_line_error(err)


def test_debug_shows_the_traceback(capsys):
    code, out, err = _run(capsys, "train", "--dataset", "cifar", "--debug")
    assert code == EXIT_USAGE
    assert "Traceback" in err and "DatasetError" in err


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to NaN
def test_divergence_exits_3_naming_epoch_and_batch(capsys, tmp_path):
    code, out, err = _run(
        capsys,
        "train",
        "--model",
        "lenet5",
        "--limit",
        "100",
        "--lr",
        "1e38",  # 1e30 stays finite now: the logits saturate (issue 13, bug 8)
        "--optimizer",
        "sgd",
        "--batch-size",
        "10",
        "--quiet",
        "--checkpoint-dir",
        str(tmp_path),
    )
    assert code == EXIT_DIVERGED
    line = _one_line_error(err)
    assert "training diverged" in line and "at epoch 1, batch" in line
    assert list(tmp_path.iterdir()) == []


def test_gradcheck(capsys):
    code, out, err = _run(capsys, "gradcheck", "--model", "dlt", "--backend", "cpu")
    assert code == EXIT_OK, out + err
    assert "PASS" in out and "conv1.kernel" in out
    code, out, err = _run(capsys, "gradcheck", "--model", "dlt", "--tolerance", "0")
    assert code == EXIT_FAILED and "FAIL" in out


def test_gradcheck_float32_passes(capsys):
    """Issue 13, bug 2: float32 back-propagation against float64 differences of its copy."""
    code, out, err = _run(capsys, "gradcheck", "--model", "dlt", "--dtype", "float32")
    assert code == EXIT_OK, out + err
    assert "PASS" in out and "tolerance 1.0e-04" in out


def test_backends_table(capsys):
    code, out, err = _run(capsys, "backends")
    assert code == EXIT_OK
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["name", "aliases", "available"]
    numpy_row = next(line for line in lines if line.startswith("numpy"))
    assert "cpu" in numpy_row and " yes " in numpy_row
    assert any(line.startswith("cupy") for line in lines)


def test_version_and_help(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == EXIT_OK and out.startswith("anycnn ")
    code, out, _ = _run(capsys)
    assert code == EXIT_USAGE and "train" in out


def test_python_dash_m_anycnn(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "anycnn",
            "train",
            "--model",
            "dlt",
            "--limit",
            "500",
            "--epochs",
            "1",
            "--metrics",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "epoch 1/1" in done.stdout and "test error" in done.stdout
    assert json.loads((tmp_path / "m.json").read_text())["train_size"] == 500
    assert datasets.load("mnist", limit=1).num_classes == 10


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(capsys, tmp_path):
    common = [
        "train",
        "--model",
        "dlt",
        "--limit",
        "100",
        "--batch-size",
        "10",
        "--quiet",
        "--optimizer",
        "momentum",
        "--lr",
        "0.5",
        "--seed",
        "4",
    ]
    assert main([*common, "--epochs", "2", "--checkpoint-dir", str(tmp_path / "a")]) == 0
    assert main([*common, "--epochs", "1", "--checkpoint-dir", str(tmp_path / "b")]) == 0
    assert (
        main([*common, "--epochs", "2", "--checkpoint-dir", str(tmp_path / "b"), "--resume"]) == 0
    )
    capsys.readouterr()
    with (
        np.load(tmp_path / "a" / "epoch-0002.npz") as a,
        np.load(tmp_path / "b" / "epoch-0002.npz") as b,
    ):
        keys = [k for k in a.files if k.startswith(("param/", "optim/"))]
        assert keys and sorted(keys) == sorted(
            k for k in b.files if k.startswith(("param/", "optim/"))
        )
        for key in keys:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_plots_without_matplotlib_say_how_to_install_it(monkeypatch, tmp_path):
    from anycnn.training import plots

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(plots.MatplotlibMissingError, match=r'pip install "anycnn\[plot\]"'):
        plots.learning_curves(
            [{"epoch": 1, "train_error": 0.5, "test_error": 0.4}], tmp_path / "c.png"
        )
    assert not (tmp_path / "c.png").exists()


def test_plot_functions_write_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from anycnn import models, plots

    net = models.lenet5(backend="cpu")
    history = [
        {
            "epoch": e,
            "train_error": 0.1 / e,
            "test_error": 0.12 / e,
            "train_loss": 1.0 / e,
            "test_loss": 1.1 / e,
        }
        for e in (1, 2, 3)
    ]
    example = np.zeros((1, 1, 32, 32), np.float32)
    written = plots.save_plots(tmp_path, network=net, history=history, example=example)
    assert [p.name for p in written] == ["learning_curves.png", "kernels.png", "feature_maps.png"]
    for path in written:
        assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no convolution layer conv9"):
        plots.kernels(net, tmp_path / "k.png", layer="conv9")


# --- issue 13: first use ------------------------------------------------------------------------
DLT_QUICK = ["train", "--model", "dlt", "--limit", "40", "--epochs", "1"]


def test_anycnn_backend_environment_variable_is_used(capsys, monkeypatch):
    """Bug 4: without --backend, ANYCNN_BACKEND chooses (the README says so)."""
    monkeypatch.setenv("ANYCNN_BACKEND", "strict")
    code, out, err = _run(capsys, *DLT_QUICK)
    assert code == EXIT_OK, err
    assert "backend array_api_strict" in out
    monkeypatch.setenv("ANYCNN_BACKEND", "tpu")
    code, out, err = _run(capsys, *DLT_QUICK)
    assert code == EXIT_USAGE
    assert "ANYCNN_BACKEND='tpu': unknown backend 'tpu'" in _one_line_error(err)
    code, out, err = _run(capsys, *DLT_QUICK, "--backend", "cpu", "--quiet")  # the option wins
    assert code == EXIT_OK, err


def _closed_pipe(argv, *, read_first=True):
    """Run the CLI with a stdout pipe whose reader reads one line and goes away, or (with
    ``read_first=False``) whose read end is closed before the child starts, so its first
    write meets a broken pipe whatever the pipe's capacity."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    if not read_first:
        reader, writer = os.pipe()
        os.close(reader)
        try:
            done = subprocess.run(
                [sys.executable, "-m", "anycnn", *argv],
                stdout=writer,
                stderr=subprocess.PIPE,
                env=env,
                timeout=300,
            )
        finally:
            os.close(writer)
        return b"", done.returncode, done.stderr.decode()
    child = subprocess.Popen(
        [sys.executable, "-m", "anycnn", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    first = child.stdout.readline()
    child.stdout.close()
    err = child.stderr.read().decode()
    return first, child.wait(timeout=300), err


# Many short epochs: the reader goes away after the first line, and the run must still have lines
# to write then however long the loaded machine keeps the reader from closing its end (with 3
# epochs a reader descheduled for a few tenths of a second let the run finish with status 0).
TRAIN_PIPED = [*DLT_QUICK, "--limit", "200", "--epochs", "200", "--batch-size", "10"]


@pytest.mark.parametrize("argv", [["backends"], TRAIN_PIPED], ids=["backends", "train"])
def test_closed_pipe_ends_quietly(argv):
    """Bug 6: a reader that is gone (`anycnn ... | true`) ends the run without 'Broken pipe'
    or a traceback, with status 141 (128 + SIGPIPE) as Unix tools do."""
    _, code, err = _closed_pipe(argv, read_first=False)
    assert code == EXIT_CLOSED_PIPE == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err


def test_head_one_ends_training_quietly():
    """`anycnn train | head -1`: the epoch lines written after the reader left end the run."""
    first, code, err = _closed_pipe(TRAIN_PIPED)
    assert first
    assert code == EXIT_CLOSED_PIPE, err
    assert "Broken pipe" not in err and "Traceback" not in err and "error" not in err


def _unwritable(tmp_path):
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/sys/anycnn-test-plots"  # root may write anywhere but here
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return str(folder / "plots")


def test_plots_are_checked_before_training(capsys, tmp_path, monkeypatch):
    """Bug 3: an unwritable --plots DIR and a missing matplotlib are one-line usage errors
    before the first epoch (no metrics written), not a traceback after training."""
    metrics = tmp_path / "m.json"
    common = [*DLT_QUICK, "--metrics", str(metrics)]
    code, out, err = _run(capsys, *common, "--plots", _unwritable(tmp_path))
    assert code == EXIT_USAGE
    assert "--plots" in _one_line_error(err) and "cannot write there" in err
    assert not metrics.exists() and "epoch 1/1" not in out
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    code, out, err = _run(capsys, *common, "--plots", str(tmp_path / "plots"))
    assert code == EXIT_USAGE
    assert 'pip install "anycnn[plot]"' in _one_line_error(err)
    assert not metrics.exists() and not (tmp_path / "plots").exists()


def test_resume_names_what_differs(capsys, tmp_path):
    """Bug 5: resuming with another --dtype names the dtype; another --lr, --limit or
    --batch-size is refused with the checkpoint's value, not accepted silently."""
    ck = ["--checkpoint-dir", str(tmp_path), "--quiet"]
    code, _, err = _run(capsys, *DLT_QUICK, *ck)
    assert code == EXIT_OK, err
    for extra, words in [
        (["--dtype", "float64"], "--dtype float64 (the checkpoint's: float32)"),
        (["--lr", "0.5"], "--lr/--schedule lr 0.5 (the checkpoint's: lr 1)"),
        (["--limit", "30"], "--limit: 30 training images (the checkpoint's run had 40)"),
        (["--batch-size", "10"], "--batch-size 10 (the checkpoint's: 40)"),
    ]:
        code, out, err = _run(capsys, *DLT_QUICK, *ck, "--resume", "--epochs", "2", *extra)
        assert code == EXIT_USAGE, (extra, err)
        line = _one_line_error(err)
        assert words in line, line
        assert "anycnn train --model dlt --limit 40" in line  # the command that wrote it
    code, out, err = _run(capsys, *DLT_QUICK, *ck, "--resume", "--epochs", "2")
    assert code == EXIT_OK, err
    # a default left out on resuming that differs from the checkpoint's is said, not refused
    other = ["--checkpoint-dir", str(tmp_path / "b"), "--quiet"]
    assert _run(capsys, *DLT_QUICK, *other, "--batch-size", "20")[0] == EXIT_OK
    code, out, err = _run(capsys, *DLT_QUICK, *other, "--resume", "--epochs", "2")
    assert code == EXIT_OK, err
    assert (
        err.startswith("note: resuming from ") and "--batch-size 40 (the checkpoint's: 20)" in err
    )


def test_checkpoint_of_another_dtype_names_the_dtype(tmp_path):
    from anycnn import checkpoint, models, optim

    net = models.dlt(dtype="float64")
    path = checkpoint.save_checkpoint(
        tmp_path / "c.npz", net, epoch=1, optimizer=optim.SGD(net, 0.1)
    )
    with pytest.raises(checkpoint.CheckpointError, match="dtype 'float64' in the checkpoint, "):
        checkpoint.load_checkpoint(path, network=models.dlt(dtype="float32"))


def test_train_says_what_it_kept(capsys, tmp_path):
    code, out, err = _run(capsys, *DLT_QUICK)
    assert code == EXIT_OK, err
    assert "nothing was kept on disk (--checkpoint-dir DIR" in out
    code, out, err = _run(
        capsys, *DLT_QUICK, "--checkpoint-dir", str(tmp_path), "--metrics", str(tmp_path / "m")
    )
    assert code == EXIT_OK, err
    assert f"kept: checkpoints in {tmp_path} (latest epoch-0001.npz;" in out
    assert f"metrics in {tmp_path / 'm'}" in out


def test_header_and_epoch_lines_read_as_words(capsys):
    code, out, err = _run(capsys, "train", "--limit", "40", "--epochs", "1")
    assert code == EXIT_OK, err
    assert "lr 0.02, halved every 4 epochs, momentum 0.9" in out
    assert "Step(" not in out and "lr=" not in out
    assert "train error (running)" in out


def test_interrupt_says_what_was_kept(capsys, tmp_path, monkeypatch):
    from anycnn import train

    real = train.train

    def stopped_after_one_epoch(*args, **kwargs):
        def ctrl_c(record):
            raise KeyboardInterrupt

        kwargs["callbacks"] = [*kwargs["callbacks"], ctrl_c]
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train", stopped_after_one_epoch)
    code, out, err = _run(capsys, *DLT_QUICK, "--epochs", "3")
    assert code == 130
    assert (
        err.strip() == "interrupted: nothing was kept (--checkpoint-dir DIR keeps the network "
        "after every epoch)"
    )
    code, out, err = _run(capsys, *DLT_QUICK, "--epochs", "3", "--checkpoint-dir", str(tmp_path))
    assert code == 130
    assert f"interrupted: kept: checkpoints in {tmp_path} (latest epoch-0001.npz" in err
    assert "--resume" in err


def _options(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from ((f"{name} {o}", a, sub) for o, a, _ in _options(sub))
        elif action.option_strings and action.dest != "help":
            yield action.option_strings[0], action, parser


def test_every_option_has_help_with_its_default():
    from anycnn.cli import build_parser

    parser = build_parser()
    seen = 0
    for name, action, sub in _options(parser):
        seen += 1
        assert action.help, f"{name} has no help text"
        text = sub.formatter_class(sub.prog)._get_help_string(action)
        if not isinstance(action, argparse._StoreTrueAction):
            assert "default" in text, f"{name}: its help does not say its default: {text!r}"
    assert seen > 30


def test_backends_says_whether_compiled_kernels_are_active(capsys, monkeypatch):
    code, out, err = _run(capsys, "backends")
    assert code == EXIT_OK
    line = next(x for x in out.splitlines() if x.startswith("numpy's compiled CPU kernels: "))
    numba_there = importlib.util.find_spec("numba") is not None
    assert ("active (Numba" in line) == numba_there, line
    monkeypatch.setenv("ANYCNN_NUMBA", "0")
    code, out, err = _run(capsys, "backends")
    assert "numpy's compiled CPU kernels: off: ANYCNN_NUMBA=0" in out


def test_a_slow_warm_up_meets_a_closed_pipe_in_the_main_thread(monkeypatch):
    """The "compiling CPU kernels" line comes from a timer thread when the warm-up takes over a
    second (a loaded machine): a reader gone by then must not give that thread a traceback
    (seen as a flake of test_head_one_ends_training_quietly); the main thread meets the closed
    pipe at its next write, which main() turns into the quiet exit status 141."""
    import io
    import threading
    import time
    from types import SimpleNamespace

    from anycnn import cli

    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    thread_errors = []
    monkeypatch.setattr(threading, "excepthook", thread_errors.append)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    base = SimpleNamespace(compile_note=lambda: "compiling CPU kernels once")
    backend = SimpleNamespace(base=base, xp=np, asarray=lambda a, dtype: np.asarray(a, dtype=dtype))
    net = SimpleNamespace(
        backend=backend,
        dtype_name="float32",
        input_shape=(1, 2, 2),
        output_shape=(2,),
        compute_gradients=lambda x, t, check: time.sleep(1.5),
    )
    with pytest.raises(BrokenPipeError):
        cli._warm_up(net, 1, quiet=False)
    assert thread_errors == []
