"""Checkpoints: round trip, atomic writes, and validation before anything is assigned."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pytest

from anycnn import models, optim
from anycnn.training import checkpoint as ckpt


def _trained(kind="momentum", model="lenet5", dtype="float32"):
    net = models.build(model, backend="cpu", dtype=dtype, seed=1)
    rng = np.random.default_rng(0)
    x = net.backend.asarray(rng.standard_normal((4, *net.input_shape)), dtype=dtype)
    t = net.backend.asarray(np.eye(10)[rng.integers(0, 10, 4)], dtype=dtype)
    opt = optim.build_optimizer(kind, net, lr=0.01) if kind != "sdlm" else optim.SDLM(net, 0.01)
    opt.start_epoch(0, [(x, t)])
    for _ in range(2):
        net.compute_gradients(x, t)
        opt.step()
    return net, opt


def _host(net):
    return {k: np.array(net.backend.to_host(v), copy=True) for k, v in net.parameters().items()}


@pytest.mark.parametrize("kind", ["sgd", "momentum", "sdlm"])
def test_round_trip(tmp_path, kind):
    net, opt = _trained(kind)
    rng = np.random.default_rng(42)
    rng.random(3)
    path = ckpt.save_checkpoint(
        tmp_path / "c.npz",
        net,
        epoch=3,
        optimizer=opt,
        rng=rng,
        info={
            "history": [{"epoch": 1}],
            "preprocessing": {"kind": "scale01", "input_shape": [1, 32, 32]},
        },
    )
    loaded = ckpt.load_checkpoint(path, backend="cpu")
    assert loaded.epoch == 3 and loaded.info["history"] == [{"epoch": 1}]
    assert loaded.network.config() == net.config()
    for name, value in _host(net).items():
        np.testing.assert_array_equal(_host(loaded.network)[name], value)
    assert type(loaded.optimizer) is type(opt)
    assert loaded.optimizer.config() == opt.config()
    state, again = opt.state_dict(), loaded.optimizer.state_dict()
    assert state.keys() == again.keys()
    for key in state:
        np.testing.assert_array_equal(again[key], state[key])
    assert loaded.rng().random() == rng.random()
    assert loaded.anycnn_version


def test_extra_state_travels_with_the_config(tmp_path):
    net, _ = _trained("sgd")
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1)
    with np.load(path, allow_pickle=False) as archive:
        assert "extra/conv3.table" in archive.files
        config = json.loads(archive["meta/config"].tobytes())
    assert config["name"] == "lenet5"
    loaded = ckpt.load_checkpoint(path)
    np.testing.assert_array_equal(
        loaded.network.extra_state()["conv3.table"], net.extra_state()["conv3.table"]
    )
    assert loaded.optimizer is None


def test_float64_checkpoint_into_float32(tmp_path):
    net, opt = _trained("momentum", model="dlt", dtype="float64")
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1, optimizer=opt)
    loaded = ckpt.load_checkpoint(path, dtype="float32")
    assert loaded.network.dtype_name == "float32"
    for name, value in _host(net).items():
        np.testing.assert_array_equal(_host(loaded.network)[name], value.astype(np.float32))


def test_a_crash_before_the_rename_leaves_the_old_file(tmp_path, monkeypatch):
    net, opt = _trained("sgd", model="dlt")
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1, optimizer=opt)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash between the temporary write and the rename")

    monkeypatch.setattr(os, "replace", crash)
    net.compute_gradients(*_batch(net))
    opt.step()
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.save_checkpoint(path, net, epoch=2, optimizer=opt)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left
    monkeypatch.undo()
    assert ckpt.load_checkpoint(path).epoch == 1


def _batch(net):
    rng = np.random.default_rng(1)
    x = net.backend.asarray(rng.standard_normal((2, *net.input_shape)), dtype=net.dtype_name)
    return x, net.backend.asarray(np.eye(10)[[1, 2]], dtype=net.dtype_name)


def test_checkpoint_of_another_model_is_refused_before_any_assignment(tmp_path):
    dlt, _ = _trained("sgd", model="dlt")
    path = ckpt.save_checkpoint(tmp_path / "dlt.npz", dlt, epoch=1)
    lenet = models.lenet5(backend="cpu")
    before = _host(lenet)
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"dlt.npz: this checkpoint is of another "
        r"model: it holds 'dlt'.*the network is 'lenet5'",
    ):
        ckpt.load_checkpoint(path, network=lenet)
    for name, value in before.items():
        np.testing.assert_array_equal(_host(lenet)[name], value)
    with pytest.raises(ckpt.CheckpointError, match="checkpoint of model 'dlt', not 'lenet5'"):
        ckpt.load_checkpoint(path, model="lenet5")


def _rewrite(path, change):
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays)
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def test_a_wrong_shape_is_named_and_nothing_is_assigned(tmp_path):
    net, opt = _trained("momentum", model="dlt")
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1, optimizer=opt)

    def shrink(arrays):
        arrays["param/fc5.weight"] = arrays["param/fc5.weight"][:, :10]

    names = [n for n in net.parameters() if n.startswith("fc")]
    assert names == ["fc5.weight", "fc5.bias"]
    _rewrite(path, shrink)
    target = models.dlt(backend="cpu", seed=5)
    before = _host(target)
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"parameter 'fc5.weight' has shape \(10, 10\), the model 'dlt' "
        r"expects \(10, 192\)",
    ):
        ckpt.load_checkpoint(path, network=target)
    for name, value in before.items():
        np.testing.assert_array_equal(_host(target)[name], value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("param/conv1.bias"), "parameter 'conv1.bias' is missing"),
        (
            lambda a: a.__setitem__("param/conv9.kernel", np.zeros(3, np.float32)),
            "unexpected parameters conv9.kernel",
        ),
        (
            lambda a: a.__setitem__("param/conv1.bias", np.zeros(6, np.float64)),
            "parameter 'conv1.bias' is float64, the checkpoint says float32",
        ),
        (
            lambda a: a.__setitem__("optim/velocity/conv1.bias", np.zeros(5, np.float32)),
            r"optimizer state 'velocity/conv1.bias' must be float32 of shape \(6,\)",
        ),
        (lambda a: a.pop("optim/steps"), "'optim/steps' is missing"),
        (
            lambda a: a.__setitem__("param/conv1.bias", np.full(6, np.nan, np.float32)),
            "'conv1.bias' holds NaN",
        ),
        (lambda a: a.pop("meta/config"), "not an anycnn checkpoint \\(no 'meta/config' entry\\)"),
        (
            lambda a: a.__setitem__("meta/info", np.frombuffer(b"{nope", np.uint8)),
            "'meta/info' is not valid JSON",
        ),
    ],
)
def test_validation_errors(tmp_path, change, message):
    net, opt = _trained("momentum", model="dlt")
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1, optimizer=opt)
    _rewrite(path, change)
    with pytest.raises(ckpt.CheckpointError, match=message) as caught:
        ckpt.load_checkpoint(path)
    assert str(path) in str(caught.value)


def test_a_newer_format_is_refused(tmp_path):
    net, _ = _trained("sgd", model="dlt")
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1)

    def newer(arrays):
        info = json.loads(arrays["meta/info"].tobytes())
        info["format_version"] = ckpt.FORMAT_VERSION + 1
        arrays["meta/info"] = np.frombuffer(json.dumps(info).encode(), np.uint8)

    _rewrite(path, newer)
    with pytest.raises(ckpt.CheckpointError, match="format version 2 is newer"):
        ckpt.load_checkpoint(path)


def test_truncated_file(tmp_path):
    net, opt = _trained("momentum", model="dlt")
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1, optimizer=opt)
    data = path.read_bytes()
    for size in (len(data) // 2, len(data) - 30, 10):
        path.write_bytes(data[:size])
        with pytest.raises(ckpt.CheckpointError, match=f"{path}: truncated or corrupt"):
            ckpt.load_checkpoint(path)


def test_corrupt_member(tmp_path):
    net, _ = _trained("sgd", model="dlt")
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1)
    data = bytearray(path.read_bytes())
    where = data.find(b"param/fc5.weight.npy")
    data[where + 200] ^= 0xFF  # inside the stored array: the CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="truncated or corrupt"):
        ckpt.load_checkpoint(path)


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_disguised_as_a_checkpoint_is_never_unpickled(tmp_path, capfd):
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"param/conv1.kernel": _Boom()}))
    with pytest.raises(
        ckpt.CheckpointError,
        match="evil.npz: not an anycnn checkpoint: the file is a Python pickle",
    ):
        ckpt.load_checkpoint(path)
    assert "pwned" not in capfd.readouterr().out
    # an .npz whose member is an object array (pickled inside) is refused as well
    buffer = io.BytesIO()
    np.savez(buffer, **{"meta/info": np.array([{"a": 1}], dtype=object)})
    path.write_bytes(buffer.getvalue())
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.load_checkpoint(path)
    path.write_bytes(b"just some text, not an archive")
    with pytest.raises(ckpt.CheckpointError, match="neither an .npz archive"):
        ckpt.load_checkpoint(path)
    with pytest.raises(ckpt.CheckpointError, match="no such checkpoint file"):
        ckpt.load_checkpoint(tmp_path / "missing.npz")


def test_latest_checkpoint(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path) is None
    assert ckpt.latest_checkpoint(tmp_path / "nowhere") is None
    net, _ = _trained("sgd", model="dlt")
    for epoch in (2, 10, 9):
        ckpt.save_checkpoint(ckpt.checkpoint_path(tmp_path, epoch), net, epoch=epoch)
    (tmp_path / "epoch-notes.npz").write_text("x")
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "epoch-0010.npz"
