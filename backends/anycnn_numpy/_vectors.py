"""The explicit 16-lane float32 vectors of the NumPy backend's compiled kernels: a Numba type for
an LLVM ``<16 x float>`` and its load, store, splat, broadcast, fused multiply-add, product and
lane-sum intrinsics, shared by the 2-D direct convolutions (``_direct``) and the 1-D / 3-D ones
(``_volume``). Imported only where Numba is there.
"""

from __future__ import annotations

import hashlib
import os
import threading

from llvmlite import ir
from numba.core import caching, cgutils, types
from numba.extending import intrinsic, models, register_model

# Note [Explicit vectors]
# ~~~~~~~~~~~~~~~~~~~~~~~
# LLVM's loop vectoriser asks the target how wide its vectors are, and on the Intel cores with
# AVX-512 (Skylake-SP and later, Sapphire Rapids included) the answer is 256 bits: those targets
# "prefer" 256-bit vectors (clang's ``-mprefer-vector-width``), and Numba has no way to set the
# function attribute that says otherwise. So the direct convolutions' loops ran on 8-lane ``ymm``
# registers where the core has 16-lane ``zmm`` ones (OpenBLAS's SGEMM uses them: that is much of
# the gap between the kernels' and SGEMM's rate). Operations written on an explicit
# ``<16 x float>`` LLVM vector are not the vectoriser's choice: the backend lowers them to ``zmm``
# where AVX-512 is there, to two ``ymm`` halves with AVX2 only, to four 128-bit halves on NEON --
# correct everywhere, 16 lanes where the core has them. On the 2-core Xeon the float32 inner loop
# of the forward convolution (five taps, two maps) went from 76 to 111 GFLOP/s on one core (CPU
# time; bench/results/numpy-notes.md, "Explicit vectors").
#
# The vector type and its operations (intrinsics, module globals) live in this one module, shared
# by the kernels of ``_direct`` (2-D) and ``_volume`` (1-D and 3-D). Numba keys a kernel's on-disk
# cache on the source file of the cached function only, so an edit of the intrinsics here would
# leave those kernels' cached machine code in place (a test mutating an intrinsic passed on the
# stale cache; that is why they once lived beside the kernels, copied into each file): a module
# whose compiled code calls them says so with :func:`cache_depends_on_vectors` before its
# kernels are defined, and the cache of those kernels is then stamped with this file's content
# too (Note [Caches stamped with the vectors]). The type lives only inside compiled functions,
# never an argument or a result of one called from Python. Float64 keeps the vectoriser's loops
# (and their bits: ``.ci/bitexact.py``); these are float32 only.

#: float32 lanes of one vector (a zmm register).
LANES = 16

VECTOR = ir.VectorType(ir.FloatType(), LANES)
_INDEX = ir.IntType(32)


class Float32x16(types.Type):
    """Numba's type of a ``<16 x float>`` LLVM vector."""

    def __init__(self) -> None:
        super().__init__(name="float32x16")


float32x16 = Float32x16()


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, VECTOR)


def _float32_array(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.float32


def _pointer(context, builder, array_type, array, index):
    """``&array.flat[index]`` as a vector pointer (C-contiguous 1-d arrays: index in items)."""
    view = context.make_array(array_type)(context, builder, array)
    return builder.bitcast(builder.gep(view.data, [index]), VECTOR.as_pointer())


@intrinsic
def vload(typingctx, array, index):  # pragma: no cover - compiled
    """``array[index : index + 16]`` as a vector (1-d float32; no bounds check)."""
    if not (_float32_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.load(_pointer(context, builder, signature.args[0], *args), align=4)

    return float32x16(array, index), codegen


@intrinsic
def vstore(typingctx, array, index, value):  # pragma: no cover - compiled
    """``array[index : index + 16] = value`` (1-d float32; no bounds check)."""
    if not (_float32_array(array) and isinstance(index, types.Integer) and value == float32x16):
        return None

    def codegen(context, builder, signature, args):
        pointer = _pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store(args[2], pointer, align=4)
        return context.get_dummy_value()

    return types.void(array, index, value), codegen


@intrinsic
def vsplat(typingctx, value):  # pragma: no cover - compiled
    """A vector of 16 copies of the float32 ``value``."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return splat(builder, args[0])

    return float32x16(value), codegen


def splat(builder, value):
    undefined = ir.Constant(VECTOR, ir.Undefined)
    first = builder.insert_element(undefined, value, ir.Constant(_INDEX, 0))
    mask = ir.Constant(ir.VectorType(_INDEX, LANES), [0] * LANES)
    return builder.shuffle_vector(first, undefined, mask)


@intrinsic
def vzeros(typingctx):  # pragma: no cover - compiled
    """A vector of 16 zeros."""

    def codegen(context, builder, signature, args):
        return ir.Constant(VECTOR, [0.0] * LANES)

    return float32x16(), codegen


@intrinsic
def vfma(typingctx, a, b, c):  # pragma: no cover - compiled
    """``a * b + c`` lane by lane, rounded once (``llvm.fma``)."""
    if not (a == b == c == float32x16):
        return None

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(VECTOR, [VECTOR] * 3)
        fma = cgutils.get_or_insert_function(builder.module, function_type, "llvm.fma.v16f32")
        return builder.call(fma, args)

    return float32x16(a, b, c), codegen


@intrinsic
def vsum(typingctx, value):  # pragma: no cover - compiled
    """The sum of the 16 lanes, as a tree: halves added to halves (8, 4, 2, 1 lanes)."""
    if value != float32x16:
        return None

    def codegen(context, builder, signature, args):
        v = args[0]
        width = LANES
        while width > 1:
            width //= 2
            lanes = ir.VectorType(_INDEX, width)
            low = builder.shuffle_vector(v, v, ir.Constant(lanes, list(range(width))))
            high = builder.shuffle_vector(v, v, ir.Constant(lanes, list(range(width, 2 * width))))
            v = builder.fadd(low, high)
        return builder.extract_element(v, ir.Constant(_INDEX, 0))

    return types.float32(value), codegen


@intrinsic
def vmul(typingctx, a, b):  # pragma: no cover - compiled
    """``a * b`` lane by lane."""
    if not (a == b == float32x16):
        return None

    def codegen(context, builder, signature, args):
        return builder.fmul(*args)

    return float32x16(a, b), codegen


@intrinsic
def vadd(typingctx, a, b):  # pragma: no cover - compiled
    """``a + b`` lane by lane."""
    if not (a == b == float32x16):
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(*args)

    return float32x16(a, b), codegen


def _transpose_masks() -> list[tuple[int, list[int], list[int]]]:
    """The shuffles of a 16 x 16 transposition (:func:`vtranspose16`): stage k swaps bit k of
    the row index with bit k of the column index, pairing rows r and r + 2^k; the first of the
    two masks makes the new row r, the second the new row r + 2^k (indices >= 16: the second
    row)."""
    stages = []
    for k in range(4):
        step = 1 << k
        low = [c if not c & step else LANES + c - step for c in range(LANES)]
        high = [c + step if not c & step else LANES + c for c in range(LANES)]
        stages.append((step, low, high))
    return stages


@intrinsic
def vtranspose16(typingctx, src, s0, sstride, dst, d0, dstride):  # pragma: no cover - compiled
    """``dst[d0 + c dstride + r] = src[s0 + r sstride + c]`` for r, c < 16: a 16 x 16 block
    transposed in registers (16 loads, 64 two-source shuffles, 16 stores; 1-d float32 arrays,
    no bounds check). Note [Examples on the lanes] in _direct."""
    if not (
        _float32_array(src)
        and _float32_array(dst)
        and all(isinstance(v, types.Integer) for v in (s0, sstride, d0, dstride))
    ):
        return None

    def codegen(context, builder, signature, args):
        src_v, s0_v, ss_v, dst_v, d0_v, ds_v = args
        src_t, s0_t, ss_t, dst_t, d0_t, ds_t = signature.args
        i64 = ir.IntType(64)
        s0_v = context.cast(builder, s0_v, s0_t, types.int64)
        ss_v = context.cast(builder, ss_v, ss_t, types.int64)
        d0_v = context.cast(builder, d0_v, d0_t, types.int64)
        ds_v = context.cast(builder, ds_v, ds_t, types.int64)
        rows = []
        for r in range(LANES):
            index = builder.add(s0_v, builder.mul(ss_v, ir.Constant(i64, r)))
            rows.append(builder.load(_pointer(context, builder, src_t, src_v, index), align=4))
        for step, low, high in _transpose_masks():
            low_mask = ir.Constant(ir.VectorType(_INDEX, LANES), low)
            high_mask = ir.Constant(ir.VectorType(_INDEX, LANES), high)
            new = list(rows)
            for r in range(LANES):
                if r & step:
                    continue
                a, b = rows[r], rows[r + step]
                new[r] = builder.shuffle_vector(a, b, low_mask)
                new[r + step] = builder.shuffle_vector(a, b, high_mask)
            rows = new
        for c in range(LANES):
            index = builder.add(d0_v, builder.mul(ds_v, ir.Constant(i64, c)))
            builder.store(rows[c], _pointer(context, builder, dst_t, dst_v, index), align=4)
        return context.get_dummy_value()

    return types.void(src, s0, sstride, dst, d0, dstride), codegen


@intrinsic
def vbroadcast(typingctx, array, index):  # pragma: no cover - compiled
    """16 copies of ``array[index]`` (1-d float32; no bounds or negative-index check)."""
    if not (_float32_array(array) and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        view = context.make_array(signature.args[0])(context, builder, args[0])
        return splat(builder, builder.load(builder.gep(view.data, [args[1]]), align=4))

    return float32x16(array, index), codegen


# Note [Caches stamped with the vectors]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# Numba finds where to cache a function with the first of its "locator" classes that accepts the
# function's source file, and keeps the cached code while the locator's source stamp (a hash of
# that file) is unchanged. :class:`_VectorsLocator` goes first in that list: for the files named
# by :func:`cache_depends_on_vectors` it hands everything to the locator Numba would have chosen
# (the same cache folder and file names) but stamps the cache with this file's hash as well, so
# that an edit of an intrinsic here makes every dependent kernel compile again, as an edit of
# the kernel's own file does. Files not named are left to Numba's locators as they were. (Numba's
# NUMBA_CACHE_LOCATOR_CLASSES, where set, replaces the whole list: then this stamp is not used.)
_DEPENDENTS: set[str] = set()
_LOCK = threading.Lock()
#: the file whose content stamps the dependents' caches (this one; a test points it elsewhere)
SOURCE = os.path.realpath(__file__)


class _VectorsLocator(caching._CacheLocator):
    """Numba's own locator for a dependent file, its source stamp extended with :data:`SOURCE`'s."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self._py_file = inner._py_file  # Numba's warnings name it

    def ensure_cache_path(self) -> None:
        self._inner.ensure_cache_path()

    def get_cache_path(self) -> str:
        return self._inner.get_cache_path()

    def get_disambiguator(self) -> str:
        return self._inner.get_disambiguator()

    def get_source_stamp(self):
        return self._inner.get_source_stamp(), _content_hash(SOURCE)

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.realpath(py_file) not in _DEPENDENTS:
            return None
        for other in _IMPL._locator_classes:
            if other is not cls:
                inner = other.from_function(py_func, py_file)
                if inner is not None:
                    return cls(inner)
        return None


def _content_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


_IMPL = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # (the name before 0.61)


def cache_depends_on_vectors(module_file: str) -> None:
    """Stamp the on-disk caches of the kernels that ``module_file`` defines from now on with this
    module's content too (Note [Caches stamped with the vectors]); call it before they are."""
    with _LOCK:
        _DEPENDENTS.add(os.path.realpath(module_file))
        if _VectorsLocator not in _IMPL._locator_classes:
            _IMPL._locator_classes.insert(0, _VectorsLocator)
