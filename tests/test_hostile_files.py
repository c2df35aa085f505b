"""Hostile and unlucky files (issue 20): a checkpoint, an IDX data directory or an output path
handed over by someone else must never run code, exhaust memory, lose work or end in a traceback.

Each test here was written against a defect and failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anycnn import checkpoint as ckpt
from anycnn import models, optim
from anycnn.cli import EXIT_USAGE, main

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    env.pop("ANYCNN_TEST_CHECKPOINT_STALL", None)
    env.update(extra)
    return env


def _small_checkpoint(path, *, kind="momentum", epoch=1, seed=1):
    """A DLT checkpoint with an optimizer and a stored generator state."""
    net = models.build("dlt", backend="cpu", dtype="float32", seed=seed)
    opt = optim.build_optimizer(kind, net, lr=0.01)
    rng = np.random.default_rng(seed)
    return ckpt.save_checkpoint(
        path, net, epoch=epoch, optimizer=opt, rng=rng, info={"dataset": "mnist"}
    )


def _arrays(path):
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _write(path, arrays):
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def _edit_info(path, change):
    arrays = _arrays(path)
    info = json.loads(arrays["meta/info"].tobytes())
    change(info)
    arrays["meta/info"] = np.frombuffer(json.dumps(info).encode(), np.uint8)
    _write(path, arrays)


# --------------------------------------------------------------------------------------------
# 1. Nothing named in a file is looked up as code
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["test", "seed", "__import__", "RandomState", "default_rng", "bit_generator", 7, None]
)
def test_a_bit_generator_name_is_only_a_key_into_an_allow_list(tmp_path, monkeypatch, name):
    path = _small_checkpoint(tmp_path / "c.npz")
    _edit_info(path, lambda info: info["rng_state"].__setitem__("bit_generator", name))
    called = []
    for function in ("test", "seed"):
        monkeypatch.setattr(np.random, function, lambda *a, f=function, **k: called.append(f))
    with pytest.raises(ckpt.CheckpointError, match="is not one of PCG64, PCG64DXSM") as caught:
        ckpt.load_checkpoint(path)
    assert str(path) in str(caught.value)
    assert called == []


@pytest.mark.parametrize(
    "state, message",
    [
        (-1, "a int, not an object"),
        ({"bit_generator": "PCG64", "state": -1}, "bad random generator state for PCG64"),
        (
            {
                "bit_generator": "PCG64",
                "state": {"state": -1, "inc": 1},
                "has_uint32": 0,
                "uinteger": 0,
            },
            "OverflowError",
        ),
    ],
)
def test_a_bad_generator_state_is_one_checkpoint_error(tmp_path, state, message):
    path = _small_checkpoint(tmp_path / "c.npz")
    _edit_info(path, lambda info: info.__setitem__("rng_state", state))
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.load_checkpoint(path)


def test_evaluate_never_runs_a_conftest_next_to_a_crafted_checkpoint(tmp_path):
    """The attack of issue 20: ``numpy.random.test`` starts pytest, which imports conftest.py from
    the current directory. A real process in a folder holding the crafted file and a conftest.py
    that would leave a marker file: exit 2, one line, no marker."""
    path = _small_checkpoint(tmp_path / "model.npz")
    _edit_info(path, lambda info: info["rng_state"].__setitem__("bit_generator", "test"))
    marker = tmp_path / "pwned"
    (tmp_path / "conftest.py").write_text(
        f"import os\nopen({str(marker)!r}, 'w').close()\nos._exit(0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "anycnn", "evaluate", "model.npz"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=120,
    )
    assert not marker.exists()
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr.count("\n") == 1 and "bit generator 'test' is not one of" in done.stderr


def test_resume_with_a_crafted_generator_name_is_refused(tmp_path, capsys):
    folder = tmp_path / "ck"
    folder.mkdir()
    argv = ["train", "--model", "dlt", "--limit", "64", "--epochs", "1", "--batch-size", "32"]
    assert main([*argv, "--checkpoint-dir", str(folder), "--quiet"]) == 0
    path = folder / "epoch-0001.npz"
    _edit_info(path, lambda info: info["rng_state"].__setitem__("bit_generator", "seed"))
    before = np.random.get_state()[1].copy()  # noqa: NPY002 - the global one is the point
    code = main([*argv[:-4], "--epochs", "2", "--checkpoint-dir", str(folder), "--resume"])
    assert code == EXIT_USAGE
    assert np.array_equal(np.random.get_state()[1], before)  # noqa: NPY002
    assert "bit generator 'seed' is not one of" in capsys.readouterr().err
