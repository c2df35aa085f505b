"""Public test helpers, for anycnn's own tests and for third-party backends.

* :func:`assert_close` checks the namespace and device of a result first, then its dtype, then
  its values against a NumPy oracle, with tolerances chosen by dtype.
* :func:`check_backend` is a conformance run a backend author can call: every op of its table,
  the fused ones included (``Note [Fused ops]`` in :mod:`anycnn.ops`), against the reference on
  random inputs.
"""

from __future__ import annotations

import inspect
from typing import Any

import array_api_compat
import numpy as np

from anycnn import ops as reference
from anycnn.backend import OP_NAMES, Backend, lookup
from anycnn.backend.registry import FUSED_OP_NAMES

#: Default (rtol, atol) by dtype name: float32 sums of a few hundred terms lose ~1e-6 relative.
TOLERANCES = {"float32": (2e-5, 2e-5), "float64": (1e-11, 1e-12)}


def dtype_name(dtype: Any) -> str:
    """'float32' for float32 of any namespace (NumPy, CuPy, torch, array-api-strict).

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.testing import dtype_name
    >>> be = anycnn.get_backend()
    >>> dtype_name(np.float32), dtype_name(be.asarray(np.ones(2), "float64").dtype)
    ('float32', 'float64')
    """
    text = str(dtype).rsplit(".", 1)[-1].strip("'\"<>) ")
    known = ("float16", "float32", "float64", "bool", "uint8", "int8", "int16", "int32", "int64")
    for name in known:
        if text == name:
            return name
    for name in known:  # e.g. "dtype('float32')"
        if f"'{name}'" in str(dtype):
            return name
    return text


def assert_close(
    actual: Any,
    desired: Any,
    *,
    backend: Backend | str | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    check_dtype: bool = True,
    err_msg: str = "",
) -> None:
    """Assert that ``actual`` is an array of ``backend`` (namespace and device), has the dtype
    of ``desired`` and matches it within tolerances chosen by dtype.

    ``desired`` is a NumPy array (the oracle), or an array of the same backend.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.testing import assert_close
    >>> be = anycnn.get_backend()
    >>> y = be.asarray(np.array([1.0, 2.0]), "float64") * 3
    >>> assert_close(y, np.array([3.0, 6.0]), backend=be)      # passes: nothing printed
    >>> try:
    ...     assert_close(y, np.array([3.0, 6.1]), backend=be)
    ... except AssertionError:
    ...     print("mismatch")
    mismatch
    """
    if backend is not None:
        record = lookup(backend)
        if not array_api_compat.is_array_api_obj(actual):
            raise AssertionError(f"{err_msg}expected a {record.name} array, got {type(actual)}")
        xp = array_api_compat.array_namespace(actual)
        if not record.owns(xp):
            raise AssertionError(
                f"{err_msg}expected a {record.name} array, got one of {xp.__name__} "
                "(a silent fallback to another library?)"
            )
        device = array_api_compat.device(actual)
        if device != record.default_device:
            raise AssertionError(
                f"{err_msg}expected an array on {record.default_device}, got one on {device}"
            )
        host = record.to_host(actual)
    else:
        host = np.asarray(actual)
    if not isinstance(desired, np.ndarray):
        desired = lookup(backend).to_host(desired) if backend is not None else np.asarray(desired)
    name = dtype_name(actual.dtype)
    if check_dtype and name != dtype_name(desired.dtype):
        raise AssertionError(f"{err_msg}dtype {name} != expected {dtype_name(desired.dtype)}")
    default_rtol, default_atol = TOLERANCES.get(name, (0.0, 0.0))
    np.testing.assert_allclose(
        host,
        desired,
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol if atol is None else atol,
        err_msg=err_msg,
    )


def _parameters(function: Any) -> list[tuple[str, Any, Any]]:
    """Names, kinds and defaults of a signature; annotations may differ between backends."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def check_backend(backend: Backend | str, *, seed: int = 0) -> list[str]:
    """Run every op of a backend against the reference on random float64 inputs: the plain ops,
    every fused op (the backend's own or the chain on its plain ops, with each kind of
    activation of :mod:`anycnn.backend.activations` and one without a description) and the
    fused updates it has (``Note [Fused updates]`` in :mod:`anycnn.ops`).

    Returns the list of op names checked; raises AssertionError on the first mismatch or
    signature difference.

    Examples
    --------
    >>> from anycnn.testing import check_backend
    >>> "conv_valid" in check_backend("array_api_strict")   # the reference ops against themselves
    True
    """
    record = lookup(backend).require()
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, 4, 12, 10))
    kernel = rng.standard_normal((5, 4, 3, 4))
    delta = rng.standard_normal((3, 5, 10, 7))
    selection = rng.random((5, 4)) < 0.6
    cases = {
        "conv_valid": (x, kernel, selection),
        "conv_full": (delta, kernel, selection),
        "conv_kernel_grad": (x, delta, selection),
        "kron_upsample": (delta, 2),
        "block_sum": (x, 2),
        "block_mean": (x, 2),
        "decimate": (x, 2),
        "decimate_transpose": (delta, 3),
        "fully_connected": (x.reshape(3, -1), rng.standard_normal((7, 480))),
        "fully_connected_weight_grad": (x.reshape(3, -1), rng.standard_normal((3, 7))),
        "fully_connected_input_grad": (rng.standard_normal((3, 7)), rng.standard_normal((7, 480))),
    }
    for name in OP_NAMES:
        fast = getattr(record.ops, name)
        _same_signature(record, name, fast)
        _check(record, name, fast, cases[name])
    checked = list(OP_NAMES)
    for name in FUSED_OP_NAMES:
        fast = getattr(record.ops, name)
        _same_signature(record, name, fast)
        for activation in _activations():
            for args in _fused_cases(name, activation, rng):
                _check(record, name, fast, args, copies=name == "activate")
        checked.append(name)
    for name, fast in sorted(record.ops.updates.items()):
        _same_signature(record, name, fast)
        _check_update(record, name, fast, rng)
        checked.append(name)
    return checked


def _same_signature(record: Backend, name: str, fast: Any) -> None:
    ref = getattr(reference, name)
    if _parameters(fast) != _parameters(ref):
        raise AssertionError(
            f"{record.name}.{name}{inspect.signature(fast)} differs from the reference "
            f"{name}{inspect.signature(ref)}"
        )


def _activations() -> list[Any]:
    """One activation of each kind of the table, and one without a description."""
    from anycnn.layers.activations import Activation, Identity, ReLU, Sigmoid, Tanh

    class Softsign(Activation):  # a user's own: every backend must call its methods
        name = "softsign"

        def forward(self, u: Any) -> Any:
            return u / (1.0 + abs(u))

        def derivative(self, y: Any, u: Any = None) -> Any:
            return (1.0 - abs(y)) ** 2

    return [Identity(), Sigmoid(1.5), Tanh(1.7159, 2.0 / 3.0), ReLU(), Softsign()]


def _fused_cases(name: str, activation: Any, rng: np.random.Generator) -> list[tuple]:
    """Arguments of a fused op: plain, with a selection and padding, with up-sampling (whole
    blocks and a remainder), without the input gradient."""
    x = rng.standard_normal((3, 4, 12, 10))
    kernel = rng.standard_normal((5, 4, 3, 4))
    bias = rng.standard_normal(5)
    selection = rng.random((5, 4)) < 0.6
    selection[:, 0] = True

    def output(*shape: int) -> np.ndarray:  # y = f(u): the saved output a backward pass reads
        u = rng.standard_normal(shape) * 2.0
        return np.asarray(activation.forward(u))

    if name == "conv_valid_activate":
        return [
            (x, kernel, bias, activation),
            (x, kernel, bias, activation, selection, (1, 2)),
        ]
    if name == "conv_backward":
        y = output(3, 5, 10, 7)
        return [
            (x, rng.standard_normal((3, 5, 10, 7)), y, activation, selection),
            (x, rng.standard_normal((3, 5, 10, 7)), y, activation, None, 1, False),
            (x, rng.standard_normal((3, 5, 5, 4)), output(3, 5, 10, 8), activation, None, 2),
            (x, rng.standard_normal((3, 5, 5, 4)), y, activation, selection, 2),  # remainder
            (
                x,
                rng.standard_normal((3, 5, 12, 11)),
                output(3, 5, 12, 11),
                activation,
                None,
                1,
                True,
                (1, 2),
            ),
        ]
    if name == "subsample_forward":
        beta, shift = rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
        return [(x, 2, "sum", beta, shift, activation), (x, 2, "mean", beta, shift, activation)]
    if name == "subsample_backward":
        shape = (3, 4, 6, 5)
        args = (rng.standard_normal(shape), output(*shape), rng.standard_normal(shape))
        beta = rng.uniform(0.5, 2.0, 4)
        return [(*args, beta, activation), (*args, beta, activation, False)]
    if name == "sensitivity":
        return [(rng.standard_normal((3, 4, 6, 5)), output(3, 4, 6, 5), activation)]
    if name == "activate":
        return [(rng.standard_normal((3, 4, 6, 5)) * 3, activation), (x.reshape(3, -1), activation)]
    raise AssertionError(f"check_backend: no case for the fused op {name!r}")


def _check(record: Backend, name: str, fast: Any, args: tuple, *, copies: bool = False) -> None:
    """``fast(*args)`` on the backend against the reference on the host, output by output."""

    def put(a: Any) -> Any:
        return record.asarray(a) if isinstance(a, np.ndarray) else a

    host = [a.copy() if copies and isinstance(a, np.ndarray) else a for a in args]
    expected = getattr(reference, name)(*host)
    got = fast(*[put(a) for a in args])
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    where = f"{record.name}.{name}{_describe(args)}: "
    if len(got) != len(expected):
        raise AssertionError(f"{where}{len(got)} outputs, expected {len(expected)}")
    for g, e in zip(got, expected, strict=True):
        if e is None:
            if g is not None:
                raise AssertionError(f"{where}expected None, got {type(g).__name__}")
            continue
        e = np.asarray(e)
        scale = max(1.0, float(np.abs(e).max())) if e.size else 1.0
        assert_close(g, e, backend=record, rtol=1e-10, atol=1e-12 * scale, err_msg=where)


def _check_update(record: Backend, name: str, fast: Any, rng: np.random.Generator) -> None:
    host = [rng.standard_normal((4, 3)) for _ in range(3)]
    rates = (0.1,) if name == "sgd_update_" else (0.1, 0.9)
    operands = host[:2] if name == "sgd_update_" else host
    expected = [a.copy() for a in operands]
    getattr(reference, name)(*expected, *rates)
    device = [record.asarray(a) for a in operands]
    result = fast(*device, *rates)
    if result is not device[0]:
        raise AssertionError(f"{record.name}.{name}: must update its parameter in place")
    for index in (0, 2) if name != "sgd_update_" else (0,):
        assert_close(device[index], expected[index], backend=record, err_msg=f"{name}: ")


def _describe(args: tuple) -> str:
    return (
        "(" + ", ".join(f"{a.shape}" if isinstance(a, np.ndarray) else repr(a) for a in args) + ")"
    )
