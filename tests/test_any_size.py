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


# --- convolution padding: ops against SciPy on the padded maps --------------------------------
def _pad(x, ph, pw):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


PAD_CASES = [
    # n, c_in, c_out, (kh, kw), (h, w), (ph, pw), selection
    (2, 2, 3, (3, 3), (7, 6), (1, 1), False),  # "same"
    (3, 3, 2, (5, 3), (9, 7), (2, 1), True),  # rectangular "same"
    (2, 1, 2, (2, 4), (5, 6), (1, 0), False),  # even kernel, rows only
    (1, 2, 4, (3, 2), (4, 3), (3, 2), True),  # more zeros than the kernel minus one
    (4, 6, 16, (5, 5), (14, 10), (2, 2), True),  # LeNet-5's C3 with "same", 4 examples
]


def _pad_case(backend, rng, case, dtype="float64"):
    n, c_in, c_out, (kh, kw), (h, w), (ph, pw), with_selection = case
    x = rng.standard_normal((n, c_in, h, w))
    k = rng.standard_normal((c_out, c_in, kh, kw))
    d = rng.standard_normal((n, c_out, h + 2 * ph - kh + 1, w + 2 * pw - kw + 1))
    table = rng.random((c_out, c_in)) < 0.6 if with_selection else None
    if table is not None:
        table[:, 0] = True
    b = [backend.asarray(a, dtype=dtype) for a in (x, k, d)]
    sel = None if table is None else backend.asarray(table)
    return (x, k, d, table), (*b, sel), (ph, pw)


@pytest.mark.parametrize("case", PAD_CASES, ids=lambda c: f"k{c[3]}-m{c[4]}-p{c[5]}")
def test_padded_convolutions_match_scipy(backend, rng, case):
    """Note [Zero padding]: conv_valid and eq. (7) run on the zero-padded maps, and conv_full
    is the notes' 'full' convolution cropped back by the padding, for rectangular kernels and
    maps; the three are adjoint (float64, every backend)."""
    from anycnn import functional as F

    (x, k, d, table), (bx, bk, bd, sel), pad = _pad_case(backend, rng, case)
    ph, pw = pad
    assert_close(
        F.conv_valid(bx, bk, sel, pad),
        oracles.conv_valid(_pad(x, ph, pw), k, table),
        backend=backend,
    )
    full = oracles.conv_full(d, k, table)
    cropped = full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw]
    assert cropped.shape == x.shape
    assert_close(F.conv_full(bd, bk, sel, pad), cropped, backend=backend)
    grad = oracles.conv_kernel_grad(_pad(x, ph, pw), d, table)
    assert_close(F.conv_kernel_grad(bx, bd, sel, pad), grad, backend=backend)
    # <conv_valid(x, k), d> = <x, conv_full(d, k)> = <k, conv_kernel_grad(x, d)>
    inner = float(np.sum(_host(backend, F.conv_valid(bx, bk, sel, pad)) * d))
    assert inner == pytest.approx(float(np.sum(x * _host(backend, F.conv_full(bd, bk, sel, pad)))))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("direct", [True, False], ids=["direct", "blas"])
@pytest.mark.parametrize("case", PAD_CASES, ids=lambda c: f"k{c[3]}-m{c[4]}-p{c[5]}")
def test_numpy_padded_convolutions_direct_and_blas(monkeypatch, rng, case, direct, dtype):
    """The NumPy backend's compiled direct kernels pad as they read (the forward and the
    cropped 'full' convolution); without them im2col + BLAS pads a copy; both give SciPy's."""
    from anycnn_numpy import _conv, _jit

    from anycnn import backend as registry

    if direct and _jit.correlate_into is None:
        pytest.skip("Numba is not installed: no direct kernels")
    if not direct:
        monkeypatch.setattr(_jit, "correlate_into", None)
    numpy_backend = registry.lookup("numpy")
    (x, k, d, table), (bx, bk, bd, sel), pad = _pad_case(numpy_backend, rng, case, dtype)
    ph, pw = pad
    x, k, d = (a.astype(dtype).astype(np.float64) for a in (x, k, d))
    expected = {
        "conv_valid": oracles.conv_valid(_pad(x, ph, pw), k, table),
        "conv_kernel_grad": oracles.conv_kernel_grad(_pad(x, ph, pw), d, table),
    }
    full = oracles.conv_full(d, k, table)
    expected["conv_full"] = full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw]
    got = {
        "conv_valid": _conv.conv_valid(bx, bk, sel, pad),
        "conv_full": _conv.conv_full(bd, bk, sel, pad),
        "conv_kernel_grad": _conv.conv_kernel_grad(bx, bd, sel, pad),
    }
    for name, value in got.items():
        scale = max(1.0, float(np.abs(expected[name]).max()))
        rtol = 1e-4 if dtype == "float32" else 1e-10
        np.testing.assert_allclose(
            value, expected[name], rtol=rtol, atol=rtol * scale, err_msg=name
        )
        assert value.dtype == np.dtype(dtype) and value.flags.c_contiguous, name


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("activation", ["sigmoid", "lecun_tanh", "identity"])
@pytest.mark.parametrize("case", PAD_CASES[:3], ids=lambda c: f"k{c[3]}-m{c[4]}-p{c[5]}")
def test_fused_conv_ops_take_padding(backend, rng, case, activation, up):
    """The fused forward and backward ops of a padded layer give the reference's results."""
    from anycnn.layers.activations import get_activation

    act = get_activation(activation)
    (x, k, d, table), (bx, bk, bd, sel), pad = _pad_case(backend, rng, case)
    bias = backend.asarray(rng.standard_normal(k.shape[0]), dtype="float64")
    forward = backend.ops.fused.get("conv_valid_activate")
    if forward is not None:
        assert_close(
            forward(bx, bk, bias, act, sel, pad),
            _host(backend, reference.conv_valid_activate(bx, bk, bias, act, sel, pad)),
            backend=backend,
        )
    backward = backend.ops.fused.get("conv_backward")
    if backward is None:
        pytest.skip(f"{backend.name} has no fused conv_backward")
    y = backend.asarray(act.forward(rng.standard_normal(d.shape)), dtype="float64")
    dy_shape = (d.shape[0], d.shape[1], -(-d.shape[2] // up), -(-d.shape[3] // up))
    dy = backend.asarray(rng.standard_normal(dy_shape), dtype="float64")
    expected = reference.conv_backward(bx, dy, y, act, sel, up, True, pad)
    got = backward(bx, dy, y, act, sel, up, True, pad)
    for name, a, b in zip(("kernel grad", "bias grad", "delta"), got, expected, strict=True):
        assert_close(a, _host(backend, b), backend=backend, err_msg=name)


def test_padding_arguments_are_checked():
    from anycnn import functional as F

    with pytest.raises(ValueError, match="padding='same' needs odd kernel sizes"):
        Convolution(2, (3, 4), padding="same")
    for bad in ("full", -1, (1,), (1, 2, 3), (1.5, 1), True):
        with pytest.raises(ValueError, match="padding must be"):
            Convolution(2, 3, padding=bad)
    with pytest.raises(LayerError, match=r"kernel 7x7 is larger than the 3x3 input maps padded"):
        Network([Convolution(2, 7, padding=1)], (1, 3, 3))
    with pytest.raises(ValueError, match="conv_valid: padding must be"):
        F.conv_valid(np.zeros((1, 1, 4, 4)), np.zeros((1, 1, 3, 3)), None, (1, -1))


@pytest.mark.parametrize(
    ("padding", "expected"),
    [("valid", (3, 4, 3)), ("same", (3, 6, 5)), (2, (3, 8, 7)), ((0, 1), (3, 4, 5))],
)
def test_padding_shapes_and_config(padding, expected):
    net = Network([Convolution(3, (3, 3), padding=padding)], (2, 6, 5))
    assert net.output_shape == expected
    rebuilt = Network.from_config(net.config(), extra_state=net.extra_state())
    assert rebuilt.output_shape == expected
    assert rebuilt.layers[0].pad == net.layers[0].pad


PADDED_NETWORKS = {
    "same-rectangular": lambda: Network(
        [
            Convolution(3, (3, 5), padding="same", activation="tanh"),
            Subsampling(2, "sum", activation="sigmoid"),
            Convolution(2, (2, 3), padding=(1, 0), selection="pairs", activation="tanh"),
            Flatten(),
            FullyConnected(2, activation="sigmoid"),
        ],
        (2, 8, 6),
        dtype="float64",
        seed=2,
    ),
    "int-padding-mean": lambda: Network(
        [
            Convolution(2, 2, padding=1, activation="sigmoid"),
            Subsampling(3, "mean", remainder="pad"),
            Convolution(3, 3, padding="same", activation="identity"),
            Flatten(),
            FullyConnected(2, activation="tanh"),
        ],
        (1, 5, 7),
        dtype="float64",
        seed=3,
    ),
}


@pytest.mark.parametrize("name", list(PADDED_NETWORKS))
def test_padded_networks_gradcheck(backend, rng, name):
    """Finite differences in float64 through padded convolutions (Note [Zero padding]), on
    rectangular kernels and maps, on every backend."""
    net = PADDED_NETWORKS[name]()
    _gradcheck(net, rng)


# --- the "done when": a 3x64x64 network -----------------------------------------------
def rgb64(dtype="float64", seed=0):
    """Two stages of 3x3 convolutions on 3x64x64 images, one 'valid', one 'same', each followed
    by a subsampling layer that drops the remainder: 64 -> 62 -> 31 -> 31 -> 15."""
    return Network(
        [
            Convolution(4, 3, padding="valid", activation="tanh"),
            Subsampling(2, "mean", activation="identity", remainder="drop"),
            Convolution(6, 3, padding="same", selection="pairs", activation="tanh"),
            Subsampling(2, "sum", activation="tanh", remainder="drop"),
            Flatten(),
            FullyConnected(3, activation="sigmoid"),
        ],
        (3, 64, 64),
        dtype=dtype,
        seed=seed,
    )


def test_rgb64_network_builds_trains_and_gradchecks(backend, rng):
    net = rgb64()
    assert [layer.output_shape for layer in net.layers][:4] == [
        (4, 62, 62),
        (4, 31, 31),
        (6, 31, 31),
        (6, 15, 15),
    ]
    x = net.backend.asarray(rng.standard_normal((4, 3, 64, 64)), dtype="float64")
    t = net.backend.asarray(np.eye(3)[[0, 1, 2, 0]] * 0.8 + 0.1, dtype="float64")
    losses = []
    for _ in range(8):
        losses.append(float(net.compute_gradients(x, t)))
        for name, grad in net.gradients().items():
            net.set_parameter(name, net.parameters()[name] - 0.5 * grad)
    assert losses[-1] < 0.9 * losses[0], losses
    report = gradcheck(net, x[:2, ...], t[:2, ...], max_entries=4)
    assert report.passed, "\n" + str(report)


def test_padding_and_remainders_round_trip_through_a_checkpoint(tmp_path, rng):
    """A saved network records each layer's padding and remainder (in the layer's config) and
    comes back with the same shapes and outputs."""
    import anycnn

    net = rgb64(dtype="float32")
    path = net.save(tmp_path / "rgb64.npz")
    loaded = anycnn.load(path)
    assert [layer.config() for layer in loaded.layers] == [layer.config() for layer in net.layers]
    assert loaded.layers[0].padding == "valid" and loaded.layers[2].padding == "same"
    assert loaded.layers[1].remainder == loaded.layers[3].remainder == "drop"
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(loaded.forward(loaded.backend.asarray(x))),
        np.asarray(net.forward(net.backend.asarray(x))),
    )
