"""Argument checks shared by the public entry points; every message names the operation or
layer, the argument, and the expected and actual value."""

from __future__ import annotations

import math
from typing import Any

import array_api_compat


def shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_rank(where: str, name: str, x: Any, ndim: int, layout: str) -> None:
    if x.ndim != ndim:
        raise ValueError(
            f"{where}: {name} must be a {ndim}-d {layout} array, got shape {shape_str(x.shape)}"
        )


def check_float(where: str, name: str, x: Any) -> None:
    xp = array_api_compat.array_namespace(x)
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(
            f"{where}: {name} must have a real floating dtype (float32 or float64), got {x.dtype}"
        )


def check_same_dtype(where: str, names: tuple[str, str], a: Any, b: Any) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"{where}: {names[0]} and {names[1]} must share a dtype, got {a.dtype} and {b.dtype}"
        )


def check_factor(where: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{where}: the factor n must be a positive int, got {n!r}")
    return n


def check_divisible(where: str, shape: tuple[int, ...], n: int) -> None:
    """Every spatial axis of ``(N, C, *spatial)`` maps is a multiple of ``n``."""
    spatial = shape[2:]
    if any(s % n for s in spatial):
        raise ValueError(
            f"{where}: {'x'.join(str(s) for s in spatial)} maps are not divisible by {n}"
        )


def check_selection(where: str, selection: Any, c_out: int, c_in: int) -> None:
    if selection is None:
        return
    xp = array_api_compat.array_namespace(selection)
    if tuple(selection.shape) != (c_out, c_in):
        raise ValueError(
            f"{where}: selection must be a (C_out, C_in) = ({c_out}, {c_in}) boolean table, "
            f"got shape {shape_str(tuple(selection.shape))}"
        )
    if not xp.isdtype(selection.dtype, "bool"):
        raise TypeError(f"{where}: selection must be a boolean table, got dtype {selection.dtype}")


def check_finite_number(where: str, name: str, value: Any, *, positive: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or (positive and number <= 0):
        need = "a finite positive number" if positive else "a finite number"
        raise ValueError(f"{where}: {name} must be {need}, got {value!r}")
    return number
