"""Which path computes a convolution of a given shape: the NumPy backend's cost model.

Note [Choosing a path]
~~~~~~~~~~~~~~~~~~~~~~
Each of the three convolutions of the notes (``"valid"``: 3.1's forward pass, ``"full"``:
3.2.1's, ``"grad"``: eq. (7)) runs on one of three paths:

* ``"direct"``: the compiled direct kernels (Note [Direct convolutions] in ``_direct``), whose
  time grows with the kernel's taps;
* ``"im2col"``: a copy of the windows and BLAS GEMMs (``_im2col``), the path without Numba;
* ``"fft"``: products of spectra (Note [Convolutions by the FFT] in ``_fft``), whose time hardly
  depends on the kernel's size but carries the transforms of every map;
* ``"blocked"``: the register-blocked kernels of ``_volume`` on 2-D maps (Note [Blocked 2-D
  path] in ``_blocked``), float32 ``"valid"`` and ``"grad"`` only, whose sums stay in
  registers through all taps.

:func:`choose` takes the one the cost model predicts fastest for the shape. The model is linear
in a few counts of each path's work (:func:`features`: multiply-adds, passes over the output
grid, bytes moved, transforms x ``P Q log2(P Q)``, products of spectra, one call), with
coefficients fitted by non-negative least squares on relative error to op timings of every path
on a grid of shapes, and committed (``_costs``; ``python bench/paths.py`` measures and rewrites
it, ``--fit JSON`` refits from a measurement). The timings are of the ops as the layers call
them: ``"valid"`` is ``conv_valid_activate`` (the direct kernels apply f as they write, the
other paths after), ``"grad"`` is ``conv_backward`` (the direct kernels form f' and the bias
sums in the same pass, the other paths by the chain of ops), so the fusions count.

Neither the thread count nor any timing taken in the user's process enters the choice: a shape
always takes the same path, so its results are always the same bits (the paths round
differently). The dtype does not enter either: every path's float64 time is about twice its
float32 one, so the cheapest path is about the same (the model is fitted on float32).

A path other than the direct kernels is taken only where the model predicts it faster by more
than the larger of its own fit's and the direct kernels' fit's median relative error
(``_costs.ERRORS``, 0.12-0.28): below that the model cannot tell the paths apart, and the
direct kernels are the better default (they fuse f, f' and the bias sums, need no scratch
beyond a few rows, and give the zoo models their bits).

Two rules stand outside the model, both structural: a convolution whose output is one pixel
(LeNet-5's C5, and eq. (7) with 1 x 1 deltas) is one GEMM over the whole batch on the im2col
path, a case the other paths have no form for; and a path that cannot take the arrays
(``available``: the direct kernels without Numba or for other dtypes, the FFT for paddings
wider than the kernel) is never chosen.

The interface is shapes in, a path name out, so that ``_nd`` (1-D signals as one-row maps, 3-D
volumes as 2-D maps whose input maps are the kernel's depth taps: ``anycnn.backend.planar``)
asks the same model about the 2-D calls it makes.
"""

from __future__ import annotations

import contextlib
import functools
import math

from anycnn_numpy import _costs, _fft, _fft_budget

PATHS = ("direct", "im2col", "fft", "blocked")
OPS = ("valid", "full", "grad")

_forced: str | None = None


@contextlib.contextmanager
def forced(path: str | None):
    """Within the block every convolution the path allows takes ``path`` (tests, bench/paths.py);
    None restores the model's choice."""
    global _forced
    if path is not None and path not in PATHS:
        raise ValueError(f"path {path!r}: expected one of {PATHS}")
    before, _forced = _forced, path
    choose.cache_clear()
    try:
        yield
    finally:
        _forced = before
        choose.cache_clear()


def _tap_groups(k: int) -> int:
    """Passes of the direct forward kernel over a kernel row of ``k`` taps (5, 3, then 1)."""
    return k // 5 + (k % 5) // 3 + (k % 5) % 3


def _grad_groups(k: int) -> int:
    """Passes of the direct kernel gradient over a kernel row of ``k`` taps (5, then 1)."""
    return k // 5 + k % 5


def _transform(p: int, q: int) -> float:
    return p * q * max(1.0, math.log2(p * q))


def features(op: str, path: str, n, c, o, h, w, kh, kw, ph=0, pw=0) -> tuple[float, ...]:
    """The work counts of ``op`` on ``path`` for the forward geometry ``(n, c, h, w)`` maps,
    ``(o, c, kh, kw)`` kernels, ``(ph, pw)`` padding: four numbers whose dot product with the
    fitted coefficients is the predicted time in seconds (Note [Choosing a path])."""
    hp, wp = h + 2 * ph, w + 2 * pw
    oh, ow = hp - kh + 1, wp - kw + 1
    taps = kh * kw
    if path == "direct":
        if op == "valid":
            grid = oh * (w + pw)
            passes = -(-o // 2) * c * kh * _tap_groups(kw) * grid
            return (n * o * c * taps * grid, n * passes, n * (c * h * w + o * oh * ow), 1.0)
        if op == "full":
            grid = h * (ow + kw - 1 - pw)
            passes = -(-c // 2) * o * kh * _tap_groups(kw) * grid
            return (n * o * c * taps * grid, n * passes, n * (o * oh * ow + c * h * w), 1.0)
        grid = oh * wp
        passes = -(-o // 2) * c * kh * _grad_groups(kw) * grid
        return (n * o * c * taps * grid, n * passes, n * (c * hp * wp + o * grid), 1.0)
    if path == "blocked":  # Note [Blocked 2-D path] in _blocked; _volume's blocks and spans
        blocks = -(-o // 8)
        span = -(-(oh * wp) // 48) * 48
        if op == "valid":
            grid = n * blocks * 8 * c * taps * span
            return (grid, n * blocks * c * kh * kw, n * (c * hp * wp + o * oh * ow), 1.0)
        # eq. (7): Note [Maps in lanes] in _wgrad: 16 maps x 6 or 32 maps x 3 (input map,
        # kernel row, 4 columns) triples a pass, over the output's positions
        stride, per_pass = (16, 6) if o <= 16 else (32, 3)
        maps = -(-o // stride) * stride
        rows = -(-(c * kh * -(-kw // 4)) // per_pass) * per_pass
        positions = oh * ow
        return (
            n * maps * rows * 4 * positions,  # multiply-adds (padded taps and maps)
            n * (maps // stride) * (rows // per_pass) * oh,  # rows of passes
            n * maps * positions,  # deltas formed and transposed
            1.0,
        )
    if path == "im2col":
        if op == "full":
            rows = oh * wp
            return (n * o * kw * rows, n * c * kh * o * kw * rows, n * c * kh * hp * wp, 1.0)
        columns = c * taps * oh * ow
        return (n * columns, n * o * columns, n * o * oh * ow, 1.0)
    if op == "valid":
        p, q = _fft.sizes_valid(h, w, (ph, pw))
        groups = -(-o // _fft_budget.valid_group(o, c, p, q))
        transforms = _fft_budget.input_transforms(n, c, groups, 1, p, q) + n * o + o * c
        moved = n * o * p * q
    elif op == "full":
        p, q = _fft.sizes_full(oh, ow, kh, kw, (ph, pw))
        groups = -(-c // _fft_budget.valid_group(c, o, p, q))
        transforms = _fft_budget.input_transforms(n, o, groups, 1, p, q) + n * c + o * c
        moved = n * c * p * q
    else:
        p, q = _fft.sizes_grad(hp, wp)
        groups = -(-o // _fft_budget.grad_group(o, c, p, q))
        slices = _fft_budget.grad_slices(n)
        transforms = (
            _fft_budget.input_transforms(n, c, groups, slices, p, q) + n * o + o * c * slices
        )
        moved = n * o * oh * ow + o * c * p * q  # delta formed by the chain, the sums back
    spectrum = p * (q // 2 + 1)
    return (transforms * _transform(p, q), n * o * c * spectrum, moved, 1.0)


def cost(op: str, path: str, n, c, o, h, w, kh, kw, ph=0, pw=0) -> float:
    """The model's time for ``op`` on ``path`` (seconds, float32, on the machine of the fit)."""
    weights = _costs.COEFFICIENTS[f"{op}-{path}"]
    counts = features(op, path, n, c, o, h, w, kh, kw, ph, pw)
    return float(sum(a * b for a, b in zip(weights, counts, strict=True)))


@functools.lru_cache(maxsize=4096)
def choose(op: str, n, c, o, h, w, kh, kw, ph=0, pw=0, available=PATHS) -> str:
    """The path for ``op`` (``"valid"``, ``"full"`` or ``"grad"``) of the forward geometry
    ``(n, c, h, w)`` maps, ``(o, c, kh, kw)`` kernels and ``(ph, pw)`` padding, among the
    ``available`` ones (Note [Choosing a path]). Deterministic: shapes in, a name out.

    >>> choose("valid", 256, 1, 6, 28, 28, 5, 5)       # DLT's C1 on the direct kernels
    'direct'
    """
    if op not in OPS:
        raise ValueError(f"op {op!r}: expected one of {OPS}")
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    if oh * ow == 1 and "im2col" in available:  # one GEMM for the batch (see the Note)
        return "im2col"
    if _forced is not None and _forced in available:
        return _forced
    # a path the committed fit has no coefficients for is not chosen (a refit adds them)
    fitted = [path for path in available if f"{op}-{path}" in _costs.COEFFICIENTS] or ["im2col"]
    predicted = {path: cost(op, path, n, c, o, h, w, kh, kw, ph, pw) for path in fitted}
    return decide(op, predicted, _costs.ERRORS)


def decide(op: str, predicted: dict[str, float], errors: dict[str, float]) -> str:
    """The path of ``op`` from the model's ``predicted`` times: the direct kernels unless another
    path is predicted faster by more than the larger of its and the direct kernels' fits' median
    relative errors (``errors``), then the fastest (see the Note: the direct kernels fuse f, f'
    and the bias sums, need the least memory, and give the zoo models their bits; a path must
    beat them by more than the model can tell apart)."""

    def margin(path: str) -> float:
        if path == "direct":
            return 1.0
        # the model cannot tell two paths apart within either fit's median error
        return 1.0 + max(errors.get(f"{op}-{path}", 0.0), errors.get(f"{op}-direct", 0.0))

    return min(predicted, key=lambda path: (predicted[path] * margin(path), path))
