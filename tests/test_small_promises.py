"""Small promises that the quarter campaign of main 15fdaa2 found unheld (issue 22): kernel
size specs, a convolution's repr with a table, the remainder message of a subsampling, the
functional API naming itself for a bad kernel, the ops refusing arrays of two namespaces and
keeping the input's device, and an optimizer's state_dict being a snapshot."""

from __future__ import annotations

import array_api_strict as xs
import numpy as np
import pytest

from anycnn import (
    Convolution,
    Flatten,
    FullyConnected,
    Network,
    Subsampling,
    functional,
    ops,
)
from anycnn.layers.conv import kernel_sizes
from anycnn.training import optim


def test_a_kernel_size_that_is_not_a_sequence_is_a_value_error():
    with pytest.raises(ValueError, match="^Convolution: kernel_size must be an int or 1 to 3"):
        kernel_sizes(3.5, None, "Convolution")


def test_a_kernel_size_of_four_axes_is_refused():
    with pytest.raises(ValueError, match="kernel_size must be an int or 1 to 3 ints"):
        kernel_sizes((2, 2, 2, 2), None, "Convolution")
    assert kernel_sizes((2, 2, 2), None, "Convolution") == (2, 2, 2)


def test_the_repr_of_a_convolution_with_a_table_says_table():
    conv = Convolution(2, 3, selection=np.array([[True], [True]]))
    assert repr(conv) == "Convolution(2@3x3, table, sigmoid)"


def test_the_remainder_message_counts_rows_and_columns_left_over():
    with pytest.raises(ValueError, match=r"ignore the last 1 row\(s\) and 2 column\(s\) "):
        Network([Subsampling(3)], input_shape=(1, 7, 8))


@pytest.mark.parametrize("op", [functional.conv_valid, functional.conv_full])
def test_the_functional_api_names_itself_for_a_bad_kernel(op):
    with pytest.raises(ValueError, match=f"^{op.__name__}: kernel must be a 4-d"):
        op(np.zeros((1, 1, 4, 4)), np.zeros((3, 3)))


def _mixed():
    return [
        (ops.conv_full, np.zeros((1, 2, 3, 3)), xs.asarray(np.zeros((2, 1, 2, 2)))),
        (ops.conv_full, xs.asarray(np.zeros((1, 2, 3, 3))), np.zeros((2, 1, 2, 2))),
        (ops.fully_connected_weight_grad, np.zeros((2, 3)), xs.asarray(np.zeros((2, 4)))),
        (ops.fully_connected_weight_grad, xs.asarray(np.zeros((2, 3))), np.zeros((2, 4))),
        (ops.fully_connected_input_grad, np.zeros((2, 4)), xs.asarray(np.zeros((4, 3)))),
        (ops.fully_connected_input_grad, xs.asarray(np.zeros((2, 4))), np.zeros((4, 3))),
    ]


@pytest.mark.parametrize("case", range(6))
def test_the_ops_refuse_arrays_of_two_namespaces(case):
    op, a, b = _mixed()[case]
    with pytest.raises(TypeError, match="Multiple namespaces"):
        op(a, b)


def test_padding_and_fitting_maps_keep_the_inputs_device():
    device = xs.Device("device1")
    x = xs.asarray(np.ones((1, 1, 3, 3)), device=device)
    grown = ops.fit_maps(x, 5, 4)
    assert grown.device == device and grown.shape == (1, 1, 5, 4)
    full = ops.conv_full(x, xs.asarray(np.ones((1, 1, 2, 2)), device=device))
    assert full.device == device and full.shape == (1, 1, 4, 4)


def test_state_dict_is_a_snapshot_that_later_steps_leave_alone():
    net = Network(
        [Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64", backend="cpu"
    )
    opt = optim.build_optimizer("momentum", net, lr=0.1)
    rng = np.random.default_rng(0)
    x, t = rng.random((2, 1, 2, 2)), rng.random((2, 2))
    net.compute_gradients(x, t)
    opt.step()
    state = opt.state_dict()
    before = {k: np.array(v, copy=True) for k, v in state.items()}
    net.compute_gradients(x, t)
    opt.step()
    for key, value in before.items():
        np.testing.assert_array_equal(state[key], value, err_msg=key)


def test_an_instance_whose_value_is_replaced_gets_its_own_value():
    from anycnn.layers import SquaredError

    loss = SquaredError()
    y, t = np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])
    loss.value = lambda y, t: 42.0
    value, gradient = loss.value_and_gradient(y, t)
    assert value == 42.0
    np.testing.assert_array_equal(gradient, SquaredError().gradient(y, t))


def test_a_convolution_covering_the_map_applies_a_user_activation():
    """The covering path (one GEMM: Note [Convolutions that cover the map] in _dense) with an
    activation the kernels do not compile, whose ``forward`` returns a new array."""
    from anycnn.layers.activations import Activation

    dense = pytest.importorskip("anycnn_numpy._dense")

    class Softsign(Activation):
        name = "softsign"

        def forward(self, u):
            return u / (1 + abs(u))

        def derivative(self, y, u=None):
            return (1 - abs(y)) ** 2

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 4, 4)).astype(np.float32)
    kernel = rng.standard_normal((5, 2, 4, 4)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    got = dense.conv_covering(x, kernel, None, bias, Softsign())
    u = np.einsum("nchw,ochw->no", x.astype(np.float64), kernel[:, :, ::-1, ::-1]) + bias
    np.testing.assert_allclose(got.reshape(3, 5), u / (1 + abs(u)), rtol=1e-5, atol=1e-6)
