"""Output paths that are not regular files (a FIFO, a device, a socket, a symlink to one) are
refused before training, never opened to be read (a FIFO would block) nor replaced."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from anycnn import train
from anycnn.cli import EXIT_USAGE, main
from anycnn.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]
DLT = ["train", "--model", "dlt", "--limit", "20", "--epochs", "1", "--quiet"]


def _fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


def _device(tmp_path):
    """A character device like /dev/null (1, 3), made in the temporary folder (root only)."""
    path = tmp_path / "null"
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        pytest.skip("mknod of a character device needs root")
    return path


def _socket(tmp_path):
    path = tmp_path / "sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays
    return path


def _link_to_fifo(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(_fifo(tmp_path))
    return link


def _link_into_dev(tmp_path):
    link = tmp_path / "link"
    link.symlink_to("/dev/null")  # never opened nor written: only its lstat/stat are read
    return link


SPECIAL = [
    ("FIFO", _fifo, r"is a FIFO"),
    ("device", _device, r"is a character device"),
    ("socket", _socket, r"is a socket"),
    ("link to FIFO", _link_to_fifo, r"is a symlink to a FIFO"),
    ("link into /dev", _link_into_dev, r"is a symlink to a character device \(/dev/null\)"),
]


def _kind(path):
    return stat.S_IFMT(os.lstat(path).st_mode)


@pytest.mark.parametrize("option", ["--metrics", "--plots", "--checkpoint-dir"])
@pytest.mark.parametrize("case", SPECIAL, ids=[c[0] for c in SPECIAL])
def test_cli_refuses_special_output_before_training(case, option, tmp_path, capsys, monkeypatch):
    _, make, pattern = case
    monkeypatch.chdir(tmp_path)
    path = make(tmp_path)
    before = _kind(path)
    monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("training started"))
    code = main([*DLT, option, str(path)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == EXIT_USAGE, err
    assert len(lines) == 1 and lines[0].startswith(f"error: anycnn train: {option} "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "is a directory" not in lines[0]
    assert _kind(path) == before  # untouched


def test_cli_fifo_metrics_does_not_hang(tmp_path):
    """Before the fix the run trained, then blocked forever opening the FIFO to read it."""
    fifo = _fifo(tmp_path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    done = subprocess.run(
        [sys.executable, "-m", "anycnn", *DLT, "--metrics", str(fifo)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert "is a FIFO" in done.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("case", SPECIAL, ids=[c[0] for c in SPECIAL])
def test_atomic_write_refuses_special_files(case, tmp_path):
    """The library refuses too (a checkpoint or a plot inside a folder, written by any caller)."""
    _, make, pattern = case
    path = make(tmp_path)
    before = _kind(path)
    with pytest.raises(ValueError, match=pattern):
        ckpt.atomic_write(path, lambda stream: stream.write(b"x"), what="checkpoint")
    with pytest.raises(ValueError, match=pattern):
        train._write_json(path, {"a": 1})  # never opened for reading: a FIFO would block here
    assert _kind(path) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_atomic_write_still_replaces_files_and_links_to_files(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    ckpt.atomic_write(link, lambda stream: stream.write(b"{1}"))
    assert link.read_text() == "{1}" and not link.is_symlink()  # replaced, never followed
    assert target.read_text() == "{}"
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    ckpt.atomic_write(dangling, lambda stream: stream.write(b"y"))
    assert dangling.read_text() == "y"
