"""The hot operations, checked and dispatched: what users and tests call directly.

Each function validates its arguments once (rank, dtype, shapes, one namespace and one device),
then runs the implementation of the backend that owns the arrays (``Note [Hot-op dispatch]`` in
:mod:`anycnn.backend`). The maths and conventions are documented on the reference versions in
:mod:`anycnn.ops`.
"""

from __future__ import annotations

from typing import Any

from anycnn import _checks as checks
from anycnn import ops as reference
from anycnn.backend import backend_of

__all__ = list(reference.__all__)


def _maps(where: str, name: str, x: Any) -> None:
    checks.check_rank(where, name, x, 4, "(N, C, H, W)")
    checks.check_float(where, name, x)


def _padding(where: str, padding: Any) -> tuple[int, int]:
    """``(ph, pw)``: two non-negative ints (Note [Zero padding] in anycnn.ops)."""
    try:
        ph, pw = padding
    except (TypeError, ValueError):
        ph = pw = None
    for value in (ph, pw):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"{where}: padding must be (rows, columns), two non-negative ints, got {padding!r}"
            )
    return int(ph), int(pw)


def conv_valid(x: Any, kernel: Any, selection: Any = None, padding: Any = (0, 0)) -> Any:
    where = "conv_valid"
    be = backend_of(x, kernel, selection, op=where)
    ph, pw = _padding(where, padding)
    _maps(where, "x", x)
    checks.check_rank(where, "kernel", kernel, 4, "(C_out, C_in, kh, kw)")
    checks.check_same_dtype(where, ("x", "kernel"), x, kernel)
    c_out, c_in, kh, kw = kernel.shape
    if x.shape[1] != c_in:
        raise ValueError(
            f"{where}: x has {x.shape[1]} maps but the kernel expects C_in = {c_in} "
            f"(x {checks.shape_str(x.shape)}, kernel {checks.shape_str(kernel.shape)})"
        )
    if kh > x.shape[2] + 2 * ph or kw > x.shape[3] + 2 * pw:
        padded = f" padded by ({ph}, {pw})" if ph or pw else ""
        raise ValueError(
            f"{where}: kernel {kh}x{kw} is larger than the {x.shape[2]}x{x.shape[3]} input "
            f"maps{padded}"
        )
    checks.check_selection(where, selection, c_out, c_in)
    if ph or pw:
        return be.ops.conv_valid(x, kernel, selection, (ph, pw))
    return be.ops.conv_valid(x, kernel, selection)


def conv_full(delta: Any, kernel: Any, selection: Any = None, padding: Any = (0, 0)) -> Any:
    where = "conv_full"
    be = backend_of(delta, kernel, selection, op=where)
    ph, pw = _padding(where, padding)
    _maps(where, "delta", delta)
    checks.check_rank(where, "kernel", kernel, 4, "(C_out, C_in, kh, kw)")
    checks.check_same_dtype(where, ("delta", "kernel"), delta, kernel)
    c_out, c_in, _, _ = kernel.shape
    if delta.shape[1] != c_out:
        raise ValueError(
            f"{where}: delta has {delta.shape[1]} maps but the kernel has C_out = {c_out} "
            f"(delta {checks.shape_str(delta.shape)}, kernel {checks.shape_str(kernel.shape)})"
        )
    _, _, kh, kw = kernel.shape
    if 2 * ph >= delta.shape[2] + kh - 1 or 2 * pw >= delta.shape[3] + kw - 1:
        raise ValueError(
            f"{where}: padding ({ph}, {pw}) leaves no input: the 'full' convolution of "
            f"{delta.shape[2]}x{delta.shape[3]} deltas with a {kh}x{kw} kernel has "
            f"{delta.shape[2] + kh - 1}x{delta.shape[3] + kw - 1} maps"
        )
    checks.check_selection(where, selection, c_out, c_in)
    if ph or pw:
        return be.ops.conv_full(delta, kernel, selection, (ph, pw))
    return be.ops.conv_full(delta, kernel, selection)


def conv_kernel_grad(x: Any, delta: Any, selection: Any = None, padding: Any = (0, 0)) -> Any:
    where = "conv_kernel_grad"
    be = backend_of(x, delta, selection, op=where)
    ph, pw = _padding(where, padding)
    _maps(where, "x", x)
    _maps(where, "delta", delta)
    checks.check_same_dtype(where, ("x", "delta"), x, delta)
    if x.shape[0] != delta.shape[0]:
        raise ValueError(
            f"{where}: x and delta have different batch sizes, {x.shape[0]} and {delta.shape[0]}"
        )
    if delta.shape[2] > x.shape[2] + 2 * ph or delta.shape[3] > x.shape[3] + 2 * pw:
        padded = f" padded by ({ph}, {pw})" if ph or pw else ""
        raise ValueError(
            f"{where}: delta maps {delta.shape[2]}x{delta.shape[3]} are larger than the "
            f"{x.shape[2]}x{x.shape[3]} input maps{padded}"
        )
    checks.check_selection(where, selection, delta.shape[1], x.shape[1])
    if ph or pw:
        return be.ops.conv_kernel_grad(x, delta, selection, (ph, pw))
    return be.ops.conv_kernel_grad(x, delta, selection)


def _resampling(where: str, x: Any, n: Any, divisible: bool) -> tuple[Any, int]:
    be = backend_of(x, op=where)
    _maps(where, "x", x)
    n = checks.check_factor(where, n)
    if divisible:
        checks.check_divisible(where, tuple(x.shape), n)
    return be, n


def kron_upsample(x: Any, n: int) -> Any:
    be, n = _resampling("kron_upsample", x, n, divisible=False)
    return be.ops.kron_upsample(x, n)


def block_sum(x: Any, n: int) -> Any:
    be, n = _resampling("block_sum", x, n, divisible=True)
    return be.ops.block_sum(x, n)


def block_mean(x: Any, n: int) -> Any:
    be, n = _resampling("block_mean", x, n, divisible=True)
    return be.ops.block_mean(x, n)


def decimate(x: Any, n: int) -> Any:
    be, n = _resampling("decimate", x, n, divisible=True)
    return be.ops.decimate(x, n)


def decimate_transpose(delta: Any, n: int) -> Any:
    be, n = _resampling("decimate_transpose", delta, n, divisible=False)
    return be.ops.decimate_transpose(delta, n)


def _matrices(where: str, names: tuple[str, str], a: Any, b: Any) -> Any:
    be = backend_of(a, b, op=where)
    for name, value in zip(names, (a, b), strict=True):
        checks.check_rank(where, name, value, 2, "(N, D)" if name in ("x", "delta") else "(M, D)")
        checks.check_float(where, name, value)
    checks.check_same_dtype(where, names, a, b)
    return be


def fully_connected(x: Any, weight: Any) -> Any:
    where = "fully_connected"
    be = _matrices(where, ("x", "weight"), x, weight)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{where}: x has {x.shape[1]} features but the weight expects D = {weight.shape[1]} "
            f"(x {checks.shape_str(x.shape)}, weight {checks.shape_str(weight.shape)})"
        )
    return be.ops.fully_connected(x, weight)


def fully_connected_weight_grad(x: Any, delta: Any) -> Any:
    where = "fully_connected_weight_grad"
    be = _matrices(where, ("x", "delta"), x, delta)
    if x.shape[0] != delta.shape[0]:
        raise ValueError(
            f"{where}: x and delta have different batch sizes, {x.shape[0]} and {delta.shape[0]}"
        )
    return be.ops.fully_connected_weight_grad(x, delta)


def fully_connected_input_grad(delta: Any, weight: Any) -> Any:
    where = "fully_connected_input_grad"
    be = _matrices(where, ("delta", "weight"), delta, weight)
    if delta.shape[1] != weight.shape[0]:
        raise ValueError(
            f"{where}: delta has {delta.shape[1]} units but the weight has M = {weight.shape[0]} "
            f"(delta {checks.shape_str(delta.shape)}, weight {checks.shape_str(weight.shape)})"
        )
    return be.ops.fully_connected_input_grad(delta, weight)
