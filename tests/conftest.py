"""One test body, every backend.

Every test that takes the ``backend`` fixture runs once per variant below. Parameters are always
generated: an unavailable backend shows as SKIPPED with the registry's reason, and a backend asked
for by name (``pytest --backend cupy`` or ``ANYCNN_TEST_BACKENDS=cupy``) FAILS when unavailable,
so a GPU job cannot pass on the CPU. CUDA is probed lazily, at fixture time, never at collection.
"""

from __future__ import annotations

import os
import sys
import zlib

import numpy as np
import pytest

from anycnn.backend import registry

# Test variants are not runtime backends (array-api-extra PR #265): the list lives here.
# id -> registry name
VARIANTS = {
    "numpy": "numpy",
    "strict": "array_api_strict",
    "torch": "torch",
    "jax": "jax",
    "cupy": "cupy",
}


def pytest_addoption(parser):
    parser.addoption(
        "--backend",
        action="append",
        default=[],
        help="run only these backends (ids: " + ", ".join(VARIANTS) + "); an unavailable one "
        "FAILS instead of skipping. Also ANYCNN_TEST_BACKENDS=numpy,cupy.",
    )


def _requested(config) -> set[str]:
    names = set(config.getoption("--backend"))
    names |= {n.strip() for n in os.environ.get("ANYCNN_TEST_BACKENDS", "").split(",") if n.strip()}
    unknown = names - set(VARIANTS)
    if unknown:
        raise pytest.UsageError(f"unknown backend(s) {sorted(unknown)}; known: {sorted(VARIANTS)}")
    return names


def pytest_configure(config):
    _requested(config)


#: Variants that run the reference ops op by op so slowly that the default suite runs them only
#: on the tests marked ``@pytest.mark.<id>`` (a chosen subset: gradchecks of every layer type,
#: forward passes, optimizer steps, a short fit); their other parameters are marked slow
#: (``pytest -m slow --backend jax`` or plain ``pytest --backend jax`` runs them all). JAX
#: dispatches and compiles every reference op eagerly: 10-50x NumPy's time on these tests.
SUBSET_VARIANTS = ("jax",)


def pytest_collection_modifyitems(config, items):
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend_id") if callspec else None
        if name in SUBSET_VARIANTS and item.get_closest_marker(name) is None:
            item.add_marker(pytest.mark.slow)
    wanted = _requested(config)
    if not wanted:
        return
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        name = callspec.params.get("backend_id") if callspec else None
        (drop if name is not None and name not in wanted else keep).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


@pytest.fixture(
    params=[
        pytest.param(v, id=v, marks=[pytest.mark.cuda] if v == "cupy" else []) for v in VARIANTS
    ]
)
def backend_id(request):
    return request.param


def _apply_markers(request, backend_id):
    for marker in request.node.iter_markers("skip_backend"):
        if marker.args[0] not in VARIANTS:
            raise TypeError(f"@skip_backend({marker.args[0]!r}): unknown backend id")
        if marker.args[0] == backend_id:
            pytest.skip(f"{backend_id}: {marker.kwargs['reason']}")
    for marker in request.node.iter_markers("xfail_backend"):
        if marker.args[0] not in VARIANTS:
            raise TypeError(f"@xfail_backend({marker.args[0]!r}): unknown backend id")
        if marker.args[0] == backend_id:
            request.applymarker(
                pytest.mark.xfail(
                    reason=f"{backend_id}: {marker.kwargs['reason']}",
                    strict=marker.kwargs.get("strict", True),
                )
            )


@pytest.fixture
def backend(backend_id, request):
    """The backend record for this variant, made current for the test and restored after."""
    _apply_markers(request, backend_id)
    record = registry.lookup(VARIANTS[backend_id])
    if not record.available:
        if backend_id in _requested(request.config):
            pytest.fail(
                f"backend {backend_id!r} was requested but is unavailable: "
                f"{record.unavailable_reason}"
            )
        pytest.skip(f"{backend_id} unavailable: {record.unavailable_reason}")
    with registry.use_backend(record):
        yield record


@pytest.fixture
def xp(backend):
    return backend.xp


@pytest.fixture(autouse=True)
def _restore_backend_state():
    """No test leaks a global backend choice into the next (thinc PR #548)."""
    saved = registry._process_default
    yield
    registry._process_default = saved


@pytest.fixture(autouse=True)
def _torch_threads():
    """Test tensors are tiny: torch's intra-op threads only add waiting, which made torch-backed
    tests several times slower on a busy 2-core machine. Applied only once the suite has
    imported torch (never imported for this), restored after each test."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def rng(request):
    """A NumPy generator seeded from the test's id, so failures reproduce."""
    seed = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng(seed)
