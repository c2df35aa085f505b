"""The hot operations, checked and dispatched: what users and tests call directly.

Each function validates its arguments once (rank, dtype, shapes, one namespace and one device),
then runs the implementation of the backend that owns the arrays (``Note [Hot-op dispatch]`` in
:mod:`anycnn.backend`). The maths and conventions are those of the reference versions in
:mod:`anycnn.ops`, whose docstrings each function here carries.

The functions are generated from one table (:data:`CHECKS`): an op's entry names its array
arguments and the check of its arguments; its signature and documentation are those of the
reference op, so a parameter added there (a padding, a remainder rule) reaches the checked
entry point without another copy of the wrapper.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from anycnn import _checks as checks
from anycnn import ops as reference
from anycnn.backend import backend_of

__all__ = list(reference.__all__)


# --- the checks, one per kind of op -------------------------------------------------------------
#: Array layouts by number of spatial axes (Note [N dimensions] in anycnn.ops).
MAP_LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
KERNEL_LAYOUTS = {1: "(C_out, C_in, k)", 2: "(C_out, C_in, kh, kw)", 3: "(C_out, C_in, kd, kh, kw)"}


def _maps(where: str, name: str, x: Any, spatial: int | None = None, other: str = "") -> None:
    """``x`` is ``(N, C, *spatial)`` floats with 1, 2 or 3 spatial axes (``spatial`` of them when
    given: the number ``other``, an argument already checked, has)."""
    if spatial is not None:
        if x.ndim != spatial + 2:
            raise ValueError(
                f"{where}: {name} must be a {spatial + 2}-d {MAP_LAYOUTS[spatial]} array, got "
                f"shape {checks.shape_str(x.shape)} ({other} has {spatial} spatial "
                f"ax{'i' if spatial == 1 else 'e'}s)"
            )
    elif x.ndim not in (3, 4, 5):
        raise ValueError(
            f"{where}: {name} must be a 4-d (N, C, H, W) array (3-d (N, C, L) or 5-d "
            f"(N, C, D, H, W) in 1-D or 3-D), got shape {checks.shape_str(x.shape)}"
        )
    checks.check_float(where, name, x)


def _kernel(where: str, kernel: Any) -> int:
    """Check a ``(C_out, C_in, *k)`` kernel and return its number of spatial axes."""
    if kernel.ndim not in (3, 4, 5):
        raise ValueError(
            f"{where}: kernel must be a 4-d (C_out, C_in, kh, kw) array (3-d or 5-d in 1-D or "
            f"3-D), got shape {checks.shape_str(kernel.shape)}"
        )
    return int(kernel.ndim - 2)


def _size(sizes: Any) -> str:
    return "x".join(str(int(s)) for s in sizes)


def _padding(where: str, a: dict[str, Any], spatial: int = 2) -> tuple[int, ...]:
    """Normalise ``a["padding"]`` to one non-negative int per spatial axis (``(ph, pw)`` in 2-D;
    Note [Zero padding] in anycnn.ops), and return it. All zeros, such as the default ``(0, 0)``,
    mean no padding whatever the number of axes."""
    padding = a["padding"]  # bound with the op's default, (0, 0)
    try:
        amounts = tuple(padding)
    except TypeError:
        amounts = ()
    good = all(not isinstance(v, bool) and isinstance(v, int) and v >= 0 for v in amounts)
    if good and amounts and not any(amounts):
        amounts = (0,) * spatial
    if not good or len(amounts) != spatial:
        what = (
            "(rows, columns), two non-negative ints"
            if spatial == 2
            else f"{spatial} non-negative int(s), one per spatial axis"
        )
        raise ValueError(f"{where}: padding must be {what}, got {padding!r}")
    a["padding"] = tuple(int(v) for v in amounts)
    return a["padding"]


def _padded(pads: tuple[int, ...]) -> str:
    return f" padded by ({', '.join(map(str, pads))})" if any(pads) else ""


def _check_conv_valid(where: str, a: dict[str, Any]) -> None:
    x, kernel = a["x"], a["kernel"]
    d = _kernel(where, kernel)
    _maps(where, "x", x, d, f"the kernel {checks.shape_str(kernel.shape)}")
    pads = _padding(where, a, d)
    checks.check_same_dtype(where, ("x", "kernel"), x, kernel)
    c_out, c_in, *ks = kernel.shape
    if x.shape[1] != c_in:
        raise ValueError(
            f"{where}: x has {x.shape[1]} maps but the kernel expects C_in = {c_in} "
            f"(x {checks.shape_str(x.shape)}, kernel {checks.shape_str(kernel.shape)})"
        )
    if any(k > s + 2 * p for k, s, p in zip(ks, x.shape[2:], pads, strict=True)):
        raise ValueError(
            f"{where}: kernel {_size(ks)} is larger than the {_size(x.shape[2:])} input "
            f"maps{_padded(pads)}"
        )
    checks.check_selection(where, a.get("selection"), c_out, c_in)


def _check_conv_full(where: str, a: dict[str, Any]) -> None:
    delta, kernel = a["delta"], a["kernel"]
    d = _kernel(where, kernel)
    _maps(where, "delta", delta, d, f"the kernel {checks.shape_str(kernel.shape)}")
    pads = _padding(where, a, d)
    checks.check_same_dtype(where, ("delta", "kernel"), delta, kernel)
    c_out, c_in, *ks = kernel.shape
    if delta.shape[1] != c_out:
        raise ValueError(
            f"{where}: delta has {delta.shape[1]} maps but the kernel has C_out = {c_out} "
            f"(delta {checks.shape_str(delta.shape)}, kernel {checks.shape_str(kernel.shape)})"
        )
    full = [s + k - 1 for s, k in zip(delta.shape[2:], ks, strict=True)]
    if any(2 * p >= f for p, f in zip(pads, full, strict=True)):
        raise ValueError(
            f"{where}: padding ({', '.join(map(str, pads))}) leaves no input: the 'full' "
            f"convolution of {_size(delta.shape[2:])} deltas with a {_size(ks)} kernel has "
            f"{_size(full)} maps"
        )
    checks.check_selection(where, a.get("selection"), c_out, c_in)


def _check_conv_kernel_grad(where: str, a: dict[str, Any]) -> None:
    x, delta = a["x"], a["delta"]
    _maps(where, "x", x)
    d = x.ndim - 2
    _maps(where, "delta", delta, d, f"x {checks.shape_str(x.shape)}")
    pads = _padding(where, a, d)
    checks.check_same_dtype(where, ("x", "delta"), x, delta)
    if x.shape[0] != delta.shape[0]:
        raise ValueError(
            f"{where}: x and delta have different batch sizes, {x.shape[0]} and {delta.shape[0]}"
        )
    if any(s > t + 2 * p for s, t, p in zip(delta.shape[2:], x.shape[2:], pads, strict=True)):
        raise ValueError(
            f"{where}: delta maps {_size(delta.shape[2:])} are larger than the "
            f"{_size(x.shape[2:])} input maps{_padded(pads)}"
        )
    checks.check_selection(where, a.get("selection"), delta.shape[1], x.shape[1])


# Note [Checks run as module functions]: the table's checks are module-level functions (bound
# with functools.partial where they take a parameter), and each checked entry point calls one,
# rather than closures made when the module is imported. The code is the same; but a closure made
# at import is out of reach of the mutation campaign (tests/MUTATION.md), which switches a
# function's mutants on when the function is called, after the import.
def _check_resampling(divisible: bool, where: str, a: dict[str, Any]) -> None:
    name = "delta" if "delta" in a else "x"
    _maps(where, name, a[name])
    a["n"] = checks.check_factor(where, a["n"])
    if divisible:
        checks.check_divisible(where, tuple(a[name].shape), a["n"])


def _resampling(divisible: bool) -> Callable[[str, dict[str, Any]], None]:
    return functools.partial(_check_resampling, divisible)


def _check_matrices(a_name: str, b_name: str, where: str, a: dict[str, Any]) -> None:
    for name in (a_name, b_name):
        layout = "(N, D)" if name in ("x", "delta") else "(M, D)"
        checks.check_rank(where, name, a[name], 2, layout)
        checks.check_float(where, name, a[name])
    checks.check_same_dtype(where, (a_name, b_name), a[a_name], a[b_name])


def _matrices(a_name: str, b_name: str) -> Callable[[str, dict[str, Any]], None]:
    return functools.partial(_check_matrices, a_name, b_name)


def _check_fully_connected(where: str, a: dict[str, Any]) -> None:
    _matrices("x", "weight")(where, a)
    x, weight = a["x"], a["weight"]
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{where}: x has {x.shape[1]} features but the weight expects D = {weight.shape[1]} "
            f"(x {checks.shape_str(x.shape)}, weight {checks.shape_str(weight.shape)})"
        )


def _check_fully_connected_weight_grad(where: str, a: dict[str, Any]) -> None:
    _matrices("x", "delta")(where, a)
    x, delta = a["x"], a["delta"]
    if x.shape[0] != delta.shape[0]:
        raise ValueError(
            f"{where}: x and delta have different batch sizes, {x.shape[0]} and {delta.shape[0]}"
        )


def _check_fully_connected_input_grad(where: str, a: dict[str, Any]) -> None:
    _matrices("delta", "weight")(where, a)
    delta, weight = a["delta"], a["weight"]
    if delta.shape[1] != weight.shape[0]:
        raise ValueError(
            f"{where}: delta has {delta.shape[1]} units but the weight has M = {weight.shape[0]} "
            f"(delta {checks.shape_str(delta.shape)}, weight {checks.shape_str(weight.shape)})"
        )


# --- the table ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    """How one op is checked: its array arguments (one namespace, one device), the check of all
    its arguments (it may normalise them, e.g. ``n`` to an int), and a doctest example."""

    arrays: tuple[str, ...]
    check: Callable[[str, dict[str, Any]], None]
    example: str


_PRELUDE = """    >>> import numpy as np, anycnn
    >>> from anycnn import functional as F
    >>> be = anycnn.get_backend()        # the doctests run on NumPy and on array-api-strict
    >>> def a(*shape): return be.asarray(np.arange(np.prod(shape)).reshape(shape), "float64")
"""

#: Every hot op of :mod:`anycnn.ops`, with its check and a short example.
CHECKS: dict[str, Check] = {
    "conv_valid": Check(
        ("x", "kernel", "selection"),
        _check_conv_valid,
        """    >>> u = F.conv_valid(a(1, 1, 3, 3), be.asarray(np.ones((2, 1, 2, 2)), "float64"))
    >>> tuple(u.shape), float(u[0, 0, 0, 0])      # 0 + 1 + 3 + 4
    ((1, 2, 2, 2), 8.0)
""",
    ),
    "conv_full": Check(
        ("delta", "kernel", "selection"),
        _check_conv_full,
        """    >>> g = F.conv_full(a(1, 2, 2, 2), be.asarray(np.ones((2, 1, 2, 2)), "float64"))
    >>> tuple(g.shape), float(g[0, 0, 0, 0])      # delta[0, 0, 0, 0] + delta[0, 1, 0, 0]
    ((1, 1, 3, 3), 4.0)
""",
    ),
    "conv_kernel_grad": Check(
        ("x", "delta", "selection"),
        _check_conv_kernel_grad,
        """    >>> delta = be.asarray(np.ones((1, 2, 2, 2)), "float64")
    >>> dk = F.conv_kernel_grad(a(1, 1, 3, 3), delta)
    >>> tuple(dk.shape)
    (2, 1, 2, 2)
""",
    ),
    "kron_upsample": Check(
        ("x",),
        _resampling(divisible=False),
        """    >>> up = F.kron_upsample(a(1, 1, 2, 2), 2)
    >>> tuple(up.shape), float(up[0, 0, 1, 1]), float(up[0, 0, 3, 3])
    ((1, 1, 4, 4), 0.0, 3.0)
""",
    ),
    "block_sum": Check(
        ("x",),
        _resampling(divisible=True),
        """    >>> float(F.block_sum(a(1, 1, 2, 2), 2)[0, 0, 0, 0])   # 0 + 1 + 2 + 3
    6.0
""",
    ),
    "block_mean": Check(
        ("x",),
        _resampling(divisible=True),
        """    >>> float(F.block_mean(a(1, 1, 2, 2), 2)[0, 0, 0, 0])
    1.5
""",
    ),
    "decimate": Check(
        ("x",),
        _resampling(divisible=True),
        """    >>> float(F.decimate(a(1, 1, 4, 4), 2)[0, 0, 1, 1])   # x[0, 0, 2, 2]
    10.0
""",
    ),
    "decimate_transpose": Check(
        ("delta",),
        _resampling(divisible=False),
        """    >>> g = F.decimate_transpose(a(1, 1, 2, 2), 2)
    >>> tuple(g.shape), float(g[0, 0, 2, 2]), float(g[0, 0, 1, 1])
    ((1, 1, 4, 4), 3.0, 0.0)
""",
    ),
    "fully_connected": Check(
        ("x", "weight"),
        _check_fully_connected,
        """    >>> u = F.fully_connected(a(2, 3), be.asarray(np.ones((4, 3)), "float64"))
    >>> tuple(u.shape), float(u[1, 0])               # 3 + 4 + 5
    ((2, 4), 12.0)
""",
    ),
    "fully_connected_weight_grad": Check(
        ("x", "delta"),
        _check_fully_connected_weight_grad,
        """    >>> tuple(F.fully_connected_weight_grad(a(2, 3), a(2, 4)).shape)
    (4, 3)
""",
    ),
    "fully_connected_input_grad": Check(
        ("delta", "weight"),
        _check_fully_connected_input_grad,
        """    >>> tuple(F.fully_connected_input_grad(a(2, 4), a(4, 3)).shape)
    (2, 3)
""",
    ),
}


def _call_checked(
    name: str, spec: Check, signature: inspect.Signature, args: tuple, kwargs: dict[str, Any]
) -> Any:
    """Bind, check and dispatch one call of a checked entry point (Note [Checks run as module
    functions])."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(f"{name}: {error}") from None
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    owner = backend_of(*(arguments.get(a) for a in spec.arrays), op=name)
    spec.check(name, arguments)
    return getattr(owner.ops, name)(**arguments)


def _checked(name: str, spec: Check) -> Callable[..., Any]:
    """The checked entry point of op ``name``: the reference op's signature and docstring."""
    op = getattr(reference, name)
    signature = inspect.signature(op)

    @functools.wraps(op)
    def checked(*args: Any, **kwargs: Any) -> Any:
        return _call_checked(name, spec, signature, args, kwargs)

    # the reference op's own example calls ``ops.<name>``; this entry point shows its own
    doc = inspect.cleandoc(op.__doc__ or "").split("\n\nExamples\n--------")[0]
    checked.__doc__ = (
        f"{doc}\n\n"
        f"Checked entry point: validates {', '.join(spec.arrays)} (rank, dtype, shapes, one "
        "namespace and one device) and raises a TypeError or ValueError naming the argument, "
        "then runs the op of the backend that owns the arrays (``Note [Hot-op dispatch]``).\n\n"
        "Examples\n--------\n" + inspect.cleandoc(_PRELUDE + spec.example) + "\n"
    )
    checked.__module__ = __name__
    checked.__wrapped__ = op  # type: ignore[attr-defined]
    return checked


_missing = sorted(set(reference.__all__) - set(CHECKS))
if _missing:  # a new reference op needs its line in the table
    raise ImportError(f"anycnn.functional: no checks for the ops {_missing}")

conv_valid = _checked("conv_valid", CHECKS["conv_valid"])
conv_full = _checked("conv_full", CHECKS["conv_full"])
conv_kernel_grad = _checked("conv_kernel_grad", CHECKS["conv_kernel_grad"])
kron_upsample = _checked("kron_upsample", CHECKS["kron_upsample"])
block_sum = _checked("block_sum", CHECKS["block_sum"])
block_mean = _checked("block_mean", CHECKS["block_mean"])
decimate = _checked("decimate", CHECKS["decimate"])
decimate_transpose = _checked("decimate_transpose", CHECKS["decimate_transpose"])
fully_connected = _checked("fully_connected", CHECKS["fully_connected"])
fully_connected_weight_grad = _checked(
    "fully_connected_weight_grad", CHECKS["fully_connected_weight_grad"]
)
fully_connected_input_grad = _checked(
    "fully_connected_input_grad", CHECKS["fully_connected_input_grad"]
)
