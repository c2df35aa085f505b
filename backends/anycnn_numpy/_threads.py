"""The NumPy backend's threads: a small pool that runs an op's batch slices side by side.

NumPy releases the GIL inside copies, ufunc loops and BLAS calls, and the compiled kernels
(``_jit``) run without it, so a large batch is cut into slices that a few threads (the calling
thread included) take one at a time. Slices are taken, not assigned: when the machine is busy
and a helper does not get a core, the calling thread does the work itself instead of waiting at
a barrier (``Note [Helpers on a busy machine]``). The slicing depends on the batch only, never
on the thread count, and partial sums are added in slice order (:func:`sum_in_order`), so
results are the same bits on any number of threads. While slices run, BLAS is held to one
thread (:class:`_BlasThreads`). The compiled kernels' slices are taken by compiled drivers,
so that no thread waits for the GIL while another holds it (:meth:`_Pool.run_compiled`, Note
[Slices taken in compiled code] in ``_direct``). Nothing here runs at import: the helpers
start, the spin is calibrated and the BLAS libraries are looked up when the first op is cut
into slices.

Measurements behind the constants: ``bench/results/numpy-notes.md``.

Note [Own pool, not prange]
~~~~~~~~~~~~~~~~~~~~~~~~~~~
Numba's ``parallel=True`` / ``prange`` could run the compiled kernels' slices without a pool of
our own. ``bench/pool.py`` compares the two on the same slices (same bits): on a loaded 2-core
machine Numba's default threading layer (OpenMP) made sliced training steps 2.6-20x slower,
because a parallel region waits at its barrier for a worker the machine has not scheduled, where
this pool's caller takes the slices no helper has started (and falls back to working alone,
Note [Helpers on a busy machine]); its workqueue layer was 4-5x slower at LeNet-5 batch 16 and
faster at batch 256. prange also covers compiled kernels only: the im2col + BLAS paths (all of
them without Numba; LeNet-5's C5 and the fully connected layers with it) need threads anyway.
So the pool stays; bench/results/numpy-notes.md, "Own pool, not Numba's prange", has the figures.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time

import numpy as np

from anycnn import subnormals as _subnormals
from anycnn_numpy import _jit


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

#: OpenBLAS runs a GEMM with M*N*K up to 65536 * GEMM_MULTITHREAD_THRESHOLD (4) on one thread.
_BLAS_SPLIT_SIZE = 65536 * 4


# Note [Few large slices]
# ~~~~~~~~~~~~~~~~~~~~~~~
# An op's batch slices once had 1 MiB of scratch (a core's L2), at least 4 of them. Every slice
# runs Python between its NumPy calls, and two threads wait for each other's GIL there, so fewer,
# larger slices won although their scratch no longer fits in L2: with 2 MiB slices, at least 2,
# their number rounded up to even (odd counts left one of two threads idle at the end), training
# steps at batch 50-256 got faster, 4 MiB slices no faster (figures: bench/results/numpy-notes.md,
# "Few large slices").
_SLICE_BYTES = 1 << 21
# Below this much scratch one thread does it all: waking a helper costs tens of microseconds,
# more than a small op gains (ibid.).
_MIN_PARALLEL_BYTES = 1 << 21


# Note [Small jobs alone]
# ~~~~~~~~~~~~~~~~~~~~~~~
# The slices of an op run side by side only while each spends its time inside NumPy calls that
# release the GIL; a slice also runs Python between those calls, and two threads then hand the
# GIL back and forth. Below about 2 MiB of scratch in all, an op ran faster on the calling
# thread alone (DLT's and LeNet-5's training steps at batch 16); at batch 50 and above the
# helpers win again. Since slices hold _SLICE_BYTES = 2 MiB (Note [Few large slices]), such
# an op is a single slice, which run() calls on the calling thread. BLAS stays at one thread
# while slices run, since OpenBLAS's own threads spin after each call on the cores the next
# op's helpers need (LeNet-5's step at batch 256 took 1.4x as long when they did not). Figures:
# bench/results/numpy-notes.md, "Small jobs alone".


def _default_threads() -> int:
    value = os.environ.get("ANYCNN_NUM_THREADS", "").strip()
    if value:
        return max(1, int(value))
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


#: Per pool thread: the subnormal flushing its MXCSR was last set to (Note [Subnormals]).
_local = threading.local()


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

    def work(self, helper: bool = False) -> bool:
        if helper and getattr(_local, "flush", False) != self.flush:
            _subnormals.set_flush_bits(self.flush)  # this pool thread's MXCSR, kept for the next
            _local.flush = self.flush
        with np.errstate(**self.errstate):
            self._work(helper)
        return False

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


class _CompiledJob:
    """A job whose slices a compiled driver takes (Note [Slices taken in compiled code] in
    _direct): the helpers call the driver too."""

    __slots__ = ("driver", "args", "bounds", "ctrl", "done", "error", "flush", "running")

    def __init__(self, driver, args, bounds, ctrl):
        self.flush = _subnormals.is_flushing()  # Note [Subnormals] in anycnn.subnormals
        self.driver, self.args, self.bounds, self.ctrl = driver, args, bounds, ctrl
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.running: list = []  # helpers inside the driver (list.append/pop: atomic)

    def work(self, helper: bool = True) -> bool:
        """A helper's part; True if it joined the job (then it must count itself back)."""
        if getattr(_local, "flush", False) != self.flush:
            _subnormals.set_flush_bits(self.flush)
            _local.flush = self.flush
        self.running.append(None)
        try:
            joined = self.driver(*self.args, self.bounds, self.ctrl, _pool._board, _jit.HELPER, 0)
        except BaseException as error:  # re-raised in the calling thread
            self.error, joined = error, False
        self.running.pop()
        self.done.set()
        return joined


#: The ``last`` job of a helper that has had none.
_NO_JOB = np.zeros(8, np.int64)


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
        # Note [Spinning helpers], Note [Slices taken in compiled code] in _direct: board[0] is
        # the number of the last job a helper may start on (a job of Python slices when it is
        # posted, a compiled one once its caller is inside its driver), watched by helpers
        # between jobs.
        self._board = np.zeros(8, np.int64)
        self._seq = 0

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
        cv, board = self._cv, self._board
        last, joined = _NO_JOB, False
        while True:
            seen = int(board[0])  # before looking at the queue: no post can slip between
            with cv:
                job = self._queue.pop() if self._queue else None
            if joined or (job is None and _spin.turns):
                # Back from a compiled job (its caller waits for that: Note [Slices taken in
                # compiled code] in _direct), then spinning for the next (Note [Spinning
                # helpers]), without the GIL.
                _jit.helper_wait(
                    board, seen, _spin.helper_turns if job is None else 0, last, joined
                )
                joined = False
            if job is None:
                with cv:
                    while not self._queue:
                        cv.wait()
                    job = self._queue.pop()
            joined = job.work(helper=True)
            if joined:
                last = job.ctrl

    def run(self, function, slices, gemm_size: int = 0) -> None:
        """Call ``function(index, start, stop)`` for every slice; return when all are done.

        ``gemm_size`` is M*N*K of the largest matrix product one slice makes: above OpenBLAS's
        threshold for splitting a GEMM over its threads, BLAS is held to one thread meanwhile;
        0 says the slices call no BLAS, and BLAS's thread count is left alone (setting it and
        back cost 3-30 us a job, the more on a busy machine).
        """
        if len(slices) == 1 and gemm_size <= _BLAS_SPLIT_SIZE:
            function(0, *slices[0])
            return
        if gemm_size == 0:  # slices that call no BLAS (compiled kernels, NumPy loops)
            self._run(function, slices)
            return
        changed = _blas_threads.limit()
        try:
            if len(slices) == 1:
                # One slice is the caller's alone: posting it as a job changed the board that
                # spinning helpers watch, and one woke to take the GIL for an empty queue while
                # the caller needed it (~35-60 us before LeNet-5's C5 product began).
                function(0, *slices[0])
            else:
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
            self._seq += 1
            self._board[0] = self._seq
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
        self._count_late(waited, finished - posted)
        if job.error is not None:
            raise job.error

    def _count_late(self, waited: float, took: float) -> None:
        # Note [Helpers on a busy machine]: a helper that has no core (other processes hold
        # them) can take a slice and be preempted inside it while the caller waits; on a shared
        # 2-core machine that made LeNet-5's batch-256 step slower than on one thread
        # (bench/results/numpy-notes.md, "Helpers on a busy machine"). After
        # 3 jobs in a row whose caller waited for over a quarter of the job (and over 0.1 ms),
        # the next 64 run on the calling thread alone, then the helpers are tried again.
        if waited > 1e-4 and waited * 4 > took:
            self._late += 1
            if self._late >= 3:
                self._late, self._alone = 0, 64
        else:
            self._late = 0

    def run_compiled(self, driver, args: tuple, bounds: np.ndarray) -> None:
        """Call the compiled ``driver(*args, bounds, ctrl, board, role, limit)`` on this thread
        and the helpers: each takes slices ``bounds[i] : bounds[i + 1]`` until none is left
        (Note [Slices taken in compiled code] in _direct); return when all are done."""
        count = len(bounds) - 1
        ctrl = np.zeros(_jit.CTRL_SIZE, np.int64)
        if count == 1 or self.threads == 1 or self._alone:
            if self._alone and count > 1:
                self._alone -= 1
            driver(*args, bounds, ctrl, self._board, _jit.ALONE, 0)
            return
        job = _CompiledJob(driver, args, bounds, ctrl)
        if len(self._workers) < self.threads - 1:
            self._late = -3  # the helpers start now: their first jobs do not count
        self._ensure_workers()
        self._seq += 1
        ctrl[_jit.SEQ] = self._seq
        with self._cv:
            self._queue.extend([job] * min(self.threads - 1, count - 1))
            self._cv.notify(self.threads - 1)
        started = time.perf_counter()
        try:
            driver(*args, bounds, ctrl, self._board, _jit.CALLER, _spin.caller_turns)
        except BaseException as error:  # no slice more; the helpers' slices end first
            ctrl[_jit.NEXT] = count
            job.error = error
        waited = ctrl[_jit.WAITED] / _spin.per_us * 1e-6
        while (ctrl[_jit.DONE] < count and job.error is None) or job.running:
            job.done.wait(1e-3)  # a helper still inside its slice after the caller's spin
            job.done.clear()
            waited = time.perf_counter() - started
        if self._queue:  # entries no helper picked up: drop them
            with self._cv:
                self._queue[:] = [j for j in self._queue if j is not job]
        self._count_late(waited, time.perf_counter() - started)
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
    loop (``_jit.helper_wait`` for helpers, ``_jit.spin_while`` for a caller of Python slices)
    that holds no GIL, so it does not slow the thread doing the work;
    it costs the helper's core up to HELPER_SPIN_US of busy time after the last op of a burst.
    It recovers only part of the latency: a thread that sees the signal still needs the GIL,
    and waiting for a GIL the other thread holds is a sleep too (which is why the compiled
    kernels' slices are taken in compiled code: Note [Slices taken in compiled code] in
    ``_direct``). On a quiet 2-core VM it took
    1-8% off training steps at batch 50-256; on a loaded one it made no measurable difference
    (bench/results/numpy-notes.md, "Spinning helpers"; ``python bench/pool.py`` measures it
    again, as ``pool`` against ``pool-nospin``). Without Numba, or with ANYCNN_SPIN_US=0, the
    threads block at once.
    """

    HELPER_SPIN_US = 300.0
    CALLER_SPIN_US = 2000.0

    def __init__(self) -> None:
        self.turns = 0  # 0 until calibrated, and where there is no spinning
        self.helper_turns = self.caller_turns = 0
        self.per_us = 1.0  # turns of the spin loop per microsecond, once calibrated
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
        self.per_us = per_us
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


def slices(n: int, bytes_per_item: int) -> list[tuple[int, int]]:
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


def run(work, n: int, bytes_per_item: int, gemm_per_item: int) -> None:
    """Run ``work(index, start, stop)`` over batch slices (see slices and _Pool.run)."""
    if n * bytes_per_item <= _SLICE_BYTES and n * gemm_per_item <= _BLAS_SPLIT_SIZE:
        work(0, 0, n)  # the common small case, alone (Note [Small jobs alone])
        return
    parts = slices(n, bytes_per_item)
    gemm_size = gemm_per_item * max(stop - start for start, stop in parts)
    _pool.run(work, parts, gemm_size)


#: A direct convolution is cut into batch slices for the pool's threads from this many
#: multiply-adds on (about 25 us on one core), and into slices of about DIRECT_SLICE_MACS; the
#: count depends on the batch only (and is even), as slices' does.
DIRECT_PARALLEL_MACS = 2_000_000
DIRECT_SLICE_MACS = 8_000_000


def direct_bounds(n: int, macs_per_item: int) -> list[int]:
    """The batch slices of a direct convolution, as bounds ``[0, ..., n]`` (see above)."""
    total = n * macs_per_item
    if n == 1 or total < DIRECT_PARALLEL_MACS:
        return [0, n]
    count = max(_PARALLEL_SLICES, -(-total // DIRECT_SLICE_MACS))
    count = min(n, -(-count // _PARALLEL_SLICES) * _PARALLEL_SLICES)
    return [n * i // count for i in range(count + 1)]


def run_direct(work, n: int, macs_per_item: int) -> None:
    """Run ``work(index, start, stop)`` over batch slices sized by multiply-adds (see above)."""
    bounds = direct_bounds(n, macs_per_item)
    if len(bounds) == 2:
        work(0, 0, n)
        return
    _pool.run(work, [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)])


def run_compiled(driver, args: tuple, bounds: list[int]) -> None:
    """Run the compiled ``driver`` over the slices ``bounds`` (Note [Slices taken in compiled
    code] in _direct; see _Pool.run_compiled)."""
    _pool.run_compiled(driver, args, np.array(bounds, dtype=np.int64))


def sum_in_order(partial: dict) -> np.ndarray:
    """The sum of per-slice partial results, in slice order: the same for any thread count."""
    total = partial[0]
    for index in range(1, len(partial)):
        total += partial[index]
    return total
