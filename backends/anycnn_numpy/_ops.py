"""Fast hot ops for NumPy: the same names and signatures as :mod:`anycnn.ops`.

With Numba (installed with anycnn where it has wheels) the three convolutions of the notes are
compiled direct correlations (``Note [Direct convolutions]`` in ``_direct``), which also apply
float32 logistic and tanh layers' f as they write their output and, as the fused ``conv_backward``,
form a layer's sensitivity, kernel and bias gradients in one pass; LeNet-5's C5 (1 x 1 outputs) and
layers of more than 512 map pairs stay on BLAS. Without Numba, convolutions are im2col plus BLAS: a
strided window view of the input is copied into a GEMM-friendly scratch buffer, then one matrix
product per example (``np.matmul``). Up- and down-sampling are strided slices, or compiled loops
with Numba. Section 3.4 of the notes asks for exactly this: no per-block Python work, no per-example
Python loops. What makes the BLAS paths fast (``Note [NumPy hot ops]``):

* **No flips, no padding copies.** conv2 flips the kernel; instead of flipping it, the window
  view reads the input backwards (negative strides), so the kernel is used as it is, and the
  kernel gradient comes out in kernel order. ``conv_full`` pads into a scratch buffer whose
  zero border is written once.
* **Scratch buffers** (the im2col columns, the padded maps) are kept per thread and reused;
  only results are freshly allocated, so a training step allocates what it returns and
  nothing else.
* **Threads over batch slices.** NumPy releases the GIL inside copies, ufunc loops and BLAS
  calls, and OpenBLAS runs the small per-example products on the calling thread, so a large
  batch is cut into slices that a small pool of threads (the calling thread included) takes
  one at a time. A slice has about 2 MiB of scratch (``Note [Few large slices]``). Slices are
  taken, not assigned: when the machine is busy and a worker does not get a core, the calling
  thread does the work itself instead of waiting at a barrier (``set_num_threads``).
* **Little Python per call.** At batch 1 a step is dominated by interpreter overhead, so the
  views are built with the ``ndarray`` constructor rather than ``sliding_window_view`` and the
  per-shape arithmetic is cached.

Results are the reference's up to float rounding (sums are taken in another order); partial
sums of the kernel gradient are added in slice order, so results do not depend on the thread
count or timing.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import threading
import time

import numpy as np

from anycnn import ops as _reference
from anycnn import subnormals as _subnormals
from anycnn_numpy import _jit


# --- threads -------------------------------------------------------------------------------------
class _BlasThreads:
    """The BLAS libraries' thread counts, through threadpoolctl (found at the first pooled op).

    The ops run small GEMMs, one per batch slice, on threads of their own; a GEMM that BLAS
    split over its own threads as well would leave those spinning (OpenBLAS workers busy-wait
    for a while after each call) on the cores the slices need, and on a loaded machine a split
    GEMM waits for a core at every call. So while a job's slices run, BLAS runs on one thread
    (:meth:`limit`), and gets its count back afterwards (:meth:`restore`). The libraries are
    looked up once, on first use, never at import; a process without threadpoolctl's libraries
    (none loaded) just leaves BLAS alone.
    """

    def __init__(self) -> None:
        self._libraries: list | None = None

    def _found(self) -> list:
        if self._libraries is None:
            try:
                from threadpoolctl import ThreadpoolController

                self._libraries = ThreadpoolController().select(user_api="blas").lib_controllers
            except Exception:  # noqa: BLE001 - a BLAS we cannot control runs as it is
                self._libraries = []
        return self._libraries

    def limit(self) -> list:
        """Set every BLAS to one thread; the ``(library, previous count)`` pairs it changed."""
        changed = []
        for library in self._found():
            previous = library.get_num_threads()
            if previous is not None and previous != 1:
                library.set_num_threads(1)
                changed.append((library, previous))
        return changed

    @staticmethod
    def restore(changed: list) -> None:
        for library, previous in changed:
            library.set_num_threads(previous)


_blas_threads = _BlasThreads()


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation (``Note [Fresh pages]``);
    True if it did. A process-wide setting: the library never calls this on its own, the
    ``anycnn train`` command does (and so may any program that trains with anycnn).

    Note [Fresh pages]
    ~~~~~~~~~~~~~~~~~~
    A training step allocates and frees the same large temporaries every time (a layer's u,
    f(u), its sensitivities). glibc gives blocks above its mmap threshold back to the kernel at
    free() and trims the heap top beyond its trim threshold, so the next step's arrays come
    back as fresh pages the kernel must fault in and zero. At batch 1000 that was 8 of the 18
    ms of DLT's inference (the sigmoid's five temporaries of 14 MB), and 956 us against 155 us
    for one sigmoid at batch 50. With an mmap threshold of 32 MiB (glibc's maximum) and a trim
    threshold of 256 MiB, freed blocks stay in the heap and are reused. The peak memory is the
    same (VmHWM); what changes is that up to 256 MiB freed stays mapped to the process, and
    that malloc behaves so for the whole process, which is why it is an opt-in.
    ``ANYCNN_NUMPY_KEEP_FREED_MEMORY=0`` declines it even when asked (returns False).
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
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


#: OpenBLAS runs a GEMM with M*N*K up to 65536 * GEMM_MULTITHREAD_THRESHOLD (4) on one thread.
_BLAS_SPLIT_SIZE = 65536 * 4


# Note [Few large slices]
# ~~~~~~~~~~~~~~~~~~~~~~~
# An op's batch slices once had 1 MiB of scratch (a core's L2), at least 4 of them. Every slice
# runs Python between its NumPy calls, and two threads wait for each other's GIL there, so fewer,
# larger slices won although their scratch no longer fits in L2: with 2 MiB slices, at least 2,
# their number rounded up to even (odd counts left one of two threads idle at the end), training
# steps got 4-12% faster (DLT at batch 50 1.40 -> 1.24 ms, 64 1.68 -> 1.58, 256 5.62 -> 5.37;
# LeNet-5 50 2.47 -> 2.34, 64 2.86 -> 2.75, 256 10.3 -> 9.96; both layouts interleaved in one
# process, medians of 20 blocks, 2026-11-25; 4 MiB slices did as well at 50 and 64, worse at 256).
_SLICE_BYTES = 1 << 21
# Below this much scratch one thread does it all: waking a helper costs tens of microseconds
# (DLT's C3 conv_full on 4 examples took 96 us on 2 threads, 42 us on 1).
_MIN_PARALLEL_BYTES = 1 << 21


# Note [Small jobs alone]
# ~~~~~~~~~~~~~~~~~~~~~~~
# The slices of an op run side by side only while each spends its time inside NumPy calls that
# release the GIL; a slice also runs Python between those calls, and two threads then hand the
# GIL back and forth. Below about 2 MiB of scratch in all, an op ran faster on the calling
# thread alone: DLT's training step at batch 16 took 0.85 ms with helpers and 0.69 ms without,
# LeNet-5's 1.46 and 1.20 ms (bench/train.py-style timing, 2026-11-25); at batch 50 and above
# the helpers win again. Since slices hold _SLICE_BYTES = 2 MiB (Note [Few large slices]), such
# an op is a single slice, which _run calls on the calling thread. BLAS stays at one thread
# while slices run, since OpenBLAS's own threads spin after each call on the cores the next
# op's helpers need (LeNet-5 at batch 256 went from 12.4 to 17.9 ms when they did not).


def _default_threads() -> int:
    value = os.environ.get("ANYCNN_NUM_THREADS", "").strip()
    if value:
        return max(1, int(value))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class _Job:
    """Slices of one op, taken one at a time by whichever thread is free."""

    __slots__ = (
        "function",
        "slices",
        "next",
        "remaining",
        "lock",
        "done",
        "error",
        "errstate",
        "taken",
        "flag",
        "flush",
    )

    def __init__(self, function, slices):
        # np.errstate is per thread (a context variable): the helpers take the caller's, so
        # `with np.errstate(over="ignore")` around an op covers all of its slices (the training
        # loop's divergence check relies on that to keep warnings off stderr).
        self.errstate = np.geterr()
        # Note [Subnormals] in anycnn.subnormals: helpers flush subnormals when the caller does.
        self.flush = _subnormals.is_flushing()
        self.function = function
        self.slices = slices
        self.next = itertools.count()  # next() on a count is atomic under the GIL
        self.remaining = len(slices)
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.taken = 0  # slices taken by helpers
        self.flag = np.zeros(1, np.int64)  # 1 once done: what a spinning caller watches

    def work(self, helper: bool = False) -> None:
        if helper and getattr(_local, "flush", False) != self.flush:
            _subnormals.set_flush_bits(self.flush)  # this pool thread's MXCSR, kept for the next
            _local.flush = self.flush
        with np.errstate(**self.errstate):
            self._work(helper)

    def _work(self, helper: bool = False) -> None:
        slices = self.slices
        while True:
            index = next(self.next)
            if index >= len(slices):
                return
            if helper:
                self.taken += 1
            try:
                self.function(index, *slices[index])
            except BaseException as error:  # re-raised in the calling thread
                self.error = error
            with self.lock:
                self.remaining -= 1
                if self.remaining == 0:
                    self.flag[0] = 1
                    self.done.set()


class _Pool:
    def __init__(self) -> None:
        self.threads = _default_threads()
        logging.getLogger("anycnn").info(
            "numpy backend: %d thread(s) for the ops (ANYCNN_NUM_THREADS=%s; usable cores: %s)",
            self.threads,
            os.environ.get("ANYCNN_NUM_THREADS", "unset"),
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        )
        self._queue: list = []
        self._cv = threading.Condition()
        self._workers: list[threading.Thread] = []
        self._pid = os.getpid()
        self._late = 0  # consecutive jobs the helpers were of little use to
        self._alone = 0  # jobs to run on the calling thread only, after helpers were late
        # Note [Spinning helpers]: jobs posted so far, watched by helpers between jobs.
        self._posted = np.zeros(1, np.int64)

    def _ensure_workers(self) -> None:
        if self._pid != os.getpid():  # after fork the threads are gone
            self._workers, self._queue, self._pid = [], [], os.getpid()
            self._cv = threading.Condition()
        _spin.calibrate()  # Note [Spinning helpers]: before the first helper looks at it
        while len(self._workers) < self.threads - 1:
            thread = threading.Thread(target=self._loop, name="anycnn-numpy", daemon=True)
            thread.start()
            self._workers.append(thread)

    def _loop(self) -> None:
        cv, posted = self._cv, self._posted
        while True:
            seen = int(posted[0])  # before looking at the queue: no post can slip between
            with cv:
                job = self._queue.pop() if self._queue else None
            if job is None:
                if _spin.turns:  # Note [Spinning helpers]
                    _spin.wait(posted, 0, seen, _spin.helper_turns)
                with cv:
                    while not self._queue:
                        cv.wait()
                    job = self._queue.pop()
            job.work(helper=True)

    def run(self, function, slices, gemm_size: int = 0) -> None:
        """Call ``function(index, start, stop)`` for every slice; return when all are done.

        ``gemm_size`` is M*N*K of the largest matrix product one slice makes: above OpenBLAS's
        threshold for splitting a GEMM over its threads, BLAS is held to one thread meanwhile.
        """
        if len(slices) == 1 and gemm_size <= _BLAS_SPLIT_SIZE:
            function(0, *slices[0])
            return
        changed = _blas_threads.limit()
        try:
            self._run(function, slices)
        finally:
            _blas_threads.restore(changed)

    def _run(self, function, slices) -> None:
        if self.threads == 1 or self._alone:
            if self._alone:
                self._alone -= 1
            for index, (start, stop) in enumerate(slices):
                function(index, start, stop)
            return
        job = _Job(function, slices)
        if len(self._workers) < self.threads - 1:
            self._late = -3  # the helpers start now: their first jobs do not count
        self._ensure_workers()
        helpers = min(self.threads - 1, len(slices) - 1)
        with self._cv:
            self._queue.extend([job] * helpers)
            self._posted[0] += 1
            self._cv.notify(helpers)
        posted = time.perf_counter()
        job.work()
        started = time.perf_counter()
        if _spin.turns and not job.done.is_set():  # Note [Spinning helpers]
            _spin.wait(job.flag, 0, 0, _spin.caller_turns)
        job.done.wait()
        finished = time.perf_counter()
        waited = finished - started
        if helpers:  # jobs no worker picked up are finished: drop them
            with self._cv:
                self._queue[:] = [j for j in self._queue if j is not job]
        # Note [Helpers on a busy machine]: a helper that has no core (other processes hold
        # them) can take a slice and be preempted inside it while the caller waits; on a shared
        # 2-core machine that made LeNet-5's batch-256 step 1.6x slower than one thread. After
        # 3 jobs in a row whose caller waited for over a quarter of the job (and over 0.1 ms),
        # the next 64 run on the calling thread alone, then the helpers are tried again.
        if waited > 1e-4 and waited * 4 > finished - posted:
            self._late += 1
            if self._late >= 3:
                self._late, self._alone = 0, 64
        else:
            self._late = 0
        if job.error is not None:
            raise job.error


class _Spin:
    """Spin-waits without the GIL (Note [Spinning helpers]); ``turns`` is 0 without Numba.

    Note [Spinning helpers]
    ~~~~~~~~~~~~~~~~~~~~~~~
    A helper asleep on a condition variable took 30 us to start on a job after it was posted,
    and the caller, asleep on the job's event, 23 us to notice that the helpers were done: on a
    virtual machine an idle core halts, and waking it goes through the hypervisor. A training
    step posts 5-10 jobs of 50-500 us. OpenBLAS and OpenMP runtimes spin for a while before they
    sleep, and so does this pool: a helper that finds the queue empty watches the count of posted
    jobs for up to HELPER_SPIN_US, and a caller that finishes its slices first watches its job's
    flag for up to CALLER_SPIN_US, before either blocks as before. The watching is a compiled
    loop (``_jit.spin_while``) that holds no GIL, so it does not slow the thread doing the work;
    it costs the helper's core up to HELPER_SPIN_US of busy time after the last op of a burst.
    It recovers only part of the latency: a thread that sees the signal still needs the GIL,
    and waiting for a GIL the other thread holds is a sleep too. Measured on this project's
    2-core AMD EPYC VM (2026-11-25): four 55-us slices on 2 threads, 180 -> 147-165 us;
    training steps, spin and no spin interleaved in one process, medians of 15 blocks: DLT at
    batch 50 1.65 -> 1.52 ms, at 256 6.40 -> 6.27 ms; LeNet-5 at 50 2.76 -> 2.70 ms, at 256
    10.95 -> 10.85 ms. Without Numba, or with ANYCNN_SPIN_US=0, the threads block at once.
    """

    HELPER_SPIN_US = 300.0
    CALLER_SPIN_US = 2000.0

    def __init__(self) -> None:
        self.turns = 0  # 0 until calibrated, and where there is no spinning
        self.helper_turns = self.caller_turns = 0
        self.wait = _jit.spin_while
        self.calibrated = False

    def calibrate(self) -> None:
        """Turns of the spin loop per microsecond, measured once, when the pool's helpers start
        (never at import: it compiles or loads the spin kernel and keeps a core busy)."""
        if self.calibrated:
            return
        scale = os.environ.get("ANYCNN_SPIN_US", "").strip()
        try:
            factor = 1.0 if not scale else max(0.0, float(scale)) / self.HELPER_SPIN_US
        except ValueError:
            raise ValueError(
                f"ANYCNN_SPIN_US must be a number of microseconds (0: no spinning), got {scale!r}"
            ) from None
        self.calibrated = True
        if self.wait is None or factor == 0.0:
            return
        flag = np.zeros(1, np.int64)
        self.wait(flag, 0, 0, 10)  # compiled (or loaded from Numba's cache) here
        turns = 2000
        start = time.perf_counter()
        self.wait(flag, 0, 0, turns)
        per_us = turns / max((time.perf_counter() - start) * 1e6, 1e-3)
        self.helper_turns = max(1, int(per_us * self.HELPER_SPIN_US * factor))
        self.caller_turns = max(1, int(per_us * self.CALLER_SPIN_US * factor))
        self.turns = self.helper_turns


_spin = _Spin()
_pool = _Pool()


def set_num_threads(count: int) -> int:
    """Set how many threads the NumPy backend's ops use (1 = the calling thread only).

    The default is the number of usable cores, at most 4; ``ANYCNN_NUM_THREADS`` overrides it.
    Returns the previous value. BLAS threads are not affected.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"set_num_threads: expected a positive int, got {count!r}")
    previous, _pool.threads = _pool.threads, count
    return previous


def get_num_threads() -> int:
    """How many threads the NumPy backend's ops use."""
    return _pool.threads


#: Slices of a batch large enough to parallelise, at least and in multiples of this many (Note
#: [Few large slices]). Fixed, not the thread count: partial sums (the kernel gradient) are added
#: in slice order, so the same slicing on every machine gives bit-identical results whatever
#: ANYCNN_NUM_THREADS is (tests/test_hardening.py). A machine with more than 2 cores gets as many
#: slices as the scratch asks for, so mid-sized ops use 2 of its cores.
_PARALLEL_SLICES = 2


def _slices(n: int, bytes_per_item: int) -> list[tuple[int, int]]:
    """Batch slices of about _SLICE_BYTES of scratch, when it pays at least _PARALLEL_SLICES and
    a multiple of it (Note [Few large slices]).

    Depends on the batch only, never on the number of threads (see _PARALLEL_SLICES)."""
    total = n * bytes_per_item
    count = min(n, -(-total // _SLICE_BYTES))
    if total >= _MIN_PARALLEL_BYTES:
        count = min(n, -(-count // _PARALLEL_SLICES) * _PARALLEL_SLICES)
    if count <= 1:
        return [(0, n)]
    bounds = [n * i // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


# --- scratch buffers -----------------------------------------------------------------------------
_local = threading.local()


def _scratch(slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
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


def _zero_bordered(slot: str, shape: tuple[int, ...], dtype: np.dtype, layout: tuple) -> np.ndarray:
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


# --- windows -------------------------------------------------------------------------------------
def _windows(x: np.ndarray, kh: int, kw: int, oh: int, ow: int, flip: bool) -> np.ndarray:
    """A view of shape (N, C, kh, kw, oh, ow) with ``[n, c, a, b, y, x] = x[n, c, y+a', x+b']``.

    ``a' = kh-1-a`` when ``flip`` (conv2's rot180, read as negative strides), else ``a' = a``.
    """
    sn, sc, sh, sw = x.strides
    if flip:
        offset = (kh - 1) * sh + (kw - 1) * sw
        strides = (sn, sc, -sh, -sw, sh, sw)
    else:
        offset = 0
        strides = (sn, sc, sh, sw, sh, sw)
    shape = (x.shape[0], x.shape[1], kh, kw, oh, ow)
    if x.flags.c_contiguous:
        return np.ndarray(shape, x.dtype, x, offset, strides)
    return np.lib.stride_tricks.as_strided(
        x[:, :, kh - 1 :, kw - 1 :] if flip else x, shape, strides, writeable=False
    )


def _wide_windows(x: np.ndarray, kh: int, kw: int, oh: int) -> np.ndarray | None:
    """Windows as whole rows (``Note [Wide columns]``): a view of shape (N, C, kh, kw, span).

    ``[n, c, a, b, q] = x[n, c].flat[(kh-1-a) w + (kw-1-b) + q]`` for ``q < span = (oh-1) w + ow``:
    read as ``q = y w + x'``, it is the flipped window at output ``(y, x')`` for ``x' < ow`` and
    a few pixels of no interest for ``x' >= ow``. None when x's rows are not contiguous.

    Note [Wide columns]
    ~~~~~~~~~~~~~~~~~~~
    im2col copies, for every tap (c, a, b), an ``oh x ow`` window: rows of ``ow`` contiguous
    pixels, 8 for DLT's C3, and NumPy's copy loop pays per row. Computing the convolution on a
    grid as wide as the input (``oh x w``, the outputs at ``x' >= ow`` thrown away) makes every
    tap's window one contiguous run of ``span`` pixels of the input, so the copy moves runs of 92
    instead of 8. The GEMM grows by ``w / ow`` (1.5x for C3, 1.17x for C1), the copy shrinks
    3-4x: on a 64-example slice, one thread, C1 went from 188 + 185 us (copy + GEMM) to
    71 + 208 us and C3 from 275 + 165 to 74 + 246 (/tmp benchmark, AMD EPYC, 2026-11-25).
    The last ``w - ow`` entries of a row of columns are never written: the buffer keeps them
    zero (:func:`_zero_bordered`), so the GEMM never reads uninitialised memory.
    """
    n, c, h, w = x.shape
    item = x.itemsize
    sn, sc, sh, sw = x.strides
    if sw != item or sh != w * item:
        return None
    ow = w - kw + 1
    span = (oh - 1) * w + ow
    offset = ((kh - 1) * w + (kw - 1)) * item
    return np.ndarray((n, c, kh, kw, span), x.dtype, x, offset, (sn, sc, -sh, -sw, sw))


def _wide_columns(wide: np.ndarray, start: int, stop: int, q: int) -> np.ndarray:
    """Examples ``start:stop`` of :func:`_wide_windows` copied into a per-thread buffer of rows of
    ``q = oh w`` entries, whose last ``q - span`` entries stay zero (never written)."""
    _, c, kh, kw, span = wide.shape
    columns = _zero_bordered("wide", (stop - start, c, kh, kw, q), wide.dtype, (span,))
    np.copyto(columns[..., :span], wide[start:stop])
    return columns


def _use_wide(w: int, ow: int) -> bool:
    """Wide columns pay when the rows are short and the GEMM grows little (Note [Wide columns]),
    for batches of more than one example (one LeNet-5 C3 example: 27 us wide, 19 us plain)."""
    return ow < w and ow <= 32 and 2 * w <= 3 * ow


def _usable(a, b) -> bool:
    """Float arrays of one dtype: what the fast paths handle; the rest goes to the reference."""
    return a.dtype == b.dtype and a.dtype.kind == "f"


def _masked(kernel: np.ndarray, selection) -> np.ndarray:
    if selection is None:
        return kernel
    return kernel * selection[:, :, None, None]


def _run(work, n: int, bytes_per_item: int, gemm_per_item: int) -> None:
    """Run ``work(index, start, stop)`` over batch slices (see _slices and _Pool.run)."""
    if n * bytes_per_item <= _SLICE_BYTES and n * gemm_per_item <= _BLAS_SPLIT_SIZE:
        work(0, 0, n)  # the common small case, alone (Note [Small jobs alone])
        return
    slices = _slices(n, bytes_per_item)
    gemm_size = gemm_per_item * max(stop - start for start, stop in slices)
    _pool.run(work, slices, gemm_size)


def _gemm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-d arrays, split over row slices of ``a`` on the pool's threads."""
    m, k = a.shape
    n = b.shape[1]
    out = np.empty((m, n), dtype=np.result_type(a, b))

    def work(index, start, stop):
        np.matmul(a[start:stop], b, out=out[start:stop])

    _run(work, m, (k + n) * a.dtype.itemsize, k * n)
    return out


def _gemm_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for 2-d arrays, the inner dimension split into slices summed in order."""
    m, k = a.shape
    n = b.shape[1]
    partial = {}

    def work(index, start, stop):
        partial[index] = a[:, start:stop] @ b[start:stop]

    _run(work, k, (m + n) * a.dtype.itemsize, m * n)
    out = partial[0]
    for index in range(1, len(partial)):
        out += partial[index]
    return out


# --- direct convolutions (Note [Direct convolutions] in _direct) ----------------------------------
#: Layers with more (C_out x C_in) map pairs than this stay on im2col + BLAS, whose blocking pays
#: when the GEMMs get large.
_DIRECT_MAX_PAIRS = 512
#: A direct convolution is cut into batch slices for the pool's threads from this many
#: multiply-adds on (about 25 us on one core), and into slices of about _DIRECT_SLICE_MACS; the
#: count depends on the batch only (and is even), as _slices' does.
_DIRECT_PARALLEL_MACS = 2_000_000
_DIRECT_SLICE_MACS = 8_000_000


def _direct(x: np.ndarray, other: np.ndarray, pairs: int) -> bool:
    """Whether the compiled direct convolutions take ``x`` with ``other`` (kernel or deltas) of a
    layer of ``pairs`` map pairs: both C-contiguous float32/float64 of one dtype."""
    return (
        _jit.correlate_into is not None
        and pairs <= _DIRECT_MAX_PAIRS
        and other.dtype == x.dtype
        and _compiled_layout(x)
        and _compiled_layout(other)
    )


def _active(selection, o: int, c: int) -> np.ndarray:
    """The (C_out, C_in) bool table of the pairs to compute: the selection, or all of them."""
    if selection is None:
        return _ones_table(o, c)
    return np.ascontiguousarray(selection, dtype=bool)


@functools.lru_cache(maxsize=64)
def _ones_table(o: int, c: int) -> np.ndarray:
    table = np.ones((o, c), dtype=bool)
    table.flags.writeable = False
    return table


@functools.lru_cache(maxsize=64)
def _zeros(size: int, dtype: np.dtype) -> np.ndarray:
    zeros = np.zeros(size, dtype=dtype)
    zeros.flags.writeable = False
    return zeros


def _run_direct(work, n: int, macs_per_item: int) -> None:
    """Run ``work(index, start, stop)`` over batch slices sized by multiply-adds (see above)."""
    total = n * macs_per_item
    if n == 1 or total < _DIRECT_PARALLEL_MACS:
        work(0, 0, n)
        return
    count = max(_PARALLEL_SLICES, -(-total // _DIRECT_SLICE_MACS))
    count = min(n, -(-count // _PARALLEL_SLICES) * _PARALLEL_SLICES)
    bounds = [n * i // count for i in range(count + 1)]
    _pool.run(work, [(bounds[i], bounds[i + 1]) for i in range(count)])


# --- convolutions --------------------------------------------------------------------------------
def _padded(x: np.ndarray, padding) -> np.ndarray:
    """``x`` with ``padding = (ph, pw)`` zero rows and columns on each side (a new array), or
    ``x`` itself without padding: for the paths that cannot pad as they read (Note [Zero
    padding] in anycnn.ops)."""
    ph, pw = padding
    if not (ph or pw):
        return x
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=x.dtype)
    out[:, :, ph : ph + h, pw : pw + w] = x
    return out


def conv_valid(x, kernel, selection=None, padding=(0, 0)):
    if not _usable(x, kernel):
        return _reference.conv_valid(x, kernel, selection, padding)
    return _conv_valid(x, kernel, selection, None, padding=padding)


def conv_valid_activate(x, kernel, bias, activation, selection=None, padding=(0, 0)):
    """Fused ``f(conv_valid(x, kernel) + bias)`` (``Note [Fused ops]`` in anycnn.ops).

    On the direct convolutions, float32 logistic and tanh layers get f as each map leaves the
    grid (Note [Compiled activations] in _direct: to float32 rounding of the chain, not its
    bits); otherwise the bias and ``activation.apply`` run on each batch slice of the output
    right after it is computed, while it is in cache, on the pool's threads (the chain's bits).
    """
    if not (_usable(x, kernel) and bias.dtype == x.dtype):
        return _reference.conv_valid_activate(x, kernel, bias, activation, selection, padding)

    def epilogue(u):
        y = activation.apply(u, np)
        if y is not u:
            np.copyto(u, y)

    compiled = _compiled_activation(activation, x.dtype)
    return _conv_valid(x, kernel, selection, epilogue, bias, compiled, padding)


def _compiled_activation(activation, dtype: np.dtype) -> tuple | None:
    """``(kind, p0, p1)`` of the direct kernels' own f (Note [Compiled activations]), or None."""
    from anycnn.layers.activations import Identity, LeCunTanh, Sigmoid, Tanh

    kind = type(activation)  # exact types: a subclass may redefine f
    if dtype != np.float32 or _jit.direct_activations is None:
        return None
    codes = _jit.direct_activations
    t = dtype.type
    if kind is Identity:
        return _no_activation(dtype)
    if kind is Sigmoid:
        return (codes[1], t(activation.gain), t(0))
    if kind in (Tanh, LeCunTanh):
        return (codes[2], t(activation.a), t(activation.b))
    return None


def _no_activation(dtype: np.dtype) -> tuple:
    """The direct kernels' activation code for f = identity (the bias only)."""
    t = dtype.type
    return (_jit.direct_activations[0], t(0), t(0))


def _with_bias(epilogue, bias):
    """``epilogue`` after adding ``bias`` (C_out,) to every map of the slice."""
    shift = bias[:, None, None]

    def biased(u):
        u += shift
        if epilogue is not None:
            epilogue(u)

    return biased


def _conv_valid(x, kernel, selection, epilogue, shift=None, compiled=None, padding=(0, 0)):
    """conv_valid (plus ``shift[j]`` on map j when given), with ``epilogue(out_slice)`` applied
    in place to every batch slice; ``compiled`` is a direct kernel's activation code (
    used instead of the epilogue when the direct kernels take the layer). The direct kernels
    pad as they interleave rows (Note [Zero padding] in anycnn.ops); BLAS pads a copy."""
    ph, pw = padding
    n, c, h, w = x.shape
    o, _, kh, kw = kernel.shape
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    ck, p = c * kh * kw, oh * ow
    dtype = x.dtype
    # conv2 flips the kernel: the windows read the input backwards instead.
    masked = _masked(kernel, selection)
    weights = masked.reshape(o, ck)
    out = None if p == 1 else np.empty((n, o, oh, ow), dtype=dtype)
    if p > 1 and _direct(x, kernel, o * c):  # Note [Direct convolutions] in _direct
        flipped = np.ascontiguousarray(masked[:, :, ::-1, ::-1])  # conv2 -> correlation
        bias = _zeros(o, dtype) if shift is None else np.ascontiguousarray(shift)
        active, chunk = _active(selection, o, c), _jit.direct_chunk(oh, w + pw, dtype.itemsize)
        act = compiled or _no_activation(dtype)
        if compiled is not None:
            epilogue = None

        def work_direct(index, start, stop):
            _jit.correlate_into(x, ph, pw, flipped, bias, active, act, out, start, stop, chunk)
            if epilogue is not None:
                epilogue(out[start:stop])

        _run_direct(work_direct, n, o * ck * p)
        return out
    if ph or pw:
        x = _padded(x, padding)
        h, w = x.shape[2:]
    if shift is not None:  # the BLAS paths add the bias in the epilogue
        epilogue = _with_bias(epilogue, shift)
    if p == 1:  # the kernel covers the maps (LeNet-5's C5): one GEMM for the whole batch
        columns = _scratch("columns", (n, c, kh, kw, 1, 1), dtype)
        np.copyto(columns, _windows(x, kh, kw, oh, ow, flip=True))
        out = _gemm(columns.reshape(n, ck), weights.T).reshape(n, o, 1, 1)
        if epilogue is not None:
            epilogue(out)
        return out
    wide = _wide_windows(x, kh, kw, oh) if n > 1 and _use_wide(w, ow) else None
    if wide is not None:  # Note [Wide columns]
        q = oh * w

        def work_wide(index, start, stop):
            m = stop - start
            columns = _wide_columns(wide, start, stop, q)
            grid = _scratch("grid", (m, o, oh, w), dtype)
            np.matmul(weights, columns.reshape(m, ck, q), out=grid.reshape(m, o, q))
            np.copyto(out[start:stop], grid[..., :ow])
            if epilogue is not None:
                epilogue(out[start:stop])

        _run(work_wide, n, ck * q * dtype.itemsize, o * ck * q)
        return out
    windows = _windows(x, kh, kw, oh, ow, flip=True)
    flat = out.reshape(n, o, p)

    def work(index, start, stop):
        m = stop - start
        columns = _scratch("columns", (m, c, kh, kw, oh, ow), dtype)
        np.copyto(columns, windows[start:stop])
        np.matmul(weights, columns.reshape(m, ck, p), out=flat[start:stop])
        if epilogue is not None:
            epilogue(out[start:stop])

    _run(work, n, ck * p * dtype.itemsize, o * ck * p)
    return out


def conv_kernel_grad(x, delta, selection=None, padding=(0, 0)):
    if not _usable(x, delta):
        return _reference.conv_kernel_grad(x, delta, selection, padding)
    x = _padded(x, padding)  # eq. (7) on the padded maps (Note [Zero padding] in anycnn.ops)
    if _direct(x, delta, delta.shape[1] * x.shape[1]):  # Note [Direct convolutions] in _direct
        return _direct_backward(x, delta, delta, ("identity", 0, 0, False), selection, 1, False)[0]
    n, c, h, w = x.shape
    _, o, dh, dw = delta.shape
    kh, kw = h - dh + 1, w - dw + 1
    ck, p = c * kh * kw, dh * dw
    dtype = x.dtype
    # Eq. (7): dE/dk[j,i] = rot180(sum_n conv2(x_i, rot180(delta_j), 'valid')); with the windows
    # read backwards, the columns of the forward pass give the gradient in kernel order.
    partial = {}
    dots = _dots(o * ck, p)
    wide = _wide_windows(x, kh, kw, dh) if n > 1 and p >= 16 and _use_wide(w, dw) else None
    if wide is not None:  # Note [Wide columns]; the deltas get zeros at the unwanted outputs
        q = dh * w

        def work_wide(index, start, stop):
            m = stop - start
            columns = _wide_columns(wide, start, stop, q)
            grid = _zero_bordered("dgrid", (m, o, dh, w), dtype, (dw,))
            np.copyto(grid[..., :dw], delta[start:stop])
            if dots is not None:  # Note [Kernel gradient as dot products]
                partial[index] = dots(grid.reshape(m, o, q), columns.reshape(m, ck, q))
                return
            columns = columns.reshape(m, ck, q).transpose(0, 2, 1)
            partial[index] = np.matmul(grid.reshape(m, o, q), columns).sum(axis=0)

        _run(work_wide, n, (ck + o) * q * dtype.itemsize, o * ck * q)
    else:
        _kernel_grad_columns(x, delta, kh, kw, partial, dots)
    grad = _sum_in_order(partial).reshape(o, c, kh, kw)
    if selection is not None:
        grad *= selection[:, :, None, None]
    return grad


def conv_backward(x, dy, y, activation, selection=None, up=1, need_delta=True, padding=(0, 0)):
    """Fused parameter gradients of a convolution layer (``Note [Fused ops]`` in anycnn.ops):
    on the direct kernels, ``delta = f'(u) o up(dy)`` is formed as it is copied onto the
    kernel-gradient grid, the bias gradient summed there, and delta written out only when
    asked for (Note [Direct convolutions] in _direct); otherwise the chain of backend ops.
    With ``padding``, eq. (7) runs on a zero-padded copy of ``x`` (Note [Zero padding])."""
    if _usable(x, dy):
        x = _padded(x, padding)
    else:
        return _reference.conv_backward(x, dy, y, activation, selection, up, need_delta, padding)
    formula = _sensitivity_formula(activation, y)
    c, o = x.shape[1], y.shape[1]
    if (
        formula is not None
        and _usable(x, dy)
        and dy.dtype == y.dtype
        and dy.shape[:2] == y.shape[:2]
        and _fits_up(dy.shape[2], up, y.shape[2])
        and _fits_up(dy.shape[3], up, y.shape[3])
        and _direct(x, dy, o * c)
        and _compiled_layout(y)
    ):
        return _direct_backward(x, dy, y, formula, selection, up, need_delta)
    if up > 1:
        dy = np.ascontiguousarray(_reference.fit_maps(kron_upsample(dy, up), *y.shape[2:]))
    delta = sensitivity(dy, y, activation)
    grad = conv_kernel_grad(x, delta, selection)
    return grad, np.sum(delta, axis=(0, 2, 3)), delta if need_delta else None


def _fits_up(small: int, up: int, size: int) -> bool:
    """Whether ``up(dy)`` along an axis of ``small`` deltas covers ``size`` outputs up to a
    subsampling remainder: ``size // up`` deltas ("drop") or ``ceil(size / up)`` ("pad")."""
    return size // up <= small <= -(-size // up) and small > 0


def _direct_backward(x, dy, y, formula, selection, up, need_delta):
    """conv_backward on the direct kernels: ``(kernel_grad, bias_grad, delta or None)``."""
    n, c, h, w = x.shape
    _, o, dh, dw = y.shape
    kh, kw = h - dh + 1, w - dw + 1
    dtype = x.dtype
    name, p0, p1, scaled = formula
    codes = _jit.direct_sensitivities
    t = dtype.type
    sens = (codes[name], t(p0), t(p1), scaled)
    active, chunk = _active(selection, o, c), _jit.direct_chunk(dh, w, dtype.itemsize)
    delta = np.empty(y.shape, dtype) if need_delta else np.empty((0, 0, 0, 0), dtype)
    partial, bias = {}, {}

    def work(index, start, stop):
        partial[index], bias[index] = _jit.correlate_grad(
            x, dy, y, sens, up, active, start, stop, chunk, delta
        )

    _run_direct(work, n, o * c * kh * kw * dh * dw)
    grad = _sum_in_order(partial)[:, :, ::-1, ::-1]  # correlation -> conv2 orientation
    if selection is not None:
        grad = grad * selection[:, :, None, None]
    return (
        np.ascontiguousarray(grad),
        _sum_in_order(bias).astype(dtype),
        delta if need_delta else None,
    )


def _sensitivity_formula(activation, y) -> tuple | None:
    """``(name, p0, p1, scaled)`` of the compiled ``f'(u) o dy`` (Note [Sensitivity kernel] in
    _jit) for ``activation`` on outputs like ``y``, or None: ``"logistic"``, ``gain y (1 - y)``
    (``scaled`` when the gain is not 1); ``"tanh"``, ``((a - y)(y + a))(b / a)``; ``"identity"``."""
    from anycnn.layers.activations import Identity, LeCunTanh, Sigmoid, Tanh

    kind = type(activation)  # exact types: a subclass may redefine f'
    if y.dtype not in _COMPILED_DTYPES:
        return None
    if kind is Sigmoid:
        return ("logistic", activation.gain, 0.0, activation.gain != 1.0)
    if kind in (Tanh, LeCunTanh):
        a, b = activation.a, activation.b
        return ("tanh", a, b / a, True)
    if kind is Identity:
        return ("identity", 0.0, 0.0, False)
    return None


def _sum_in_order(partial: dict) -> np.ndarray:
    """The sum of per-slice partial results, in slice order: the same for any thread count."""
    total = partial[0]
    for index in range(1, len(partial)):
        total += partial[index]
    return total


def _dots(result_size: int, length: int):
    """The compiled kernel-gradient sum when it is the faster way, else None (BLAS)."""
    if _jit.kernel_grad_sum is None or result_size > _jit.MAX_RESULT or length < _jit.MIN_LENGTH:
        return None
    return _jit.kernel_grad_sum


def _kernel_grad_columns(x, delta, kh, kw, partial, dots) -> None:
    """conv_kernel_grad's partial sums, one per batch slice, by plain im2col."""
    n, c, h, w = x.shape
    _, o, dh, dw = delta.shape
    ck, p = c * kh * kw, dh * dw
    dtype = x.dtype
    windows = _windows(x, kh, kw, dh, dw, flip=True)
    deltas = delta.reshape(n, o, p)

    def work(index, start, stop):
        m = stop - start
        columns = _scratch("columns", (m, c, kh, kw, dh, dw), dtype)
        np.copyto(columns, windows[start:stop])
        columns = columns.reshape(m, ck, p)
        if dots is not None:  # Note [Kernel gradient as dot products]
            partial[index] = dots(np.ascontiguousarray(deltas[start:stop]), columns)
        elif m == 1:
            partial[index] = deltas[start] @ columns[0].T
        elif p >= 16:
            # One small GEMM per example, summed: OpenBLAS runs products this small without
            # its buffer lock, so the pool's threads run them side by side; one long-K GEMM
            # per slice is as fast alone but serialises across threads (0.97x on 2 threads).
            partial[index] = np.matmul(deltas[start:stop], columns.transpose(0, 2, 1)).sum(axis=0)
        else:  # maps of a few pixels (LeNet-5's C5): per-example products would be outer ones
            d = np.ascontiguousarray(deltas[start:stop].transpose(1, 0, 2)).reshape(o, m * p)
            cols = np.ascontiguousarray(columns.transpose(1, 0, 2)).reshape(ck, m * p)
            partial[index] = d @ cols.T

    _run(work, n, (ck + o) * p * dtype.itemsize, o * ck * p)


def conv_full(delta, kernel, selection=None, padding=(0, 0)):
    if not _usable(delta, kernel):
        return _reference.conv_full(delta, kernel, selection, padding)
    ph, pw = padding
    n, o, h, w = delta.shape
    _, c, kh, kw = kernel.shape
    if (ph or pw) and not (
        ph < kh and pw < kw and h * w > 1 and _direct(delta, kernel, o * c)
    ):  # Note [Zero padding] in anycnn.ops: the 'full' convolution, cropped back
        full = conv_full(delta, kernel, selection)
        return np.ascontiguousarray(full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw])
    oh, ow = h + kh - 1 - 2 * ph, w + kw - 1 - 2 * pw
    taps = kh * kw
    dtype = delta.dtype
    # g[n, i] = sum_j conv2(delta_j, rot180(k_ji), 'full'), i.e.
    #   g[i, Y, X] = sum_{a, b} sum_j k[j, i, a', b'] delta[j, Y - a, X - b]   (a' = kh-1-a, ...)
    # (the 'full' convolution of the notes reads the kernel backwards), in two halves:
    # * the sum over b and j is one GEMM on horizontally shifted copies of delta,
    #     D[(j, b), (y, X)] = delta[j, y, X - b] (zero outside),  (kw copies of delta)
    #     T[(i, a), (y, X)] = sum_{j, b} k[j, i, a', b'] D[(j, b), (y, X)];
    # * the sum over a is col2im over whole rows: g[i] = sum_a T[(i, a)] shifted down a rows,
    #   a flat offset of a * ow, so each plane is one contiguous copy.
    # That costs the exact convolution's multiplications (im2col of the zero-padded delta costs
    # (h+kh-1)/h times more) and moves kh planes of g's size where a spread over all kh*kw taps
    # moved kh*kw (DLT's C3 at batch 256: 1.55 -> 1.14 ms, LeNet-5's C3 3.3 -> 2.2 ms).
    if h * w > 1 and _direct(delta, kernel, o * c):  # Note [Direct convolutions] in _direct
        # g[i] = sum_j corr(pad(delta_j), k_ji): the kernels transposed, not flipped; a layer's
        # (ph, pw) padding crops the result, i.e. pads delta by (ph, pw) less.
        weights = np.ascontiguousarray(_masked(kernel, selection).transpose(1, 0, 2, 3))
        active = _active(None if selection is None else selection.T, c, o)
        chunk = _jit.direct_chunk(oh, w + kw - 1 - pw, dtype.itemsize)
        identity = _no_activation(dtype)
        out = np.empty((n, c, oh, ow), dtype=dtype)

        def work_direct(index, start, stop):
            _jit.correlate_into(
                delta,
                kh - 1 - ph,
                kw - 1 - pw,
                weights,
                _zeros(c, dtype),
                active,
                identity,
                out,
                start,
                stop,
                chunk,
            )

        _run_direct(work_direct, n, o * c * taps * h * w)
        return out
    weights = _masked(kernel, selection)[:, :, ::-1, ::-1]
    if h == 1 and w == 1:  # nothing to shift (LeNet-5's C5): g[i, a, b] = sum_j k' delta
        spread = np.ascontiguousarray(weights.transpose(1, 2, 3, 0)).reshape(c * taps, o)
        return _gemm(delta.reshape(n, o), spread.T).reshape(n, c, kh, kw)
    weights = np.ascontiguousarray(weights.transpose(1, 2, 0, 3)).reshape(c * kh, o * kw)
    padded_w = w + 2 * (kw - 1)
    rows = h * ow
    size = oh * ow
    item = dtype.itemsize
    out = np.empty((n, c, oh, ow), dtype=dtype)
    flat = out.reshape(n, c, size)

    def work(index, start, stop):
        m = stop - start
        # delta with kw-1 zero columns either side; D reads it at column X - b + kw - 1.
        padded = _zero_bordered("padded", (m, o, h, padded_w), dtype, (kw, w))
        padded[..., kw - 1 : kw - 1 + w] = delta[start:stop]
        pm, po, ph, _ = padded.strides
        shifts = np.ndarray(
            (m, o, kw, h, ow), dtype, padded, (kw - 1) * item, (pm, po, -item, ph, item)
        )
        columns = _scratch("shifts", (m, o, kw, h, ow), dtype)
        np.copyto(columns, shifts)
        t = _scratch("rows", (m, c, kh, rows), dtype)
        np.matmul(weights, columns.reshape(m, o * kw, rows), out=t.reshape(m, c * kh, rows))
        # Plane a goes to flat offset a * ow of a buffer of kh zeroed planes of g's size (the
        # zeros outside the copied rows are written once per buffer), summed by one reduction.
        planes = _zero_bordered("planes", (m, c, kh, size), dtype, (kh, ow, rows))
        sm, sc, st, _ = planes.strides
        np.copyto(np.ndarray((m, c, kh, rows), dtype, planes, 0, (sm, sc, st + ow * item, item)), t)
        np.sum(planes, axis=2, out=flat[start:stop])

    _run(work, n, (o * kw * rows + c * kh * (rows + size)) * item, c * kh * o * kw * rows)
    return out


# --- sensitivities -------------------------------------------------------------------------------
def sensitivity(dy, y, activation):
    """Fused ``f'(u) o dy`` (``Note [Fused ops]`` in anycnn.ops) for the logistic and the scaled
    tanh: one compiled pass on the pool's threads (Note [Sensitivity kernel] in _jit), the bits
    of ``activation.sensitivity``; other activations, dtypes or layouts take that method."""
    kernel = _jit.sensitivity_into
    formula = _sensitivity_formula(activation, y)
    if (
        kernel is None
        or formula is None
        or formula[0] == "identity"
        or dy.dtype != y.dtype
        or dy.shape != y.shape
        or not (_compiled_layout(dy) and _compiled_layout(y))
        or y.ndim == 0
        or y.size == 0
    ):
        return activation.sensitivity(dy, y, np)
    t = y.dtype.type
    name, p0, p1, scaled = formula
    code, p0, p1 = (0 if name == "logistic" else 1), t(p0), t(p1)
    n = y.shape[0]
    flat_dy, flat_y = dy.reshape(n, -1), y.reshape(n, -1)
    out = np.empty_like(y)
    flat = out.reshape(n, -1)

    def work(index, start, stop):
        kernel(flat_dy, flat_y, code, p0, p1, scaled, flat, start, stop)

    _run(work, n, 3 * flat.shape[1] * y.itemsize, 0)
    return out


# --- trainable subsampling layers (a fused op, Note [Fused ops] in anycnn.ops) -------------------
def subsample_backward(dy, y, d, beta, activation, need_input_grad=True):
    """Fused gradients of a trainable subsampling layer: ``delta = f'(u) o dy`` by the
    ``sensitivity`` op (the chain's bits), then the sums of ``delta o d`` and ``delta`` per map
    and ``beta delta`` in one compiled pass per batch slice (``beta delta`` the chain's bits,
    the sums to rounding: taken in another order)."""
    kernel = _jit.subsample_sums_into
    if (
        kernel is None
        or any(a.dtype != y.dtype or a.shape != y.shape or not _compiled_layout(a) for a in (dy, d))
        or beta.dtype != y.dtype
        or not _compiled_layout(y)
    ):
        return _reference.subsample_backward(dy, y, d, beta, activation, need_input_grad)
    delta = sensitivity(dy, y, activation)
    if not (_compiled_layout(delta) and delta.dtype == y.dtype):
        return _reference.subsample_backward(dy, y, d, beta, activation, need_input_grad)
    out = np.empty_like(y) if need_input_grad else np.empty((0, 0, 0, 0), y.dtype)
    betas, biases = {}, {}

    def work(index, start, stop):
        betas[index], biases[index] = kernel(delta, d, beta, out, start, stop)

    _run(work, y.shape[0], 3 * y[0].size * y.itemsize, 0)
    grad_beta = _sum_in_order(betas).astype(y.dtype)
    grad_bias = _sum_in_order(biases).astype(y.dtype)
    return grad_beta, grad_bias, out if need_input_grad else None


# --- up- and down-sampling -----------------------------------------------------------------------
def _compiled_layout(x: np.ndarray) -> bool:
    """Arrays the compiled resampling kernels take: C-contiguous float32/float64."""
    return x.flags.c_contiguous and x.dtype in _COMPILED_DTYPES


_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def kron_upsample(x, n):
    b, c, h, w = x.shape
    if n == 1:
        return x.copy()
    out = np.empty((b, c, h * n, w * n), dtype=x.dtype)
    kron_into = _jit.kron_into
    if kron_into is not None and _compiled_layout(x):  # Note [Resampling kernels] in _jit

        def work_compiled(index, start, stop):
            kron_into(x, n, out, start, stop)

        _run(work_compiled, b, c * h * w * n * n * x.dtype.itemsize, 0)
        return out
    # Fill the first row of every n x n block column by column, then copy that row down:
    # strided writes along one axis at a time instead of a broadcast with a length-n inner loop.
    rows = out.reshape(b, c, h, n, w * n)

    def work(index, start, stop):
        first = rows[start:stop, :, :, 0, :]
        for j in range(n):
            first[..., j::n] = x[start:stop]
        for i in range(1, n):
            rows[start:stop, :, :, i, :] = first

    _run(work, b, c * h * w * n * n * x.dtype.itemsize, 0)
    return out


def _block_sum(x, n, scale):
    b, c, h, w = x.shape
    # Sum the n rows of each block (contiguous rows), then the n columns (strided reads);
    # a reshape and a sum over two short axes is an order of magnitude slower in NumPy.
    out = np.empty((b, c, h // n, w // n), dtype=x.dtype)
    block_sum_into = _jit.block_sum_into
    if block_sum_into is not None and _compiled_layout(x):  # Note [Resampling kernels] in _jit
        factor = x.dtype.type(1 if scale is None else scale)

        def work_compiled(index, start, stop):
            block_sum_into(x, n, factor, out, start, stop)

        _run(work_compiled, b, c * h * w * x.dtype.itemsize, 0)
        return out
    rows = x.reshape(b, c, h // n, n, w)

    def work(index, start, stop):
        tall = np.add(rows[start:stop, :, :, 0, :], rows[start:stop, :, :, 1, :])
        for i in range(2, n):
            tall += rows[start:stop, :, :, i, :]
        part = out[start:stop]
        np.add(tall[..., 0::n], tall[..., 1::n], out=part)
        for j in range(2, n):
            part += tall[..., j::n]
        if scale is not None:
            part *= scale

    _run(work, b, c * h * w * x.dtype.itemsize, 0)
    return out


def block_sum(x, n):
    if n == 1:
        return x.copy()
    return _block_sum(x, n, None)


def block_mean(x, n):
    if x.dtype.kind != "f":
        return _reference.block_mean(x, n)
    if n == 1:
        return x.copy()
    return _block_sum(x, n, 1.0 / (n * n))


def decimate(x, n):
    b, c, h, w = x.shape
    return np.ascontiguousarray(x[:, :, 0 : h - h % n : n, 0 : w - w % n : n])


def decimate_transpose(delta, n):
    b, c, h, w = delta.shape
    out = np.zeros((b, c, h * n, w * n), dtype=delta.dtype)
    out[:, :, ::n, ::n] = delta
    return out


# --- fully connected layers ---------------------------------------------------------------------
def fully_connected(x, weight):
    if not _usable(x, weight):
        return _reference.fully_connected(x, weight)
    return _gemm(x, weight.T)


def fully_connected_weight_grad(x, delta):
    if not _usable(x, delta):
        return _reference.fully_connected_weight_grad(x, delta)
    return _gemm_sum(delta.T, x)


def fully_connected_input_grad(delta, weight):
    if not _usable(delta, weight):
        return _reference.fully_connected_input_grad(delta, weight)
    return _gemm(delta, weight)


OPS = {
    "conv_valid": conv_valid,
    "conv_valid_activate": conv_valid_activate,
    "conv_backward": conv_backward,
    "subsample_backward": subsample_backward,
    "sensitivity": sensitivity,
    "conv_full": conv_full,
    "conv_kernel_grad": conv_kernel_grad,
    "kron_upsample": kron_upsample,
    "block_sum": block_sum,
    "block_mean": block_mean,
    "decimate": decimate,
    "decimate_transpose": decimate_transpose,
    "fully_connected": fully_connected,
    "fully_connected_weight_grad": fully_connected_weight_grad,
    "fully_connected_input_grad": fully_connected_input_grad,
}
