"""What the NumPy plugin's 1-D and 3-D ops promise (``anycnn_numpy._nd.dimension_generic``;
issue 22: survivors of the mutation campaigns in backends/anycnn_numpy/_nd.py, tests/MUTATION.md).

The wrappers are closures that ``dimension_generic`` makes when the op table is built, once at
import: a mutant of the factory reaches only a table built afresh, so every test here builds
its own (``anycnn_numpy._fast_ops()``). Which path a call takes is Note [Choosing an N-D path]'s
rule (``volume_forward``, ``volume_backward``: a measurement, excluded from the campaigns as a
choice among paths that give the same values); what the wrappers promise is

* to ask that rule about the arrays they were given (the input and the kernel, the deltas or
  the outputs), and to take the direct volume kernels exactly when it says so, for float32
  arrays of the layouts the kernels read (float64 keeps the mappings and their bits; a bias,
  deltas or outputs of another dtype, an activation without a compiled f', or deltas that an
  up-sampling does not fit, go to the mappings);
* on either path, the reference op's values: signals as volumes one voxel deep and high and
  back, the padding of a signal along its one axis, the kernel gradient alone or with the bias
  gradient and delta (or without delta)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
anycnn_numpy = pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _jit, _nd, _volume  # noqa: E402

from anycnn import ops as reference  # noqa: E402
from anycnn.layers.activations import ReLU, Sigmoid, Tanh  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
    pytest.mark.skipif(_jit.correlate_into is None, reason="no Numba kernels here"),
]


@pytest.fixture
def spied(monkeypatch):
    """``(table, asked, ran)``: a fresh op table; the rule's calls ``(name, args)``; the volume
    kernels' entries."""
    asked, ran = [], []
    for name in ("volume_forward", "volume_backward"):
        original = getattr(_nd, name)

        def rule(*args, _name=name, _original=original):
            asked.append((_name, args))
            return _original(*args)

        monkeypatch.setattr(_nd, name, rule)
    for name in ("conv_valid", "backward"):
        original = getattr(_volume, name)

        def entry(*args, _name=name, _original=original, **kwargs):
            ran.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(_volume, name, entry)
    return anycnn_numpy._fast_ops(), asked, ran


#: (batch, C_in, C_out, sizes, kernel, padding): signals and volumes; more than 8 output maps
#: (two blocks of the volume kernels) in one of each
CASES = [
    (2, 3, 5, (19,), (4,), (2,)),
    (1, 2, 9, (17,), (6,), (0,)),
    (2, 2, 11, (6, 7, 5), (2, 3, 3), (1, 0, 2)),
    (1, 3, 4, (5, 6, 7), (3, 2, 1), (0, 0, 0)),
]
IDS = [f"{len(c[3])}d-{i}" for i, c in enumerate(CASES)]


def _arrays(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    n, c, o, sizes, ks, pads = case
    out = tuple(s + 2 * p - k + 1 for s, p, k in zip(sizes, pads, ks, strict=True))
    x = rng.standard_normal((n, c, *sizes))
    k = rng.standard_normal((o, c, *ks)) * 0.3
    b = rng.standard_normal(o) * 0.3
    sel = rng.random((o, c)) < 0.7
    d = rng.standard_normal((n, o, *out))
    y = np.tanh(rng.standard_normal((n, o, *out))) * 0.9
    return [a.astype(dtype) for a in (x, k, b, d, y)], sel, pads


def _close(got, want, dtype):
    tol = 2e-4 if dtype == np.float32 else 1e-10
    assert got.shape == want.shape
    assert got.dtype == dtype
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)


def _takes_volumes(volume, dtype):
    return volume and dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("volume", [True, False], ids=["volume", "mapped"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_forward_ops_ask_the_rule_and_take_the_volume_kernels_when_it_says(
    spied, case, volume, dtype
):
    table, asked, ran = spied
    (x, k, b, _, _), sel, pads = _arrays(case, dtype)
    x64, k64, b64 = (a.astype(np.float64) for a in (x, k, b))
    act = Tanh(1.7159, 2.0 / 3.0)
    with _nd.forced(volume):
        u = table["conv_valid"](x, k, sel, pads)
        assert asked == [("volume_forward", (x, k))] and asked[0][1][0] is x
        assert ran == (["conv_valid"] if _takes_volumes(volume, dtype) else [])
        asked.clear(), ran.clear()
        y = table["conv_valid_activate"](x, k, b, act, sel, pads)
        assert [(name, a[0] is x, a[1] is k) for name, a in asked] == [
            ("volume_forward", True, True)
        ]
        assert ran == (["conv_valid"] if _takes_volumes(volume, dtype) else [])
        ran.clear()
        # a bias of another dtype: the mappings (the volume kernels add a float32 bias)
        other = b.astype(np.float64 if dtype == np.float32 else np.float32)
        table["conv_valid_activate"](x, k, other, act, sel, pads)
        assert ran == []
    _close(u, reference.conv_valid(x64, k64, sel, pads), dtype)
    _close(y, reference.conv_valid_activate(x64, k64, b64, act, sel, pads), dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("volume", [True, False], ids=["volume", "mapped"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_gradients_ask_the_rule_and_take_the_volume_kernels_when_it_says(
    spied, case, volume, dtype
):
    table, asked, ran = spied
    (x, k, _, d, y), sel, pads = _arrays(case, dtype, seed=1)
    x64, d64, y64 = (a.astype(np.float64) for a in (x, d, y))
    act = Tanh(1.7159, 2.0 / 3.0)
    takes = _takes_volumes(volume, dtype)
    with _nd.forced(volume):
        grad = table["conv_kernel_grad"](x, d, sel, pads)
        assert len(asked) == 1 and asked[0][0] == "volume_backward"
        assert asked[0][1][0] is x and asked[0][1][1] is d
        assert ran == (["backward"] if takes else [])
        _close(grad, reference.conv_kernel_grad(x64, d64, sel, pads), dtype)
        for need_delta in (True, False):
            asked.clear(), ran.clear()
            got = table["conv_backward"](x, d, y, act, sel, 1, need_delta, pads)
            assert [(name, a[0] is x, a[1] is y) for name, a in asked] == [
                ("volume_backward", True, True)
            ]
            assert ran == (["backward"] if takes else [])
            want = reference.conv_backward(x64, d64, y64, act, sel, 1, need_delta, pads)
            assert len(got) == 3
            _close(got[0], want[0], dtype)
            _close(got[1], want[1], dtype)
            if need_delta:
                _close(got[2], want[2], dtype)
            else:
                assert got[2] is None


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_fused_backward_leaves_to_the_mappings_what_the_kernels_cannot_form(spied, case):
    """Deltas of another dtype, an activation whose f' the kernels do not form (ReLU), and
    deltas that the up-sampling does not fit go to the mappings, with the reference's values;
    an up-sampling that fits stays on the volume kernels."""
    table, asked, ran = spied
    (x, _, _, _, y), sel, pads = _arrays(case, np.float32, seed=2)
    rng = np.random.default_rng(3)
    up = 2
    small = tuple(-(-s // up) for s in y.shape[2:])  # "pad": ceil(size / up) deltas
    dy = rng.standard_normal((*y.shape[:2], *small))
    drop = dy[(slice(None), slice(None), *(slice(s // up) for s in y.shape[2:]))]  # "drop"
    for act, dy_, fits in (
        (Sigmoid(), dy.astype(np.float32), True),
        (Tanh(1.7159, 2.0 / 3.0), drop.astype(np.float32), True),
        (Tanh(1.7159, 2.0 / 3.0), dy, False),  # float64 deltas, float32 outputs
        (ReLU(), dy.astype(np.float32), False),
        (Sigmoid(), dy[:, :, :1].astype(np.float32), y.shape[2] // up <= 1),  # one delta
    ):
        ran.clear()
        with _nd.forced(True):
            got = table["conv_backward"](x, dy_, y, act, sel, up, True, pads)
        assert ran == (["backward"] if fits else []), (act, dy_.shape)
        want = reference.conv_backward(
            x.astype(np.float64), dy_.astype(np.float64), y.astype(np.float64), act, sel, up,
            True, pads,
        )  # fmt: skip
        for g, w in zip(got, want, strict=True):
            _close(g, w.astype(g.dtype), g.dtype)


def test_the_rule_reads_the_input_as_the_kernels_do():
    """The volume kernels read C-contiguous float32 inputs: a strided input, or a float64 one,
    keeps the mappings however the rule is forced."""
    x = np.zeros((2, 3, 4, 5, 12), np.float32)
    y = np.zeros((2, 4, 2, 3, 10), np.float32)
    k = np.zeros((4, 3, 3, 3, 3), np.float32)
    with _nd.forced(True):
        assert _nd.volume_forward(x, k) and _nd.volume_backward(x, y)
        strided = x[..., ::2]
        assert not _nd.volume_forward(strided, k)
        assert not _nd.volume_backward(strided, y[..., :4])
        assert not _nd.volume_backward(x.astype(np.float64), y)
        assert not _nd.volume_backward(x, y.astype(np.float64))
        assert not _nd.volume_forward(x, k.astype(np.float64))
        assert not _nd.volume_forward(x[:, :, 0], k[:, :, 0])  # 2-D maps: the table's own ops


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_the_volume_kernels_cover_every_pair_when_cut_into_ranges(monkeypatch, case):
    """The pool's ranges of (example, output depth) pairs (one a range here) cover each pair
    once: the forward pass, the kernel and bias gradients summed over the ranges in order, and
    delta, each the reference's to float32 rounding."""
    monkeypatch.setattr(_volume, "SLICE_MACS", 1)
    table = anycnn_numpy._fast_ops()
    (x, k, b, d, y), sel, pads = _arrays(case, np.float32, seed=4)
    x64, k64, b64, d64 = (a.astype(np.float64) for a in (x, k, b, d))
    act = Sigmoid()
    with _nd.forced(True):
        u = table["conv_valid_activate"](x, k, b, act, sel, pads)
        y = u.astype(np.float64)
        got = table["conv_backward"](x, d, u, act, sel, 1, True, pads)
    _close(u, reference.conv_valid_activate(x64, k64, b64, act, sel, pads), np.float32)
    want = reference.conv_backward(x64, d64, y, act, sel, 1, True, pads)
    for g, w in zip(got, want, strict=True):
        _close(g, w, np.float32)
