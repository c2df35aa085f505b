"""Activations as data (Note [Activation descriptions] in anycnn.backend.activations): one table,
run by the Array API reference, the NumPy backend in place and the CUDA kernels (whose C++ the
table generates; tests/test_cupy_backend.py runs it on the CPU), and plugins that never import
the layers."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import anycnn
from anycnn.backend import activations as table
from anycnn.layers import Activation, Identity, LeCunTanh, ReLU, Sigmoid, Tanh, get_activation

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "backends"
DESCRIBED = [
    Identity(),
    Sigmoid(),
    Sigmoid(2.5),
    Tanh(),
    Tanh(1.7159, 2.0 / 3.0),
    LeCunTanh(),
    ReLU(),
]
IDS = ["identity", "sigmoid", "sigmoid2.5", "tanh", "tanh-lecun-args", "lecun", "relu"]


def test_every_layer_activation_describes_itself():
    assert [a.describe() for a in DESCRIBED] == [
        ("identity",),
        ("logistic", 1.0),
        ("logistic", 2.5),
        ("tanh", 1.0, 1.0),
        ("tanh", 1.7159, 2.0 / 3.0),
        ("tanh", 1.7159, 2.0 / 3.0),
        ("relu",),
    ]
    for activation in DESCRIBED:
        assert table.describe(activation) == activation.describe()
        kind = table.KINDS[activation.describe()[0]]
        assert len(activation.describe()) == 1 + len(kind.constants)


def test_the_table_is_well_formed():
    codes = [kind.code for kind in table.KINDS.values()]
    assert len(set(codes)) == len(codes)
    for kind in table.KINDS.values():
        assert len(kind.constants) <= 2, kind.name
        for operation, operand in kind.forward + kind.slope:
            assert operation in ("mul", "add", "rdiv", "max", "exp", "tanh", "start"), kind.name
            assert (operand == "") == (operation in ("exp", "tanh")), (kind.name, operation)
            if operand:
                assert operand in table.OPERANDS, (kind.name, operand)
        # a slope starts from a new array (never from y itself: it would be written in place)
        assert not kind.slope or kind.slope[0][0] == "start", kind.name
        assert all(op != "start" for op, _ in kind.forward), kind.name


def test_a_redefined_subclass_withdraws_its_description_but_keeps_working():
    class Steeper(Sigmoid):  # redefines f': the backends must call its methods
        def derivative(self, y, u=None):
            return 2.0 * y * (1.0 - y)

    class Renamed(Sigmoid):  # changes nothing that is computed: still the logistic
        name = "renamed"

    class Declared(Activation):  # a user's activation of a known kind, by description
        def describe(self):
            return ("tanh", 2.0, 0.5)

    u = np.linspace(-3, 3, 7)
    steeper = Steeper()
    assert steeper.describe() is None and table.describe(steeper) is None
    np.testing.assert_array_equal(steeper.forward(u), Sigmoid().forward(u))  # inherited f
    y = steeper.forward(u)
    np.testing.assert_array_equal(steeper.sensitivity(np.ones(7), y, np), 2.0 * y * (1.0 - y))
    assert Renamed(3.0).describe() == ("logistic", 3.0)
    np.testing.assert_array_equal(Declared().forward(u), Tanh(2.0, 0.5).forward(u))
    with pytest.raises(NotImplementedError, match="Activation.forward"):
        Activation().forward(u)


def test_an_unknown_description_is_refused_with_the_known_kinds():
    with pytest.raises(
        ValueError, match=r"unknown activation description \('softsign',\).*logistic"
    ):
        table.describe(("softsign",))
    with pytest.raises(ValueError, match="unknown activation description"):
        table.describe(("tanh", 1.0))  # a constant missing


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", DESCRIBED, ids=IDS)
def test_the_numpy_backend_runs_the_table_in_place_with_the_references_bits(dtype, activation):
    """The NumPy backend's ``activate`` and ``sensitivity`` give the Array API reference's bits,
    ``activate`` in the memory of its argument; ``sensitivity`` leaves dy and y alone."""
    from anycnn_numpy import _activation

    rng = np.random.default_rng(0)
    u = (rng.standard_normal((4, 3, 5, 6)) * rng.choice([0.1, 3.0, 1e4], (4, 3, 5, 6))).astype(
        dtype
    )
    want = np.asarray(activation.forward(u.copy()))
    work = u.copy()
    got = _activation.activate(work, activation)
    assert got.dtype == np.dtype(dtype)
    assert got.tobytes() == want.tobytes()
    assert np.shares_memory(got, work) or activation.describe() == ("identity",)
    dy = rng.standard_normal(u.shape).astype(dtype)
    y, dy_before, y_before = want, dy.copy(), want.copy()
    backend = anycnn.backend.lookup("numpy")
    reference = np.asarray(activation.sensitivity(dy, y, backend.xp))
    got = backend.ops.sensitivity(dy, y, activation)
    assert got.tobytes() == reference.tobytes()
    assert dy.tobytes() == dy_before.tobytes() and y.tobytes() == y_before.tobytes()


def test_the_c_source_holds_every_kind():
    source = table.c_source()
    for kind in table.KINDS.values():
        if kind.forward:
            assert f"if (act == {kind.code})" in source
    assert source.count("__device__ __forceinline__ T anycnn_") == 2


# --- plugins never import the layers ------------------------------------------------------------
def _imports(path: Path) -> list[str]:
    """Every module a file imports, at any depth (functions included), and every module name
    given to importlib.import_module as a string."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                found.append(str(node.args[0].value))
    return found


def test_no_plugin_source_imports_the_layers():
    """Issue 19: backends read activation descriptions, never layer classes."""
    offenders = []
    for path in sorted(PLUGINS.rglob("*.py")):
        for module in _imports(path):
            if module == "anycnn.layers" or module.startswith("anycnn.layers."):
                offenders.append(f"{path.relative_to(ROOT)}: imports {module}")
    assert not offenders, "\n".join(offenders)


def test_the_source_scan_sees_an_import_inside_a_function(tmp_path):
    """The scan above can fail: a lazy import in a function body, as plugins used to have."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "def f():\n    from anycnn.layers.activations import Sigmoid\n    return Sigmoid\n"
    )
    assert "anycnn.layers.activations" in _imports(bad)


def test_the_numpy_plugin_runs_a_training_step_with_the_layers_modules_poisoned(tmp_path):
    """At run time too: with every ``anycnn.layers`` module replaced after the network is built,
    the NumPy backend's ops (forward, backward, every activation kind and a user's activation)
    never reach for them (a lazy import would raise)."""
    code = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import anycnn
        from anycnn import Convolution, Flatten, FullyConnected, Network, Subsampling
        from anycnn.layers import Activation

        class Softsign(Activation):
            def forward(self, u): return u / (1 + abs(u))
            def derivative(self, y, u=None): return (1 - abs(y)) ** 2

        results = {}
        for dtype in ("float32", "float64"):
            net = Network([Convolution(3, 3, activation="tanh"), Subsampling(2, activation="sigmoid"),
                           Convolution(4, 3, activation="relu"), Flatten(),
                           FullyConnected(5, activation=Softsign()),
                           FullyConnected(2, activation="lecun_tanh")],
                          (1, 12, 12), dtype=dtype, backend="numpy", seed=0)
            class Poison:
                def __getattr__(self, name):
                    raise ImportError("a backend reached for anycnn.layers." + name)
            for name in [m for m in sys.modules if m.startswith("anycnn.layers")]:
                sys.modules[name] = Poison()
            x = np.random.default_rng(0).random((3, 1, 12, 12))
            loss = net.compute_gradients(net.backend.asarray(x, dtype),
                                         net.backend.asarray(np.eye(2)[[0, 1, 0]], dtype))
            results[dtype] = float(loss)
        print(json.dumps(results))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "ANYCNN_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(PLUGINS)])
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    losses = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(np.isfinite(v) for v in losses.values())


def test_get_activation_still_builds_described_activations():
    assert get_activation({"name": "sigmoid", "gain": 2.0}).describe() == ("logistic", 2.0)
    assert get_activation(None).describe() == ("identity",)
