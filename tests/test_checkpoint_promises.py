"""What the checkpoint module promises at its boundaries (issue 22: the survivors of the mutation
campaigns were here): the size bound of a stored configuration at its exact limit, the archive
directory's limits at their exact values, the .npy versions and orders it reads, the lock file's
contents and lifetime, the fallbacks of its helpers, and the validation of a stored info at 0,
1 and negative values. In process and small: these run in the default suite."""

from __future__ import annotations

import gc
import json
import math
import os
import socket
import stat
import sys
import types
import zipfile

import numpy as np
import pytest

from anycnn import (
    Convolution,
    Flatten,
    FullyConnected,
    LearnedCombination,
    Network,
    Subsampling,
)
from anycnn.training import checkpoint as ckpt
from anycnn.training import optim


def _net(layers, input_shape, seed=0):
    return Network(layers, input_shape=input_shape, backend="cpu", dtype="float64", seed=seed)


def _arrays(path):
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _write(path, arrays, compressed=False):
    with open(path, "wb") as stream:
        (np.savez_compressed if compressed else np.savez)(stream, **arrays)


def _edit(path, key, change):
    arrays = _arrays(path)
    document = json.loads(arrays[key].tobytes())
    change(document)
    arrays[key] = np.frombuffer(json.dumps(document).encode(), np.uint8)
    _write(path, arrays)


def _small(tmp_path, optimizer=None, rng=None, name="c.npz"):
    net = _net([Convolution(2, 3), Subsampling(2), Flatten(), FullyConnected(3)], (1, 8, 8))
    opt = None if optimizer is None else optim.build_optimizer(optimizer, net, lr=0.1)
    if opt is not None:
        rng_x = np.random.default_rng(0)
        net.compute_gradients(rng_x.random((2, 1, 8, 8)), rng_x.random((2, 3)))
        opt.step()
    return net, opt, ckpt.save_checkpoint(tmp_path / name, net, epoch=1, optimizer=opt, rng=rng)


# --------------------------------------------------------------------------------------------
# The size bound of a stored configuration (Note [Reading an untrusted checkpoint], step 4)
# --------------------------------------------------------------------------------------------
def _bound(layer, in_shape):
    """The documented bound of what a layer allocates, from its input shape: a convolution (or
    learned combination) maps x C x (kernel + 2) + maps, a subsampling 2 C, a fully connected
    layer units x (inputs + 1)."""
    if isinstance(layer, Convolution | LearnedCombination):
        return layer.maps * in_shape[0] * (math.prod(layer.kernel_size) + 2) + layer.maps
    if isinstance(layer, Subsampling):
        return 2 * in_shape[0]
    if isinstance(layer, FullyConnected):
        return layer.units * (math.prod(in_shape) + 1)
    return 0


def _held(needs):
    return {f"param/{name}.weight": types.SimpleNamespace(shape=(n,)) for name, n in needs.items()}


def test_the_size_bound_is_exact_at_its_limit_for_every_layer_kind(monkeypatch):
    """With no slack, a file holding exactly the bound for each layer is accepted and one
    element less for any layer is refused, naming the layer and the bound: the walk carries
    every layer's output shape (padding as ints, as a list and 'same'; one map; a factor of 1;
    ceil of a remainder) to the next layer's bound."""
    monkeypatch.setattr(ckpt, "_SLACK", 0)
    net = _net(
        [
            Convolution(1, 3, padding=1),
            Subsampling(1),
            Subsampling(2, remainder="pad"),
            Convolution(4, (3, 5), padding="same"),
            Convolution(2, (2, 3), padding=(1, 0)),
            LearnedCombination(2, 3),
            Flatten(),
            FullyConnected(4),
            FullyConnected(1),
        ],
        (2, 9, 9),
    )
    config = json.loads(json.dumps(net.config()))
    shapes = [net.input_shape] + [layer.output_shape for layer in net.layers]
    needs = {
        layer.name: _bound(layer, shape)
        for layer, shape in zip(net.layers, shapes, strict=False)
        if _bound(layer, shape)
    }
    ckpt._check_sizes(config, _held(needs), "f")
    for name, need in needs.items():
        short = dict(needs, **{name: need - 1})
        with pytest.raises(
            ckpt.CheckpointError, match=rf"'{name}' .* about {need} param.* {need - 1} "
        ):
            ckpt._check_sizes(config, _held(short), "f")


@pytest.mark.parametrize(
    "padding, pad",
    [
        (0, 0),
        ("valid", 0),
        (None, 0),
        (1, 2),
        (-1, 2),  # the bound takes the size of any integer padding
        ([1, 1], 2),
        ("same", 2),
        ("full", 6),  # a form the bound does not know: as if padded by a whole kernel each side
        ([1], 6),
    ],
)
def test_each_padding_form_sizes_the_next_layers_bound(monkeypatch, padding, pad):
    monkeypatch.setattr(ckpt, "_SLACK", 0)
    net = _net([Convolution(2, 3), Flatten(), FullyConnected(3)], (1, 6, 6))
    config = json.loads(json.dumps(net.config()))
    config["layers"][0]["padding"] = padding
    side = 6 - 3 + 1 + pad
    need = 3 * (2 * side * side + 1)
    conv, fc = net.layers[0].name, net.layers[2].name
    ckpt._check_sizes(config, _held({conv: 24, fc: need}), "f")
    with pytest.raises(ckpt.CheckpointError, match=rf"'{fc}' .* about {need} parameters"):
        ckpt._check_sizes(config, _held({conv: 24, fc: need - 1}), "f")


def test_the_slack_is_a_mebi_element_per_layer():
    net = _net([Flatten(), FullyConnected(3)], (1, 16, 16))
    config = json.loads(json.dumps(net.config()))
    config["layers"][1]["units"] = 4096  # 257 inputs each (and a bias): 4096 over 2**20
    need = 4096 * 257
    fc = net.layers[1].name
    ckpt._check_sizes(config, _held({fc: need - 2**20}), "f")
    with pytest.raises(ckpt.CheckpointError, match="would allocate about"):
        ckpt._check_sizes(config, _held({fc: need - 2**20 - 1}), "f")


@pytest.mark.parametrize(
    "index, key, value, message",
    [
        (0, "maps", 0, "maps"),
        (0, "maps", -1, "maps"),
        (0, "kernel_size", 0, "kernel"),
        (0, "kernel_size", [3, 0], "kernel"),
        # a negative size inside the list: not a size (its bound would be a huge map)
        (0, "kernel_size", [3, -(10**9)], "kernel"),
        (1, "n", 0, "n must be a positive int"),
        (1, "n", -2, "n must be a positive int"),
        (3, "units", 0, "units"),
    ],
)
def test_sizes_at_zero_and_below_get_the_layers_own_message(tmp_path, index, key, value, message):
    """The bound leaves a size it cannot use to the layer's constructor, whose message the
    error carries (no ZeroDivisionError, no allocation)."""
    _, _, path = _small(tmp_path)
    _edit(path, "meta/config", lambda c: c["layers"][index].__setitem__(key, value))
    with pytest.raises(ckpt.CheckpointError, match=f"cannot rebuild.*{message}"):
        ckpt.load_checkpoint(path)


# --------------------------------------------------------------------------------------------
# The archive's directory and members
# --------------------------------------------------------------------------------------------
def _archive_of(infos, size=2**40):
    archive = object.__new__(ckpt._Archive)
    archive.path, archive.where = None, "f"
    archive.zip = types.SimpleNamespace(infolist=lambda: infos)
    archive._size = lambda: size
    return archive


def _info(name, method, file_size, compress_size):
    info = zipfile.ZipInfo(name)
    info.compress_type, info.file_size, info.compress_size = method, file_size, compress_size
    info.header_offset = 0
    return info


def test_a_deflated_member_may_expand_64_times_plus_a_mebibyte_and_no_more():
    limit = ckpt.MAX_DEFLATE_RATIO * 1000 + 2**20
    at = _info("param/a.npy", zipfile.ZIP_DEFLATED, limit, 1000)
    assert list(_archive_of([at])._directory()) == ["param/a"]
    over = _info("param/a.npy", zipfile.ZIP_DEFLATED, limit + 1, 1000)
    with pytest.raises(ckpt.CheckpointError, match=f"expand from 1000 to {limit + 1} bytes"):
        _archive_of([over])._directory()
    stored = _info("param/a.npy", zipfile.ZIP_STORED, 10**6, 10**6)  # stored: no ratio
    assert list(_archive_of([stored])._directory()) == ["param/a"]


def test_a_stored_member_whose_sizes_differ_is_refused():
    with pytest.raises(ckpt.CheckpointError, match="stored, yet its sizes differ"):
        _archive_of([_info("param/a.npy", zipfile.ZIP_STORED, 10, 11)])._directory()


def test_the_uncompressed_total_counts_every_member_up_to_its_limit():
    half = ckpt.MAX_CHECKPOINT_BYTES // 2
    fits = [_info(f"param/{k}.npy", zipfile.ZIP_STORED, half, half) for k in "ab"]
    assert len(_archive_of(fits)._directory()) == 2
    over = [*fits, _info("param/c.npy", zipfile.ZIP_STORED, 1, 1)]
    with pytest.raises(ckpt.CheckpointError, match="more than a checkpoint may"):
        _archive_of(over)._directory()
    two = [_info(f"param/{k}.npy", zipfile.ZIP_STORED, half + 1, half + 1) for k in "ab"]
    with pytest.raises(ckpt.CheckpointError, match="more than a checkpoint may"):
        _archive_of(two)._directory()


def test_a_member_ending_past_the_file_is_refused():
    info = _info("param/a.npy", zipfile.ZIP_STORED, 100, 100)
    assert _archive_of([info], size=100)._directory()
    with pytest.raises(ckpt.CheckpointError, match="ends past the end of the file"):
        _archive_of([info], size=99)._directory()


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_every_npy_version_and_order_reads_back(tmp_path, version, order):
    """NumPy writes .npy version 1.0, 2.0 (big headers) or 3.0 (utf-8 field names), in C or
    Fortran order: a checkpoint whose members use any of them reads back the same values."""
    net, _, path = _small(tmp_path)
    arrays = _arrays(path)
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            with archive.open(key + ".npy", "w") as stream:
                value = np.asfortranarray(value) if order == "F" else value
                np.lib.format.write_array(stream, value, version=version)
    restored = ckpt.load_checkpoint(path)
    for name, value in net.parameters().items():
        assert np.array_equal(restored.network.parameters()[name], value)
    kernel = arrays["param/conv1.kernel"]
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("param/conv1.kernel.npy", "w") as stream:
            np.lib.format.write_array(stream, np.asfortranarray(kernel), version=version)
    direct = ckpt._Archive(path)
    try:
        assert np.array_equal(direct.read("param/conv1.kernel"), kernel)
    finally:
        direct.close()


def test_a_member_is_read_whole_from_short_reads(tmp_path, monkeypatch):
    """read() fills the array from as many reads as the stream needs."""
    net, _, path = _small(tmp_path)
    opened = ckpt._Archive._open

    class Trickle:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

        def __getattr__(self, name):
            return getattr(self.stream, name)

        def readinto(self, view):
            data = self.stream.read(min(len(view), 7))
            view[: len(data)] = data
            return len(data)

    monkeypatch.setattr(ckpt._Archive, "_open", lambda self, info: Trickle(opened(self, info)))
    restored = ckpt.load_checkpoint(path)
    for name, value in net.parameters().items():
        assert np.array_equal(restored.network.parameters()[name], value)


@pytest.mark.parametrize(
    "value", [np.zeros(4, np.int64), np.zeros((2, 2), np.uint8)], ids=["int64", "2-d"]
)
def test_the_json_members_must_be_1d_bytes(tmp_path, value):
    _, _, path = _small(tmp_path)
    arrays = _arrays(path)
    arrays["meta/config"] = value
    _write(path, arrays)
    with pytest.raises(ckpt.CheckpointError, match="must be a 1-d uint8 array of JSON"):
        ckpt.load_checkpoint(path)


def test_the_json_limit_is_inclusive(tmp_path, monkeypatch):
    _, _, path = _small(tmp_path)
    size = len(_arrays(path)["meta/info"])
    monkeypatch.setattr(ckpt, "MAX_META_BYTES", size)
    assert ckpt.read_info(path)["epoch"] == 1
    monkeypatch.setattr(ckpt, "MAX_META_BYTES", size - 1)
    with pytest.raises(ckpt.CheckpointError, match=f"holds {size} bytes of JSON"):
        ckpt.read_info(path)


def _open(path):
    """How many of this process's file descriptors are open on ``path`` (Linux)."""
    fds = "/proc/self/fd"
    if not os.path.isdir(fds):
        pytest.skip("needs /proc/self/fd")
    return sum(os.path.realpath(os.path.join(fds, fd)) == str(path) for fd in os.listdir(fds))


def test_no_file_is_left_open_even_while_an_error_is_held(tmp_path):
    """The archive is closed when reading succeeds and when it fails, before the error reaches
    the caller (who may keep it, and its traceback, for long)."""
    _, _, path = _small(tmp_path)
    ckpt.read_info(path)
    ckpt.load_checkpoint(path)
    assert _open(path) == 0
    bad = tmp_path / "bad.npz"
    _write(bad, dict(_arrays(path), **{"meta/config": np.zeros(3, np.int64)}))
    with pytest.raises(ckpt.CheckpointError) as held:
        ckpt.load_checkpoint(bad)
    assert _open(bad) == 0, held
    info = tmp_path / "info.npz"
    _write(info, _arrays(path))
    _edit(info, "meta/info", lambda document: document.__setitem__("epoch", -1))
    with pytest.raises(ckpt.CheckpointError) as held:
        ckpt.read_info(info)
    assert _open(info) == 0, held
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(path.read_bytes().replace(b"\x93NUMPY", b"\x93NUMPX", 1))
    with pytest.raises(ckpt.CheckpointError) as held:
        ckpt.read_info(corrupt)
    assert _open(corrupt) == 0, held


# --------------------------------------------------------------------------------------------
# meta/info, meta/config and the members they imply
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("epoch", -1, "bad epoch '-1'"),
        ("epoch", 10**9 + 1, "bad epoch"),
        ("epoch", True, "bad epoch"),
        ("optimizer", 5, "bad optimizer configuration"),
        ("optimizer", {"lr": 1}, "bad optimizer configuration"),
        ("preprocessing", {"kind": "normalize", "mean": 0.5, "std": 0}, "std > 0"),
        ("preprocessing", {"kind": "normalize", "mean": 0.5, "std": -1}, "std > 0"),
    ],
)
def test_info_values_at_and_past_their_limits_are_refused(tmp_path, key, value, message):
    _, _, path = _small(tmp_path)
    _edit(path, "meta/info", lambda info: info.__setitem__(key, value))
    with pytest.raises(ckpt.CheckpointError, match=message):
        ckpt.read_info(path)


@pytest.mark.parametrize("epoch", [0, 10**9])
def test_the_epoch_limits_are_inclusive(tmp_path, epoch):
    _, _, path = _small(tmp_path)
    _edit(path, "meta/info", lambda info: info.__setitem__("epoch", epoch))
    assert ckpt.load_checkpoint(path).epoch == epoch


def test_a_model_name_that_is_not_a_string_is_refused(tmp_path):
    _, _, path = _small(tmp_path)
    _edit(path, "meta/config", lambda c: c.__setitem__("name", 5))
    with pytest.raises(ckpt.CheckpointError, match="model name in 'meta/config' is not a string"):
        ckpt.load_checkpoint(path)


def test_an_infinite_rate_in_the_history_reads_as_inf(tmp_path):
    _, _, path = _small(tmp_path)
    arrays = _arrays(path)
    text = arrays["meta/info"].tobytes()
    text = text[:-1] + b', "history": [{"r": Infinity, "s": -Infinity}]}'
    arrays["meta/info"] = np.frombuffer(text, np.uint8)
    _write(path, arrays)
    assert ckpt.read_info(path)["history"] == [{"r": math.inf, "s": -math.inf}]


def _with_member(path, key, value):
    arrays = _arrays(path)
    arrays[key] = value
    _write(path, arrays)


def test_a_parameter_of_a_layer_not_in_the_configuration_is_refused(tmp_path):
    _, _, path = _small(tmp_path)
    _with_member(path, "param/conv9.kernel", np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="unexpected parameters conv9.kernel"):
        ckpt.load_checkpoint(path)


def test_an_unknown_parameter_of_a_known_layer_is_refused(tmp_path):
    _, _, path = _small(tmp_path)
    _with_member(path, "param/conv1.extra", np.zeros(3, np.float64))
    with pytest.raises(ckpt.CheckpointError, match="unexpected parameters conv1.extra"):
        ckpt.load_checkpoint(path)


def test_a_kernel_size_given_as_one_int_is_bounded_like_its_list(monkeypatch):
    monkeypatch.setattr(ckpt, "_SLACK", 0)
    net = _net([Convolution(2, 3), Flatten(), FullyConnected(3)], (1, 6, 6))
    config = json.loads(json.dumps(net.config()))
    config["layers"][0]["kernel_size"] = 3
    conv, fc = net.layers[0].name, net.layers[2].name
    ckpt._check_sizes(config, _held({conv: 24, fc: 3 * 33}), "f")
    with pytest.raises(ckpt.CheckpointError, match=rf"'{fc}' .* about 99 parameters"):
        ckpt._check_sizes(config, _held({conv: 24, fc: 98}), "f")


@pytest.mark.parametrize("value", [np.zeros(1, np.int64), np.int32(1)], ids=["shape (1,)", "int32"])
def test_the_optimizer_step_count_must_be_an_int64_scalar(tmp_path, value):
    _, _, path = _small(tmp_path, optimizer="momentum")
    _with_member(path, "optim/steps", value)
    with pytest.raises(ckpt.CheckpointError, match="'steps' must be int64 of shape"):
        ckpt.load_checkpoint(path)


def test_an_optimizer_state_without_a_slot_is_refused(tmp_path):
    _, _, path = _small(tmp_path, optimizer="momentum")
    _with_member(path, "optim/velocity", np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="unexpected optimizer state 'velocity'"):
        ckpt.load_checkpoint(path)


def test_optimizer_state_is_bounded_by_its_own_parameter(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "_SLACK", 0)
    net, opt, path = _small(tmp_path, optimizer="momentum")
    assert ckpt.load_checkpoint(path, network=net).optimizer.steps == 1  # the same size
    key = next(k for k in opt.state_dict() if k != "steps")
    shape = opt.state_dict()[key].shape
    _with_member(path, f"optim/{key}", np.zeros(math.prod(shape) + 1))
    with pytest.raises(ckpt.CheckpointError, match="is larger than its parameter"):
        ckpt.load_checkpoint(path, network=net)


def test_an_optimizer_state_of_no_parameter_is_refused(tmp_path):
    _, opt, path = _small(tmp_path, optimizer="momentum")
    key = next(k for k in opt.state_dict() if k != "steps")
    _with_member(path, f"optim/{key}x", np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match=f"unexpected optimizer state '{key}x'"):
        ckpt.load_checkpoint(path)


def test_one_non_finite_optimizer_value_is_refused(tmp_path):
    _, opt, path = _small(tmp_path, optimizer="momentum")
    key = next(k for k in opt.state_dict() if k != "steps")
    value = np.array(opt.state_dict()[key], dtype=np.float64)
    value.flat[0] = np.nan
    _with_member(path, f"optim/{key}", value)
    with pytest.raises(ckpt.CheckpointError, match=f"'{key}' holds NaN or Inf"):
        ckpt.load_checkpoint(path)


def test_restoring_into_a_network_checks_its_input_map_tables(tmp_path):
    """Two networks that differ only in their seeds are the same model, but a convolution's
    random input-map table is part of what was trained: another one is refused."""

    def layers():
        return [
            Convolution(4, 3, selection="random", inputs_per_map=2),
            Flatten(),
            FullyConnected(2),
        ]

    saved = _net(layers(), (4, 5, 5), seed=1)
    path = ckpt.save_checkpoint(tmp_path / "c.npz", saved, epoch=1)
    same = _net(layers(), (4, 5, 5), seed=1)
    assert ckpt.load_checkpoint(path, network=same).network is same
    other = _net(layers(), (4, 5, 5), seed=2)
    assert not np.array_equal(other.layers[0].table, saved.layers[0].table)
    with pytest.raises(ckpt.CheckpointError, match="its 'conv1.table' differs"):
        ckpt.load_checkpoint(path, network=other)


def test_rng_is_none_when_no_generator_was_stored(tmp_path):
    _, _, path = _small(tmp_path)
    assert ckpt.load_checkpoint(path).rng() is None
    rng = np.random.default_rng(3)
    _, _, path = _small(tmp_path, rng=rng, name="d.npz")
    assert ckpt.load_checkpoint(path).rng().integers(1000) == rng.integers(1000)


# --------------------------------------------------------------------------------------------
# Helpers: the version, JSON bytes, file kinds, the umask, atomic writes
# --------------------------------------------------------------------------------------------
def test_the_version_is_unknown_when_the_package_has_none(monkeypatch):
    import anycnn

    assert ckpt._version() == anycnn.__version__
    monkeypatch.delattr(anycnn, "__version__")
    assert ckpt._version() == "unknown"


def test_json_members_do_not_depend_on_key_order():
    assert ckpt._json_bytes({"b": 1, "a": [2]}).tobytes() == b'{"a": [2], "b": 1}'


@pytest.mark.parametrize(
    "mode, words",
    [
        (stat.S_IFDIR, "a directory"),
        (stat.S_IFIFO, "a FIFO"),
        (stat.S_IFCHR, "a character device"),
        (stat.S_IFBLK, "a block device"),
        (stat.S_IFSOCK, "a socket"),
        (stat.S_IFLNK, "a symlink"),
        (stat.S_IFREG, "a regular file"),
        (0, "a special file"),
    ],
)
def test_each_file_kind_is_named(mode, words):
    assert ckpt._kind(mode | 0o644) == words


@pytest.mark.parametrize(
    "status", ["Name:\tx\nUmask:\tzz\n", "Name:\tx\n", OSError], ids=["bad", "none", "no /proc"]
)
def test_the_umask_falls_back_to_setting_and_restoring_it(monkeypatch, status):
    mask = os.umask(0o027)
    try:

        def fake_open(*args, **kwargs):
            if status is OSError:
                raise OSError("no /proc")
            import io

            return io.StringIO(status)

        monkeypatch.setattr(ckpt, "open", fake_open, raising=False)
        assert ckpt._umask() == 0o027
        assert os.umask(0o027) == 0o027  # restored
    finally:
        os.umask(mask)


def test_atomic_write_refuses_a_fifo_and_leaves_it(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="cannot write the plot .*fifo: it is a FIFO"):
        ckpt.atomic_write(fifo, lambda stream: stream.write(b"x"), what="plot")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_atomic_write_removes_only_its_targets_leftovers(tmp_path):
    for name in (".notes.txt.abc.tmp", ".notes.txt.def.tmp", ".other.txt.abc.tmp", "keep.tmp"):
        (tmp_path / name).write_bytes(b"old")
    ckpt.atomic_write(tmp_path / "notes.txt", lambda stream: stream.write(b"new"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.txt.abc.tmp",
        "keep.tmp",
        "notes.txt",
    ]


def test_a_leftover_that_cannot_be_removed_is_left_and_the_file_written(tmp_path):
    """The clean-up of leftovers is best effort: a leftover it cannot unlink (here a folder of
    that name) stays, and the write still succeeds."""
    (tmp_path / ".notes.txt.abc.tmp").mkdir()
    path = ckpt.atomic_write(tmp_path / "notes.txt", lambda stream: stream.write(b"new"))
    assert path.read_bytes() == b"new"
    assert (tmp_path / ".notes.txt.abc.tmp").is_dir()


def test_a_folder_that_cannot_be_synced_still_gets_the_file(tmp_path, monkeypatch):
    real = os.fsync

    def fsync(descriptor):
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(22, "Invalid argument")
        real(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    path = ckpt.atomic_write(tmp_path / "a.bin", lambda stream: stream.write(b"data"))
    assert path.read_bytes() == b"data"


def test_latest_checkpoint_of_a_missing_folder_or_a_file_is_none(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "epoch-0001.npz").write_bytes(b"")
    assert ckpt.latest_checkpoint(tmp_path / "epoch-0001.npz") is None
    assert ckpt.latest_checkpoint(tmp_path).name == "epoch-0001.npz"


# --------------------------------------------------------------------------------------------
# The directory lock
# --------------------------------------------------------------------------------------------
def test_the_lock_file_says_who_holds_it_with_the_new_file_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["anycnn", "x" * 400])
    with ckpt.DirectoryLock(tmp_path) as lock:
        who = json.loads(lock.path.read_bytes())
        mode = stat.S_IMODE(os.stat(lock.path).st_mode)
    assert who["pid"] == os.getpid() and who["host"] == socket.gethostname()
    assert who["command"] == ("anycnn " + "x" * 400)[:300]
    assert mode == 0o666 & ~ckpt._umask()


def test_a_refused_lock_names_its_holder_in_cut_fields(tmp_path):
    with ckpt.DirectoryLock(tmp_path) as lock:
        who = {"pid": 12, "host": "h" * 100, "since": "s" * 100, "command": "c" * 200}
        os.pwrite(lock._descriptor, json.dumps(who).encode(), 0)
        with pytest.raises(ckpt.CheckpointError) as refused:
            ckpt.DirectoryLock(tmp_path)
    expected = f"process 12 on host {'h' * 61}... since {'s' * 37}...: {'c' * 117}..."
    assert expected in str(refused.value)
    assert ckpt._clean("a" * 300) == "a" * 300
    assert ckpt._clean("a" * 301) == "a" * 297 + "..."


def test_a_released_lock_can_be_taken_again_and_released_twice(tmp_path):
    first = ckpt.DirectoryLock(tmp_path)
    first.release()
    second = ckpt.DirectoryLock(tmp_path)
    first.release()  # nothing left to release: the second holder keeps its lock and file
    assert second.path.exists()
    with pytest.raises(ckpt.CheckpointError, match="in use by another anycnn run"):
        ckpt.DirectoryLock(tmp_path)
    second.release()
    assert not second.path.exists()
    fds = "/proc/self/fd"
    if os.path.isdir(fds):  # the descriptors are closed, not only the files removed
        held = []
        for fd in os.listdir(fds):
            try:
                held.append(os.readlink(os.path.join(fds, fd)))
            except OSError:  # listdir's own descriptor, closed by now
                pass
        assert not [link for link in held if link.startswith(str(second.path))]


def test_a_dropped_lock_is_released(tmp_path):
    lock = ckpt.DirectoryLock(tmp_path)
    del lock
    gc.collect()
    ckpt.DirectoryLock(tmp_path).release()


def test_the_lock_works_where_os_has_no_nofollow_flag(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_NOFOLLOW")
    with ckpt.DirectoryLock(tmp_path) as lock:
        assert json.loads(lock.path.read_bytes())["pid"] == os.getpid()
