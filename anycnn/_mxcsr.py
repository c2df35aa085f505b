"""The calling thread's MXCSR register, read and written by compiled code (x86-64, Numba).

Imported by :mod:`anycnn.subnormals` only on x86-64 with Numba installed. ``stmxcsr`` and
``ldmxcsr`` are LLVM's ``llvm.x86.sse.stmxcsr`` / ``llvm.x86.sse.ldmxcsr`` intrinsics, which take
the address of a 32-bit slot; the functions are defined at module level so that Numba's on-disk
cache finds them again in the next process.
"""

from __future__ import annotations

from typing import Any

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _call(builder: Any, name: str, slot: Any) -> None:
    byte_pointer = ir.PointerType(ir.IntType(8))
    function_type = ir.FunctionType(ir.VoidType(), [byte_pointer])
    function = cgutils.get_or_insert_function(builder.module, function_type, name)
    builder.call(function, [builder.bitcast(slot, byte_pointer)])


@intrinsic
def _stmxcsr(typingctx):  # pragma: no cover - compiled
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _call(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.load(slot)

    return types.uint32(), codegen


@intrinsic
def _ldmxcsr(typingctx, value):  # pragma: no cover - compiled
    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.store(args[0], slot)
        _call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()

    return types.void(types.uint32), codegen


@numba.njit(nogil=True, cache=True)
def get_csr():  # pragma: no cover - compiled
    """The calling thread's MXCSR."""
    return _stmxcsr()


@numba.njit(nogil=True, cache=True)
def set_csr(value):  # pragma: no cover - compiled
    """Load ``value`` into the calling thread's MXCSR."""
    _ldmxcsr(numba.uint32(value))
