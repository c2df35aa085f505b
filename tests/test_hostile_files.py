"""Hostile and unlucky files (issue 20): a checkpoint, an IDX data directory or an output path
handed over by someone else must never run code, exhaust memory, lose work or end in a traceback.

Each test here was written against a defect and failed before its fix."""

from __future__ import annotations

import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from anycnn import models, optim
from anycnn.cli import EXIT_USAGE, main
from anycnn.data import idx as idx_module
from anycnn.training import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "backends")]))
    env.update(extra)
    return env


class _Peak:
    """The peak of memory allocated through Python and NumPy (tracemalloc) inside the block, in
    bytes: unlike ru_maxrss it is not masked by an earlier test's peak."""

    def __enter__(self):
        tracemalloc.start()
        tracemalloc.reset_peak()
        return self

    def __exit__(self, *exc):
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


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
    with _Peak() as peak:
        _evaluate_fails(path, capsys, "param/fc5.weight' would expand from .* decompression bomb")
    assert peak.bytes < 2**25


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
    with _Peak() as peak:
        _evaluate_fails(path, capsys, message)
    assert peak.bytes < 2**25


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


# --------------------------------------------------------------------------------------------
# 3. IDX data: memory follows the data present, never the header's claim
# --------------------------------------------------------------------------------------------
def _idx_header(code, dims):
    return struct.pack(">HBB", 0, code, len(dims)) + struct.pack(f">{len(dims)}I", *dims)


def test_a_sparse_idx_file_is_refused_without_allocating(tmp_path):
    """Issue 20: a sparse file using 92 KiB of disk made the loader zero-fill 3.1 GB."""
    from anycnn import datasets

    path = tmp_path / "train-images-idx3-ubyte"
    dims = (1_000_000, 56, 56)  # 3.1 GB announced, and the file is that long: all holes
    with open(path, "wb") as stream:
        stream.write(_idx_header(0x08, dims))
        stream.truncate(16 + math.prod(dims))
    with _Peak() as peak:
        with pytest.raises(datasets.DatasetError, match="sparse file: header announces"):
            datasets.read_idx(path)
        # with a limit only the images kept are read, and a sparse prefix is no threat
        assert datasets.read_idx(path, max_items=3).shape == (3, 56, 56)
    assert peak.bytes < 2**20


def test_a_gzip_bomb_is_refused_while_decompressing(tmp_path):
    """Issue 20: a 3 MB .gz reached 3.1 GB, then a MemoryError traceback."""
    import gzip

    from anycnn import datasets

    path = tmp_path / "train-images-idx3-ubyte.gz"
    dims = (100_000, 56, 56)  # 314 MB of zeros: ~300 KB compressed
    with gzip.open(path, "wb", compresslevel=9) as stream:
        stream.write(_idx_header(0x08, dims))
        chunk = bytes(2**20)
        for _ in range(math.prod(dims) // len(chunk)):
            stream.write(chunk)
        stream.write(bytes(math.prod(dims) % len(chunk)))
    assert path.stat().st_size < 2**21
    with _Peak() as peak:
        with pytest.raises(datasets.DatasetError, match="expands more than 100 times"):
            datasets.read_idx(path)
    bound = idx_module.MAX_GZIP_RATIO * path.stat().st_size + 2**23  # bytes it may decompress
    assert peak.bytes < 2 * bound < math.prod(dims) / 2
    assert datasets.read_idx(path, max_items=2).shape == (2, 56, 56)


def test_load_with_a_limit_reads_only_the_images_it_keeps(tmp_path):
    """A data directory whose training images claim (and hold) 200,000 images: ``limit=10``
    reads 10 of them, and the counts are still checked against the labels."""
    from anycnn import datasets

    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"train": 200_000, "t10k": 50}
    for split, n in sizes.items():
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        (folder / f"{split}-images-idx3-ubyte").write_bytes(
            _idx_header(0x08, images.shape) + images.tobytes()
        )
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (folder / f"{split}-labels-idx1-ubyte").write_bytes(
            _idx_header(0x08, labels.shape) + labels.tobytes()
        )
    with _Peak() as peak:
        data = datasets.load(folder, limit=10)
    assert data.train_images.shape == (10, 28, 28) and data.test_images.shape == (10, 28, 28)
    assert peak.bytes < 2**22  # the 157 MB of training images stay on disk
    (folder / "train-labels-idx1-ubyte").write_bytes(_idx_header(0x08, (7,)) + bytes(7))
    with pytest.raises(datasets.DatasetError, match="200000 images in .* but 7 labels"):
        datasets.load(folder, limit=10)


# --------------------------------------------------------------------------------------------
# 5. Building and restoring a deep network is linear in its layers
# --------------------------------------------------------------------------------------------
def _traced_lines(function, filename):
    """How many lines of ``filename`` ran (sys.settrace) during ``function()``: a count of work
    that does not depend on the machine's speed, unlike a timing."""
    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != filename:
            return None
        if event == "line":
            count += 1
        return tracer

    sys.settrace(tracer)
    try:
        function()
    finally:
        sys.settrace(None)
    return count


def _deep(n, tmp_path=None):
    from anycnn import FullyConnected, Network

    layers = [FullyConnected(2, activation="identity") for _ in range(n)]
    return Network(layers, input_shape=(2,), backend="cpu")


def test_building_a_deep_network_is_linear(tmp_path):
    """Issue 20: one ``is`` scan per layer made 40k layers take 31 s. Lines run in network.py
    for 2n layers are about twice those for n (four times when quadratic)."""
    import anycnn.network

    where = anycnn.network.__file__
    small = _traced_lines(lambda: _deep(300), where)
    large = _traced_lines(lambda: _deep(600), where)
    assert large < 2.5 * small, (small, large)


def test_restoring_a_deep_checkpoint_is_linear(tmp_path):
    """Restoring set each of 2n parameters by a scan over all of them (``set_parameter``)."""
    import anycnn.network

    where = anycnn.network.__file__
    counts = []
    for n in (200, 400):
        path = ckpt.save_checkpoint(tmp_path / f"deep{n}.npz", _deep(n), epoch=1)
        counts.append(_traced_lines(lambda path=path: ckpt.load_checkpoint(path), where))
    assert counts[1] < 2.5 * counts[0], counts


# --------------------------------------------------------------------------------------------
# 7, 8. One run per checkpoint directory; resume trusts the stored epoch, not the file name
# --------------------------------------------------------------------------------------------
TRAIN = ["train", "--model", "dlt", "--limit", "64", "--batch-size", "32", "--quiet"]


def test_a_second_run_on_a_locked_directory_is_refused_and_told_who_holds_it(tmp_path, capsys):
    """Issue 20: two ``train --resume`` on one directory crashed (ENOENT after an epoch) or both
    exited 0 with the directory a mix of two runs. A real process holds the lock here."""
    folder = tmp_path / "ck"
    folder.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from anycnn.training.checkpoint import DirectoryLock; "
            f"lock = DirectoryLock({str(folder)!r}); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main([*TRAIN, "--epochs", "1", "--checkpoint-dir", str(folder), "--resume"])
        err = capsys.readouterr().err
        assert code == EXIT_USAGE and err.count("\n") == 1, err
        assert f"in use by another anycnn run (process {holder.pid} on host " in err
        assert list(folder.glob("epoch-*")) == []
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the process: the directory is usable again
    assert main([*TRAIN, "--epochs", "1", "--checkpoint-dir", str(folder), "--resume"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["epoch-0001.npz"]


def test_two_concurrent_resumes_never_mix_runs(tmp_path):
    """Two real processes resume the same directory at once: exactly one trains (epochs 2-3),
    the other is refused with one line, and every file belongs to one run."""
    folder = tmp_path / "ck"
    assert main([*TRAIN, "--epochs", "1", "--checkpoint-dir", str(folder)]) == 0
    argv = [sys.executable, "-m", "anycnn", *TRAIN, "--epochs", "3"]
    runs = [
        subprocess.Popen(
            [*argv, "--seed", str(seed), "--checkpoint-dir", str(folder), "--resume"],
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for seed in (1, 2)
    ]
    results = [(run.wait(timeout=300), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, EXIT_USAGE], [0, 0]), results
    for code, err in results:
        if code == EXIT_USAGE:
            assert err.count("\n") == 1 and "another" in err, err
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["epoch-0001.npz", "epoch-0002.npz", "epoch-0003.npz"], names
    run_ids = {ckpt.read_info(folder / name)["run_id"] for name in names}
    assert len(run_ids) == 1


def test_resume_refuses_a_file_whose_name_and_epoch_disagree(tmp_path, capsys):
    """Issue 20: another run's epoch-1 file copied in as epoch-0009.npz made --resume restart
    from epoch 1 and overwrite the good epoch 2 and 3 files, exit 0."""
    folder, other = tmp_path / "ck", tmp_path / "other"
    assert main([*TRAIN, "--epochs", "3", "--checkpoint-dir", str(folder)]) == 0
    assert main([*TRAIN, "--epochs", "1", "--seed", "5", "--checkpoint-dir", str(other)]) == 0
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "epoch-0009.npz").write_bytes((other / "epoch-0001.npz").read_bytes())
    capsys.readouterr()
    code = main([*TRAIN, "--epochs", "12", "--checkpoint-dir", str(folder), "--resume"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err.count("\n") == 1, err
    assert "the file name says epoch 9 but it holds epoch 1" in err
    for name, data in good.items():
        assert (folder / name).read_bytes() == data


def test_a_fresh_run_never_overwrites_another_runs_checkpoints(tmp_path, capsys):
    folder = tmp_path / "ck"
    assert main([*TRAIN, "--epochs", "2", "--checkpoint-dir", str(folder)]) == 0
    good = {p.name: p.read_bytes() for p in folder.iterdir()}
    capsys.readouterr()
    assert main([*TRAIN, "--epochs", "2", "--seed", "9", "--checkpoint-dir", str(folder)]) == 2
    assert "holds checkpoints" in capsys.readouterr().err
    # the library refuses as well (the command line says so before building anything)
    from anycnn import datasets, train

    net = models.build("dlt", backend="cpu", seed=9)
    with pytest.raises(ckpt.CheckpointError, match="holds checkpoints of another run"):
        train.train(
            net, datasets.load("mnist", limit=64), epochs=2, checkpoint_dir=folder, progress=False
        )
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == good


def test_odd_file_names_in_a_checkpoint_directory_are_ignored(tmp_path):
    """Issue 20: a stray ``epoch-\u00b2.npz`` broke the directory ("invalid literal for int()")."""
    folder = tmp_path / "ck"
    folder.mkdir()
    for name in ("epoch-\u00b2.npz", "epoch-\u0663.npz", "epoch-.npz", "epoch-12a.npz"):
        (folder / name).write_bytes(b"junk")
    assert ckpt.latest_checkpoint(folder) is None
    path = _small_checkpoint(folder / "epoch-0002.npz", epoch=2)
    assert ckpt.latest_checkpoint(folder) == path
    assert ckpt.epoch_of("epoch-\u00b2.npz") is None and ckpt.epoch_of(path) == 2


def test_a_bad_history_entry_on_resume_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ck"
    assert main([*TRAIN, "--epochs", "1", "--checkpoint-dir", str(folder)]) == 0
    _edit_info(folder / "epoch-0001.npz", _info_change("history", [{"nonsense": 1}]))
    capsys.readouterr()
    code = main([*TRAIN, "--epochs", "2", "--checkpoint-dir", str(folder), "--resume"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err.count("\n") == 1 and "bad history" in err, err


# --------------------------------------------------------------------------------------------
# 10. Silent wrongs of the files written
# --------------------------------------------------------------------------------------------
def test_metrics_never_replace_a_checkpoint(tmp_path, capsys):
    """Issue 20: ``--metrics ck/epoch-0002.npz`` replaced that checkpoint with JSON, exit 0."""
    folder = tmp_path / "ck"
    assert main([*TRAIN, "--epochs", "2", "--checkpoint-dir", str(folder)]) == 0
    before = (folder / "epoch-0002.npz").read_bytes()
    capsys.readouterr()
    metrics = str(folder / "epoch-0002.npz")
    code = main(
        [*TRAIN, "--epochs", "1", "--checkpoint-dir", str(tmp_path / "b"), "--metrics", metrics]
    )
    assert code == EXIT_USAGE and "named like a checkpoint" in capsys.readouterr().err
    assert (folder / "epoch-0002.npz").read_bytes() == before
    other = tmp_path / "model.bin"
    other.write_bytes(b"PK\x03\x04 not json")
    code = main([*TRAIN, "--epochs", "1", "--metrics", str(other)])
    assert code == EXIT_USAGE and "not a metrics file" in capsys.readouterr().err
    assert other.read_bytes() == b"PK\x03\x04 not json"


def test_a_250_character_metrics_name_works(tmp_path):
    """Issue 20: its temporary name exceeded 255 bytes and the run failed after epoch 1."""
    metrics = tmp_path / ("m" * 245 + ".json")
    assert main([*TRAIN, "--epochs", "1", "--metrics", str(metrics)]) == 0
    assert json.loads(metrics.read_text())["history"][0]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [metrics.name]


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_get_the_umask_and_no_host_name(tmp_path, mask):
    """Issue 20 (and 13): checkpoints and metrics were created 0600 whatever the umask, and
    recorded the host name (which leaves with every file handed on)."""
    import socket

    old = os.umask(mask)
    try:
        folder, metrics = tmp_path / "ck", tmp_path / "m.json"
        assert (
            main(
                [
                    *TRAIN,
                    "--epochs",
                    "1",
                    "--checkpoint-dir",
                    str(folder),
                    "--metrics",
                    str(metrics),
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    for path in (folder / "epoch-0001.npz", metrics):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, (path, oct(path.stat().st_mode))
    host = socket.gethostname()
    assert host not in json.dumps(ckpt.read_info(folder / "epoch-0001.npz"))
    assert host not in metrics.read_text()


def test_a_full_disk_names_the_file(tmp_path, monkeypatch, capsys):
    import errno

    def full(stream, **arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    folder = tmp_path / "ck"
    code = main([*TRAIN, "--epochs", "1", "--checkpoint-dir", str(folder)])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and err.count("\n") == 1, err
    assert f"cannot write the checkpoint {folder / 'epoch-0001.npz'}: No space left" in err
    assert list(folder.iterdir()) == []  # no temporary file left behind


def test_the_stored_model_name_is_printed_escaped(tmp_path, capsys):
    """Issue 20: newlines and escape codes in a stored name could fake output lines."""
    path = _small_checkpoint(tmp_path / "c.npz")
    _edit_config(path, lambda c: c.__setitem__("name", "dlt\nerror: fake\x1b[2J"))
    code = main(["evaluate", str(path), "--limit", "8"])
    out = capsys.readouterr().out
    assert code == 0
    assert "\x1b" not in out and "\nerror: fake" not in out and "dlt\\nerror: fake" in out


# --------------------------------------------------------------------------------------------
# 6. Plots never follow a symlink
# --------------------------------------------------------------------------------------------
def test_plots_replace_a_symlink_instead_of_writing_through_it(tmp_path):
    """Issue 20: with ``plots/kernels.png -> ../victim.txt``, ``train --plots`` overwrote
    ``victim.txt``."""
    pytest.importorskip("matplotlib")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    plots = tmp_path / "plots"
    plots.mkdir()
    names = ("kernels.png", "learning_curves.png", "feature_maps.png")
    for name in names:
        (plots / name).symlink_to(Path("..") / "victim.txt")
    assert main([*TRAIN, "--epochs", "1", "--plots", str(plots)]) == 0
    assert victim.read_text() == "precious"
    written = sorted(plots.iterdir())
    assert written and not any(p.is_symlink() for p in written)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)


@pytest.mark.parametrize("text", [b"NaN", b"1e999", b"-Infinity"])
def test_a_non_finite_number_in_the_configuration_is_refused(tmp_path, capsys, text):
    """Issue 20: a NaN tanh gain evaluated with exit 0 and "mean loss nan"."""
    path = _small_checkpoint(tmp_path / "c.npz")
    arrays = _arrays(path)
    config = json.loads(arrays["meta/config"].tobytes())
    config["layers"][0]["activation"] = {"name": "tanh", "a": 12345.5, "b": 1.0}
    raw = json.dumps(config).encode().replace(b"12345.5", text)
    arrays["meta/config"] = np.frombuffer(raw, np.uint8)
    _write(path, arrays)
    _evaluate_fails(path, capsys, "'meta/config' (holds a non-finite number|is not valid JSON)")


def test_an_infinite_rate_in_the_history_still_loads(tmp_path):
    """The history is only shown: images_per_second may be inf there (a zero-length epoch)."""
    path = _small_checkpoint(tmp_path / "c.npz")
    _edit_info(path, _info_change("history", [{"epoch": 1, "images_per_second": math.inf}]))
    assert ckpt.load_checkpoint(path).info["history"][0]["images_per_second"] == math.inf


def test_an_unknown_preprocessing_kind_is_refused_not_treated_as_normalize():
    """Issue 20: an unknown kind silently normalised with each batch's own statistics."""
    from anycnn.training.loop import Preprocessing

    with pytest.raises(ValueError, match="preprocessing kind must be 'scale01', 'normalize'"):
        Preprocessing.from_config({"kind": "fancy", "input_shape": [1, 28, 28]})
    good = Preprocessing.from_config({"kind": "scale01", "input_shape": [1, 28, 28]})
    assert good.kind == "scale01"


# --------------------------------------------------------------------------------------------
# 4 (continued). What one example costs to run is bounded too
# --------------------------------------------------------------------------------------------
def _saved(tmp_path, layers, input_shape, name="wide"):
    from anycnn import Network

    net = Network(layers, input_shape=input_shape, backend="cpu", name=name)
    return ckpt.save_checkpoint(tmp_path / f"{name}.npz", net, epoch=1)


def test_huge_maps_from_few_parameters_are_refused(tmp_path, capsys):
    """Two 1x1 kernels on a 2900x2900 input: 16.8 million values per example from 4
    parameters, which evaluating 1000 images at a time would multiply by 1000."""
    from anycnn import Convolution, Flatten, FullyConnected, Subsampling

    path = _saved(
        tmp_path,
        [
            Convolution(2, 1),
            Subsampling(2900, "mean", trainable=False),
            Flatten(),
            FullyConnected(10),
        ],
        (1, 2900, 2900),
    )
    _evaluate_fails(path, capsys, "per example, more than 16777216")


def test_more_outputs_than_classes_anycnn_handles_are_refused(tmp_path, capsys):
    from anycnn import FullyConnected

    path = _saved(tmp_path, [FullyConnected(5000)], (1,), name="many")
    _evaluate_fails(path, capsys, "5000 outputs, more than the 4096 classes")


def test_evaluate_chunks_by_what_an_example_costs(monkeypatch):
    """``evaluate`` holds at most ~2**25 values of its widest layer per chunk: 2**19 per
    example here, so chunks of 64 whatever batch_size asks; LeNet-5 keeps its 1000."""
    from anycnn import Convolution, Flatten, FullyConnected, Network, train

    net = Network(
        [Convolution(2, 1), Flatten(), FullyConnected(2)],
        input_shape=(1, 512, 512),
        backend="cpu",
    )
    sizes = []
    forward = net.forward
    monkeypatch.setattr(net, "forward", lambda x, **k: sizes.append(x.shape[0]) or forward(x, **k))
    images = np.zeros((150, 512, 512), np.uint8)
    prep = train.Preprocessing("scale01", (1, 512, 512))
    result = train.evaluate(net, images, np.zeros(150, np.int64), prep, batch_size=1000)
    assert sizes == [64, 64, 22] and result["count"] == 150
    lenet = models.build("lenet5", backend="cpu")
    sizes = []
    forward = lenet.forward
    monkeypatch.setattr(
        lenet, "forward", lambda x, **k: sizes.append(x.shape[0]) or forward(x, **k)
    )
    prep = train.Preprocessing("scale01", (1, 32, 32))
    train.evaluate(lenet, np.zeros((1200, 28, 28), np.uint8), np.zeros(1200, np.int64), prep)
    assert sizes == [1000, 200]


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(OSError, match=r"cannot lock the checkpoint directory: No locks"):
        ckpt.DirectoryLock(tmp_path)


def test_loaded_arrays_are_writable_copies(tmp_path):
    """As np.load's were: the optimizer state and tables handed out can be changed in place."""
    path = _small_checkpoint(tmp_path / "c.npz")
    arrays = _arrays(path)
    arrays["optim/steps"] = np.asarray(1, np.int64)
    for key in [k for k in arrays if k.startswith("param/")]:
        arrays["optim/velocity/" + key[len("param/") :]] = np.ones_like(arrays[key])
    _write(path, arrays)
    loaded = ckpt.load_checkpoint(path)
    for value in loaded.optimizer_state.values():
        assert value.flags.writeable
