"""Activations as data, and the one table that turns a description into code for each backend.

Note [Activation descriptions]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
An activation says what it computes with ``describe()``: a kind and its constants,
``("logistic", gain)``, ``("tanh", a, b)``, ``("identity",)`` or ``("relu",)``, or ``None`` for
one this table does not know (a user's own ``Activation``), which every backend then runs through
the activation's own methods. Backends read descriptions, never layer classes: a plugin
(``backends/*``) does not import :mod:`anycnn.layers` (tests/test_backend_parity.py checks).

Each kind is written here once, as two short programs over one accumulator ``v``:

* ``forward``: ``f(u)`` (section 2.1 of the notes), starting from ``v = u``;
* ``slope``: ``f'(u)`` from the saved output ``y = f(u)`` (section 3.4), starting from its first
  step; the sensitivity ``delta = f'(u) o dy`` (eqs. 3-4) is the slope times ``dy``.

A step is ``(operation, operand)``: ``"mul"``, ``"add"`` (``v = v op x``), ``"rdiv"``
(``v = x / v``), ``"max"`` (``v = max(v, x)``), ``"exp"``, ``"tanh"`` (``v = g(v)``, no operand)
and ``"start"`` (``v = x``, a new array); an operand is one of :data:`OPERANDS`, written once in
Python and once in C beside it. The programs are run by

* the Array API reference below (:func:`forward`, :func:`derivative`, :func:`sensitivity`): one
  new array per step, on any namespace (the layers' ``Activation`` methods are these);
* the NumPy backend, in place with ``out=`` on the layer's own temporaries (the same
  operations in the same order, hence the same bits);
* :func:`c_source`: the C++ functions ``anycnn_f`` / ``anycnn_df`` that the CuPy backend's
  fused CUDA kernels (and their CPU stand-in in the tests) call with a kind's :attr:`Kind.code`.

Compiled kernels that cannot run a program (Numba's) take the kind's code and constants from
:func:`compiled` and hold their own arithmetic, in the programs' order where bits matter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = Any
#: An activation's description: ``(kind, *constants)``.
Description = tuple[Any, ...]
Step = tuple[str, str]

__all__ = [
    "KINDS",
    "OPERANDS",
    "Description",
    "Kind",
    "c_source",
    "compiled",
    "derivative",
    "describe",
    "forward",
    "parse",
    "sensitivity",
]


@dataclass(frozen=True)
class Kind:
    """One kind of activation: its programs (Note [Activation descriptions]) and its code."""

    name: str
    #: The integer the compiled kernels (CUDA, Numba) know this kind by.
    code: int
    #: Names of the constants after the kind in a description, at most two (``p0``, ``p1``).
    constants: tuple[str, ...]
    forward: tuple[Step, ...]
    slope: tuple[Step, ...]
    doc: str = ""


#: Every kind, by name. ``slope == ()`` means ``f' = 1``: the sensitivity is ``dy`` itself.
KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("identity", 0, (), (), (), "f(u) = u"),
        Kind(
            "logistic",
            1,
            ("gain",),
            # 1 / (1 + exp(-gain u)); exp(-gain u) = inf below u ~ -88/gain (float32) gives 0
            (("mul", "-p0"), ("exp", ""), ("add", "1"), ("rdiv", "1")),
            # gain y (1 - y), as (1 - y) y gain
            (("start", "1-y"), ("mul", "y"), ("mul", "p0")),
            "f(u) = 1 / (1 + exp(-gain u)); f' = gain y (1 - y)",
        ),
        Kind(
            "tanh",
            2,
            ("a", "b"),
            (("mul", "p1"), ("tanh", ""), ("mul", "p0")),
            # (b / a)(a - y)(a + y): exactly 0 where y saturates at a (a - y is exact there),
            # whereas a^2 - y^2 rounds apart (the Tanh docstring)
            (("start", "y+p0"), ("mul", "p0-y"), ("mul", "p1/p0")),
            "f(u) = a tanh(b u); f' = (b / a)(a - y)(a + y)",
        ),
        Kind(
            "relu",
            3,
            (),
            (("max", "0"),),
            (("start", "y>0"),),
            "f(u) = max(u, 0); f' = 1 where y > 0, else 0",
        ),
    )
}


def _cast(y: Array, xp: Any) -> Array:
    return xp.astype(y > 0, y.dtype)


#: The operands of the programs: ``name -> (Python value from (y, p0, p1, xp), C expression)``.
#: Constants are Python floats (the namespace casts them as it casts any scalar); ``y`` is the
#: saved output.
OPERANDS: dict[str, tuple[Callable[..., Any], str]] = {
    "0": (lambda y, p0, p1, xp: 0.0, "T(0)"),
    "1": (lambda y, p0, p1, xp: 1.0, "T(1)"),
    "p0": (lambda y, p0, p1, xp: p0, "p0"),
    "-p0": (lambda y, p0, p1, xp: -p0, "(-p0)"),
    "p1": (lambda y, p0, p1, xp: p1, "p1"),
    "p1/p0": (lambda y, p0, p1, xp: p1 / p0, "(p1 / p0)"),
    "y": (lambda y, p0, p1, xp: y, "y"),
    "1-y": (lambda y, p0, p1, xp: 1.0 - y, "(T(1) - y)"),
    "y+p0": (lambda y, p0, p1, xp: y + p0, "(y + p0)"),
    "p0-y": (lambda y, p0, p1, xp: p0 - y, "(p0 - y)"),
    "y>0": (lambda y, p0, p1, xp: _cast(y, xp), "(y > T(0) ? T(1) : T(0))"),
}

#: Operands that are constants: a ``mul`` by one of them that equals 1 is skipped (exact).
CONSTANT_OPERANDS = frozenset({"0", "1", "p0", "-p0", "p1", "p1/p0"})


def describe(activation: Any) -> Description | None:
    """The description of an activation (anything with ``describe()``, a description itself,
    or ``None`` for the identity), checked against :data:`KINDS`; ``None`` when there is none."""
    parsed = parse(activation)
    return None if parsed is None else parsed[0]


#: Checked descriptions: ``description -> (description, kind, p0, p1)`` (a few per model).
_PARSED: dict[Description, tuple[Description, Kind, float, float]] = {}


def parse(activation: Any) -> tuple[Description, Kind, float, float] | None:
    """``(description, kind, p0, p1)`` of an activation (see :func:`describe`), or ``None``;
    checked once per description, then looked up (backends call this at every layer call)."""
    try:
        desc = activation.describe()
    except AttributeError:  # a description itself, None for the identity, or no activation
        if activation is None:
            desc = ("identity",)
        elif isinstance(activation, tuple):
            desc = activation
        else:
            return None
    if desc is None:
        return None
    parsed = _PARSED.get(desc)
    if parsed is None:
        kind = KINDS.get(desc[0]) if desc else None
        if kind is None or len(desc) != 1 + len(kind.constants):
            known = ", ".join(str((k.name, *k.constants)) for k in KINDS.values())
            raise ValueError(f"unknown activation description {desc!r}; known kinds: {known}")
        values = [float(v) for v in desc[1:]] + [0.0, 0.0]
        parsed = _PARSED[desc] = (desc, kind, values[0], values[1])
    return parsed


def constants(desc: Description) -> tuple[float, float]:
    """``(p0, p1)`` of a description (0 where a kind has fewer constants)."""
    parsed = parse(desc)
    assert parsed is not None
    return parsed[2], parsed[3]


def compiled(activation: Any) -> tuple[int, float, float] | None:
    """``(code, p0, p1)`` of an activation for compiled kernels, or ``None`` (no description)."""
    parsed = parse(activation)
    if parsed is None:
        return None
    _, kind, p0, p1 = parsed
    return (kind.code, p0, p1)


# --- the Array API reference --------------------------------------------------------------------
def _run(steps: tuple[Step, ...], v: Array, y: Array, p0: float, p1: float, xp: Any) -> Array:
    """A program on any Array API namespace, never writing an input: ``v`` is updated in place
    (``v *= x``) once it is an array of the program's own, which keeps its memory layout (and
    hence the summation order of the ops that read it later) where the namespace writes in
    place, and rebinds it where arrays are immutable."""
    own = False
    for operation, name in steps:
        x = OPERANDS[name][0](y, p0, p1, xp) if name else None
        if operation == "mul":
            if name in CONSTANT_OPERANDS and x == 1.0:  # times 1 is exact: skip it
                continue
            if own:
                v *= x
            else:
                v = v * x
        elif operation == "add":
            if own:
                v += x
            else:
                v = v + x
        elif operation == "rdiv":
            v = x / v
        elif operation == "max":
            v = xp.maximum(v, x)
        elif operation == "exp":
            with np.errstate(over="ignore"):  # exp(-gain u) = inf is right (f = 0): no warning
                v = xp.exp(v)
        elif operation == "tanh":
            v = xp.tanh(v)
        elif operation == "start":
            v = x
        else:  # pragma: no cover - the table is checked by the tests
            raise ValueError(f"unknown step {operation!r}")
        own = True
    return v


def forward(desc: Description, u: Array, xp: Any) -> Array:
    """``f(u)`` of a description on any namespace (``u`` is left unchanged)."""
    p0, p1 = constants(desc)
    return _run(KINDS[desc[0]].forward, u, u, p0, p1, xp)


def derivative(desc: Description, y: Array, xp: Any) -> Array | float:
    """``f'(u)`` from the saved output ``y`` (section 3.4); ``1.0`` for the identity."""
    kind = KINDS[desc[0]]
    if not kind.slope:
        return 1.0
    p0, p1 = constants(desc)
    return _run(kind.slope, y, y, p0, p1, xp)


def sensitivity(desc: Description, dy: Array, y: Array, xp: Any) -> Array:
    """``delta = f'(u) o dy`` (eqs. 3-4) from the saved output ``y``: the slope's program, then
    times ``dy``; ``dy`` itself for the identity. ``dy`` and ``y`` are left unchanged."""
    kind = KINDS[desc[0]]
    if not kind.slope:
        return dy
    p0, p1 = constants(desc)
    delta = _run(kind.slope, y, y, p0, p1, xp)
    delta *= dy  # the slope's own array: in place where the namespace allows (its layout)
    return delta


# --- C++ for compiled kernels -------------------------------------------------------------------
def _c_program(steps: tuple[Step, ...], start: str) -> list[str]:
    lines = [f"T v = {start};"]
    for operation, name in steps:
        x = OPERANDS[name][1] if name else ""
        lines.append(
            {
                "mul": f"v = v * {x};",
                "add": f"v = v + {x};",
                "rdiv": f"v = {x} / v;",
                "max": f"v = v > {x} ? v : {x};",
                "exp": "v = exp(v);",
                "tanh": "v = tanh(v);",
                "start": f"v = {x};",
            }[operation]
        )
    return lines


def c_source() -> str:
    """C++ (CUDA device code, or host code with ``__device__`` defined away) of
    ``T anycnn_f(int act, T u, T p0, T p1)`` and ``T anycnn_df(int act, T y, T p0, T p1)``:
    every kind's programs behind its :attr:`Kind.code`; an unknown code is the identity."""
    parts = ["// Generated from anycnn.backend.activations.KINDS (Note [Activation descriptions])."]
    for function, variable, program in (("anycnn_f", "u", "forward"), ("anycnn_df", "y", "slope")):
        parts += [
            "template <typename T>",
            f"__device__ __forceinline__ T {function}(int act, T {variable}, T p0, T p1) {{",
        ]
        for kind in KINDS.values():
            steps = getattr(kind, program)
            if not steps:
                continue
            start = "u" if program == "forward" else "T(1)"
            body = " ".join(_c_program(steps, start))
            parts.append(f"  if (act == {kind.code}) {{ {body} return v; }}  // {kind.name}")
        parts.append(f"  return {'u' if program == 'forward' else 'T(1)'};")
        parts.append("}")
    return "\n".join(parts) + "\n"
