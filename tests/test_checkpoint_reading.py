"""What reading a checkpoint promises that the quarter campaign of main 15fdaa2 found open
(issue 22): every error names the file, the structure checks of 'meta/info' and 'meta/config'
at the cases they exist for (a history of numbers or nulls, a boolean preprocessing mean, a
zero size, an empty layer list), an optimizer slot missing after a step, the raw optimizer
state kept on the loaded checkpoint, a member that is not an .npy array, and the difference of
two configurations naming a setting only one of them has."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from anycnn import Convolution, Flatten, FullyConnected, Network, Subsampling
from anycnn.training import checkpoint as ckpt
from anycnn.training import optim


def _small(tmp_path, optimizer=None):
    net = Network(
        [Convolution(2, 3), Subsampling(2), Flatten(), FullyConnected(3)],
        input_shape=(1, 8, 8),
        backend="cpu",
        dtype="float64",
    )
    opt = None if optimizer is None else optim.build_optimizer(optimizer, net, lr=0.1)
    if opt is not None:
        rng = np.random.default_rng(0)
        net.compute_gradients(rng.random((2, 1, 8, 8)), rng.random((2, 3)))
        opt.step()
    return net, opt, ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1, optimizer=opt)


def _arrays(path):
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _write(path, arrays):
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)


def _edit(path, key, change):
    arrays = _arrays(path)
    document = json.loads(arrays[key].tobytes())
    change(document)
    arrays[key] = np.frombuffer(json.dumps(document).encode(), np.uint8)
    _write(path, arrays)


def test_read_info_names_the_file_in_its_errors(tmp_path):
    _, _, path = _small(tmp_path)
    _edit(path, "meta/info", lambda info: info.__setitem__("epoch", -1))
    with pytest.raises(ckpt.CheckpointError, match="^" + str(path) + ": bad epoch"):
        ckpt.read_info(path)


def test_a_bad_configuration_error_names_the_file(tmp_path):
    _, _, path = _small(tmp_path)
    _edit(path, "meta/config", lambda config: config.__setitem__("input_shape", [1, 0, 8]))
    with pytest.raises(ckpt.CheckpointError, match="^" + str(path) + ": bad input shape"):
        ckpt.load_checkpoint(path)


def test_an_empty_layer_list_is_refused(tmp_path):
    _, _, path = _small(tmp_path)
    _edit(path, "meta/config", lambda config: config.__setitem__("layers", []))
    with pytest.raises(ckpt.CheckpointError, match="bad layer list in 'meta/config'"):
        ckpt.load_checkpoint(path)


def test_the_history_holds_numbers_or_nulls_only(tmp_path):
    _, _, path = _small(tmp_path)
    _edit(path, "meta/info", lambda info: info.__setitem__("history", [{"a": None, "b": 1.5}]))
    assert ckpt.read_info(path)["history"] == [{"a": None, "b": 1.5}]
    _edit(path, "meta/info", lambda info: info.__setitem__("history", [{"a": "text"}]))
    with pytest.raises(ckpt.CheckpointError, match="bad metrics history"):
        ckpt.read_info(path)


def test_a_boolean_preprocessing_mean_is_refused(tmp_path):
    _, _, path = _small(tmp_path)
    prep = {"kind": "normalize", "mean": True, "std": 1.0}
    _edit(path, "meta/info", lambda info: info.__setitem__("preprocessing", prep))
    with pytest.raises(ckpt.CheckpointError, match="bad preprocessing mean 'True'"):
        ckpt.read_info(path)


def test_an_optimizer_slot_missing_after_a_step_is_refused(tmp_path):
    _, opt, path = _small(tmp_path, optimizer="momentum")
    key = next(k for k in opt.state_dict() if k != "steps")
    arrays = _arrays(path)
    del arrays[f"optim/{key}"]
    _write(path, arrays)
    with pytest.raises(ckpt.CheckpointError, match=rf"optimizer state '{key}' missing after 1 "):
        ckpt.load_checkpoint(path)


def test_the_loaded_checkpoint_keeps_the_stored_optimizer_state(tmp_path):
    _, opt, path = _small(tmp_path, optimizer="momentum")
    stored = ckpt.load_checkpoint(path).optimizer_state
    assert sorted(stored) == sorted(opt.state_dict())
    assert int(stored["steps"]) == 1


def test_a_stored_generator_state_read_later_names_the_file(tmp_path):
    _, _, path = _small(tmp_path)
    checkpoint = ckpt.load_checkpoint(path)
    checkpoint.info["rng_state"] = {"bit_generator": "nope"}
    with pytest.raises(ckpt.CheckpointError, match="^" + str(path) + ": bad random generator"):
        checkpoint.rng()


def test_a_member_that_is_not_an_npy_array_is_called_so(tmp_path):
    _, _, path = _small(tmp_path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("param/extra.npy", b"not an array at all")
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.load_checkpoint(path)
    message = str(caught.value)
    assert "member 'param/extra' is not an .npy array" in message
    assert "pickle" not in message


def test_the_difference_names_a_setting_only_one_layer_has():
    stored = {"layers": [{"name": "conv1", "type": "Convolution", "padding": "same"}]}
    current = {"layers": [{"name": "conv1", "type": "Convolution"}]}
    assert ckpt._difference(stored, current) == (
        "conv1.padding 'same' in the checkpoint, None here"
    )


def _held(needs):
    import types

    return {f"param/{name}.weight": types.SimpleNamespace(shape=(n,)) for name, n in needs.items()}


def test_the_activation_bound_is_inclusive(monkeypatch):
    net = Network([Convolution(2, 3), Flatten(), FullyConnected(3)], input_shape=(1, 6, 6))
    config = json.loads(json.dumps(net.config()))
    conv, fc = net.layers[0].name, net.layers[2].name
    held = _held({conv: 2 * 9 + 2, fc: 3 * 32 + 3})
    monkeypatch.setattr(ckpt, "MAX_ACTIVATION_ELEMENTS", 32)  # the convolution's 2 x 4 x 4
    ckpt._check_sizes(config, held, "f")
    monkeypatch.setattr(ckpt, "MAX_ACTIVATION_ELEMENTS", 31)
    with pytest.raises(ckpt.CheckpointError, match="would produce 32 values per example"):
        ckpt._check_sizes(config, held, "f")


def test_a_symlink_to_a_regular_file_may_be_replaced_one_into_proc_may_not(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "file")
    assert ckpt.not_replaceable(tmp_path / "link") is None
    (tmp_path / "proc").symlink_to("/proc/self/status")
    assert ckpt.not_replaceable(tmp_path / "proc").startswith("is a symlink into /proc (")


def test_the_temporary_file_is_named_after_the_target(tmp_path):
    seen = []

    def write(stream):
        seen.extend(p.name for p in tmp_path.iterdir())
        stream.write(b"data")

    ckpt.atomic_write(tmp_path / "notes.txt", write)
    assert len(seen) == 1 and seen[0].startswith(".notes.txt.") and seen[0].endswith(".tmp")


def test_the_lock_file_says_who_holds_it_since_when_and_survives_its_removal(tmp_path):
    lock = ckpt.DirectoryLock(tmp_path)
    holder = json.loads(lock.path.read_bytes())
    assert sorted(holder) == ["command", "host", "pid", "since"]
    assert holder["since"].endswith(" UTC")
    lock.path.unlink()  # removed while held: release still gives the lock up
    lock.release()
    ckpt.DirectoryLock(tmp_path).release()


def test_printable_cuts_at_its_limit():
    shown = ckpt.printable("x" * 200)
    assert len(shown) == 80 and shown.endswith("...")
    assert len(ckpt.printable("x" * 200, 20)) == 20
