"""Hostile and unlucky files (issue 20): a checkpoint, an IDX data directory or an output path
handed over by someone else must never run code, exhaust memory, lose work or end in a traceback.

Each test here was written against a defect and failed before its fix."""

from __future__ import annotations

import io
import json
import math
import os
import re
import resource
import struct
import subprocess
import sys
import zipfile
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


# --------------------------------------------------------------------------------------------
# 2, 4, 9. The structure is checked from the zip directory and the .npy headers before any data
# --------------------------------------------------------------------------------------------
def _npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _rezip(path, members, *, compression=zipfile.ZIP_STORED, extra=()):
    """Rewrite ``path`` with ``members`` (name -> array or raw .npy bytes) plus ``extra``
    (name, bytes, compression) members."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, value in members.items():
            data = value if isinstance(value, bytes) else _npy(value)
            archive.writestr(name + ".npy", data)
        for name, data, method in extra:
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=method)


def _evaluate_fails(path, capsys, message):
    """``anycnn evaluate`` exits 2 with exactly one line naming the file and ``message``."""
    code = main(["evaluate", str(path), "--limit", "8"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err, err
    assert re.search(message, err), err


def _zeros_npy_stream(shape, dtype="<f4"):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return header.getvalue(), math.prod(shape) * np.dtype(dtype).itemsize


def _deflated_zeros(archive, name, shape):
    """A deflated member of ``shape`` float32 zeros, written in chunks (a bomb: ~1000:1)."""
    head, size = _zeros_npy_stream(shape)
    info = zipfile.ZipInfo(name + ".npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    with archive.open(info, "w", force_zip64=True) as stream:
        stream.write(head)
        chunk = bytes(2**20)
        for _ in range(size // len(chunk)):
            stream.write(chunk)
        stream.write(bytes(size % len(chunk)))


def test_a_deflate_bomb_is_refused_from_the_directory_before_decompressing(tmp_path, capsys):
    """A 256 MiB member of zeros compressed to ~250 KB, named as a parameter the configuration
    holds: refused by its size ratio, without decompressing it (peak memory stays put)."""
    path = _small_checkpoint(tmp_path / "bomb.npz")
    arrays = _arrays(path)
    del arrays["param/fc5.weight"]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            archive.writestr(name + ".npy", _npy(value))
        archive.compression = zipfile.ZIP_DEFLATED
        _deflated_zeros(archive, "param/fc5.weight", (2**16, 2**10))
    assert path.stat().st_size < 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _evaluate_fails(path, capsys, "param/fc5.weight' would expand from .* decompression bomb")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB


@pytest.mark.parametrize(
    "method, name, message",
    [
        (zipfile.ZIP_BZIP2, "param/conv1.bias.npy", "compression method 12; only stored"),
        (zipfile.ZIP_LZMA, "param/conv1.bias.npy", "compression method 14; only stored"),
        (zipfile.ZIP_STORED, "extra/junk.npy", "unexpected entries 'extra/junk'"),
        (zipfile.ZIP_STORED, "evil/../../x.npy", "unexpected member"),
        (zipfile.ZIP_STORED, "notes.txt", "unexpected member 'notes.txt'"),
    ],
)
def test_unknown_members_and_compression_methods_are_refused(
    tmp_path, capsys, method, name, message
):
    path = _small_checkpoint(tmp_path / "c.npz")
    arrays = _arrays(path)
    arrays.pop("param/conv1.bias")
    _rezip(path, arrays, extra=[(name, _npy(np.zeros(6, np.float32)), method)])
    _evaluate_fails(path, capsys, message)


def test_an_unknown_extra_member_is_refused_even_when_huge(tmp_path, capsys):
    """Issue 20's 1 MB file with a 1 GiB deflate ``extra/*`` member loaded with exit 0."""
    path = _small_checkpoint(tmp_path / "c.npz")
    arrays = _arrays(path)
    with zipfile.ZipFile(path, "w") as archive:
        for name, value in arrays.items():
            archive.writestr(name + ".npy", _npy(value))
        archive.compression = zipfile.ZIP_DEFLATED
        _deflated_zeros(archive, "extra/pad", (2**14, 2**10))
    _evaluate_fails(path, capsys, "extra/pad")


def _patch_directory(path, field_offset, value, fmt):
    """Overwrite a field of every central-directory entry."""
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        struct.pack_into(fmt, data, start + field_offset, value)
        start += 4
    path.write_bytes(bytes(data))


def test_encrypted_flag_and_method_99_are_one_line(tmp_path, capsys):
    path = _small_checkpoint(tmp_path / "c.npz")
    _patch_directory(path, 8, 0x1, "<H")  # general purpose flags: encrypted
    _evaluate_fails(path, capsys, "is encrypted")
    path = _small_checkpoint(tmp_path / "d.npz")
    _patch_directory(path, 10, 99, "<H")  # compression method 99 (AES)
    _evaluate_fails(path, capsys, "compression method 99")


def test_every_flipped_byte_of_the_central_directory_is_one_line(tmp_path, capsys):
    """Issue 20: a flipped central-directory byte ended in NotImplementedError. Every byte of the
    directory and its end record, flipped in turn: exit 0 (harmless) or 2 with one line."""
    path = _small_checkpoint(tmp_path / "c.npz")
    data = path.read_bytes()
    start = data.find(b"PK\x01\x02")
    codes = set()
    for offset in range(start, len(data), 7):
        flipped = bytearray(data)
        flipped[offset] ^= 0xFF
        path.write_bytes(bytes(flipped))
        code = main(["evaluate", str(path), "--limit", "4"])
        err = capsys.readouterr().err
        assert code in (0, EXIT_USAGE) and err.count("\n") <= 1, (offset, err)
        codes.add(code)
    assert EXIT_USAGE in codes


def _info_change(key, value):
    return lambda info: info.__setitem__(key, value)


@pytest.mark.parametrize(
    "change, message",
    [
        (_info_change("preprocessing", {"input_shape": [1, 28, 28]}), "bad preprocessing"),
        (_info_change("preprocessing", {"kind": "fancy"}), "bad preprocessing 'fancy'"),
        (_info_change("dataset", 5), "'dataset' must be a string"),
        (_info_change("optimizer", [1, 2]), "bad optimizer configuration"),
        (_info_change("history", [{"epoch": 1}, 7]), "bad metrics history"),
        (_info_change("epoch", "3"), "bad epoch '3'"),
        (_info_change("format_version", 10**100), "newer than this anycnn"),
    ],
)
def test_a_bad_info_field_is_one_line(tmp_path, capsys, change, message):
    path = _small_checkpoint(tmp_path / "c.npz")
    _edit_info(path, change)
    _evaluate_fails(path, capsys, message)


def test_deeply_nested_json_is_one_line(tmp_path, capsys):
    """Issue 20: deeply nested JSON ended in a RecursionError traceback."""
    path = _small_checkpoint(tmp_path / "c.npz")
    arrays = _arrays(path)
    text = arrays["meta/info"].tobytes()
    text = text[:-1] + b', "history": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    arrays["meta/info"] = np.frombuffer(text, np.uint8)
    _write(path, arrays)
    _evaluate_fails(path, capsys, "'meta/info' is not valid JSON")


def _edit_config(path, change):
    arrays = _arrays(path)
    config = json.loads(arrays["meta/config"].tobytes())
    change(config)
    arrays["meta/config"] = np.frombuffer(json.dumps(config).encode(), np.uint8)
    _write(path, arrays)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.__setitem__("layers", {"a": 1}), "not a network configuration"),
        (lambda c: c["layers"].append(3), "bad layer list"),
        (lambda c: c.__setitem__("input_shape", [1, 30000, 30000]), "more than 67108864"),
        (lambda c: c.__setitem__("input_shape", [10**100]), "more than 67108864"),
        (lambda c: c["layers"][0].__setitem__("maps", 5 * 10**6), "would allocate about"),
        (lambda c: c["layers"][0].__setitem__("maps", 10**8), "would allocate about"),
        (lambda c: c["layers"][-1].__setitem__("units", 10**9), "would allocate about"),
        (lambda c: c.__setitem__("dtype", "object"), "bad dtype 'object'"),
        (lambda c: c["layers"][0].__setitem__("kernel_size", "big"), "cannot rebuild"),
    ],
)
def test_config_sizes_are_bounded_by_the_arrays_in_the_file(tmp_path, capsys, change, message):
    """Issue 20: a 0.5 MB file asking for 5*10^6 maps allocated 2 GB; 10^8 maps or a 30000x30000
    input ended in MemoryError tracebacks. Now one line, and nothing large is allocated."""
    path = _small_checkpoint(tmp_path / "c.npz")
    _edit_config(path, change)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _evaluate_fails(path, capsys, message)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB


@pytest.mark.parametrize(
    "shape, message", [((10**100,), "its header declares"), ((10**10, 4), "its header declares")]
)
def test_huge_declared_shapes_are_one_line(tmp_path, capsys, shape, message):
    path = _small_checkpoint(tmp_path / "c.npz")
    arrays = _arrays(path)
    head, _ = _zeros_npy_stream(shape)
    arrays["param/conv1.bias"] = head + bytes(24)
    _rezip(path, arrays)
    _evaluate_fails(path, capsys, message)


def test_duplicate_members_are_refused(tmp_path, capsys):
    """Issue 20: with two members of one name the last silently won."""
    path = _small_checkpoint(tmp_path / "c.npz")
    arrays = _arrays(path)
    with pytest.warns(UserWarning, match="Duplicate name"):
        _rezip(path, arrays, extra=[("param/conv1.bias.npy", _npy(np.ones(6, np.float32)), 0)])
    _evaluate_fails(path, capsys, "member 'param/conv1.bias' appears twice")


def test_a_bare_npy_file_gets_its_designed_message(tmp_path, capsys):
    path = tmp_path / "model.npz"
    np.save(path, np.zeros(3))
    (tmp_path / "model.npz.npy").rename(path)
    _evaluate_fails(path, capsys, "a single .npy array, not an .npz archive")


def test_nan_optimizer_state_and_dropped_velocity_are_refused(tmp_path, capsys):
    """Issue 20: NaN velocity loaded silently; a dropped velocity restarted momentum silently."""
    path = _small_checkpoint(tmp_path / "c.npz")
    arrays = _arrays(path)
    arrays["optim/steps"] = np.asarray(5, np.int64)
    velocity = {k: np.full_like(v, 0.5) for k, v in arrays.items() if k.startswith("param/")}
    arrays.update({"optim/velocity/" + k[len("param/") :]: v for k, v in velocity.items()})
    _write(path, arrays)
    assert ckpt.load_checkpoint(path).optimizer.steps == 5
    arrays["optim/velocity/conv1.bias"] = np.full(6, np.nan, np.float32)
    _write(path, arrays)
    _evaluate_fails(path, capsys, "optimizer state 'velocity/conv1.bias' holds NaN")
    del arrays["optim/velocity/conv1.bias"]
    _write(path, arrays)
    _evaluate_fails(path, capsys, "'velocity/conv1.bias' missing after 5 steps")
