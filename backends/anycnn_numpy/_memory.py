"""The NumPy backend's scratch memory: per-thread buffers the ops reuse from call to call, and
the malloc setting that lets a training step reuse the last step's freed pages (an opt-in).

Scratch buffers (the im2col columns, the padded maps) are kept per thread and reused; only
results are freshly allocated, so a training step allocates what it returns and nothing else.
"""

from __future__ import annotations

import os
import threading

import numpy as np


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation (``Note [Fresh pages]``);
    True if it did. A process-wide setting: the library never calls this on its own, the
    ``anycnn train`` command does (and so may any program that trains with anycnn).

    Note [Fresh pages]
    ~~~~~~~~~~~~~~~~~~
    A training step allocates and frees the same large temporaries every time (a layer's u,
    f(u), its sensitivities). glibc gives blocks above its mmap threshold back to the kernel at
    free() and trims the heap top beyond its trim threshold, so the next step's arrays come
    back as fresh pages the kernel must fault in and zero: at batch 1000 that was almost half
    of DLT's inference, and a sigmoid at batch 50 took 6x as long as on reused pages
    (bench/results/numpy-notes.md, "Fresh pages"). With an mmap threshold of 32 MiB (glibc's
    maximum) and a higher trim threshold, freed blocks stay in the heap and are reused. The
    peak memory is about the same (VmHWM); what changes is that up to TRIM_THRESHOLD bytes
    freed stay mapped to the process, and that malloc behaves so for the whole process, which
    is why it is an opt-in.
    ``ANYCNN_NUMPY_KEEP_FREED_MEMORY=0`` declines it even when asked (returns False).

    Blocks above 32 MiB (a layer's maps from 128 px on at batch 64: 64 x 64 x 126 x 126 floats
    are 260 MB) glibc still mmapped, whatever the threshold, so every step faulted them in
    afresh: on this session's virtual Xeon that cost a 128 px stage (bench/shapes.py, batch 64,
    64 maps) 0.1-1.1 s of system time in a 0.4 s step, varying with the host. The opt-in
    therefore also turns mmap off (M_MMAP_MAX = 0: every block comes from the heap) and raises
    the trim threshold to 2 GiB - 1 (mallopt's int maximum), so a step's large temporaries are
    reused too (bench/results/numpy-notes.md, "Fresh pages", issue 16's Growth figures).
    The price: freed memory stays with the process until ``malloc_trim``, and a process whose
    array sizes keep growing leaves the smaller freed blocks behind, fragmented (bench/shapes.py's
    grid, 192 shapes of growing size in one process, reached 16.3 GB resident and was killed by
    the OOM killer until it trimmed between shapes). A training run repeats the same sizes, so it
    reuses them; a program that does not should not opt in, or call ``malloc_trim``.
    """
    if os.environ.get("ANYCNN_NUMPY_KEEP_FREED_MEMORY", "1").strip() == "0":
        return False
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold, m_mmap_max = -1, -3, -4
    return (
        bool(mallopt(m_mmap_threshold, 32 << 20))
        and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))
        and bool(mallopt(m_mmap_max, 0))
    )


#: The trim threshold of keep_freed_memory: mallopt's largest (an int), Note [Fresh pages].
TRIM_THRESHOLD = (1 << 31) - 1


_local = threading.local()


def scratch(slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A per-thread, per-slot buffer, reused across calls (contents undefined)."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    size = 1
    for s in shape:
        size *= s
    nbytes = size * dtype.itemsize
    raw = buffers.get(slot)
    if raw is None or raw.nbytes < nbytes:
        raw = buffers[slot] = np.empty(max(nbytes, 64), dtype=np.uint8)
    return raw[:nbytes].view(dtype).reshape(shape)


def zero_bordered(slot: str, shape: tuple[int, ...], dtype: np.dtype, layout: tuple) -> np.ndarray:
    """A per-thread buffer, zeroed when allocated, of which callers overwrite the same part
    at every call: the rest (a zero border, say) stays zero without being written again.

    ``layout`` must name everything that decides which part is written. Buffers are kept by
    slot, dtype, shape (the first axis may shrink) and layout, at most 16.
    """
    buffers = getattr(_local, "zeroed", None)
    if buffers is None:
        buffers = _local.zeroed = {}
    key = (slot, dtype.str, shape[1:], layout)
    buffer = buffers.get(key)
    if buffer is None or buffer.shape[0] < shape[0]:
        if len(buffers) >= 16:
            buffers.clear()
        buffer = buffers[key] = np.zeros(shape, dtype=dtype)
    return buffer[: shape[0]]
