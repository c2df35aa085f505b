"""Promises of the network, the losses and a few ops that no other test held (issue 22's
mutation campaign found them open): the summary's table, ``load_state_dict`` naming what is
missing and what is unexpected, ``save(include_optimizer=False)``, the losses' refusal of arrays
from two namespaces in every method, decimation of maps whose size is not a multiple of ``n``,
the error messages of the functional API naming the padding, and an activation subclass that
redefines ``apply`` losing its parent's description."""

from __future__ import annotations

import numpy as np
import pytest

import anycnn
from anycnn import Flatten, FullyConnected, Network, Subsampling, functional, ops
from anycnn.layers import CrossEntropy, Sigmoid, SquaredError
from anycnn.training.checkpoint import load_checkpoint


def _net(**options):
    return Network(
        [Subsampling(2, "mean", name="sub"), Flatten(), FullyConnected(3, name="fc")],
        input_shape=(1, 4, 4),
        dtype="float64",
        **options,
    )


def test_summary_lists_each_layer_with_its_parameter_count_and_the_total():
    net = _net()
    lines = net.summary().split("\n")
    assert lines[0].startswith(f"{net.name}: input (1, 4, 4), float64, backend ")
    assert len(lines) == 5
    assert lines[1].split()[:2] == ["sub", "Subsampling(2,"] and lines[1].endswith("2 params")
    assert lines[3].split()[0] == "fc" and lines[3].endswith("  15 params")  # 4 x 3 + 3
    assert lines[4] == "  17 parameters"
    net.fit(
        np.arange(32.0).reshape(2, 1, 4, 4),
        np.array([0, 1]),
        epochs=1,
        batch_size=2,
        preprocessing="normalize",
    )
    text = net.summary()
    assert "  preprocessing normalize (mean 15.5, std " in text
    assert "applied by predict/evaluate" in text and len(text.split("\n")) == 6


def test_summary_of_a_preprocessing_without_statistics():
    net = _net()
    net.fit(
        np.zeros((2, 1, 4, 4), dtype=np.uint8),
        np.array([0, 1]),
        epochs=1,
        batch_size=2,
        preprocessing="scale01",
    )
    line = net.summary().split("\n")[1]
    assert line == "  preprocessing scale01, applied by predict/evaluate"


def test_load_state_dict_names_the_missing_and_the_unexpected():
    net = _net()
    state = net.state_dict()
    extra = dict(state, **{"fc.extra": np.zeros(3)})
    with pytest.raises(KeyError, match=r"missing nothing, unexpected \['fc.extra'\]"):
        net.load_state_dict(extra)
    short = {k: v for k, v in state.items() if k != "sub.beta"}
    with pytest.raises(KeyError, match=r"missing \['sub.beta'\], unexpected nothing"):
        net.load_state_dict(short)


def test_save_without_the_optimizer(tmp_path):
    net = _net()
    net.fit(
        np.zeros((2, 1, 4, 4)),
        np.array([0, 1]),
        epochs=1,
        batch_size=2,
        optimizer="momentum",
    )
    with_state = load_checkpoint(net.save(tmp_path / "with.npz"))
    without = load_checkpoint(net.save(tmp_path / "without.npz", include_optimizer=False))
    assert with_state.optimizer_state and not without.optimizer_state
    assert without.optimizer is None and with_state.optimizer is not None


@pytest.mark.parametrize("loss", [SquaredError(), CrossEntropy()], ids=["squared", "cross"])
def test_the_loss_value_and_curvature_refuse_arrays_of_two_namespaces(loss):
    import array_api_strict as xs

    y_np = np.full((2, 3), 0.25)
    t_np = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y_xs, t_xs = xs.asarray(y_np), xs.asarray(t_np)
    for method in ("value", "curvature"):
        call = getattr(loss, method)
        for y, t in ((y_np, t_xs), (y_xs, t_np)):
            with pytest.raises(TypeError):
                call(y, t)
        np.testing.assert_allclose(
            np.asarray(call(y_np, t_np)), np.asarray(xs.asarray(call(y_xs, t_xs))), rtol=1e-15
        )


def test_decimate_keeps_every_nth_sample_of_the_whole_blocks_only(backend):
    x_host = np.arange(2 * 1 * 5 * 7, dtype=np.float64).reshape(2, 1, 5, 7)
    out = np.asarray(backend.to_host(ops.decimate(backend.asarray(x_host, "float64"), 2)))
    np.testing.assert_array_equal(out, x_host[:, :, 0:4:2, 0:6:2])
    x1 = np.arange(9.0).reshape(1, 1, 9)
    np.testing.assert_array_equal(
        np.asarray(backend.to_host(ops.decimate(backend.asarray(x1, "float64"), 4))), [[[0.0, 4.0]]]
    )


def test_functional_errors_name_the_padding():
    x = np.zeros((1, 1, 2, 2))
    k = np.zeros((1, 1, 5, 5))
    with pytest.raises(ValueError, match=r"larger than the 2x2 input maps padded by \(1, 1\)"):
        functional.conv_valid(x, k, padding=(1, 1))
    with pytest.raises(ValueError, match=r"larger than the 2x2 input maps$"):
        functional.conv_valid(x, k)


def test_an_activation_that_redefines_apply_describes_nothing():
    class Scaled(Sigmoid):
        def apply(self, u, xp=None):
            return 2.0 * super().apply(u, xp)

    class Plain(Sigmoid):
        pass

    assert Sigmoid().describe() is not None and Plain().describe() == Sigmoid().describe()
    assert Scaled().describe() is None
    assert anycnn.layers.get_activation(Scaled()).describe() is None
