"""Each NumPy convolution op asks the cost model with its own geometry and runs the path the
model chose (Note [Choosing a path] in anycnn_numpy._plan; issue 22: survivors of the mutation
campaigns in backends/anycnn_numpy/_conv.py, tests/MUTATION.md).

Every path gives the op's result to rounding, so the values alone cannot tell whether the op
asked about the right shape, offered the paths its arrays allow, or ran the path it was given:
a wrong answer there is only slow. What the op promises is what the model was measured for
(bench/paths.py fits it on these very calls): ``_plan.choose(op, n, c, o, h, w, kh, kw, ph, pw,
available)`` of the forward geometry, with ``available`` the direct kernels where the arrays are
C-contiguous float32/float64 of one dtype and the FFT where a padding below the kernel's size
lets the products of spectra give the 'valid' outputs; and then that path, and only it. Here the
model is replaced by a recorder that returns the path under test, each path's entry is recorded,
and the result is compared with the reference op."""

from __future__ import annotations

import numpy as np
import oracles
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _blocked, _conv, _fft, _im2col, _jit, _plan  # noqa: E402

from anycnn import ops as reference  # noqa: E402
from anycnn.layers.activations import Sigmoid, Tanh  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

DIRECT = _jit.correlate_into is not None


@pytest.fixture
def recorded(monkeypatch):
    """``(asked, ran, answer)``: the cost model's calls, the paths' entries, and a one-item list
    holding the path the model answers (None: the model's own answer)."""
    asked, ran, answer = [], [], [None]
    choose = _plan.choose

    def recorder(*args):
        asked.append(args)
        return choose(*args) if answer[0] is None else answer[0]

    monkeypatch.setattr(_plan, "choose", recorder)
    for module, label in ((_fft, "fft"), (_im2col, "im2col")):
        for name in ("conv_valid", "conv_full", "conv_kernel_grad"):
            original = getattr(module, name)

            def entry(*args, _original=original, _label=label, **kwargs):
                ran.append(_label)
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, name, entry)
    for name in ("conv_valid", "kernel_grad", "backward"):
        original = getattr(_blocked, name)

        def blocked(*args, _original=original, **kwargs):
            ran.append("blocked")
            return _original(*args, **kwargs)

        monkeypatch.setattr(_blocked, name, blocked)
    if DIRECT:
        # the pool's slices in Python (the compiled drivers take the kernels as they are)
        monkeypatch.setattr(_jit, "correlate_into_sliced", None)
        monkeypatch.setattr(_jit, "correlate_grad_sliced", None)
        for name in ("correlate_into", "correlate_grad"):
            original = getattr(_jit, name)

            def kernel(*args, _original=original):
                ran.append("direct")
                return _original(*args)

            monkeypatch.setattr(_jit, name, kernel)
    return asked, ran, answer


def _available(dtype, kh, kw, ph, pw, op="valid"):
    direct = DIRECT
    fft = np.dtype(dtype) in _jit.COMPILED_DTYPES and ph < kh and pw < kw and _fft.available()
    blocked = op != "full" and _blocked.available(
        np.dtype(dtype)
    )  # float32 (Note [Blocked 2-D path])
    paths = (("direct", direct), ("im2col", True), ("fft", fft), ("blocked", blocked))
    return tuple(p for p, ok in paths if ok)


def _case(dtype, padding, seed=0):
    rng = np.random.default_rng(seed)
    n, c, o, h, w, kh, kw = 2, 3, 4, 9, 8, 3, 2
    ph, pw = padding
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    k = rng.standard_normal((o, c, kh, kw)).astype(dtype)
    d = rng.standard_normal((n, o, oh, ow)).astype(dtype)
    y = np.tanh(rng.standard_normal((n, o, oh, ow))).astype(dtype)
    bias = rng.standard_normal(o).astype(dtype)
    sel = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 1, 1]], bool)
    return (n, c, o, h, w, kh, kw, oh, ow), x, k, d, y, bias, sel


def _close(got, want, dtype):
    tol = 2e-4 if dtype == np.float32 else 1e-10
    got = got if isinstance(got, tuple) else (got,)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if w is None:
            assert g is None
            continue
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


# (padding, whether the FFT is offered): the FFT wraps around where a padding reaches the
# kernel's size (3 x 2 kernels here), in either axis
PADDINGS = [((1, 1), True), ((0, 0), True), ((3, 0), False), ((0, 2), False)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("padding", [p for p, _ in PADDINGS])
@pytest.mark.parametrize("op", ["valid", "valid_activate", "full", "grad"])
def test_each_op_asks_the_model_with_its_geometry_and_runs_its_choice(recorded, op, padding, dtype):
    asked, ran, answer = recorded
    (n, c, o, h, w, kh, kw, oh, ow), x, k, d, y, bias, sel = _case(dtype, padding)
    ph, pw = padding
    act = Tanh(1.7159, 2.0 / 3.0)
    calls = {
        "valid": (_conv.conv_valid, reference.conv_valid, (x, k, sel, padding)),
        "valid_activate": (
            _conv.conv_valid_activate,
            reference.conv_valid_activate,
            (x, k, bias, act, sel, padding),
        ),
        "full": (_conv.conv_full, reference.conv_full, (d, k, sel, padding)),
        "grad": (_conv.conv_kernel_grad, reference.conv_kernel_grad, (x, d, sel, padding)),
    }
    plugin, ref, args = calls[op]
    available = _available(dtype, kh, kw, ph, pw, "full" if op == "full" else "valid")
    if op == "grad":  # eq. (7) on the padded maps: their geometry, no padding left
        hp, wp = h + 2 * ph, w + 2 * pw
        first = ("grad", n, c, o, hp, wp, hp - oh + 1, wp - ow + 1, 0, 0)
        available = _available(dtype, kh, kw, 0, 0, "grad")
    else:
        first = ("full" if op == "full" else "valid", n, c, o, h, w, kh, kw, ph, pw)
    want = ref(*args)
    for path in available:
        asked.clear()
        ran.clear()
        answer[0] = path
        _close(plugin(*args), want, dtype)
        assert asked[0] == (*first, available), (path, asked)
        # the padded 'full' convolution off the direct kernels is the unpadded one, cropped:
        # the model is asked again, for that one
        assert set(ran) == {path}, (path, ran)
    if op != "grad":
        assert ("fft" in available) is dict(PADDINGS)[padding]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_backward_runs_where_its_kernels_take_the_deltas(recorded, monkeypatch, dtype):
    """conv_backward fuses f', the kernel and the bias gradients on the direct and the blocked
    kernels, for deltas of the outputs' dtype and maps, an up-sampling that fits either axis
    (rows and columns of different counts) and an activation with a compiled f'; anything
    else is the chain of ops; the reference's values either way."""
    asked, ran, answer = recorded
    fused = []
    for module, name in ((_conv, "_direct_backward"), (_blocked, "backward")):
        original = getattr(module, name)

        def entry(*args, _original=original, _name=name):
            if args[-1] is True:  # need_delta: the fused pass (eq. (7) alone passes False)
                fused.append(_name)
            return _original(*args)

        monkeypatch.setattr(module, name, entry)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 13, 9)).astype(dtype)
    y = np.tanh(rng.standard_normal((2, 4, 11, 7))).astype(dtype)  # 3 x 3 kernels
    up = 2
    dy = rng.standard_normal((2, 4, 5, 4)).astype(dtype)  # 'drop' rows, 'pad' columns
    tanh = Tanh(1.7159, 2.0 / 3.0)
    cases = [
        (dy, y, tanh, True),
        (np.ascontiguousarray(dy[:, :, :4]), y, tanh, False),  # too few rows
        (np.ascontiguousarray(dy[:, :, :, :3]), y, tanh, True),  # 'drop' columns too
        (dy[:, :, :, :3], y, tanh, "blocked"),  # strided: the blocked kernels copy it
        (dy.astype(np.float32 if dtype == np.float64 else np.float64), y, tanh, False),
        (dy, y, _Softsign(), False),
    ]
    for path in _available(dtype, 3, 3, 0, 0, "grad"):
        answer[0] = path
        for d, yy, act, fits in cases:
            fused.clear()
            got = _conv.conv_backward(x, d, yy, act, None, up, True)
            want = reference.conv_backward(x, d, yy, act, None, up, True)
            expect = {"direct": ["_direct_backward"], "blocked": ["backward"]}.get(path, [])
            takes = fits is True or fits == path
            assert fused == (expect if takes else []), (path, d.shape, d.dtype, act)
            for g, w in zip(got, want, strict=True):
                _close(g, w.astype(g.dtype), g.dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_backward_asks_for_eq7_and_keeps_the_direct_kernels_to_itself(recorded, dtype):
    """conv_backward fuses delta, the kernel and the bias gradients on the direct kernels only
    when the model chose them for eq. (7) on the padded maps; otherwise it is the chain of ops,
    whose conv_kernel_grad asks the model the same question and runs its answer."""
    asked, ran, answer = recorded
    padding = (1, 1)
    (n, c, o, h, w, kh, kw, oh, ow), x, k, d, y, bias, sel = _case(dtype, padding, seed=1)
    act = Tanh(1.7159, 2.0 / 3.0)
    args = (x, d, y, act, sel, 1, True, padding)
    want = reference.conv_backward(*args)
    hp, wp = h + 2, w + 2
    available = _available(dtype, 3, 2, 0, 0, "grad")
    question = ("grad", n, c, o, hp, wp, hp - oh + 1, wp - ow + 1, 0, 0, available)
    for path in question[-1]:
        asked.clear()
        ran.clear()
        answer[0] = path
        _close(_conv.conv_backward(*args), want, dtype)
        assert asked and all(a == question for a in asked), asked
        assert set(ran) == {path}, (path, ran)


_Softsign = oracles.Softsign  # no description: f comes from its own method, a new array.


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_f_on_every_path_is_the_compiled_one_or_the_activate_op(recorded, monkeypatch, dtype):
    """conv_valid_activate: the direct kernels apply float32 logistic and tanh layers' f
    themselves (Note [Compiled activations]); every other f, dtype and path runs the ``activate``
    op on each slice of the output, whose result (a new array for an activation without a
    description) is the layer's output."""
    asked, ran, answer = recorded
    applied = []
    activate = _conv.activate

    def counted(u, activation):
        applied.append(activation)
        return activate(u, activation)

    monkeypatch.setattr(_conv, "activate", counted)
    _, x, k, _, _, bias, sel = _case(dtype, (1, 1), seed=2)
    for act in (Tanh(1.7159, 2.0 / 3.0), Sigmoid(), _Softsign()):
        want = reference.conv_valid_activate(x, k, bias, act, sel, (1, 1))
        for path in _available(dtype, 3, 2, 1, 1):
            applied.clear()
            answer[0] = path
            _close(_conv.conv_valid_activate(x, k, bias, act, sel, (1, 1)), want, dtype)
            own = path in ("direct", "blocked")  # the kernels that apply f themselves
            compiled = own and dtype == np.float32 and act.describe() is not None
            assert (applied == []) is compiled, (path, act, applied)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_full_convolution_of_one_pixel_asks_the_model_too(recorded, dtype):
    """A 1 x 1 'full' convolution of 1 x 1 deltas (its forward input one pixel) is a
    convolution like any other in float64: the model is asked, and its path runs. In float32 its
    kernel covers the map, and it is one GEMM without asking the model (Note [Convolutions that
    cover the map] in anycnn_numpy._dense), like C5's."""
    asked, ran, answer = recorded
    rng = np.random.default_rng(4)
    d = rng.standard_normal((3, 4, 1, 1)).astype(dtype)
    k = rng.standard_normal((4, 2, 1, 1)).astype(dtype)
    want = reference.conv_full(d, k)
    available = _available(dtype, 1, 1, 0, 0, "full")
    covered = dtype == np.float32
    for path in available:
        asked.clear()
        ran.clear()
        answer[0] = path
        _close(_conv.conv_full(d, k), want, dtype)
        assert asked == ([] if covered else [("full", 3, 2, 4, 1, 1, 1, 1, 0, 0, available)])


@pytest.mark.skipif(not DIRECT, reason="no direct kernels here")
@pytest.mark.parametrize("drivers", [True, False], ids=["compiled-slices", "python-slices"])
@pytest.mark.parametrize("n", [1, 5], ids=["one-example-two-halves", "five-slices"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_direct_kernels_cut_into_slices_or_halves_give_the_reference(
    monkeypatch, drivers, n, dtype
):
    """The pool's cuts of the direct convolutions (Note [One example on two cores], Note [Slices
    taken in compiled code]), forced on small shapes: a batch in one-example slices taken by the
    compiled drivers or by Python, and one example's maps in two halves, with the layer's bias
    and f in the kernels or in the epilogue, padding and a selection: each op's result is the
    reference's."""
    from anycnn_numpy import _threads

    monkeypatch.setattr(_threads, "DIRECT_PARALLEL_MACS", 1)
    monkeypatch.setattr(_threads, "DIRECT_SLICE_MACS", 1)
    if not drivers:
        monkeypatch.setattr(_jit, "correlate_into_sliced", None)
        monkeypatch.setattr(_jit, "correlate_grad_sliced", None)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 3, 8, 7)).astype(dtype)
    k = rng.standard_normal((6, 3, 3, 2)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    sel = rng.random((6, 3)) < 0.7
    pad = (1, 1)
    d = rng.standard_normal((n, 6, 8, 8)).astype(dtype)
    y = np.tanh(rng.standard_normal((n, 6, 8, 8))).astype(dtype)
    if n == 1:
        assert _conv._map_halves(1, 6, 6 * 3 * 6 * 64) is not None
    else:
        assert len(_threads.direct_bounds(n, 6 * 3 * 6 * 64)) > 2
    for act in (Tanh(1.7159, 2.0 / 3.0), _Softsign()):
        with _plan.forced("direct"):
            got = [
                _conv.conv_valid(x, k, sel, pad),
                _conv.conv_valid_activate(x, k, b, act, sel, pad),
                _conv.conv_full(d, k, sel, pad),
                _conv.conv_kernel_grad(x, d, sel, pad),
                *_conv.conv_backward(x, d, y, Tanh(1.7159, 2.0 / 3.0), sel, 1, True, pad),
            ]
        want = [
            reference.conv_valid(x, k, sel, pad),
            reference.conv_valid_activate(x, k, b, act, sel, pad),
            reference.conv_full(d, k, sel, pad),
            reference.conv_kernel_grad(x, d, sel, pad),
            *reference.conv_backward(x, d, y, Tanh(1.7159, 2.0 / 3.0), sel, 1, True, pad),
        ]
        for g, w in zip(got, want, strict=True):
            _close(g, w, dtype)
