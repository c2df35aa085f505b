"""Flush-to-zero for anycnn's CPU work (Note [Subnormals] in anycnn.subnormals, issue 23)."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from anycnn import subnormals

ROOT = Path(__file__).resolve().parent.parent
TINY32 = np.float32(1e-39)  # subnormal in float32 (the smallest normal is 1.2e-38)

needs_flush = pytest.mark.skipif(
    not subnormals.available(), reason="flush-to-zero needs x86-64 and Numba (anycnn[jit])"
)


def _flush_bits() -> int:
    return subnormals.csr() & subnormals.FLUSH_BITS


@needs_flush
def test_flushing_sets_ftz_and_daz_and_restores_them():
    before = subnormals.csr()
    assert before & subnormals.FLUSH_BITS == 0  # the process default: IEEE subnormals
    assert np.float32(TINY32 * np.float32(1.0)) == TINY32
    with subnormals.flushing() as on:
        assert on and subnormals.is_flushing()
        assert _flush_bits() == subnormals.FLUSH_BITS
        assert np.float32(TINY32) * np.float32(1.0) == 0.0  # DAZ: the operand reads as 0
        assert np.float32(1e-30) * np.float32(1e-10) == 0.0  # FTZ: the result is flushed
        with subnormals.flushing():  # nested: still on after the inner block
            pass
        assert _flush_bits() == subnormals.FLUSH_BITS
    assert subnormals.csr() & subnormals.FLUSH_BITS == before & subnormals.FLUSH_BITS
    assert not subnormals.is_flushing()
    assert np.float32(1e-30) * np.float32(1e-10) > 0.0  # user code keeps its subnormals
    with subnormals.flushing(False) as on:
        assert not on and _flush_bits() == 0


@needs_flush
def test_pool_threads_take_the_posting_threads_setting():
    """A NumPy pool thread runs a job with the FTZ/DAZ of the thread that posted it, and a later
    job posted outside flushing() clears them again on that thread."""
    from anycnn_numpy import _threads

    seen: list[int] = []
    jobs: queue.Queue = queue.Queue()

    def record(index, start, stop):
        seen.append(_flush_bits())

    def helper():
        while (job := jobs.get()) is not None:
            job.work(helper=True)

    thread = threading.Thread(target=helper)
    thread.start()
    try:
        with subnormals.flushing():
            jobs.put(_threads._Job(record, [(0, 1)]))
        jobs.put(_threads._Job(record, [(0, 1)]))
        jobs.put(None)
    finally:
        thread.join()
    assert seen == [subnormals.FLUSH_BITS, 0]


@needs_flush
def test_numpy_ops_on_subnormals_flush_across_threads(monkeypatch):
    """A multi-slice op on subnormal inputs: flushed everywhere inside flushing(), kept
    outside it (a block mean of subnormals is 0 with DAZ)."""
    from anycnn_numpy import _resample, _threads

    previous = _threads.set_num_threads(2)
    try:
        x = np.full((64, 8, 64, 64), TINY32 * 4, dtype=np.float32)  # 8 MiB: several slices
        with subnormals.flushing():
            flushed = _resample.block_mean(x, 2)
        kept = _resample.block_mean(x, 2)
    finally:
        _threads.set_num_threads(previous)
    assert np.all(flushed == 0.0)
    np.testing.assert_array_equal(kept, np.float32(TINY32 * 4))


@needs_flush
def test_training_flushes_by_default_and_can_be_told_not_to(monkeypatch):
    """anycnn.train.train runs its steps inside flushing() unless flush_subnormals=False or
    ANYCNN_FLUSH_SUBNORMALS=0, and leaves the thread as it found it."""
    from anycnn import datasets, models, optim
    from anycnn.training.loop import train

    seen: list[bool] = []

    class Recording(optim.SGD):
        def step(self):
            seen.append(subnormals.is_flushing() and _flush_bits() == subnormals.FLUSH_BITS)
            super().step()

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 20)
    data = datasets.Dataset("random", images, labels, images[:4], labels[:4])

    def run(**kwargs):
        seen.clear()
        net = models.dlt()
        train(
            net,
            data,
            epochs=1,
            batch_size=10,
            optimizer=Recording(net, lr=1.0),
            progress=False,
            **kwargs,
        )
        return list(seen)

    assert run() == [True, True]
    assert _flush_bits() == 0
    assert run(flush_subnormals=False) == [False, False]
    monkeypatch.setenv("ANYCNN_FLUSH_SUBNORMALS", "0")
    assert run() == [False, False]


@needs_flush
def test_bench_subnormals_quick(tmp_path):
    """bench/subnormals.py runs, finds subnormal gradients in the saturated network when not
    flushed, none when flushed, and writes its ratios."""
    import json

    pytest.importorskip("torch", reason="bench/subnormals.py times PyTorch beside anycnn")
    out = tmp_path / "subnormals.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "subnormals.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert sum(data["subnormal_gradient_entries"]["not flushed"].values()) > 0
    assert sum(data["subnormal_gradient_entries"]["flushed"].values()) == 0
    assert {"anycnn saturated", "anycnn unsaturated"} <= set(data["timings"])
    assert any(name.startswith("saturated vs unsaturated") for name in data["ratios"])


def reference_run(model: str, flush: bool, dtype: str = "float32", limit: int | None = None):
    """One epoch of the model's reference training (``anycnn train``'s defaults) on MNIST:
    the test error and the final parameters on the host."""
    from anycnn import datasets, models, optim
    from anycnn.training.loop import train

    net = getattr(models, model)(dtype=dtype)
    if model == "dlt":
        optimizer, batch = optim.SGD(net, lr=1.0), 50
    else:
        optimizer, batch = optim.Momentum(net, lr=0.02, momentum=0.9), 32
    result = train(
        net,
        datasets.load("mnist"),
        epochs=1,
        batch_size=batch,
        optimizer=optimizer,
        limit=limit,
        progress=False,
        flush_subnormals=flush,
    )
    params = {
        k: np.array(net.backend.to_host(v), dtype=np.float64) for k, v in net.parameters().items()
    }
    return result.test_error, params


@pytest.mark.slow
@needs_flush
@pytest.mark.parametrize(
    ("model", "dtype", "limit"),
    [("dlt", "float32", None), ("lenet5", "float32", None), ("dlt", "float64", 10000)],
)
def test_reference_runs_do_not_move_beyond_float32_rounding(model, dtype, limit):
    """The DLT epoch and a LeNet-5 epoch with and without flushing: the same test error and
    parameters within float32 rounding of their magnitude (float64: the same bits)."""
    error_on, on = reference_run(model, True, dtype, limit)
    error_off, off = reference_run(model, False, dtype, limit)
    assert error_on == error_off
    for name in on:
        if dtype == "float64":
            np.testing.assert_array_equal(on[name], off[name], err_msg=name)
        else:
            scale = float(np.abs(off[name]).max())
            np.testing.assert_allclose(on[name], off[name], rtol=0, atol=4e-7 * scale, err_msg=name)
