"""The ``anycnn`` command line, run in-process (``anycnn.cli.main``) and once as a subprocess."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anycnn import backend as registry
from anycnn import datasets
from anycnn.cli import EXIT_DIVERGED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
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
        "1e30",
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
    from anycnn import plots

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
