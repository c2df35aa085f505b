"""``anycnn download`` against a local HTTP server on 127.0.0.1 (CI has no internet): files are
verified against the published MD5s, a corrupt one never takes its final name, and the result
is where ``anycnn train`` looks."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from anycnn import datasets
from anycnn import download as fetch
from anycnn.cli import EXIT_OK, EXIT_USAGE, main

MNIST = Path(__file__).resolve().parents[1] / "data" / "mnist"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve ``tmp_path / "www"`` on a free port of 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def offline(monkeypatch):
    """No official mirror: only the local server is tried."""
    for name, (_, packed, raw) in list(fetch.SOURCES.items()):
        monkeypatch.setitem(fetch.SOURCES, name, ((), packed, raw))


def test_download_mnist_verifies_and_is_found(server, offline, tmp_path, capsys, monkeypatch):
    root, url = server
    for path in MNIST.glob("*.gz"):
        shutil.copy(path, root / path.name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("ANYCNN_DATA", raising=False)
    code = main(["download", "mnist", "--mirror", url])
    out, err = capsys.readouterr()
    assert code == EXIT_OK, err
    folder = tmp_path / "xdg" / "anycnn" / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in MNIST.glob("*.gz"))
    assert out.count("MD5 verified") == 4 and "anycnn train --dataset mnist" in out
    assert datasets.search_path("mnist").index(folder) > 0
    loaded = datasets.load(folder, limit=5)
    assert loaded.train_images.shape == (5, 28, 28)
    # a second run finds the files intact and fetches nothing (the server is gone)
    for path in root.iterdir():
        path.unlink()
    assert main(["download", "mnist", "--to", str(tmp_path / "xdg" / "anycnn")]) == EXIT_OK
    assert capsys.readouterr().out.count("already there, checksum verified") == 4


def test_corrupt_download_is_refused_and_not_kept(server, offline, tmp_path, capsys):
    root, url = server
    for path in MNIST.glob("*.gz"):
        shutil.copy(path, root / path.name)
    labels = root / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-100])  # truncated
    code = main(["download", "mnist", "--to", str(tmp_path / "data"), "--mirror", url])
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE
    line = err.strip()
    assert line.startswith("error: download mnist: no mirror gave t10k-labels-idx1-ubyte.gz")
    assert "ec29112dd5afa0611ce80d1b7f02629c" in line and "checksum mismatch" in line
    folder = tmp_path / "data" / "mnist"
    assert not (folder / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left


def test_fashion_mnist_checksums_and_missing_files(server, offline, tmp_path, capsys):
    root, url = server
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not the data set")
    code = main(["download", "fashion-mnist", "--to", str(tmp_path), "--mirror", url])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "8d4fb7e6c68d591d4c3dfef9ec88bf0d" in err and "checksum mismatch" in err
    (root / "train-images-idx3-ubyte.gz").unlink()
    code = main(["download", "fashion-mnist", "--to", str(tmp_path), "--mirror", url])
    assert code == EXIT_USAGE and "HTTP 404" in capsys.readouterr().err
