"""The fallbacks for Array API namespaces that lack a function (issue 22), each run through a
wrapper namespace that hides the function, and compared with the path the full namespace takes.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

from anycnn.backend import registry
from anycnn.layers import get_activation


class Hiding:
    """A namespace that forwards everything to ``xp`` except the names in ``hidden``."""

    def __init__(self, xp, *hidden):
        self._xp, self._hidden = xp, set(hidden)
        self.__name__ = getattr(xp, "__name__", "hiding")

    def __getattr__(self, name):
        if name in self._hidden:
            raise AttributeError(f"this namespace has no {name}")
        return getattr(self._xp, name)


def test_relu_without_maximum_uses_where(backend, monkeypatch, rng):
    xp = backend.xp
    u_host = rng.standard_normal((3, 4))
    u_host[0, 0] = 0.0
    u = backend.asarray(u_host, dtype="float64")
    relu = get_activation("relu")
    full = np.asarray(backend.to_host(relu.forward(u)))
    hidden = Hiding(xp, "maximum")
    assert not hasattr(hidden, "maximum")
    calls = []
    original = array_api_compat.array_namespace

    def namespace(*arrays, **kwargs):
        calls.append(len(arrays))
        original(*arrays, **kwargs)
        return hidden

    monkeypatch.setattr(array_api_compat, "array_namespace", namespace)
    fallback = np.asarray(backend.to_host(relu.forward(u)))
    assert calls, "ReLU.forward no longer asks the array for its namespace"
    np.testing.assert_array_equal(fallback, full)
    np.testing.assert_array_equal(fallback, np.maximum(u_host, 0.0))
    assert fallback.dtype == np.float64


def test_default_device_without_namespace_info():
    import array_api_strict as xp

    expected = xp.__array_namespace_info__().default_device()
    hidden = Hiding(xp, "__array_namespace_info__")
    assert registry._default_device(hidden) == expected  # from an array's device instead


def test_default_device_when_the_info_object_fails():
    import array_api_strict as xp

    class Broken:
        def default_device(self):
            raise RuntimeError("no device query here")

    class WithBrokenInfo(Hiding):
        def __array_namespace_info__(self):
            return Broken()

    expected = xp.__array_namespace_info__().default_device()
    assert registry._default_device(WithBrokenInfo(xp)) == expected


@pytest.mark.parametrize("name", ["float32", "float64"])
def test_resolve_dtype_by_name_and_an_unknown_one(name):
    import array_api_strict as xp

    assert registry.resolve_dtype(xp, name) == getattr(xp, name)
    assert registry.resolve_dtype(xp, xp.float32) is xp.float32  # dtypes pass through
    with pytest.raises(ValueError, match="unknown dtype 'float16' for"):
        registry.resolve_dtype(Hiding(xp, "float16"), "float16")
