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


# --- survivors of the first campaign over the whole scope (stopped part-way, 2026-12-08) -----
def test_stamping_a_files_caches_puts_the_vectors_locator_first_once(monkeypatch, tmp_path):
    """Note [Caches stamped with the vectors]: ``cache_depends_on_vectors`` records the file and
    puts the stamping locator before Numba's own, once however often it is called."""
    pytest.importorskip("anycnn_numpy")
    from anycnn_numpy import _vectors

    if _vectors._IMPL is None:
        pytest.skip("Numba is not installed here")
    others = [c for c in _vectors._IMPL._locator_classes if c is not _vectors._VectorsLocator]
    monkeypatch.setattr(_vectors._IMPL, "_locator_classes", list(others))
    monkeypatch.setattr(_vectors, "_DEPENDENTS", set())
    module = tmp_path / "kernels.py"
    module.write_text("")
    for _ in range(2):
        _vectors.cache_depends_on_vectors(str(module))
        assert _vectors._IMPL._locator_classes == [_vectors._VectorsLocator, *others]
    assert _vectors._DEPENDENTS == {str(module.resolve())}


def test_the_volume_paths_f_is_the_direct_kernels_compiled_one():
    """``_volume.apply_activation``: the logistic and the scaled tanh by the direct kernels'
    compiled f (their bits, not NumPy's), over each batch slice."""
    pytest.importorskip("anycnn_numpy")
    from anycnn_numpy import _jit, _volume
    from anycnn_numpy._activation import compiled_activation

    from anycnn.layers.activations import get_activation

    if _jit.activate_run is None:
        pytest.skip("Numba is not installed here")
    rng = np.random.default_rng(3)
    for name in ("sigmoid", "lecun_tanh"):
        activation = get_activation(name)
        out = (rng.standard_normal((5, 4, 3, 6, 6)) * 3).astype(np.float32)
        expected = out.copy()
        _jit.activate_run(expected.reshape(-1), *compiled_activation(activation, out.dtype))
        got = _volume.apply_activation(out, activation)
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["sigmoid", "lecun_tanh", "tanh", "identity", "relu"])
def test_the_volume_kernels_slope_code_is_the_2d_kernels_formula(name):
    """``_volume.sensitivity_code``: the formula of ``_activation.sensitivity_formula`` (kind,
    parameters as float32, the scaled flag), or None where it has none."""
    pytest.importorskip("anycnn_numpy")
    from anycnn_numpy import _volume
    from anycnn_numpy._activation import sensitivity_formula

    from anycnn.layers.activations import Sigmoid, get_activation

    y = np.zeros((1, 1, 1, 2, 2), np.float32)
    activations = [get_activation(name)] + ([Sigmoid(gain=2.0)] if name == "sigmoid" else [])
    for activation in activations:
        formula = sensitivity_formula(activation, y)
        code = _volume.sensitivity_code(activation, y)
        if formula is None:
            assert code is None
            continue
        kinds = {"identity": _volume.GIVEN, "logistic": _volume.LOGISTIC, "tanh": _volume.TANH}
        assert code[0] == kinds[formula[0]]
        assert (code[1], code[2]) == (np.float32(formula[1]), np.float32(formula[2]))
        assert code[3] is bool(formula[3])
