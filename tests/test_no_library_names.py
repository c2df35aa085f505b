"""The code outside the backends never names an array library (issue 19, item 5).

Layers, the network, training, data and the CLI are written once against the Array API; what
differs between backends is a question put to the backend record (``Note [Backend
capabilities]`` in :mod:`anycnn.backend.registry`), never ``if backend.name == "numpy"`` or
``array_api_compat.is_numpy_namespace(xp)``. This test reads every module of ``anycnn/`` outside
``anycnn/backend/`` (the registry is the one place that knows backends exist) and fails when such
a branch, or an import of an array library or a backend plugin, comes back. NumPy itself is
allowed as the host's array type (datasets, checkpoints, oracles), not as a backend to branch on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "anycnn"

#: Backend and library names a branch could test (registry names, aliases, module names).
NAMES = {
    "numpy",
    "np",
    "cpu",
    "cupy",
    "cuda",
    "gpu",
    "torch",
    "jax",
    "array_api_strict",
    "strict",
}
#: Modules the code outside the backends must not import: array libraries other than the host's
#: NumPy, and the backend plugins themselves.
LIBRARIES = {"cupy", "cupyx", "torch", "jax", "jaxlib", "array_api_strict", "dask", "mlx"}
PLUGINS = {"anycnn_numpy", "anycnn_cupy"}

#: (module, what) pairs allowed on purpose, each with its reason.
ALLOWED = {
    # to_torch exports a network as a torch.nn.Module: naming PyTorch is its job, and it
    # imports torch only when called.
    ("interop.py", "import torch"),
}


def _modules() -> list[Path]:
    return sorted(
        path
        for path in PACKAGE.rglob("*.py")
        if "backend" not in path.relative_to(PACKAGE).parts[:1]
    )


def _findings(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            for name in names:
                top = name.split(".")[0]
                if top in LIBRARIES or top in PLUGINS:
                    found.add(f"import {top}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("is_"):
            # array_api_compat.is_numpy_namespace(xp), is_cupy_array(x), ...
            if any(f"_{name}_" in node.attr + "_" for name in NAMES) and (
                node.attr.endswith("_namespace") or node.attr.endswith("_array")
            ):
                found.add(node.attr)
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            constants = []
            for operand in operands:
                if isinstance(operand, ast.Constant):
                    constants.append(operand.value)
                elif isinstance(operand, ast.Tuple | ast.List | ast.Set):
                    constants += [e.value for e in operand.elts if isinstance(e, ast.Constant)]
            for value in constants:
                if isinstance(value, str) and value.lower() in NAMES:
                    found.add(f"compare {value.lower()!r}")
    return found


def test_the_scan_finds_what_it_looks_for(tmp_path):
    """The scan itself can fail: each kind of branch in a sample module is found."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import array_api_compat\n"
        "import cupy\n"
        "from anycnn_numpy import _ops\n"
        "def f(backend, xp):\n"
        "    if backend.name == 'numpy' or getattr(backend, 'name', None) != 'cupy':\n"
        "        return array_api_compat.is_numpy_namespace(xp)\n"
        "    return backend.name in ('torch', 'jax')\n",
        encoding="utf-8",
    )
    assert _findings(sample) == {
        "import cupy",
        "import anycnn_numpy",
        "compare 'numpy'",
        "compare 'cupy'",
        "compare 'torch'",
        "compare 'jax'",
        "is_numpy_namespace",
    }


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_backends_names_a_library(path):
    where = path.relative_to(PACKAGE).as_posix()
    found = {what for what in _findings(path) if (where, what) not in ALLOWED}
    assert not found, (
        f"anycnn/{where} branches on or imports an array library: {sorted(found)}; ask the "
        "backend record instead (Note [Backend capabilities] in anycnn.backend.registry)"
    )
