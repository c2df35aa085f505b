"""The fallbacks for Array API namespaces that lack a function (issue 22), each run through a
wrapper namespace that hides the function, and compared with the path the full namespace takes.
"""

from __future__ import annotations

import pytest

from anycnn.backend import registry


class Hiding:
    """A namespace that forwards everything to ``xp`` except the names in ``hidden``."""

    def __init__(self, xp, *hidden):
        self._xp, self._hidden = xp, set(hidden)
        self.__name__ = getattr(xp, "__name__", "hiding")

    def __getattr__(self, name):
        if name in self._hidden:
            raise AttributeError(f"this namespace has no {name}")
        return getattr(self._xp, name)


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


def _record(namespace):
    return registry.Backend(name="hiding", array_module="array_api_strict", namespace=namespace)


def test_devices_without_namespace_info():
    """A backend whose namespace cannot list its devices knows its default one only."""
    import array_api_strict as xp

    full = _record(lambda: xp)
    hidden = _record(lambda: Hiding(xp, "__array_namespace_info__"))
    default = full.default_device
    assert hidden.default_device == default
    assert hidden._resolve_device("") == hidden._resolve_device("0") == default
    other = [d for d in xp.__array_namespace_info__().devices() if d != default][0]
    assert full._resolve_device(str(other).split("'")[1]) == other  # the full one finds it
    with pytest.raises(ValueError, match=r"backend 'hiding' has no device 'device1'; devices here"):
        hidden._resolve_device("device1")


def test_owns_without_a_namespace_check_in_array_api_compat():
    """``is_<module>_namespace`` where array-api-compat has one, else the namespace's name."""
    import array_api_strict as xp

    record = registry.Backend(name="strictish", array_module="array_api_strict")
    assert record.owns(xp)
    import numpy as np

    assert not record.owns(np)
    plain = registry.Backend(name="plain", array_module="no_such_module_family")
    assert not hasattr(registry.array_api_compat, "is_no_such_module_family_namespace")
    assert plain.owns(Hiding(xp)) is False
    named = Hiding(xp)
    named.__name__ = "no_such_module_family.sub"
    assert plain.owns(named)
