"""The NumPy backend's compiled drivers of sliced jobs (Note [Slices taken in compiled code] in
``anycnn_numpy._direct``): every slice taken exactly once, by whichever thread is free, and the
hand-over between the caller and the pool's helpers (who joined, who is back) counted right."""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import ops as reference
from anycnn.layers.activations import LeCunTanh

_jit = pytest.importorskip("anycnn_numpy._jit")
if _jit.correlate_into_sliced is None:  # pragma: no cover - Numba off
    pytest.skip(
        "the compiled kernels are off (ANYCNN_NUMBA=0 or no Numba)", allow_module_level=True
    )

import anycnn_numpy  # noqa: E402
from anycnn_numpy import _conv, _direct, _threads  # noqa: E402


def _ctrl(seq: int = 7) -> np.ndarray:
    ctrl = np.zeros(_direct.CTRL_SIZE, np.int64)
    ctrl[_direct.SEQ] = seq
    return ctrl


def _forward_args(rng, n=6):
    x = rng.standard_normal((n, 2, 9, 9)).astype(np.float32)
    wts = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    out = np.full((n, 3, 7, 7), np.nan, np.float32)
    active = np.ones((3, 2), bool)
    act = (_direct.IDENTITY, np.float32(0), np.float32(0))
    return x, wts, out, (x, 0, 0, wts, np.zeros(3, np.float32), active, act, out, 4)


def test_helper_wait_counts_itself_back_only_from_a_job_it_joined():
    board, last = np.zeros(8, np.int64), _ctrl()
    assert _direct.helper_wait(board, 0, 50, last, True) is False  # nothing posted: gives up
    assert last[_direct.BACK] == 1
    assert _direct.helper_wait(board, 0, 50, last, False) is False
    assert last[_direct.BACK] == 1  # not joined: not counted
    board[0] = 3
    assert _direct.helper_wait(board, 0, 50, last, False) is True  # a caller is in its driver
    assert _direct.helper_wait(board, 3, 0, last, False) is False  # already seen


def test_a_thread_alone_takes_every_slice_once(rng):
    x, wts, out, args = _forward_args(rng)
    ctrl, board = _ctrl(), np.zeros(8, np.int64)
    bounds = np.array([0, 1, 3, 6], np.int64)
    assert _direct.correlate_into_sliced(*args, bounds, ctrl, board, _direct.ALONE, 0) is True
    assert ctrl[_direct.DONE] == 3 and ctrl[_direct.NEXT] >= 3
    assert board[0] == 0  # alone: no caller's mark for helpers
    expected = reference.conv_valid(x, np.ascontiguousarray(wts[:, :, ::-1, ::-1]))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_a_helper_does_not_join_a_closed_job(rng):
    _, _, out, args = _forward_args(rng)
    ctrl, board = _ctrl(), np.zeros(8, np.int64)
    ctrl[_direct.JOINED] = -(1 << 40)  # the caller closed it
    bounds = np.array([0, 3, 6], np.int64)
    assert _direct.correlate_into_sliced(*args, bounds, ctrl, board, _direct.HELPER, 0) is False
    assert ctrl[_direct.NEXT] == 0 and np.isnan(out).all()  # took nothing, wrote nothing


def test_the_caller_marks_the_board_closes_and_counts_who_joined(rng):
    _, _, out, args = _forward_args(rng)
    ctrl, board = _ctrl(seq=11), np.zeros(8, np.int64)
    bounds = np.array([0, 3, 6], np.int64)
    assert _direct.correlate_into_sliced(*args, bounds, ctrl, board, _direct.CALLER, 1000)
    assert board[0] == 11  # helpers may start now
    assert ctrl[_direct.JOINED] < 0  # closed to late helpers
    assert ctrl[_direct.DONE] == 2 and not np.isnan(out).any()
    assert ctrl[_direct.WAITED] == 0  # no helper joined: nothing to wait for


def test_the_caller_waits_for_a_joined_helper_to_be_back(rng):
    _, _, _, args = _forward_args(rng)
    ctrl, board = _ctrl(), np.zeros(8, np.int64)
    ctrl[_direct.JOINED] = 1  # a helper joined and never came back
    bounds = np.array([0, 3, 6], np.int64)
    _direct.correlate_into_sliced(*args, bounds, ctrl, board, _direct.CALLER, 640)
    assert ctrl[_direct.DONE] == 2  # the caller took both slices...
    assert ctrl[_direct.WAITED] == 10  # ...and waited a 64th of its limit for the helper


def test_the_caller_waits_its_limit_for_slices_a_helper_took(rng):
    _, _, _, args = _forward_args(rng)
    ctrl, board = _ctrl(), np.zeros(8, np.int64)
    ctrl[_direct.JOINED], ctrl[_direct.NEXT] = 1, 2  # a helper took both slices, never ended
    bounds = np.array([0, 3, 6], np.int64)
    _direct.correlate_into_sliced(*args, bounds, ctrl, board, _direct.CALLER, 640)
    assert ctrl[_direct.DONE] == 0 and ctrl[_direct.WAITED] == 640  # Python waits on


@pytest.mark.parametrize("n", [64, 256])
def test_compiled_jobs_on_two_threads_give_the_bits_of_one(rng, n):
    """The fused ops whose slices the drivers take, many times over on two threads (so that
    slices fall to either thread), each time the bits of one thread."""
    x = rng.standard_normal((n, 6, 14, 14)).astype(np.float32)
    k = (rng.standard_normal((16, 6, 5, 5)) * 0.2).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    assert len(_threads.direct_bounds(n, 16 * 6 * 25 * 100)) > 2  # several slices
    tanh = LeCunTanh()
    previous = anycnn_numpy.set_num_threads(1)
    try:
        y1 = _conv.conv_valid_activate(x, k, b, tanh)
        dy = rng.standard_normal(y1.shape).astype(np.float32)
        g1 = _conv.conv_backward(x, dy, y1, tanh)
        f1 = _conv.conv_full(dy, k)
        anycnn_numpy.set_num_threads(2)
        for _ in range(20):
            y2 = _conv.conv_valid_activate(x, k, b, tanh)
            g2 = _conv.conv_backward(x, dy, y1, tanh)
            f2 = _conv.conv_full(dy, k)
            assert y2.tobytes() == y1.tobytes() and f2.tobytes() == f1.tobytes()
            assert all(a.tobytes() == c.tobytes() for a, c in zip(g1, g2, strict=True))
    finally:
        anycnn_numpy.set_num_threads(previous)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_sums_as_a_compiled_job_give_the_bits_of_the_plain_loop(rng, dtype):
    """block_sum / block_mean over several slices (a compiled job on two threads) give the
    bits of ``block_sum_into`` over the whole batch on one thread."""
    from anycnn_numpy import _kernels, _resample

    x = rng.standard_normal((256, 6, 24, 24)).astype(dtype)
    assert x.nbytes > _threads._SLICE_BYTES  # several slices
    expected = {}
    for name, scale in (("block_sum", 1.0), ("block_mean", 0.25)):
        out = np.empty((256, 6, 12, 12), dtype)
        _kernels.block_sum_into(x, 2, x.dtype.type(scale), out, 0, 256)
        expected[name] = out.tobytes()
    previous = anycnn_numpy.set_num_threads(2)
    try:
        for _ in range(10):
            assert _resample.block_sum(x, 2).tobytes() == expected["block_sum"]
            assert _resample.block_mean(x, 2).tobytes() == expected["block_mean"]
    finally:
        anycnn_numpy.set_num_threads(previous)
