"""What the second mutation campaign's survivors on main fe0b55f showed untested (issue 22:
`tox -e mutation-second`, seed 2, 600 of 6,835 mutants over the whole scope, 2026-12-08):
``Network.backward`` taking the loss's gradient of the outputs against the targets, a
checkpoint's parameters of unknown layers refused before any member is read, a convolution's
size error naming the padding only where there is one, and the blocked path's compiled f over a
batch cut into slices. Small and in process."""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import Convolution, Flatten, FullyConnected, Network, Subsampling
from anycnn.training import checkpoint as ckpt


@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_backward_after_forward_gives_the_gradients_of_compute_gradients(loss):
    """``forward(x)`` then ``backward(t)``: the same gradients as ``compute_gradients(x, t)``
    (``_objective_and_backward``: "the same bits as the two calls"), for a loss whose gradient
    is not symmetric in the outputs and the targets."""
    activation = "identity" if loss == "cross_entropy" else "tanh"
    net = Network(
        [Convolution(2, 3), Subsampling(2), Flatten(), FullyConnected(3, activation=activation)],
        input_shape=(1, 6, 6),
        backend="cpu",
        dtype="float64",
        loss=loss,
        seed=1,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 6, 6))
    t = np.eye(3)[[0, 1, 2, 0]]
    net.compute_gradients(x, t)
    expected = {k: np.array(v) for k, v in net.gradients().items()}
    net.forward(x)
    net.backward(t)
    for name, value in net.gradients().items():
        np.testing.assert_array_equal(np.asarray(value), expected[name], err_msg=name)


def test_parameters_of_a_layer_not_in_the_configuration_are_refused_before_reading(
    tmp_path, monkeypatch
):
    """Note [Reading an untrusted checkpoint]: a member's name is checked against the
    configuration before any member's data is read (``_check_members``)."""
    net = Network(
        [Convolution(2, 3), Flatten(), FullyConnected(3)],
        input_shape=(1, 6, 6),
        backend="cpu",
        dtype="float64",
    )
    path = ckpt.save_checkpoint(tmp_path / "c.npz", net, epoch=1)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["param/conv9.kernel"] = np.zeros(3)
    with open(path, "wb") as stream:
        np.savez(stream, **arrays)
    read = []
    original = ckpt._Archive.read

    def spy(self, key, *args, **kwargs):
        read.append(key)
        return original(self, key, *args, **kwargs)

    monkeypatch.setattr(ckpt._Archive, "read", spy)
    with pytest.raises(ckpt.CheckpointError, match="unexpected parameters conv9.kernel"):
        ckpt.load_checkpoint(path)
    assert [key for key in read if not key.startswith("meta/")] == []


@pytest.mark.parametrize(
    "padding, shown", [(0, "input maps ("), (1, "input maps padded by (1, 1)")]
)
def test_a_kernel_larger_than_its_maps_names_the_padding_only_where_there_is_one(padding, shown):
    with pytest.raises(ValueError, match="kernel 7x7 is larger than the 3x3") as error:
        Network(
            [Convolution(2, 7, padding=padding), Flatten(), FullyConnected(2)],
            input_shape=(1, 3, 3),
            backend="cpu",
        )
    assert shown in str(error.value)
    assert ("padded" in str(error.value)) == bool(padding)


def test_the_blocked_paths_compiled_f_covers_each_slice_of_the_batch_once(monkeypatch):
    """``_blocked._activate``: f over each batch slice of the output (the pool's slices, which
    depend on the shapes only; small slices forced here), every value once."""
    pytest.importorskip("anycnn_numpy")
    from anycnn_numpy import _blocked, _jit, _threads
    from anycnn_numpy._activation import compiled_activation

    from anycnn.layers.activations import get_activation

    if _jit.activate_run is None:
        pytest.skip("Numba is not installed here")
    compiled = compiled_activation(get_activation("tanh"), np.dtype(np.float32))
    rng = np.random.default_rng(2)
    out = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
    expected = out.copy()
    _jit.activate_run(expected.reshape(-1), *compiled)
    monkeypatch.setattr(_threads, "_SLICE_BYTES", 3 * 25 * 4)  # one example a slice
    assert len(_threads.slices(6, 3 * 25 * 4)) > 1
    _blocked._activate(out, compiled)
    np.testing.assert_array_equal(out, expected)
