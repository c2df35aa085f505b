"""The backend registry: lazy imports, names and aliases, availability and its reasons, the
current backend (``ANYCNN_BACKEND``, ``set_backend``, ``use_backend``), dispatch on arrays
(``backend_of``), ``Backend.asarray`` / ``to_host`` and run-time registration.

Tests that change the registry work on a private copy of it (the ``isolated_registry``
fixture); process-wide facts (what ``import anycnn`` imports, ``ANYCNN_BACKEND`` at first use)
are checked in a fresh interpreter.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

import anycnn
from anycnn import functional as F
from anycnn import ops as reference
from anycnn.backend import Backend, BackendUnavailableError, registry

OPTIONAL_LIBRARIES = ("cupy", "torch", "array_api_strict")


# --- helpers -------------------------------------------------------------------------------
def _source_roots() -> list[str]:
    """Where this process imported anycnn and its NumPy plugin from, so that a child
    interpreter tests the same code (a checkout, an editable install or a wheel)."""
    import anycnn_numpy

    roots = [str(Path(m.__file__).resolve().parent.parent) for m in (anycnn, anycnn_numpy)]
    return list(dict.fromkeys(roots))


def run_python(code: str, tmp_path: Path, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, which is returned."""
    child_env = {k: v for k, v in os.environ.items() if k != "ANYCNN_BACKEND"}
    child_env["PYTHONPATH"] = os.pathsep.join(
        _source_roots() + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    child_env.update(env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"child failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def cupy_usable() -> bool:
    return registry.lookup("cupy").available


def strict_array(data, dtype="float64"):
    import array_api_strict as xp

    return xp.asarray(np.asarray(data, dtype=dtype))


@pytest.fixture
def isolated_registry(monkeypatch):
    """A private copy of the registry for the test; the real one is put back afterwards."""
    monkeypatch.setattr(registry, "_registry", dict(registry._backends()))
    monkeypatch.setattr(registry, "_namespace_cache", {})
    return registry._registry


def _raise(error: BaseException):
    def probe():
        raise error

    return probe


# --- importing anycnn is cheap ----------------------------------------------------------------
def test_import_and_listing_names_import_no_optional_library(tmp_path):
    seen = run_python(
        f"""
        import json, sys
        libraries = {OPTIONAL_LIBRARIES!r}
        loaded = lambda: sorted(m for m in libraries if m in sys.modules)
        import anycnn
        after_import = loaded()
        import anycnn.backend.registry as registry
        record = registry.lookup("cupy")
        names = registry.known_names()
        print(json.dumps({{"after_import": after_import, "after_lookup": loaded(),
                          "record": record.name, "names": names}}))
        """,
        tmp_path,
    )
    assert seen["after_import"] == []
    assert "cupy" not in seen["after_lookup"]
    assert seen["record"] == "cupy"
    assert {"auto", "numpy", "cpu", "cupy", "cuda", "gpu", "strict"} <= set(seen["names"])


# --- names ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("numpy", "numpy"),
        ("cpu", "numpy"),
        ("np", "numpy"),
        ("cupy", "cupy"),
        ("cuda", "cupy"),
        ("gpu", "cupy"),
        ("strict", "array_api_strict"),
        ("array_api_strict", "array_api_strict"),
        ("torch", "torch"),
        ("CPU", "numpy"),
        ("NumPy", "numpy"),
        ("CUDA", "cupy"),
        ("Gpu", "cupy"),
        ("STRICT", "array_api_strict"),
        ("array-api-strict", "array_api_strict"),
        (" cpu ", "numpy"),
    ],
)
def test_names_and_aliases_are_case_insensitive(name, canonical):
    assert registry.lookup(name).name == canonical


def test_lookup_passes_a_record_through():
    record = registry.lookup("numpy")
    assert registry.lookup(record) is record


def test_auto_is_cpu_when_cuda_is_unusable(monkeypatch):
    cupy = registry.lookup("cupy")
    monkeypatch.setitem(cupy._state, "status", (False, "simulated: no CUDA device"))
    assert registry.lookup("auto") is registry.lookup("numpy")
    assert registry.lookup("AUTO") is registry.lookup("numpy")


def test_auto_is_cuda_when_cuda_is_usable(monkeypatch):
    # Only the choice is checked here; nothing is allocated on the (simulated) device.
    cupy = registry.lookup("cupy")
    monkeypatch.setitem(cupy._state, "status", (True, "ok"))
    assert registry.lookup("auto") is cupy


def test_auto_tells_the_truth_on_this_machine():
    expected = "cupy" if cupy_usable() else "numpy"
    assert registry.lookup("auto").name == expected


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'") as info:
        registry.lookup("tensorflow")
    for known in ("numpy", "cpu", "cupy", "cuda", "array_api_strict", "strict", "auto"):
        assert known in str(info.value)


def test_lookup_rejects_a_non_name():
    with pytest.raises(TypeError, match="backend name must be a str"):
        registry.lookup(3)


def test_set_backend_cupy_without_a_gpu_says_why():
    if cupy_usable():
        pytest.skip("cupy is usable here; this checks the error without a GPU")
    registry.set_backend("numpy")
    reason = registry.lookup("cupy").unavailable_reason
    with pytest.raises(BackendUnavailableError) as info:
        anycnn.set_backend("cuda")
    assert "'cupy'" in str(info.value)
    assert reason in str(info.value)
    assert anycnn.get_backend().name == "numpy", "a failed set_backend changed the backend"


def test_use_backend_unavailable_raises_and_changes_nothing(isolated_registry):
    registry.register(Backend(name="broken_gpu", array_module="numpy", probe=_raise(OSError("x"))))
    registry.set_backend("numpy")
    with pytest.raises(BackendUnavailableError, match="broken_gpu"):
        with anycnn.use_backend("broken_gpu"):
            pass
    assert anycnn.get_backend().name == "numpy"


# --- availability and its reasons -------------------------------------------------------------
def test_numpy_is_available():
    records = {r.name: r for r in anycnn.available_backends()}
    assert records["numpy"].available
    assert records["numpy"].unavailable_reason is None
    assert {"numpy", "cupy", "array_api_strict", "torch"} <= set(records)


def test_cupy_not_installed_says_how_to_install():
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("cupy is installed here")
    records = {r.name: r for r in anycnn.available_backends()}
    assert not records["cupy"].available
    assert 'pip install "anycnn[cuda12]"' in records["cupy"].unavailable_reason


def test_a_missing_library_says_how_to_install(isolated_registry):
    # The same message, made deterministic on a machine that has CuPy: a copy of the CuPy
    # record pointing at a module that cannot be installed.
    cupy = registry.lookup("cupy")
    missing = dataclasses.replace(
        cupy,
        name="cupy_missing",
        aliases=(),
        array_module="anycnn_test_no_such_array_library",
        _state={},
        _lock=threading.Lock(),
    )
    registry.register(missing)
    records = {r.name: r for r in anycnn.available_backends()}
    reason = records["cupy_missing"].unavailable_reason
    assert reason.startswith("anycnn_test_no_such_array_library is not installed")
    assert 'pip install "anycnn[cuda12]"' in reason


def test_installed_but_unusable_gives_the_error(isolated_registry):
    error = RuntimeError(
        "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
    )
    registry.register(
        Backend(
            name="fake_gpu",
            array_module="numpy",  # installed: only the probe fails, as CuPy 14 without a driver
            aliases=("fake",),
            probe=_raise(error),
        )
    )
    records = {r.name: r for r in anycnn.available_backends()}
    fake = records["fake_gpu"]
    assert not fake.available
    assert "installed but not usable" in fake.unavailable_reason
    assert (
        "RuntimeError: cudaErrorInsufficientDriver: CUDA driver version" in fake.unavailable_reason
    )
    assert records["numpy"].available, "one unusable backend affected another"
    with pytest.raises(BackendUnavailableError, match="cudaErrorInsufficientDriver"):
        anycnn.set_backend("fake")


def test_the_probe_runs_once_and_is_cached(isolated_registry):
    calls = []
    record = registry.register(
        Backend(name="counted", array_module="numpy", probe=lambda: calls.append(1))
    )
    assert calls == [], "registering probed the backend"
    assert record.available and record.available
    anycnn.available_backends()
    assert calls == [1]


def test_a_broken_plugin_is_listed_and_breaks_nothing(monkeypatch, tmp_path):
    plugins = {
        **registry._FIRST_PARTY_PLUGINS,
        "broken": "no_such_module:backend",
        "not_a_record": "anycnn.ops:conv_valid",
    }
    monkeypatch.setattr(registry, "_FIRST_PARTY_PLUGINS", plugins)
    monkeypatch.setattr(registry, "_registry", None)  # rediscover; monkeypatch puts it back
    monkeypatch.setattr(registry, "_namespace_cache", {})

    records = {r.name: r for r in anycnn.available_backends()}
    broken = records["broken"]
    assert not broken.available
    assert "plugin no_such_module:backend failed to load" in broken.unavailable_reason
    assert "ModuleNotFoundError" in broken.unavailable_reason
    assert "failed to load" in records["not_a_record"].unavailable_reason
    assert "not an anycnn.Backend" in records["not_a_record"].unavailable_reason
    assert records["numpy"].available
    with pytest.raises(BackendUnavailableError, match="failed to load"):
        anycnn.set_backend("broken")
    # Dispatch never picks a plugin that failed to load.
    assert anycnn.backend_of(np.zeros(2)).name == "numpy"


def test_a_broken_plugin_does_not_break_import_anycnn(tmp_path):
    seen = run_python(
        """
        import json
        import anycnn.backend.registry as registry
        registry._FIRST_PARTY_PLUGINS["broken"] = "no_such_module:backend"
        import anycnn
        records = {r.name: r.unavailable_reason for r in anycnn.available_backends()}
        print(json.dumps({"broken": records["broken"], "numpy": records["numpy"]}))
        """,
        tmp_path,
    )
    assert "failed to load" in seen["broken"]
    assert seen["numpy"] is None


# --- ANYCNN_BACKEND ---------------------------------------------------------------------------
def test_environment_variable_is_read_at_first_use_not_at_import(tmp_path):
    seen = run_python(
        """
        import json, os
        import anycnn
        os.environ["ANYCNN_BACKEND"] = "strict"   # after the import, before the first use
        print(json.dumps({"name": anycnn.get_backend().name}))
        """,
        tmp_path,
    )
    assert seen["name"] == "array_api_strict"


def test_environment_variable_set_before_start(tmp_path):
    seen = run_python(
        """
        import json
        import anycnn
        print(json.dumps({"name": anycnn.get_backend().name}))
        """,
        tmp_path,
        ANYCNN_BACKEND="strict",
    )
    assert seen["name"] == "array_api_strict"


def test_environment_variable_unknown_name_names_the_variable(tmp_path):
    seen = run_python(
        """
        import json
        import anycnn
        try:
            anycnn.get_backend()
        except ValueError as error:
            print(json.dumps({"error": str(error)}))
        else:
            print(json.dumps({"error": None}))
        """,
        tmp_path,
        ANYCNN_BACKEND="nope",
    )
    assert seen["error"] is not None
    assert "ANYCNN_BACKEND" in seen["error"]
    assert "'nope'" in seen["error"]


def test_environment_variable_in_process(monkeypatch):
    registry._reset_for_tests()
    monkeypatch.setenv("ANYCNN_BACKEND", "CPU")
    assert anycnn.get_backend().name == "numpy"
    registry._reset_for_tests()
    monkeypatch.setenv("ANYCNN_BACKEND", "nope")
    with pytest.raises(ValueError, match="ANYCNN_BACKEND='nope'"):
        anycnn.get_backend()


def test_set_backend_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("ANYCNN_BACKEND", "nope")
    anycnn.set_backend("strict")
    assert anycnn.get_backend().name == "array_api_strict"


# --- use_backend ------------------------------------------------------------------------------
def test_use_backend_restores_and_nests():
    anycnn.set_backend("numpy")
    with anycnn.use_backend("strict") as outer:
        assert outer.name == "array_api_strict"
        assert anycnn.get_backend() is outer
        with anycnn.use_backend("cpu") as inner:
            assert inner.name == "numpy"
            assert anycnn.get_backend() is inner
        assert anycnn.get_backend() is outer
    assert anycnn.get_backend().name == "numpy"


def test_use_backend_restores_after_an_error():
    anycnn.set_backend("numpy")
    with pytest.raises(KeyError):
        with anycnn.use_backend("strict"):
            raise KeyError("boom")
    assert anycnn.get_backend().name == "numpy"


def test_use_backend_wins_over_set_backend_inside_the_block():
    anycnn.set_backend("numpy")
    with anycnn.use_backend("strict"):
        anycnn.set_backend("numpy")
        assert anycnn.get_backend().name == "array_api_strict"
    assert anycnn.get_backend().name == "numpy"


def test_use_backend_is_per_thread():
    anycnn.set_backend("numpy")
    inside = threading.Barrier(2, timeout=30)
    checked = threading.Barrier(2, timeout=30)
    seen: dict[str, str] = {}
    errors: list[BaseException] = []

    def worker():
        try:
            with anycnn.use_backend("strict"):
                seen["worker inside"] = anycnn.get_backend().name
                inside.wait()  # the main thread looks now, while this block is open
                checked.wait()
                seen["worker still inside"] = anycnn.get_backend().name
            seen["worker after"] = anycnn.get_backend().name
        except BaseException as error:  # reported in the main thread
            errors.append(error)
            inside.abort()
            checked.abort()

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait()
    seen["main meanwhile"] = anycnn.get_backend().name
    checked.wait()
    thread.join(timeout=30)
    assert not errors, errors
    assert seen == {
        "worker inside": "array_api_strict",
        "main meanwhile": "numpy",
        "worker still inside": "array_api_strict",
        "worker after": "numpy",
    }


# --- backend_of -------------------------------------------------------------------------------
def test_backend_of_numpy_and_strict_arrays():
    assert anycnn.backend_of(np.zeros((2, 2))) is registry.lookup("numpy")
    assert anycnn.backend_of(strict_array([1.0])) is registry.lookup("array_api_strict")


def test_backend_of_torch_tensor():
    torch = pytest.importorskip("torch")
    assert anycnn.backend_of(torch.zeros(3)) is registry.lookup("torch")


def test_backend_of_ignores_scalars_and_none():
    x = np.zeros(3)
    assert anycnn.backend_of(x, None, 2, 0.5, True).name == "numpy"


@pytest.mark.parametrize("value", [[1.0, 2.0], (1.0,), "abc", object()])
def test_backend_of_rejects_non_arrays_naming_the_op(value):
    with pytest.raises(TypeError, match="conv_valid: expected arrays, got builtins"):
        anycnn.backend_of(np.zeros(2), value, op="conv_valid")


def test_backend_of_needs_an_array():
    with pytest.raises(TypeError, match="block_sum: no array argument"):
        anycnn.backend_of(None, 3, op="block_sum")


def test_backend_of_rejects_two_namespaces_naming_both():
    with pytest.raises(TypeError, match="conv_full: arrays from two backends") as info:
        anycnn.backend_of(np.zeros(2), strict_array([1.0]), op="conv_full")
    assert "numpy" in str(info.value) and "array_api_strict" in str(info.value)


def test_backend_of_rejects_two_devices():
    import array_api_strict as xp

    a = xp.asarray([1.0])
    b = xp.asarray([1.0], device=xp.Device("device1"))
    with pytest.raises(ValueError, match="decimate: arrays on two devices"):
        anycnn.backend_of(a, b, op="decimate")


def test_unregistered_namespace_gets_the_reference_ops(isolated_registry):
    # Take array_api_strict out of the registry: its arrays now belong to no backend.
    del isolated_registry["array_api_strict"]
    x = strict_array(np.arange(2 * 3 * 4 * 4, dtype=np.float64).reshape(2, 3, 4, 4))
    record = anycnn.backend_of(x)
    assert record.name == "array_api_strict"
    assert record.available
    assert record.ops.overridden == frozenset()
    for name in registry.OP_NAMES:
        assert getattr(record.ops, name) is getattr(reference, name)
    expected = np.asarray(x).reshape(2, 3, 2, 2, 2, 2).sum(axis=(3, 5))
    np.testing.assert_array_equal(np.asarray(F.block_sum(x, 2)), expected)
    assert anycnn.backend_of(x) is record, "the generic record is not cached"


# --- Backend.asarray and to_host --------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_asarray_puts_numpy_data_on_the_backend(backend, dtype):
    host = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    for requested in (dtype, registry.resolve_dtype(backend.xp, dtype)):
        x = backend.asarray(host, dtype=requested)
        assert backend.owns(_namespace(x))
        assert anycnn.backend_of(x) is backend
        assert x.dtype == getattr(backend.xp, dtype)
        assert _device(x) == backend.default_device
        back = backend.to_host(x)
        assert isinstance(back, np.ndarray)
        np.testing.assert_array_equal(back, host.astype(dtype))


def test_asarray_keeps_the_dtype_when_none_is_asked(backend):
    x = backend.asarray(np.ones(3, dtype=np.float32))
    assert x.dtype == backend.xp.float32


def test_asarray_rejects_an_unknown_dtype_name(backend):
    with pytest.raises(ValueError, match="unknown dtype 'float33'"):
        backend.asarray(np.ones(3), dtype="float33")


def test_asarray_takes_arrays_of_another_library_through_dlpack(backend):
    """Note [Array interop]: a foreign array comes over with its values and dtype."""
    import array_api_strict

    if not backend.owns(array_api_strict):
        foreign = strict_array([1.0, 2.5])
    else:
        torch = pytest.importorskip("torch")
        foreign = torch.tensor([1.0, 2.5], dtype=torch.float64)
    x = backend.asarray(foreign)
    assert backend.owns(_namespace(x))
    np.testing.assert_array_equal(backend.to_host(x), np.array([1.0, 2.5]))
    assert str(x.dtype).endswith("float64")


def test_to_host_returns_numpy(backend):
    x = backend.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    host = backend.to_host(x)
    assert type(host) is np.ndarray
    assert host.dtype == np.float32
    np.testing.assert_array_equal(host, np.arange(6.0, dtype=np.float32).reshape(2, 3))


def _namespace(x):
    import array_api_compat

    return array_api_compat.array_namespace(x)


def _device(x):
    import array_api_compat

    return array_api_compat.device(x)


# --- run-time registration --------------------------------------------------------------------
def test_a_registered_backend_with_fast_ops_is_used_by_dispatch(isolated_registry):
    import array_api_strict

    calls = []

    def block_sum(x, n):
        calls.append(n)
        return reference.block_sum(x, n)

    # A third-party backend for array-api-strict replaces the generic one by name.
    record = registry.register(
        Backend(
            name="array_api_strict",
            array_module="array_api_strict",
            aliases=("strict",),
            namespace=lambda: array_api_strict,
            fast_ops=lambda: {"block_sum": block_sum},
        )
    )
    x = strict_array(np.ones((1, 2, 4, 4)))
    assert anycnn.backend_of(x) is record
    assert record.ops.overridden == frozenset({"block_sum"})
    assert record.ops.block_sum is block_sum
    assert record.ops.conv_valid is reference.conv_valid
    out = F.block_sum(x, 2)
    assert calls == [2]
    np.testing.assert_array_equal(np.asarray(out), np.full((1, 2, 2, 2), 4.0))
    F.block_mean(x, 2)  # not overridden: the reference, which does not call the override
    assert calls == [2]
    with anycnn.use_backend("strict") as current:
        assert current is record


def test_an_override_of_an_unknown_op_is_a_type_error(isolated_registry):
    import array_api_strict

    record = registry.register(
        Backend(
            name="array_api_strict",
            array_module="array_api_strict",
            namespace=lambda: array_api_strict,
            fast_ops=lambda: {"block_sum": reference.block_sum, "conv_vaild": reference.conv_valid},
        )
    )
    with pytest.raises(TypeError, match=r"overrides unknown hot ops \['conv_vaild'\]"):
        record.ops  # noqa: B018
    with pytest.raises(TypeError, match="conv_vaild"):
        F.block_sum(strict_array(np.ones((1, 1, 2, 2))), 2)


def test_register_rejects_a_non_record(isolated_registry):
    with pytest.raises(TypeError, match="expected an anycnn.Backend"):
        registry.register({"name": "dict"})
