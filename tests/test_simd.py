"""The explicit 16-lane float32 vectors of the NumPy backend's kernels (Note [Explicit vectors]
in anycnn_numpy._vectors) and the float32 kernels written on them, against the float64 loops they
stand in for: the same sums to float32 rounding, whatever the run's length modulo 16."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

import numba  # noqa: E402
from anycnn_numpy import _direct  # noqa: E402
from anycnn_numpy import _vectors as _simd  # noqa: E402  (the vectors the kernels share)


@numba.njit(cache=False)
def _axpy_sum(x, y, alpha, out):
    """out[:16k] = alpha x + y on vectors, and the sum of those lanes (one vector at a time)."""
    total = np.float32(0)
    for q in range(0, x.size - x.size % _simd.LANES, _simd.LANES):
        v = _simd.vfma(_simd.vsplat(alpha), _simd.vload(x, q), _simd.vload(y, q))
        _simd.vstore(out, q, v)
        total += _simd.vsum(v)
    return total + _simd.vsum(_simd.vzeros())


def test_vector_operations_match_numpy():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal(53, dtype=np.float32), rng.standard_normal(53, dtype=np.float32)
    out = np.full(53, 7.0, np.float32)
    total = _axpy_sum(x, y, np.float32(1.5), out)
    expected = np.float32(1.5) * x[:48].astype(np.float64) + y[:48]
    np.testing.assert_allclose(out[:48], expected, rtol=1e-6, atol=1e-6)
    assert (out[48:] == 7.0).all()  # nothing past the last whole vector is written
    assert total == pytest.approx(expected.sum(), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kw", [1, 3, 5, 7, 11])
@pytest.mark.parametrize("span", [16, 47, 200, 333])
@pytest.mark.parametrize("pad_h", [0, 2])
@pytest.mark.parametrize("maps", [(0, 1), (2, 2)])
def test_forward_pair_matches_the_float64_loop(kw, span, pad_h, maps):
    """_correlate_pair32 (vectors, their tail, the single-map passes, the 3- and 1-tap blocks)
    against _correlate_pair run in float64 on the same numbers, with a selection: input map 1
    feeds neither map of the pair, map 2 only the second and the third; j0 == j1 is an odd
    layer's last map."""
    rng = np.random.default_rng(kw * 1000 + span)
    c, kh, h, rw = 4, 4, 6, 40
    plane = h * rw
    t = rng.standard_normal(c * plane + 64, dtype=np.float32)
    wts = rng.standard_normal((3, c, kh, kw), dtype=np.float32)
    active = np.ones((3, c), bool)
    active[:2, 1] = False  # skipped by both
    active[0, 2] = False  # map 1's taps alone
    wts[~active] = 0  # as the layer masks them
    total = min(span, (h + 2 * pad_h) * rw)
    got = rng.standard_normal((2, total), dtype=np.float32)
    want = got.astype(np.float64)
    j0, j1 = maps
    _direct._correlate_pair32(t, plane, rw, wts, active, j0, j1, got[0], got[1], pad_h, h)
    _direct._correlate_pair(
        t.astype(np.float64), plane, rw, wts.astype(np.float64), active, j0, j1, *want, pad_h, h
    )
    if j0 == j1:  # the second grid map is the first's duplicate in the float64 loop: unused
        got, want = got[:1], want[:1]
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("kw", [1, 3, 5, 6])
@pytest.mark.parametrize("span", [15, 16, 100, 257])
@pytest.mark.parametrize("maps", [(0, 1), (2, 2)])
def test_gradient_pair_matches_the_float64_loop(kw, span, maps):
    """_grad_pair32 against _grad_pair in float64: both maps of a pair, or one (j0 == j1); with
    a selection, input map 1 feeds map 0 only (a single-map pass), map 2 neither."""
    rng = np.random.default_rng(kw * 100 + span)
    c, kh, rw = 3, 3, 30
    plane = kh * rw + span
    t = rng.standard_normal(c * plane + kw, dtype=np.float32)
    d = rng.standard_normal((3, span), dtype=np.float32)
    active = np.ones((3, c), bool)
    active[1:, 1] = False
    active[:, 2] = False
    start = rng.standard_normal((3, c, kh, kw), dtype=np.float32)
    got = start.copy()
    want = got.astype(np.float64)
    j0, j1 = maps
    _direct._grad_pair32(t, plane, rw, active, j0, j1, d[j0], d[j1], span, got)
    wide = t.astype(np.float64), d.astype(np.float64)
    _direct._grad_pair(wide[0], plane, rw, active, j0, j1, wide[1][j0], wide[1][j1], span, want)
    # The float64 loop sums the unselected map of a half-used pair too (the layer zeroes it);
    # the float32 one leaves it alone. Compare the selected pairs; the rest must be untouched.
    np.testing.assert_allclose(got[active], want[active], rtol=2e-5, atol=2e-4)
    assert got[~active].tobytes() == start[~active].tobytes()


def test_vector_activations_are_the_scalar_bits():
    """_activate_run32 (16-lane logistic and scaled tanh, no branches) gives the bits of the
    scalar loop it stands in for, on -100..100, the tanh's polynomial/exponential switch at
    0.625, zeros, infinities and NaN, with a tail of 11 numbers past the last whole vector."""
    values = np.concatenate(
        [
            np.linspace(-100, 100, 4000, dtype=np.float32),
            np.float32([0.6249999, 0.625, 0.6250001, -0.625, 0.0, -0.0, np.inf, -np.inf, np.nan]),
            np.float32([88.7, 88.73, -87.0, 1e-30, -1e-30]),
        ]
    )
    assert values.size % _simd.LANES != 0
    for kind, p0, p1 in ((_direct.LOGISTIC, 1.0, 0.0), (_direct.LOGISTIC, 0.5, 0.0)) + (
        (_direct.TANH, 1.7159, 2.0 / 3.0),
        (_direct.TANH, 1.0, 1.0),
    ):
        got, want = values.copy(), values.copy()
        _direct._activate_run32(got, kind, np.float32(p0), np.float32(p1))
        _direct._activate_run(want, kind, np.float32(p0), np.float32(p1))
        assert got.tobytes() == want.tobytes(), (kind, p0, p1)


# --- Note [Caches stamped with the vectors] ---------------------------------------------------
_DEPENDENT = """
import numba
import numpy as np
from anycnn_numpy import _vectors

_vectors.cache_depends_on_vectors(__file__)


@numba.njit(cache=True)
def scaled_sum(x, alpha):
    total = np.float32(0)
    for q in range(0, x.size - x.size % 16, 16):
        total += _vectors.vsum(_vectors.vmul(_vectors.vsplat(alpha), _vectors.vload(x, q)))
    return total
"""


def _load_dependent(path, name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = np.arange(32, dtype=np.float32)
    assert module.scaled_sum(x, np.float32(2)) == 2 * x.sum()
    stats = module.scaled_sum.stats
    return sum(stats.cache_hits.values()), sum(stats.cache_misses.values())


def test_kernels_cache_goes_stale_when_the_shared_vectors_change(tmp_path, monkeypatch):
    """A kernel in another file that uses the shared intrinsics is compiled again, not loaded
    from Numba's disk cache, once _vectors' source changes (and loaded while it does not): the
    stale-cache hazard that once kept a copy of the intrinsics beside each file's kernels."""
    from anycnn_numpy import _vectors

    source = tmp_path / "vectors_copy.py"
    source.write_text(Path(_vectors.__file__).read_text())
    monkeypatch.setattr(_vectors, "SOURCE", str(source))
    dependent = tmp_path / "dependent_kernels.py"
    dependent.write_text(_DEPENDENT)
    assert _load_dependent(dependent, "dependent_a") == (0, 1)  # compiled, saved
    assert _load_dependent(dependent, "dependent_b") == (1, 0)  # loaded from the cache
    source.write_text(source.read_text() + "\n# an edit of the intrinsics\n")
    assert _load_dependent(dependent, "dependent_c") == (0, 1)  # stale: compiled again
    assert _load_dependent(dependent, "dependent_d") == (1, 0)


def test_direct_and_volume_kernels_are_stamped_with_the_vectors():
    """Both files' cached kernels go through the stamping locator; its stamp is Numba's own for
    the kernel's file, with _vectors' content hash beside it."""
    from anycnn_numpy import _direct, _vectors, _volume

    for kernel in (_direct.correlate_into, _direct.correlate_grad, _volume.correlate_volumes):
        locator = kernel._cache._impl.locator
        assert isinstance(locator, _vectors._VectorsLocator)
        inner, own = locator.get_source_stamp()
        assert inner == locator._inner.get_source_stamp()
        assert own == hashlib.sha256(Path(_vectors.__file__).read_bytes()).hexdigest()
