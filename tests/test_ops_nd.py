"""The hot ops in 1 and 3 spatial dimensions on every backend (issue 18): against
scipy.signal.convolve / correlate map by map (tests/oracles.py) on hypothesis shapes, adjoint
identities, the checked entry points' errors, and the routing of 2-D-only backend tables."""

from __future__ import annotations

import numpy as np
import oracles
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anycnn import functional as F
from anycnn import ops as reference
from anycnn.testing import assert_close

SETTINGS = settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
DTYPES = ["float32", "float64"]


@st.composite
def conv_case(draw, dims):
    n = draw(st.integers(1, 3))
    c_in, c_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    top = 7 if dims == 1 else 3
    ks = tuple(draw(st.integers(1, top)) for _ in range(dims))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(dims)) if draw(st.booleans()) else None
    sizes = tuple(
        max(1, k - 2 * (pads[i] if pads else 0)) + draw(st.integers(0, 9 if dims == 1 else 3))
        for i, k in enumerate(ks)
    )
    with_selection = draw(st.booleans())
    seed = draw(st.integers(0, 2**31))
    return n, c_in, c_out, ks, sizes, pads, with_selection, seed


def _arrays(backend, dtype, *arrays):
    return [
        None if a is None else backend.asarray(a, dtype=a.dtype.name if a.dtype == bool else dtype)
        for a in arrays
    ]


def _check_convolutions(backend, dtype, case):
    n, c_in, c_out, ks, sizes, pads, with_selection, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c_in, *sizes)).astype(dtype)
    k = rng.standard_normal((c_out, c_in, *ks)).astype(dtype)
    p = pads or (0,) * len(ks)
    outs = tuple(s + 2 * q - kk + 1 for s, q, kk in zip(sizes, p, ks, strict=True))
    d = rng.standard_normal((n, c_out, *outs)).astype(dtype)
    sel = rng.random((c_out, c_in)) < 0.6 if with_selection else None
    bx, bk, bd, bsel = _arrays(backend, dtype, x, k, d, sel)
    extra = {} if pads is None else {"padding": pads}
    h64 = [a if a is None or a.dtype == bool else a.astype(np.float64) for a in (x, k, d, sel)]
    for name, args, expected in [
        ("conv_valid", (bx, bk, bsel), oracles.conv_valid_nd(h64[0], h64[1], sel, pads)),
        ("conv_full", (bd, bk, bsel), oracles.conv_full_nd(h64[2], h64[1], sel, pads)),
        (
            "conv_kernel_grad",
            (bx, bd, bsel),
            oracles.conv_kernel_grad_nd(h64[0], h64[2], sel, pads),
        ),
    ]:
        assert_close(
            getattr(F, name)(*args, **extra),
            expected.astype(dtype),
            backend=backend,
            err_msg=f"{name}: ",
        )


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(case=conv_case(1))
def test_1d_convolutions_match_scipy(backend, dtype, case):
    _check_convolutions(backend, dtype, case)


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(case=conv_case(3))
def test_3d_convolutions_match_scipy(backend, dtype, case):
    _check_convolutions(backend, dtype, case)


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(data=st.data())
def test_resampling_matches_numpy(backend, dtype, dims, data):
    shape = tuple(data.draw(st.integers(1, 4)) for _ in range(2 + dims))
    n = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    small = rng.standard_normal(shape).astype(dtype)
    big = rng.standard_normal(shape[:2] + tuple(s * n for s in shape[2:])).astype(dtype)
    bsmall, bbig = _arrays(backend, dtype, small, big)
    for name, arg, host in [
        ("kron_upsample", bsmall, small),
        ("decimate_transpose", bsmall, small),
        ("block_sum", bbig, big),
        ("block_mean", bbig, big),
        ("decimate", bbig, big),
    ]:
        expected = getattr(oracles, name + "_nd")(host.astype(np.float64), n).astype(dtype)
        assert_close(getattr(F, name)(arg, n), expected, backend=backend, err_msg=f"{name}: ")


def _inner(xp, a, b):
    return float(xp.sum(a * b))


@pytest.mark.parametrize("dims", [1, 3])
@pytest.mark.parametrize("padded", [False, True])
def test_adjoint_identities(backend, xp, rng, dims, padded):
    """<A x, y> = <x, A^T y> in 1-D and 3-D (float64), with a selection and with padding."""
    sizes, ks = ((19,), (4,)) if dims == 1 else ((6, 5, 7), (3, 2, 3))
    pads = tuple(1 for _ in ks) if padded else (0,) * dims
    outs = tuple(s + 2 * p - k + 1 for s, p, k in zip(sizes, pads, ks, strict=True))
    x = rng.standard_normal((2, 3, *sizes))
    k = rng.standard_normal((4, 3, *ks))
    d = rng.standard_normal((2, 4, *outs))
    sel = rng.random((4, 3)) < 0.5
    sel[:, 0] = True
    bx, bk, bd = (backend.asarray(a, dtype="float64") for a in (x, k, d))
    bsel = backend.asarray(sel)
    forward = _inner(xp, F.conv_valid(bx, bk, bsel, pads), bd)
    assert forward == pytest.approx(_inner(xp, bx, F.conv_full(bd, bk, bsel, pads)), rel=1e-12)
    assert forward == pytest.approx(
        _inner(xp, bk, F.conv_kernel_grad(bx, bd, bsel, pads)), rel=1e-12
    )
    small = backend.asarray(rng.standard_normal((2, 3, *(s for s in ks))), dtype="float64")
    big = backend.asarray(rng.standard_normal((2, 3, *(3 * s for s in ks))), dtype="float64")
    for up, down in [(F.kron_upsample, F.block_sum), (F.decimate_transpose, F.decimate)]:
        assert _inner(xp, up(small, 3), big) == pytest.approx(
            _inner(xp, small, down(big, 3)), rel=1e-12
        )


def test_fused_ops_match_their_chains_in_1d_and_3d(backend, rng):
    """The backend's fused ops (where it has them) give the reference chain's values."""
    from anycnn.layers.activations import get_activation

    fused = backend.ops.fused
    for sizes, ks in [((23,), (5,)), ((6, 7, 5), (3, 3, 2))]:
        x = backend.asarray(rng.standard_normal((3, 2, *sizes)), dtype="float64")
        k = backend.asarray(rng.standard_normal((4, 2, *ks)), dtype="float64")
        b = backend.asarray(rng.standard_normal(4), dtype="float64")
        for name in ("sigmoid", "tanh", "relu"):
            act = get_activation(name)
            y = reference.conv_valid_activate(x, k, b, act)
            if "conv_valid_activate" in fused:
                assert_close(fused["conv_valid_activate"](x, k, b, act), y, backend=backend)
            small = tuple((s + 1) // 2 for s in y.shape[2:])
            dy = backend.asarray(rng.standard_normal((3, 4, *small)), dtype="float64")
            if "conv_backward" in fused:
                got = fused["conv_backward"](x, dy, y, act, None, 2, True)
                for g, e in zip(
                    got, reference.conv_backward(x, dy, y, act, None, 2, True), strict=True
                ):
                    assert_close(g, e, backend=backend)
            if "subsample_backward" in fused:
                beta = backend.asarray(rng.standard_normal(4), dtype="float64")
                got = fused["subsample_backward"](y, y, y, beta, act)
                for g, e in zip(got, reference.subsample_backward(y, y, y, beta, act), strict=True):
                    assert_close(g, e, backend=backend)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda a: F.conv_valid(a(2, 3, 8), a(2, 3, 3, 3)),
            r"x must be a 4-d \(N, C, H, W\) array",
        ),
        (lambda a: F.conv_valid(a(2, 3, 8, 8), a(2, 3, 3)), r"x must be a 3-d \(N, C, L\) array"),
        (lambda a: F.conv_valid(a(2, 3), a(2, 3, 3)), r"x must be a 3-d \(N, C, L\) array"),
        (lambda a: F.conv_valid(a(2, 3, 4), a(2, 3, 5)), r"kernel 5 is larger than the 4 input"),
        (
            lambda a: F.conv_valid(a(1, 1, 4, 4, 4), a(1, 1, 5, 3, 3)),
            r"kernel 5x3x3 is larger than the 4x4x4 input maps",
        ),
        (
            lambda a: F.conv_valid(a(1, 1, 4), a(1, 1, 3), padding=(1, 1)),
            r"padding must be 1 non-negative int\(s\), one per spatial axis",
        ),
        (lambda a: F.conv_valid(a(1, 1, 4), a(1, 1, 3, 3, 3, 3)), r"kernel must be a 4-d"),
        (lambda a: F.block_sum(a(1, 1, 4, 4, 5), 2), r"4x4x5 maps are not divisible by 2"),
        (lambda a: F.block_sum(a(1, 1, 5), 2), r"block_sum: 5 maps are not divisible by 2"),
        (
            lambda a: F.conv_kernel_grad(a(1, 1, 9), a(1, 1, 3, 3)),
            r"delta must be a 3-d \(N, C, L\) array",
        ),
        (
            lambda a: F.conv_full(a(1, 1, 2, 2, 2), a(1, 1, 2, 2, 2), padding=(0, 2, 0)),
            r"padding \(0, 2, 0\) leaves no input",
        ),
    ],
)
def test_nd_errors_name_the_shapes(call, message):
    import anycnn

    be = anycnn.get_backend()

    def a(*shape):
        return be.asarray(np.ones(shape), dtype="float64")

    with pytest.raises(ValueError, match=message):
        call(a)


@pytest.mark.parametrize(("padding", "size"), [(0, 4), (1, 2), (2, None)])
def test_conv_full_padding_leaves_input_until_twice_it_covers_the_map(padding, size):
    """The 'full' convolution of 3x3 deltas with a 2x2 kernel has 4x4 maps: a padding p crops p
    from each side, so p = 1 leaves 2x2 and p = 2 (2p equal to the map) leaves nothing: refused."""
    import anycnn

    be = anycnn.get_backend()
    delta = be.asarray(np.ones((1, 1, 3, 3)), dtype="float64")
    kernel = be.asarray(np.ones((1, 1, 2, 2)), dtype="float64")
    if size is None:
        with pytest.raises(ValueError, match=r"padding \(2, 2\) leaves no input"):
            F.conv_full(delta, kernel, padding=(padding, padding))
    else:
        y = F.conv_full(delta, kernel, padding=(padding, padding))
        assert tuple(y.shape) == (1, 1, size, size)


def test_conv_full_checks_its_selection():
    """conv_full's selection M_j is checked against the kernel's C_out x C_in like conv_valid's."""
    import anycnn

    be = anycnn.get_backend()
    delta = be.asarray(np.ones((1, 2, 3, 3)), dtype="float64")
    kernel = be.asarray(np.ones((2, 3, 2, 2)), dtype="float64")
    with pytest.raises(ValueError, match=r"conv_full.*selection"):
        F.conv_full(delta, kernel, selection=np.ones((3, 2), dtype=bool))
