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
    # Note [Fused ops]: every table has every fused op, the backend's own or composed
    assert set(table.fused) == set(registry.FUSED_OP_NAMES)
    assert table.fused_own <= set(registry.FUSED_OP_NAMES)
    for name, function in table.fused.items():
        assert function.__name__ == name, f"{backend.name}.ops.fused[{name!r}] is {function}"
        assert getattr(table, name) is function
        assert_same_signature(f"{backend.name}.ops.fused", name, function)
    assert set(table.updates) <= set(registry.UPDATE_OP_NAMES)
    for name, function in table.updates.items():
        assert_same_signature(f"{backend.name}.ops.updates", name, function)


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
    known = {*registry.OP_NAMES, *registry.FUSED_OP_NAMES, *registry.UPDATE_OP_NAMES}
    unknown = sorted(set(table) - known)
    assert not unknown, f"{module}'s table overrides unknown ops {unknown}"
    for name, function in table.items():
        assert function.__name__ == name, f"{module}'s {name!r} is {function.__name__}"
        assert_same_signature(module, name, function)


def test_check_backend_passes(backend):
    checked = testing.check_backend(backend)
    expected = [*registry.OP_NAMES, *registry.FUSED_OP_NAMES, *sorted(backend.ops.updates)]
    assert checked == expected


def test_a_table_without_fused_ops_gets_the_chains_on_its_own_plain_ops():
    """Note [Fused ops]: a backend that fuses nothing still has every fused op, composed from
    its own plain ops (here a conv_kernel_grad override whose calls are counted: the composed ops call
    the backend's conv_kernel_grad, not the reference's)."""
    import array_api_compat.numpy as xp
    import numpy as np

    from anycnn.layers import Sigmoid

    calls = []

    def conv_kernel_grad(x, delta, selection=None, padding=(0, 0)):
        calls.append("conv_kernel_grad")
        return reference.conv_kernel_grad(x, delta, selection, padding)

    record = registry.Backend(
        name="plain_only",
        array_module="numpy",
        namespace=lambda: xp,
        device=lambda: "cpu",
        fast_ops=lambda: {"conv_kernel_grad": conv_kernel_grad},
    )
    table = record.ops
    assert table.fused_own == frozenset() and set(table.fused) == set(registry.FUSED_OP_NAMES)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 4, 2, 2))
    y = np.asarray(Sigmoid().forward(rng.standard_normal((2, 4, 4, 4))))
    grad, bias, delta = table.conv_backward(x, dy, y, Sigmoid(), None, 2)
    assert calls == ["conv_kernel_grad"]
    want = reference.conv_backward(x, dy, y, Sigmoid(), None, 2)
    for got, expected in zip((grad, bias, delta), want, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_check_backend_catches_a_wrong_fused_op():
    """A backend whose own conv_backward forgets the activation's slope fails the check."""
    import array_api_compat.numpy as xp

    def conv_backward(x, dy, y, activation, selection=None, up=1, need_delta=True, padding=(0, 0)):
        from anycnn.layers import Identity

        return reference.conv_backward(x, dy, y, Identity(), selection, up, need_delta, padding)

    record = registry.Backend(
        name="wrong_fused",
        array_module="numpy",
        namespace=lambda: xp,
        device=lambda: "cpu",
        fast_ops=lambda: {"conv_backward": conv_backward},
    )
    with pytest.raises(AssertionError, match="wrong_fused.conv_backward"):
        testing.check_backend(record)
