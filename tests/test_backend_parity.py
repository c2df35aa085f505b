"""Every backend's hot ops have the reference's names, parameters and defaults, and pass the
public conformance check (anycnn.testing.check_backend).

The reference ops in anycnn.ops carry annotations and the fast ones need not, so signatures are
compared on what a caller sees: parameter names, kinds and defaults.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import pytest

from anycnn import ops as reference
from anycnn import testing
from anycnn.backend import registry


def call_shape(function) -> list[tuple[str, object, object]]:
    """Parameter names, kinds and defaults: what a caller can rely on, annotations aside."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def assert_same_signature(table_name: str, name: str, function) -> None:
    expected = getattr(reference, name)
    assert call_shape(function) == call_shape(expected), (
        f"{table_name}.{name}{inspect.signature(function)} differs from the reference "
        f"anycnn.ops.{name}{inspect.signature(expected)}"
    )


def test_the_op_names_are_the_reference_ones():
    assert registry.OP_NAMES == tuple(reference.__all__)
    for name in registry.OP_NAMES:
        assert callable(getattr(reference, name))
        assert getattr(reference, name).__name__ == name


def test_every_op_of_every_available_backend_matches_the_reference(backend):
    table = backend.ops
    assert table.overridden <= set(registry.OP_NAMES)
    for name in registry.OP_NAMES:
        function = getattr(table, name)
        assert function.__name__ == name, f"{backend.name}.ops.{name} is {function.__name__}"
        assert_same_signature(f"{backend.name}.ops", name, function)
    assert set(table.fused) <= set(registry.FUSED_OP_NAMES)
    for name, function in table.fused.items():
        assert function.__name__ == name, f"{backend.name}.ops.fused[{name!r}] is {function}"
        assert_same_signature(f"{backend.name}.ops.fused", name, function)


def test_fused_op_names_are_reference_functions_outside_the_required_table():
    assert not set(registry.FUSED_OP_NAMES) & set(registry.OP_NAMES)
    for name in registry.FUSED_OP_NAMES:
        assert getattr(reference, name).__name__ == name


def test_a_backend_with_an_unknown_fused_name_is_refused():
    record = registry.Backend(
        name="bogus_fused",
        array_module="numpy",
        fast_ops=lambda: {"conv_valid_activate_typo": lambda x: x},
    )
    with pytest.raises(TypeError, match="conv_valid_activate_typo"):
        _ = record.ops


def _plugin_table(module: str):
    """The table a plugin's record wires in (``_fast_ops`` in the plugin's ``__init__``)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not importable here")
    return importlib.import_module(module)._fast_ops()


@pytest.mark.parametrize(
    ("module", "library"),
    [("anycnn_numpy", "numpy"), ("anycnn_cupy", "cupy")],
    ids=["numpy", "cupy"],
)
def test_every_plugin_op_table_matches_the_reference(module, library):
    """The plugins' own tables, read without a device: CuPy's ops import on a machine with CuPy
    but no GPU, so its signatures are checked there too."""
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed, so {module} cannot be imported")
    table = _plugin_table(module)
    unknown = sorted(set(table) - set(registry.OP_NAMES) - set(registry.FUSED_OP_NAMES))
    assert not unknown, f"{module}'s table overrides unknown ops {unknown}"
    for name, function in table.items():
        assert function.__name__ == name, f"{module}'s {name!r} is {function.__name__}"
        assert_same_signature(module, name, function)


def test_check_backend_passes(backend):
    assert testing.check_backend(backend) == list(registry.OP_NAMES)
