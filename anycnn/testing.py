"""Public test helpers, for anycnn's own tests and for third-party backends.

* :func:`assert_close` checks the namespace and device of a result first, then its dtype, then
  its values against a NumPy oracle, with tolerances chosen by dtype.
* :func:`check_backend` is a conformance run a backend author can call: every fast op against
  the reference on random inputs.
"""

from __future__ import annotations

import inspect
from typing import Any

import array_api_compat
import numpy as np

from anycnn import ops as reference
from anycnn.backend import OP_NAMES, Backend, lookup

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
    """Run every op of a backend against the reference on random float64 inputs.

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
        ref = getattr(reference, name)
        if _parameters(fast) != _parameters(ref):
            raise AssertionError(
                f"{record.name}.{name}{inspect.signature(fast)} differs from the reference "
                f"{name}{inspect.signature(ref)}"
            )
        args = cases[name]
        dev_args = [record.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        host_args = list(args)
        expected = np.asarray(getattr(reference, name)(*host_args))
        assert_close(fast(*dev_args), expected, backend=record, err_msg=f"{record.name}.{name}: ")
    return list(OP_NAMES)
