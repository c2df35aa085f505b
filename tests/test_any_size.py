"""Networks for any input size (issue 23): subsampling remainders, convolution padding,
rectangular kernels and maps, on every backend.

Oracles are plain NumPy/SciPy written from the definitions (``tests/oracles.py``), finite
differences in float64 (:func:`anycnn.gradcheck.gradcheck`) and, in ``test_torch_oracle.py``,
PyTorch's ``avg_pool2d(ceil_mode=...)`` and ``conv2d(padding=...)``.
"""

from __future__ import annotations

import numpy as np
import oracles
import pytest
from scipy import special

from anycnn import ops as reference
from anycnn.gradcheck import gradcheck
from anycnn.layers import Convolution, Flatten, FullyConnected, LayerError, Subsampling
from anycnn.network import Network
from anycnn.testing import assert_close

MODES = ("sum", "mean", "decimate")


def _host(backend, a):
    return np.asarray(backend.to_host(a))


def _jitter(net, rng):
    """Move biases and betas off their initial constants so that a forgotten term shows."""
    for name, value in net.parameters().items():
        if name.endswith((".bias", ".beta")):
            host = net.backend.to_host(value) + rng.uniform(-0.3, 0.3, tuple(value.shape))
            net.set_parameter(name, net.backend.asarray(host, dtype="float64"))


def _gradcheck(net, rng, n=2):
    _jitter(net, rng)
    x = net.backend.asarray(rng.standard_normal((n, *net.input_shape)), dtype="float64")
    t = net.backend.asarray(rng.uniform(0.1, 0.9, (n, *net.output_shape)), dtype="float64")
    report = gradcheck(net, x, t, max_entries=6)
    assert report.passed, "\n" + str(report)


# --- subsampling remainders: the oracle, written out block by block --------------------------
def down_oracle(x, n, mode, remainder):
    """``down`` over the blocks a remainder leaves: whole ones ("drop"), or partial ones too
    ("pad": the sum of the samples present, their mean, or the first)."""
    b, c, h, w = x.shape
    oh, ow = (h // n, w // n) if remainder == "drop" else (-(-h // n), -(-w // n))
    out = np.zeros((b, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            block = x[:, :, i * n : (i + 1) * n, j * n : (j + 1) * n]
            if mode == "sum":
                out[:, :, i, j] = block.sum(axis=(2, 3))
            elif mode == "mean":
                out[:, :, i, j] = block.mean(axis=(2, 3))
            else:
                out[:, :, i, j] = block[:, :, 0, 0]
    return out


def up_oracle(delta, n, mode, remainder, h, w):
    """The adjoint of :func:`down_oracle`: dE/dx for dE/d(down x) = delta, by the chain rule on
    each block (a sample dropped gets zero)."""
    b, c, oh, ow = delta.shape
    out = np.zeros((b, c, h, w))
    for i in range(oh):
        for j in range(ow):
            rows = slice(i * n, min((i + 1) * n, h))
            cols = slice(j * n, min((j + 1) * n, w))
            d = delta[:, :, i, j][:, :, None, None]
            if mode == "sum":
                out[:, :, rows, cols] += d
            elif mode == "mean":
                count = (rows.stop - rows.start) * (cols.stop - cols.start)
                out[:, :, rows, cols] += d / count
            else:
                out[:, :, i * n : i * n + 1, j * n : j * n + 1] += d
    return out


@pytest.mark.parametrize("remainder", ["drop", "pad"])
@pytest.mark.parametrize("mode", MODES)
def test_subsampling_remainder_forward_and_input_gradient(backend, rng, mode, remainder):
    """x_j = f(beta_j down(x_j) + b_j) over whole or partial blocks of 7x8 maps with n = 3,
    and dE/dx = beta up(delta) restricted to the samples each block holds."""
    net = Network(
        [Subsampling(3, mode, activation="sigmoid", remainder=remainder)],
        (2, 7, 8),
        dtype="float64",
    )
    layer = net.layers[0]
    assert net.output_shape == ((2, 2, 2) if remainder == "drop" else (2, 3, 3))
    beta = rng.uniform(0.5, 1.5, 2)
    net.set_parameter("sub1.beta", backend.asarray(beta, dtype="float64"))
    x_host = rng.standard_normal((3, 2, 7, 8))
    y = layer.forward(backend.asarray(x_host, dtype="float64"))
    u = beta[None, :, None, None] * down_oracle(x_host, 3, mode, remainder)
    assert_close(y, special.expit(u), backend=backend)
    dy = rng.standard_normal(tuple(y.shape))
    dx = layer.backward(backend.asarray(dy, dtype="float64"))
    y_host = _host(backend, y)
    delta = dy * y_host * (1 - y_host)
    expected = up_oracle(beta[None, :, None, None] * delta, 3, mode, remainder, 7, 8)
    assert_close(dx, expected, backend=backend)
    assert_close(
        layer.grads["beta"],
        (delta * down_oracle(x_host, 3, mode, remainder)).sum(axis=(0, 2, 3)),
        backend=backend,
    )


def test_remainder_error_names_the_options():
    """The default refuses maps that whole blocks do not cover, and says what would fix it."""
    with pytest.raises(LayerError) as caught:
        Network([Subsampling(2, "mean", trainable=False)], (3, 29, 29))
    message = str(caught.value)
    assert "29x29 maps are not divisible by 2" in message
    assert "remainder='drop'" in message and "14x14" in message
    assert "remainder='pad'" in message and "15x15" in message
    with pytest.raises(LayerError, match="smaller than one 4x4 block"):
        Network([Subsampling(4, remainder="drop")], (1, 3, 9))
    with pytest.raises(ValueError, match="remainder must be one of"):
        Subsampling(2, remainder="ceil")


@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_whole_blocks_are_the_same_in_every_remainder(backend, rng, remainder):
    """Maps that n divides give the same bits whatever the remainder option says."""
    x = backend.asarray(rng.standard_normal((2, 3, 8, 6)), dtype="float64")
    for mode in MODES:
        plain = Network([Subsampling(2, mode, activation="tanh")], (3, 8, 6), dtype="float64")
        other = Network(
            [Subsampling(2, mode, activation="tanh", remainder=remainder)],
            (3, 8, 6),
            dtype="float64",
        )
        np.testing.assert_array_equal(
            _host(backend, plain.forward(x)), _host(backend, other.forward(x))
        )


@pytest.mark.parametrize("trainable", [True, False], ids=["trainable", "fixed"])
@pytest.mark.parametrize("remainder", ["drop", "pad"])
@pytest.mark.parametrize("mode", MODES)
def test_remainder_gradcheck(backend, rng, mode, remainder, trainable):
    """Finite differences in float64 through a convolution below a subsampling layer with a
    remainder (the convolution forms up(delta) itself where it can: Note [Deferred
    up-sampling]), then a second stage, on every backend."""
    net = Network(
        [
            Convolution(2, 2, activation="sigmoid"),
            Subsampling(2, mode, activation="tanh", trainable=trainable, remainder=remainder),
            Convolution(2, (2, 1), activation="tanh"),
            Subsampling(3, mode, trainable=trainable, remainder=remainder),
            Flatten(),
            FullyConnected(2, activation="sigmoid"),
        ],
        (1, 10, 9),
        dtype="float64",
        seed=1,
    )
    _gradcheck(net, rng)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rows", [-1, 1], ids=["drop", "pad"])
@pytest.mark.parametrize("activation", ["sigmoid", "lecun_tanh", "identity"])
def test_fused_conv_backward_fits_the_upsampling(backend, rng, activation, rows, dtype):
    """A fused conv_backward given the deltas of a subsampling layer with a remainder (one row
    and column fewer or more than the maps need) forms delta = f'(u) o fit(up(dy)) as the
    oracle does: zeros where rows were dropped, partial blocks cut."""
    from anycnn.layers.activations import get_activation

    fused = backend.ops.fused.get("conv_backward")
    if fused is None:
        pytest.skip(f"{backend.name} has no fused conv_backward")
    act = get_activation(activation)
    n, c, o, up = 5, 2, 3, 2
    dh, dw = 11, 9  # odd: 5 or 6 rows, 4 or 5 columns of deltas
    sh, sw = (dh // up, dw // up) if rows < 0 else (-(-dh // up), -(-dw // up))
    x_host = rng.standard_normal((n, c, dh + 2, dw + 1)).astype(dtype).astype(np.float64)
    y_host = act.forward(rng.standard_normal((n, o, dh, dw))).astype(dtype).astype(np.float64)
    dy_host = rng.standard_normal((n, o, sh, sw)).astype(dtype).astype(np.float64)
    up_dy = np.kron(dy_host, np.ones((1, 1, up, up)))
    fitted = np.zeros((n, o, dh, dw))
    fitted[:, :, : min(dh, sh * up), : min(dw, sw * up)] = up_dy[:, :, :dh, :dw]
    delta = _host(backend, act.sensitivity(fitted, y_host, np))
    args = [backend.asarray(a, dtype=dtype) for a in (x_host, dy_host, y_host)]
    grad, bias, got_delta = fused(args[0], args[1], args[2], act, None, up, True)
    expected = reference.conv_backward(x_host, dy_host, y_host, act, None, up, True)
    assert_close(got_delta, delta.astype(dtype), backend=backend)
    assert_close(grad, oracles.conv_kernel_grad(x_host, delta).astype(dtype), backend=backend)
    assert_close(grad, expected[0].astype(dtype), backend=backend)
    assert_close(bias, delta.sum(axis=(0, 2, 3)).astype(dtype), backend=backend)


@pytest.mark.parametrize("remainder", ["drop", "pad"])
def test_remainder_round_trips_through_the_config(remainder):
    net = Network([Subsampling(2, "mean", remainder=remainder)], (1, 5, 7))
    rebuilt = Network.from_config(net.config())
    assert rebuilt.layers[0].remainder == remainder
    assert rebuilt.output_shape == net.output_shape
    assert f"remainder={remainder}" in repr(rebuilt.layers[0])
