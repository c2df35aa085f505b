"""What the NumPy plugin's compile-time helpers promise (issue 22: survivors of the mutation
campaigns in backends/anycnn_numpy/_direct.py, whose vector type and intrinsics now live in
_vectors.py; tests/MUTATION.md).

Numba runs these only when it compiles a kernel, and the kernels are cached on disk, so a wrong
helper would go unnoticed until the cache is cold (a fresh clone, a new Numba): the typing
predicates of the vector intrinsics (which arrays they take), the data model of the vector
type (an LLVM ``<16 x float>``), and the ``@overload`` choosers that pick a kernel by dtype and
forward every argument to it, in order."""

from __future__ import annotations

import dis
import inspect

import numpy as np
import pytest

numba = pytest.importorskip("numba")
pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _direct, _jit, _vectors  # noqa: E402
from numba.core import types  # noqa: E402
from numba.core.datamodel import default_manager  # noqa: E402

from anycnn.layers.activations import Sigmoid, Tanh  # noqa: E402


def test_the_vector_intrinsics_take_float32_arrays_only():
    assert _vectors._float32_array(types.float32[:])
    assert _vectors._float32_array(types.float32[:, ::1])
    for other in (types.float64[:], types.int64[:], types.float32, types.int64):
        assert not _vectors._float32_array(other), other


def test_the_atomic_intrinsics_take_one_dimensional_int64_arrays_only():
    assert _direct._int64_vector(types.int64[:])
    for other in (types.int64[:, :], types.int32[:], types.float64[:], types.int64):
        assert not _direct._int64_vector(other), other


def test_the_vector_type_is_an_llvm_vector_of_sixteen_floats():
    model = default_manager.lookup(_vectors.float32x16)
    assert model.fe_type is _vectors.float32x16 is _direct.float32x16
    fresh = _vectors._Float32x16Model(default_manager, _vectors.float32x16)  # built anew
    assert fresh.fe_type is _vectors.float32x16 and fresh._dmm is default_manager
    assert str(model.get_value_type()) == f"<{_vectors.LANES} x float>"
    assert _vectors.LANES == _direct.LANES == 16


def _forwarded(impl) -> tuple[str, list[str]]:
    """The function an overload's implementation calls and the names it passes, in order."""
    ops = [i for i in dis.get_instructions(impl) if not i.opname.startswith(("RESUME", "PRE"))]
    callee = next(i.argval for i in ops if i.opname == "LOAD_GLOBAL")
    names = [i.argval for i in ops if i.opname == "LOAD_FAST"]
    return callee, names


@pytest.mark.parametrize(
    ("chooser", "float32", "other"),
    [
        (_direct._correlate_pair_of_dtype, "_correlate_pair32", "_correlate_pair"),
        (_direct._grad_pair_of_dtype, "_grad_pair32", "_grad_pair"),
        (_direct._activate_run_of_dtype, "_activate_run32", "_activate_run"),
    ],
)
def test_each_overload_takes_the_float32_kernel_by_dtype_and_forwards_every_argument(
    chooser, float32, other
):
    parameters = list(inspect.signature(chooser).parameters)
    first_rest = [None] * (len(parameters) - 1)
    for dtype, want in ((types.float32, float32), (types.float64, other)):
        impl = chooser(types.Array(dtype, 1, "C"), *first_rest)
        callee, names = _forwarded(impl)
        assert callee == want, (dtype, callee)
        assert list(inspect.signature(impl).parameters) == parameters
        assert names == parameters  # every argument, in its place
        target = getattr(_direct, want)
        assert list(inspect.signature(target.py_func).parameters) == parameters


@pytest.mark.skipif(_jit.correlate_into is None, reason="Numba's kernels are switched off here")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [Sigmoid(2.0), Tanh(1.7159, 2.0 / 3.0)])
def test_the_activation_runs_chosen_by_dtype_apply_f(dtype, activation):
    """The chooser's implementation, called as compiled code would call it, applies f (to the
    compiled kernels' float32 rounding) in place."""
    from anycnn_numpy import _activation

    rng = np.random.default_rng(3)
    u = (4 * rng.standard_normal(100)).astype(dtype)
    v = u.copy()
    impl = _direct._activate_run_of_dtype(numba.typeof(v), None, None, None)
    kind, p0, p1 = _activation.compiled_activation(activation, np.dtype(np.float32))
    t = np.dtype(dtype).type
    impl(v, kind, t(p0), t(p1))
    np.testing.assert_allclose(v, activation.forward(u.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_the_atomics_compiled_afresh_add_load_and_store_in_place():
    """The pool drivers' atomics (``_fetch_add``, ``_load_acquire``, ``_store_release``) build
    their pointers (``_item_pointer``) only when Numba compiles a driver, which the cache on disk
    skips: compiled here afresh, each reads and writes the item it names."""

    def atomics(a, i, v):
        before = _direct._fetch_add(a, i, v)
        _direct._store_release(a, i + 1, before)
        return before, _direct._load_acquire(a, i)

    compiled = numba.njit(cache=False)(atomics)
    a = np.arange(10, 18, dtype=np.int64)
    assert compiled(a, 3, 100) == (13, 113)
    np.testing.assert_array_equal(a, [10, 11, 12, 113, 13, 15, 16, 17])


def test_the_volume_kernels_vector_code_compiled_afresh():
    """``_volume``'s vector type and intrinsics (loads, stores, splats, broadcasts, fused
    multiply-adds; ``_vectors``', shared with ``_direct``) build their IR only when Numba compiles
    a kernel: compiled here afresh on a small function, each does what it says on 16 float32
    lanes."""
    from anycnn_numpy import _volume

    assert _vectors.Float32x16().name == "float32x16"
    model = _vectors._Float32x16Model(default_manager, _vectors.float32x16)
    assert model.fe_type is _vectors.float32x16 and model._dmm is default_manager
    assert str(model.get_value_type()) == "<16 x float>"
    assert _volume._broadcast is _vectors.vbroadcast and _volume._load is _vectors.vload

    def lanes(a, out, s):
        v = _volume._load(a, 2)
        _volume._store(out, 0, _volume._fma(v, _volume._splat(s), _volume._broadcast(a, 1)))

    compiled = numba.njit(cache=False)(lanes)
    a = np.arange(20, dtype=np.float32) / 4
    out = np.zeros(16, np.float32)
    compiled(a, out, np.float32(3))
    np.testing.assert_array_equal(out, a[2:18] * np.float32(3) + a[1])
