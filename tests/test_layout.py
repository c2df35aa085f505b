"""The package's rooms (issue 19, item 6) and the module paths of 0.1 that still work."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import anycnn

OLD_PATHS = {
    "anycnn.train": "anycnn.training.loop",
    "anycnn.optim": "anycnn.training.optim",
    "anycnn.checkpoint": "anycnn.training.checkpoint",
    "anycnn.plots": "anycnn.training.plots",
    "anycnn.distributed": "anycnn.training.distributed",
    "anycnn.datasets": "anycnn.data",
    "anycnn.download": "anycnn.data.download",
}


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_module_path_is_the_new_module(old):
    assert importlib.import_module(old) is importlib.import_module(OLD_PATHS[old])
    assert getattr(anycnn, old.split(".")[1]) is importlib.import_module(OLD_PATHS[old])


def test_old_paths_work_in_a_fresh_interpreter():
    code = (
        "from anycnn.train import Trainer\n"
        "from anycnn.optim import SGD\n"
        "from anycnn.datasets import load, read_idx, normalize\n"
        "import anycnn.checkpoint, anycnn.training.checkpoint as new\n"
        "assert anycnn.checkpoint is new and Trainer.__module__ == 'anycnn.training.loop'\n"
        "assert anycnn.train.train is anycnn.training.loop.train\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_monkeypatch_of_an_old_path_reaches_the_code(monkeypatch):
    import anycnn.optim as old

    monkeypatch.setattr(old, "_marker_for_test", 1, raising=False)
    assert anycnn.training.optim._marker_for_test == 1


def test_the_package_is_rooms_not_a_flat_list():
    root = Path(anycnn.__file__).parent
    modules = sorted(p.stem for p in root.glob("*.py"))
    rooms = sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())
    assert rooms == ["backend", "data", "layers", "training"], rooms
    # The maths, the network and the public entry points stay at the top; training, data and the
    # backends' contract live in their rooms.
    for moved in ("train", "optim", "checkpoint", "plots", "distributed", "datasets", "download"):
        assert moved not in modules, moved
