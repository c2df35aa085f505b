"""Activations in place on NumPy arrays: the table's programs with ``out=``.

The layers' ``f(u)`` (the ``activate`` op, Note [Fused ops] in anycnn.ops) runs the program of
the activation's description (Note [Activation descriptions] in anycnn.backend.activations)
in place in ``u``, the layer's own temporary: the reference's operations in its order, hence its
bits, without its new array per step. The convolution's epilogue and the sensitivities use the
same runner. An activation without a description takes its own ``apply``.
"""

from __future__ import annotations

import numpy as np

from anycnn.backend.activations import CONSTANT_OPERANDS, OPERANDS, parse


def run_in_place(steps, v, y, p0, p1):
    """A program of the table run in place in ``v`` (a temporary of the caller's, or the new
    array of a ``start`` step); ``y`` is the saved output the operands read."""
    for operation, name in steps:
        x = OPERANDS[name][0](y, p0, p1, np) if name else None
        if operation == "mul":
            if not (name in CONSTANT_OPERANDS and x == 1.0):  # times 1 is exact: skip it
                np.multiply(v, x, out=v)
        elif operation == "add":
            np.add(v, x, out=v)
        elif operation == "rdiv":
            np.divide(x, v, out=v)
        elif operation == "max":
            np.maximum(v, x, out=v)
        elif operation == "exp":
            with np.errstate(over="ignore"):  # exp(-gain u) = inf is right (f = 0)
                np.exp(v, out=v)
        elif operation == "tanh":
            np.tanh(v, out=v)
        elif operation == "start":  # an operand that is a new array: 1 - y, y + a, ...
            v = x
        else:  # pragma: no cover - tests/test_activation_table.py checks the table
            raise ValueError(f"unknown step {operation!r}")
    return v


def _writable_float(a) -> bool:
    return type(a) is np.ndarray and a.dtype.kind == "f" and a.flags.writeable


def activate(u, activation):
    """``f(u)``, in place in ``u`` (``Note [Fused ops]`` in anycnn.ops): the bits of
    ``activation.apply(u, xp)``."""
    parsed = parse(activation)
    if parsed is None:
        return activation.apply(u, np)
    _, kind, p0, p1 = parsed
    if not kind.forward:  # the identity
        return u
    if not _writable_float(u):
        return activation.forward(u)
    return run_in_place(kind.forward, u, u, p0, p1)


def sensitivity(dy, y, activation):
    """``f'(u) o dy`` with one new array (the bits of ``activation.sensitivity``): ``dy`` itself
    for the identity; an activation without a description takes its own method."""
    parsed = parse(activation)
    if parsed is None or not (_writable_float(dy) and _writable_float(y)):
        return activation.sensitivity(dy, y, np)
    _, kind, p0, p1 = parsed
    if not kind.slope:
        return dy
    v = run_in_place(kind.slope, None, y, p0, p1)
    np.multiply(v, dy, out=v)
    return v
