"""The NumPy backend changes nothing for the whole process unless asked to (issue 19, item 3):
importing anycnn and running a network neither calls glibc's ``mallopt`` nor looks up BLAS
libraries nor calibrates the pool's spin; ``anycnn train`` opts into malloc's setting
(``Note [Fresh pages]``), and so can a program, through ``anycnn_numpy.keep_freed_memory``."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt and mallinfo2 are glibc's"
)

# Whether malloc serves a 31 MiB block by mmap (glibc's default: the threshold is 128 KiB,
# raised dynamically up to 32 MiB by freed mmapped blocks, never past the block sizes freed so
# far) or from the heap (after mallopt(M_MMAP_THRESHOLD, 32 MiB), Note [Fresh pages]):
# mallinfo2's hblkhd counts the bytes in mmapped blocks. The probe's block is never freed (its
# pages are never touched either): freeing it would itself raise the dynamic threshold.
_PROBE = """
import ctypes

libc = ctypes.CDLL(None)


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]


def mmapped(size=31 << 20):
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    after = libc.mallinfo2().hblkhd
    assert block
    return after - before >= size
"""


def _run(code: str, **env: str) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ANYCNN_")}
    environ.update(env)
    out = subprocess.run(
        [sys.executable, "-c", _PROBE + code], env=environ, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@glibc
def test_import_and_a_training_step_leave_malloc_alone():
    """A forward and backward pass on the NumPy backend (Numba kernels, the pool at batch 64)
    leave malloc's mmap threshold as glibc set it; keep_freed_memory() then changes it, which is
    what the probe sees (so the probe can fail)."""
    code = """
import numpy as np
import anycnn
import anycnn_numpy
from anycnn_numpy import _resample, _threads

print(mmapped())
net = anycnn.models.build("dlt", dtype="float32", seed=0, backend="numpy")
x = np.zeros((64, 1, 28, 28), np.float32)
net.forward(x)
net.compute_gradients(x, np.zeros((64, 10), np.float32))
print(mmapped())
print(anycnn_numpy.keep_freed_memory(), mmapped())
"""
    before, after, made, later = _run(code)
    assert (before, after) == ("True", "True")
    assert (made, later) == ("True", "False")


@glibc
def test_keeping_freed_memory_covers_blocks_above_32_mib():
    """Blocks above glibc's largest mmap threshold (32 MiB: a layer's maps at 128 px and batch
    64) were mmapped, so faulted in afresh at every step, until keep_freed_memory() turned mmap
    off; its trim threshold keeps a freed block of 1 GiB at the top of the heap mapped."""
    code = """
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.restype = ctypes.c_void_p
libc.sbrk.argtypes = [ctypes.c_ssize_t]
import anycnn_numpy

print(mmapped(64 << 20), anycnn_numpy.keep_freed_memory(), mmapped(64 << 20))
top = libc.sbrk(0)
block = libc.malloc(1 << 30)
libc.free(block)
print(libc.sbrk(0) - top >= 1 << 30)
"""
    assert _run(code) == ["True", "True", "False", "True"]


@glibc
def test_anycnn_train_opts_into_keeping_freed_memory(monkeypatch):
    """The training command makes the setting (for the NumPy backend), and the environment
    variable declines it."""
    from anycnn import cli

    calls = []
    import anycnn_numpy

    monkeypatch.setattr(anycnn_numpy, "keep_freed_memory", lambda: calls.append(1) or True)
    from anycnn import backend as registry

    cli._tune_process(registry.lookup("numpy"))
    assert calls == [1]
    cli._tune_process(registry.lookup("strict"))
    assert calls == [1]
    declined = _run(
        "import anycnn_numpy\nprint(anycnn_numpy.keep_freed_memory(), mmapped())",
        ANYCNN_NUMPY_KEEP_FREED_MEMORY="0",
    )
    assert declined == ["False", "True"]


def test_import_finds_no_blas_and_calibrates_no_spin():
    """Importing the ops looks up no BLAS library and runs no spin calibration; a small forward
    pass (one slice per op: the calling thread alone) does neither either; the first op cut into
    slices for the pool's threads calibrates the spin, and looks up BLAS only if its slices call
    BLAS (a block sum does not; a GEMM does)."""
    code = """
import numpy as np
import anycnn
from anycnn_numpy import _im2col, _resample, _threads

print(_threads._blas_threads._libraries is None, _threads._spin.calibrated)
net = anycnn.models.build("dlt", dtype="float32", seed=0, backend="numpy")
net.forward(np.zeros((1, 1, 28, 28), np.float32))
print(_threads._blas_threads._libraries is None, _threads._spin.calibrated)
_threads.set_num_threads(2)
x = np.ones((256, 6, 24, 24), np.float32)
_resample.block_sum(x, 2)
print(_threads._blas_threads._libraries is None, _threads._spin.calibrated)
_im2col.gemm(np.ones((4096, 256), np.float32), np.ones((256, 256), np.float32))
print(_threads._blas_threads._libraries is None)
"""
    assert _run(code) == ["True", "False", "True", "False", "True", "True", "False"]
