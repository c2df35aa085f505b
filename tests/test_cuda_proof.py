"""The GPU correctness proof of the CuPy backend: agreement with the CPU, no host transfers in a
training step, CUDA-graph capture (issue 19, item 7: moved here from bench/gpu/proof.py, whose
timing part is bench/gpu/timing.py).

Every test needs a usable CUDA device (marker ``cuda``): skipped with the registry's reason
elsewhere, failed when the run asks for the backend (``pytest --backend cupy``), as every backend
test is. The instruments they use, the transfer counter and CUDA-graph capture, are GPU-proof
tooling in bench/gpu/ (cuda_transfers.py, cuda_graph.py), not library API. UNTESTED ON GPU
HARDWARE: written and collected on a machine without a CUDA device.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from anycnn import models
from anycnn.backend import registry
from anycnn.training import optim

TOOLS = Path(__file__).resolve().parents[1] / "bench" / "gpu"
MODELS = ("lenet5", "dlt")


def _tools():
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))


def _requested(config) -> set[str]:
    names = set(config.getoption("--backend"))
    return names | {n.strip() for n in os.environ.get("ANYCNN_TEST_BACKENDS", "").split(",") if n}


@pytest.fixture
def cuda(request):
    """The CuPy record when a CUDA device is usable; else skip with the registry's reason, or
    fail when the run asked for cupy (``--backend cupy``)."""
    record = registry.lookup("cupy")
    if not record.available:
        if "cupy" in _requested(request.config):
            pytest.fail(
                f"backend 'cupy' was requested but is unavailable: {record.unavailable_reason}"
            )
        pytest.skip(f"cupy unavailable: {record.unavailable_reason}")
    return record


def _batch(net, n, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *net.input_shape)).astype(dtype)  # MNIST-like values in [0, 1)
    t = np.zeros((n, *net.output_shape), dtype=dtype)
    t[np.arange(n), rng.integers(0, net.output_shape[0], n)] = 1.0
    return x, t


def _relative(a, b) -> float:
    scale = float(np.linalg.norm(b))
    return float(np.linalg.norm(np.asarray(a, np.float64) - b)) / (scale if scale else 1.0)


def _host(net, arrays):
    return {k: np.asarray(net.backend.to_host(v), dtype=np.float64) for k, v in arrays.items()}


# --- agreement with the CPU --------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("gemm", ["auto", "kernel"])
@pytest.mark.parametrize("model", MODELS)
def test_float64_gradients_agree_with_the_cpu(cuda, model, gemm):
    """The same network (same seed) on NumPy and on CuPy, one batch: float64 gradients within
    1e-10 relative per parameter, with cuBLAS and with the elementwise GEMM a CUDA graph uses
    (the two BLAS sum in other orders; more than 1e-10 is a bug)."""
    from anycnn_cupy import _kernels

    cpu = models.build(model, backend="numpy", dtype="float64")
    x, t = _batch(cpu, 32, 0, "float64")
    cpu.compute_gradients(x, t)
    want = _host(cpu, cpu.gradients())
    gpu = models.build(model, backend="cupy", dtype="float64")
    with _kernels.gemm_mode(gemm):
        gpu.compute_gradients(gpu.backend.asarray(x), gpu.backend.asarray(t))
    got = _host(gpu, gpu.gradients())
    errors = {name: _relative(got[name], want[name]) for name in want}
    assert max(errors.values()) <= 1e-10, errors


@pytest.mark.cuda
@pytest.mark.parametrize("model", MODELS)
def test_float32_outputs_agree_with_the_cpu(cuda, model):
    cpu = models.build(model, backend="numpy", dtype="float32")
    gpu = models.build(model, backend="cupy", dtype="float32")
    x, _ = _batch(cpu, 32, 0, "float32")
    y_cpu = np.asarray(cpu.forward(x), dtype=np.float64)
    y_gpu = np.asarray(gpu.backend.to_host(gpu.forward(gpu.backend.asarray(x))), np.float64)
    assert _relative(y_gpu, y_cpu) <= 1e-4


@pytest.mark.cuda
def test_check_backend_passes_on_the_device(cuda):
    """The public conformance check: every plain and fused op and both fused updates."""
    from anycnn.testing import check_backend

    checked = check_backend("cupy")
    assert {"conv_backward", "subsample_backward", "sgd_update_", "momentum_update_"} <= set(
        checked
    )


# --- no host transfers in a step --------------------------------------------------------------
def _step(net, opt, x, t):
    def step():
        loss = net.compute_gradients(x, t, check=False)
        opt.step()  # the backend's fused update (Note [Fused updates] in anycnn.ops)
        return loss

    return step


@pytest.mark.cuda
@pytest.mark.parametrize("model", MODELS)
def test_a_training_step_makes_no_device_to_host_copy_nor_sync(cuda, model):
    import cupy

    _tools()
    from cuda_transfers import count_transfers

    net = models.build(model, backend="cupy", dtype="float32")
    x, t = (net.backend.asarray(a) for a in _batch(net, 16, 0, "float32"))
    step = _step(net, optim.SGD(net, 0.01), x, t)
    step()  # compiles the kernels
    cupy.cuda.Device().synchronize()
    with count_transfers() as log:
        step()
    assert not (log.d2h or log.syncs or log.of_kind("copy")), log.summary()


@pytest.mark.cuda
@pytest.mark.parametrize("model", MODELS)
def test_a_training_step_puts_no_host_data_on_the_device(cuda, model):
    """Stricter: no host-to-device copy either (e.g. xp.asarray(0.0) at every step)."""
    _tools()
    from cuda_transfers import count_transfers

    net = models.build(model, backend="cupy", dtype="float32")
    x, t = (net.backend.asarray(a) for a in _batch(net, 16, 0, "float32"))
    step = _step(net, optim.Momentum(net, 0.01, momentum=0.9), x, t)
    step()
    with count_transfers() as log:
        step()
    assert not log.h2d, log.summary()


def test_count_transfers_sees_copies_made_from_compiled_code():
    """CuPy's Cython ndarray.get calls cupy._core.syncdetect._declare_synchronize; the counter
    relies on it to see copies that never pass through a Python-level method. Needs CuPy
    installed, not a device."""
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed here")
    import cupy
    from cupy._core import syncdetect

    _tools()
    from cuda_transfers import count_transfers

    usable = registry.lookup("cupy").available
    if usable:
        a = cupy.arange(4, dtype=cupy.float32)
    else:  # an array object over memory nobody may touch: only the bookkeeping runs
        memory = cupy.cuda.UnownedMemory(0x10000, 64, None, device_id=0)
        a = cupy.ndarray((4,), np.float32, memptr=cupy.cuda.MemoryPointer(memory, 0))
    hook = syncdetect._declare_synchronize
    with count_transfers() as log:
        for action in (lambda: a.get(stream=cupy.cuda.Stream.null), lambda: float(a[0])):
            try:
                action()
            except Exception:
                if usable:
                    raise
    assert [e.via for e in log.events] == ["ndarray.get", "float(array)"], log.summary()
    assert all(e.kind == "d2h" and "test_cuda_proof.py" in e.where for e in log.events)
    assert syncdetect._declare_synchronize is hook
    assert "get" not in vars(cupy.ndarray) and "__float__" not in vars(cupy.ndarray)
    with count_transfers() as log:
        syncdetect._declare_synchronize()  # what Device.synchronize calls first
    assert [e.kind for e in log.events] == ["sync"]


# --- CUDA graphs --------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("gemm", ["kernel", "auto"])
@pytest.mark.parametrize("model", MODELS)
def test_a_captured_step_gives_the_parameters_of_eager_steps(cuda, model, gemm):
    """Replays of a CUDA graph of (compute_gradients + the optimizer's in-place fused update) on
    four batches leave the parameters that four eager steps leave. With gemm="kernel" both use
    the same kernels, so the results must be identical; with "auto" the eager steps use cuBLAS
    (1e-10 relative)."""
    import cupy
    from anycnn_cupy import _kernels

    _tools()
    from cuda_graph import capture_step

    captured, eager = (models.build(model, backend="cupy", dtype="float64") for _ in range(2))
    batches = [_batch(eager, 32, seed, "float64") for seed in range(4)]
    opt_eager, opt_captured = optim.SGD(eager, 0.05), optim.SGD(captured, 0.05)

    def step_of(net, opt):
        def step(x, t):
            loss = net.compute_gradients(x, t, check=False)
            opt.step()
            return loss

        return step

    mode = _kernels.gemm_mode("kernel") if gemm == "kernel" else contextlib.nullcontext()
    with mode:
        losses = [step_of(eager, opt_eager)(cupy.asarray(x), cupy.asarray(t)) for x, t in batches]
    x0, t0 = (cupy.asarray(a) for a in batches[0])
    replay = capture_step(step_of(captured, opt_captured), x0, t0, warmup=1)
    for x, t in batches[1:]:
        loss = replay(cupy.asarray(x), cupy.asarray(t))
    cupy.cuda.Device().synchronize()
    got, want = _host(captured, captured.parameters()), _host(eager, eager.parameters())
    initial = models.build(model, backend="numpy", dtype="float64").parameters()
    assert any(not np.array_equal(want[n], np.asarray(initial[n])) for n in want)
    for name in want:
        if gemm == "kernel":
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            assert _relative(got[name], want[name]) <= 1e-10, name
    np.testing.assert_allclose(float(loss), float(losses[-1]), rtol=1e-10)


@pytest.mark.cuda
def test_capture_step_refuses_host_data_and_restores_cupy(cuda):
    import cupy

    _tools()
    from cuda_graph import CaptureError, capture_step

    matmul, asarray = cupy.matmul, cupy.asarray
    buffer = cupy.zeros(3)

    def bad(x):
        return x + cupy.asarray(np.arange(3.0))

    with pytest.raises(CaptureError, match="host data"):
        capture_step(bad, buffer)
    assert cupy.matmul is matmul and cupy.asarray is asarray

    def good(x):
        x += cupy.asarray(1.0)  # a host scalar: a fill kernel inside the graph
        return x

    replay = capture_step(good, buffer)  # the warm-up adds 1 once
    replay()
    replay()
    np.testing.assert_array_equal(cupy.asnumpy(buffer), [3.0, 3.0, 3.0])
    replay(np.full(3, 10.0))
    np.testing.assert_array_equal(cupy.asnumpy(buffer), [11.0, 11.0, 11.0])
