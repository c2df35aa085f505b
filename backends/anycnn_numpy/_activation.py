"""Activations on NumPy arrays, read from their descriptions (Note [Activation descriptions] in
anycnn.backend.activations; this backend never imports a layer class):

* the ``activate`` op: the table's program of f run in place in the layer's temporary with
  ``out=`` (the reference's operations in its order, hence its bits, without its new arrays);
* the ``sensitivity`` op: ``f'(u) o dy`` in one compiled pass for the logistic and the scaled
  tanh (``Note [Sensitivity kernel]`` in ``_direct``), else the table's slope in place;
* what the compiled kernels take: the codes of the f that the direct convolutions apply
  themselves (``Note [Compiled activations]`` in ``_direct``) and the formulas of the f' that
  the sensitivity kernels form, in the table's order.

An activation without a description takes its own methods.
"""

from __future__ import annotations

import numpy as np

from anycnn.backend.activations import CONSTANT_OPERANDS, OPERANDS, parse
from anycnn_numpy import _jit
from anycnn_numpy._threads import run


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


def _in_place(dy, y) -> bool:
    """Whether the table's slope program, run on a new array like ``y`` and times ``dy`` in
    place, gives the bits of the activation's own method: float arrays of one dtype (the method
    would promote another), not 0-d (NumPy's operations give scalars there, which take no
    ``out=``). Neither array is written."""
    return type(y) is np.ndarray and y.dtype.kind == "f" and dy.dtype == y.dtype and y.ndim > 0


def _slope_times(dy, y, activation):
    """``f'(u) o dy`` with one new array, the bits of ``activation.sensitivity``: the table's
    slope in place, then times ``dy``; ``dy`` itself for the identity."""
    parsed = parse(activation)
    if parsed is None or not _in_place(dy, y):
        return activation.sensitivity(dy, y, np)
    _, kind, p0, p1 = parsed
    if not kind.slope:
        return dy
    v = run_in_place(kind.slope, None, y, p0, p1)
    np.multiply(v, dy, out=v)
    return v


def compiled_activation(activation, dtype: np.dtype) -> tuple | None:
    """``(kind, p0, p1)`` of the direct kernels' own f (Note [Compiled activations]), or None:
    the activation's description, when the kernels have its kind."""
    if dtype != np.float32 or _jit.direct_activations is None:
        return None
    parsed = parse(activation)
    if parsed is None:
        return None
    _, kind, p0, p1 = parsed
    index = _DIRECT_KINDS.get(kind.name)
    if index is None:
        return None
    t = dtype.type
    return (_jit.direct_activations[index], t(p0), t(p1))


#: The kinds of the table the direct kernels apply themselves, by index in
#: ``_jit.direct_activations``.
_DIRECT_KINDS = {"identity": 0, "logistic": 1, "tanh": 2}


def no_activation(dtype: np.dtype) -> tuple:
    """The direct kernels' activation code for f = identity (the bias only)."""
    t = dtype.type
    return (_jit.direct_activations[0], t(0), t(0))


#: The identity's formula: ``f' = 1``, the deltas as given (its parameters are never read).
IDENTITY_FORMULA = ("identity", 0.0, 0.0, False)


def sensitivity_formula(activation, y) -> tuple | None:
    """``(name, p0, p1, scaled)`` of the compiled ``f'(u) o dy`` (Note [Sensitivity kernel] in
    _direct) for ``activation`` on outputs like ``y``, or None, from the activation's
    description (the table's slope, in its order): ``"logistic"``, ``gain y (1 - y)``
    (``scaled`` when the gain is not 1); ``"tanh"``, ``((a - y)(y + a))(b / a)``;
    ``"identity"``."""
    if y.dtype not in _jit.COMPILED_DTYPES:
        return None
    parsed = parse(activation)
    kind = None if parsed is None else parsed[1].name
    if kind == "logistic":
        gain = parsed[2]
        return ("logistic", gain, 0.0, gain != 1.0)
    if kind == "tanh":
        a, b = parsed[2], parsed[3]
        return ("tanh", a, b / a, True)
    if kind == "identity":
        return IDENTITY_FORMULA
    return None


def sensitivity(dy, y, activation):
    """Fused ``f'(u) o dy`` (``Note [Fused ops]`` in anycnn.ops) for the logistic and the scaled
    tanh: one compiled pass on the pool's threads (Note [Sensitivity kernel] in _direct), the bits
    of ``activation.sensitivity``; other activations, dtypes or layouts take the table's slope
    in place (the same bits)."""
    # the compiled pass or the table's slope: paths to the same bits
    kernel = _jit.sensitivity_into  # pragma: no mutate (a path to the same result)
    formula = sensitivity_formula(activation, y)  # pragma: no mutate (a path to the same result)
    if formula is not None and formula[0] == "identity":
        return dy  # f' = 1: delta is dy itself, as the identity's own method gives
    if (
        kernel is None
        or formula is None
        or dy.dtype != y.dtype
        or dy.shape != y.shape
        or not (_jit.compiled_layout(dy) and _jit.compiled_layout(y))
        or y.ndim == 0
        or y.size == 0
    ):
        return _slope_times(dy, y, activation)
    t = y.dtype.type
    name, p0, p1, scaled = formula
    code, p0, p1 = _jit.direct_sensitivities[name], t(p0), t(p1)
    n = len(y)  # rows of the pool's slices (the kernel is elementwise: any rows would do)
    flat_dy, flat_y = dy.reshape(n, -1), y.reshape(n, -1)
    out = np.empty_like(y)
    flat = out.reshape(n, -1)

    def work(index, start, stop):
        kernel(flat_dy, flat_y, code, p0, p1, scaled, flat, start, stop)

    run(work, n, 3 * flat.shape[1] * y.itemsize, 0)
    return out
