"""Explicit float32 vectors for the compiled kernels: a 16-lane Numba type and the handful of
operations the direct convolutions need (load, store, splat, fused multiply-add, sum).

Note [Explicit vectors]
~~~~~~~~~~~~~~~~~~~~~~~
LLVM's loop vectoriser asks the target how wide its vectors are, and on the Intel cores with
AVX-512 (Skylake-SP and later, Sapphire Rapids included) the answer is 256 bits: those targets
"prefer" 256-bit vectors (clang's ``-mprefer-vector-width``), and Numba has no way to set the
function attribute that says otherwise. So the direct convolutions' loops ran on 8-lane ``ymm``
registers where the core has 16-lane ``zmm`` ones (OpenBLAS's SGEMM uses them: that is much of
the gap between the kernels' and SGEMM's rate). Operations written on an explicit
``<16 x float>`` LLVM vector are not the vectoriser's choice: the backend lowers them to ``zmm``
where AVX-512 is there, to two ``ymm`` halves with AVX2 only, to four 128-bit halves on NEON --
correct everywhere, 16 lanes where the core has them. On the 2-core Xeon the float32 inner loop
of the forward convolution (five taps, two maps) went from 76 to 111 GFLOP/s on one core (CPU
time; bench/results/numpy-notes.md, "Explicit vectors").

The type lives only inside compiled functions (never an argument or a result of one called
from Python). The functions here are intrinsics: module globals, so Numba's on-disk cache
recognises the kernels that use them. Float64 keeps the vectoriser's loops (and their bits:
``.ci/bitexact.py``); these are float32 only.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic, models, register_model

#: float32 lanes of one vector (a zmm register).
LANES = 16

_VECTOR = ir.VectorType(ir.FloatType(), LANES)
_INDEX = ir.IntType(32)


class Float32x16(types.Type):
    """Numba's type of a ``<16 x float>`` LLVM vector."""

    def __init__(self) -> None:
        super().__init__(name="float32x16")


float32x16 = Float32x16()


@register_model(Float32x16)
class _Float32x16Model(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        super().__init__(dmm, fe_type, _VECTOR)


def _float32_array(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.float32


def _pointer(context, builder, array_type, array, index):
    """``&array.flat[index]`` as a vector pointer (C-contiguous 1-d arrays: index in items)."""
    view = context.make_array(array_type)(context, builder, array)
    return builder.bitcast(builder.gep(view.data, [index]), _VECTOR.as_pointer())


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
        undefined = ir.Constant(_VECTOR, ir.Undefined)
        first = builder.insert_element(undefined, args[0], ir.Constant(_INDEX, 0))
        mask = ir.Constant(ir.VectorType(_INDEX, LANES), [0] * LANES)
        return builder.shuffle_vector(first, undefined, mask)

    return float32x16(value), codegen


@intrinsic
def vzeros(typingctx):  # pragma: no cover - compiled
    """A vector of 16 zeros."""

    def codegen(context, builder, signature, args):
        return ir.Constant(_VECTOR, [0.0] * LANES)

    return float32x16(), codegen


@intrinsic
def vfma(typingctx, a, b, c):  # pragma: no cover - compiled
    """``a * b + c`` lane by lane, rounded once (``llvm.fma``)."""
    if not (a == b == c == float32x16):
        return None

    def codegen(context, builder, signature, args):
        function_type = ir.FunctionType(_VECTOR, [_VECTOR] * 3)
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
