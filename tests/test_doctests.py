"""Every docstring example of the package runs, on NumPy and on array-api-strict (issue 15).

The examples that do not name a backend use the current one (``anycnn.get_backend()``), so
they run once per backend here; the others pin theirs. A module without examples is fine; a
public function or class without a docstring is not (checked below)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pkgutil

import pytest

import anycnn
import anycnn.cli
import anycnn.data
import anycnn.layers
import anycnn.ops
import anycnn.subnormals
import anycnn.testing
from anycnn.gradcheck import GradcheckReport, ParameterCheck, gradcheck

MODULES = sorted(
    name
    for _, name, _ in pkgutil.walk_packages(anycnn.__path__, "anycnn.")
    if name not in ("anycnn.__main__",)
)


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name, backend):
    if backend.name not in ("numpy", "array_api_strict"):
        pytest.skip("the examples run on NumPy and array-api-strict (issue 15)")
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = finder.find(module, module_name)
    runnable = [test for test in tests if not _needs_missing_package(test)]
    for test in runnable:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
    if tests and not runnable:
        pytest.skip(f"{module_name}'s examples need a package that is not installed")


# Optional packages an example may import: where one is missing (PyTorch has no CPU wheel for
# every Python version), that docstring's examples are left out rather than failing.
OPTIONAL = ("torch", "jax", "cupy", "mpi4py", "matplotlib", "scipy")


def _needs_missing_package(test: doctest.DocTest) -> bool:
    imported = {
        word.strip(",")
        for example in test.examples
        if example.source.lstrip().startswith(("import ", "from "))
        for word in example.source.replace(",", " ").split()
    }
    return any(name in imported and importlib.util.find_spec(name) is None for name in OPTIONAL)


PUBLIC = [
    "anycnn",
    "anycnn.backend",
    "anycnn.network",
    "anycnn.functional",
    "anycnn.interop",
    "anycnn.ops",
    "anycnn.subnormals",
    "anycnn.training",
    "anycnn.training.checkpoint",
    "anycnn.training.distributed",
    "anycnn.training.plots",
    "anycnn.training.optim",
    "anycnn.training.loop",
    "anycnn.layers",
    "anycnn.data",
    "anycnn.data.download",
    "anycnn.cli",
]


@pytest.mark.parametrize("module_name", PUBLIC)
def test_public_functions_and_classes_have_docstrings(module_name):
    module = importlib.import_module(module_name)
    missing = []
    for name in getattr(module, "__all__", []):
        value = getattr(module, name)
        if (inspect.isfunction(value) or inspect.isclass(value)) and not inspect.getdoc(value):
            missing.append(name)
    assert not missing, f"{module_name}: no docstring for {missing}"


def test_functional_ops_show_their_documentation():
    """help(anycnn.functional.conv_valid) shows the maths, the checks and an example."""
    doc = inspect.getdoc(anycnn.functional.conv_valid)
    assert "3.1" in doc and "Checked entry point" in doc and ">>> u = F.conv_valid" in doc
    assert inspect.signature(anycnn.functional.conv_valid) == inspect.signature(
        anycnn.ops.conv_valid
    )


def _functions_and_classes(module):
    """Every public function and class of ``module`` (its ``__all__``, constants left out)."""
    values = (getattr(module, name) for name in module.__all__)
    return [value for value in values if inspect.isfunction(value) or inspect.isclass(value)]


EXAMPLED = [
    anycnn.Network,
    anycnn.Network.fit,
    anycnn.Network.evaluate,
    anycnn.Network.predict,
    anycnn.Network.predict_classes,
    anycnn.Network.save,
    anycnn.Network.to,
    anycnn.Network.state_dict,
    anycnn.Network.set_parameter,
    anycnn.History,
    anycnn.load,
    anycnn.to_torch,
    anycnn.Backend,
    anycnn.Backend.asarray,
    anycnn.set_backend,
    anycnn.use_backend,
    anycnn.get_backend,
    anycnn.backend_of,
    anycnn.available_backends,
    *(getattr(anycnn.functional, name) for name in anycnn.functional.__all__),
    *_functions_and_classes(anycnn.ops),
    anycnn.subnormals.available,
    anycnn.subnormals.default_enabled,
    anycnn.subnormals.is_flushing,
    anycnn.subnormals.flushing,
    anycnn.download.download,
    anycnn.download.DownloadError,
    *_functions_and_classes(anycnn.checkpoint),
    *_functions_and_classes(anycnn.distributed),
    *_functions_and_classes(anycnn.plots),
    *_functions_and_classes(anycnn.optim),
    *_functions_and_classes(anycnn.train),
    *_functions_and_classes(anycnn.interop),
    *_functions_and_classes(anycnn.layers),
    *_functions_and_classes(anycnn.backend),
    *_functions_and_classes(anycnn.datasets),
    *_functions_and_classes(anycnn.cli),
    gradcheck,
    GradcheckReport,
    ParameterCheck,
    anycnn.testing.dtype_name,
    anycnn.testing.assert_close,
    anycnn.testing.check_backend,
]


@pytest.mark.parametrize("obj", EXAMPLED, ids=lambda obj: obj.__qualname__)
def test_the_python_api_has_examples(obj):
    assert ">>>" in (inspect.getdoc(obj) or ""), f"{obj.__qualname__}: no example"
