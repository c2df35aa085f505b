"""Data-parallel training over MPI: the communicator, gradient averaging and fault handling.

::

    mpiexec -n 4 anycnn train --model lenet5 --batch-size 256     # 4 processes, global batch 256

    from anycnn import distributed, train
    comm = distributed.init()                # "mpi" under mpiexec, else "single" (size 1)
    result = train.train(net, ds, epochs=2, batch_size=256, distributed=comm)

:func:`init` returns a communicator with ``rank``, ``size``, ``local_rank`` / ``local_size``
(the processes on this host), ``allreduce_`` (in-place sum), ``broadcast_`` (in place, from a
root), ``broadcast_object``, ``barrier`` and ``abort``. Two engines: ``"mpi"`` (mpi4py, the
``mpi`` extra) and ``"single"`` (size 1, no dependency). Under an MPI launcher (Open MPI,
MPICH/Hydra, Intel MPI, MVAPICH, PMIx) :func:`init` picks ``"mpi"``; otherwise ``"single"``.

Note [Data-parallel step]
~~~~~~~~~~~~~~~~~~~~~~~~~
``batch_size`` is the global batch ``B``. Every rank holds the whole data set and the same
generator state (broadcast from rank 0), so every rank draws the same permutation and the same
global batches; rank ``r`` of ``N`` takes the slice ``[r B / N, (r + 1) B / N)`` of each (the
same rule for the last, smaller batch). The losses are batch means (eq. 1 over a batch, divided
by its size), so with ``b_r`` patterns on rank ``r`` the global-batch gradient is
``sum_r (b_r / B) g_r``: :class:`GradientAverager` packs ``(b_r / B) g_r`` of every parameter
of one dtype into one persistent flat buffer, sums it across ranks with one in-place
allreduce and unpacks it into the gradients, which the optimizer then applies as in one
process. Uneven shards are weighted exactly this way; a rank whose shard is empty (a last batch
smaller than ``N``) contributes zeros. Every rank then holds the same parameters; they differ
from a single process's only by the order of the floating-point sums (float64: ~1e-15 relative
after a few steps, tests/test_distributed.py).

SDLM's curvature (Note [Diagonal Gauss-Newton curvature] in :mod:`anycnn.training.optim`) is
estimated the same way: every rank draws the same sample, takes its slice, and the pattern-weighted
sums and the count are added with one allreduce before dividing.

Evaluation is sharded by contiguous slices of the test set; the mistakes and the patterns are
integers summed across ranks, so the test error is exactly the single-process figure.

Faults: an exception on any rank is printed as one line naming the rank, then the job is
aborted (``MPI_Abort``: every process of the job ends within seconds; nothing hangs in a
collective). A NaN or infinite loss is detected collectively (the per-batch losses are summed
across ranks before the check), so every rank raises :class:`anycnn.training.loop.DivergenceError`
together and ``anycnn train`` exits 3 on all of them. A rank killed by a signal ends the job
(Open MPI's launcher kills the others); checkpoints are written atomically by rank 0 with a
barrier after each, so the last one always loads.

GPUs: one process per GPU, the device chosen from ``local_rank`` (:func:`select_device`). CuPy
arrays are summed by NCCL (``cupy.cuda.nccl``; the unique id is broadcast over MPI) on the
device, never through the host (:class:`NCCLReducer`). Untested on hardware: no GPU was
available when it was written; the packing and the engine choice are tested with a stand-in.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from anycnn.backend import backend_of

__all__ = [
    "Communicator",
    "DistributedError",
    "GradientAverager",
    "MPICommunicator",
    "NCCLReducer",
    "SingleCommunicator",
    "init",
    "launched_by_mpi",
    "select_device",
    "set_rank_threads",
    "shard",
]

Array = Any

#: Environment variables an MPI launcher sets in each process it starts, with the world size.
LAUNCH_SIZE_VARIABLES = (
    "OMPI_COMM_WORLD_SIZE",  # Open MPI
    "PMI_SIZE",  # MPICH / Hydra, Intel MPI
    "PMIX_SIZE",
    "MV2_COMM_WORLD_SIZE",  # MVAPICH
    "MPI_LOCALNRANKS",
)
#: Set by launchers even where the size variable is missing.
LAUNCH_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")


class DistributedError(RuntimeError):
    """The distributed engine cannot be used (mpi4py missing, a bad engine name...).

    Examples
    --------
    >>> from anycnn.training import distributed
    >>> try:
    ...     distributed.init("carrier-pigeon")
    ... except distributed.DistributedError as error:
    ...     print(error)
    unknown distributed engine 'carrier-pigeon'; known: auto, mpi, single
    """


def launched_by_mpi(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by an MPI launcher (``mpiexec``, ``srun --mpi``...).

    Examples
    --------
    >>> from anycnn.training.distributed import launched_by_mpi
    >>> launched_by_mpi({}), launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "4"})
    (False, True)
    """
    env = os.environ if environ is None else environ
    return any(name in env for name in LAUNCH_SIZE_VARIABLES + LAUNCH_RANK_VARIABLES)


def _launch_size(environ: Mapping[str, str]) -> int | None:
    for name in LAUNCH_SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


# --------------------------------------------------------------------------------------------
# Communicators
# --------------------------------------------------------------------------------------------
class Communicator:
    """What the training loop needs from a distributed engine.

    Attributes: ``engine`` (its name), ``rank`` and ``size`` (in the job), ``local_rank`` and
    ``local_size`` (the processes on this host: the GPU and thread choice use them).

    Examples
    --------
    A new engine subclasses it; :class:`SingleCommunicator` is the smallest one:

    >>> from anycnn.training.distributed import Communicator, SingleCommunicator
    >>> comm = SingleCommunicator()
    >>> isinstance(comm, Communicator), comm.is_root, comm.describe()
    (True, True, 'single: rank 0 of 1 (local 0)')
    """

    engine = "?"
    rank = 0
    size = 1
    local_rank = 0
    local_size = 1

    def allreduce_(self, array: Array) -> Array:
        """Sum ``array`` over all ranks, in place (every rank gets the sum); returns it."""
        raise NotImplementedError

    def broadcast_(self, array: Array, root: int = 0) -> Array:
        """Overwrite ``array`` with ``root``'s, in place; returns it."""
        raise NotImplementedError

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        """``root``'s ``value`` (any picklable object) on every rank."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every rank arrives."""

    def abort(self, code: int = 1) -> None:
        """End every process of the job now with exit status ``code``."""
        os._exit(code)

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"{self.engine}: rank {self.rank} of {self.size} (local {self.local_rank})"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"


class SingleCommunicator(Communicator):
    """One process: every collective is the identity. No dependency.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.training.distributed import SingleCommunicator
    >>> comm = SingleCommunicator()
    >>> x = anycnn.get_backend().asarray(np.arange(3.0), "float64")
    >>> comm.allreduce_(x) is x, comm.broadcast_object({"seed": 1}), comm.size
    (True, {'seed': 1}, 1)
    """

    engine = "single"

    def allreduce_(self, array: Array) -> Array:
        return array

    def broadcast_(self, array: Array, root: int = 0) -> Array:
        return array

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        return value


_MPI_DTYPES = {"float64": "DOUBLE", "float32": "FLOAT", "int64": "INT64_T", "int32": "INT32_T"}


class MPICommunicator(Communicator):
    """mpi4py's ``COMM_WORLD`` (or ``comm``): host arrays through MPI, CuPy arrays through NCCL.

    ``local_rank`` / ``local_size`` come from the shared-memory split of the communicator
    (``MPI.COMM_TYPE_SHARED``): the processes that share this host.

    Examples
    --------
    Under ``mpiexec -n 2`` (not run here: starting MPI inside the doctest process would tie
    it to an MPI job):

    >>> from anycnn.training.distributed import MPICommunicator
    >>> comm = MPICommunicator()                          # doctest: +SKIP
    >>> comm.describe()                                   # doctest: +SKIP
    'mpi: rank 0 of 2 (local 0)'
    """

    engine = "mpi"

    def __init__(self, comm: Any = None):
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise DistributedError(
                f"the mpi engine needs mpi4py ({error}); install it with: pip install "
                "'anycnn[mpi]' (Open MPI wheels included) or pip install mpi4py against the "
                "system's MPI"
            ) from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()
        self._nccl: NCCLReducer | None = None

    # host arrays: MPI; device arrays: NCCL, where their backend offers it (Backend.nccl)
    def _is_device(self, array: Array) -> bool:
        if isinstance(array, np.ndarray):
            return False
        try:
            return backend_of(array).base.nccl is not None
        except TypeError:  # not an array: allreduce_ says what it expects
            return False

    def nccl(self, array: Array = None) -> NCCLReducer:
        """The NCCL communicator of this job (created on first use, collectively), from the
        backend of ``array`` (``Backend.nccl``)."""
        if self._nccl is None:
            source = None if array is None else backend_of(array).base.nccl
            if source is None:
                raise DistributedError("NCCL: no backend offers it for these arrays")
            try:
                module, stream = source()
            except Exception as error:  # noqa: BLE001 - the backend's reason, with the fix
                raise DistributedError(f"device arrays are reduced with NCCL: {error}") from None
            self._nccl = NCCLReducer(self, nccl=module, stream=stream)
        return self._nccl

    def allreduce_(self, array: Array) -> Array:
        if self._is_device(array):
            return self.nccl(array).allreduce_(array)
        if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
            raise TypeError(
                "MPICommunicator.allreduce_: expected a C-contiguous NumPy array (or a CuPy "
                f"array for NCCL), got {type(array).__name__}"
            )
        self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def broadcast_(self, array: Array, root: int = 0) -> Array:
        if self._is_device(array):
            return self.nccl(array).broadcast_(array, root)
        self.comm.Bcast(array, root=root)
        return array

    def broadcast_object(self, value: Any, root: int = 0) -> Any:
        return self.comm.bcast(value, root=root)

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(code)


class NCCLReducer:
    """Sums and broadcasts CuPy arrays with NCCL, on the device (never through the host).

    Rank 0 creates the NCCL unique id, MPI broadcasts it, and every rank joins the NCCL
    communicator with its MPI rank. ``nccl`` (a module like ``cupy.cuda.nccl``) and ``stream``
    (a function giving the current stream's handle) come from the arrays' backend
    (``Backend.nccl``, Note [Backend capabilities]); the tests pass a stand-in to check the
    protocol without a GPU. Untested on hardware.

    Examples
    --------
    With a stand-in for ``cupy.cuda.nccl`` on one process (NumPy arrays, so it runs without a
    GPU; the stand-in only records the calls):

    >>> import numpy as np
    >>> from anycnn.training.distributed import NCCLReducer, SingleCommunicator
    >>> class StandIn:
    ...     NCCL_FLOAT64, NCCL_SUM = 8, 0
    ...     calls = []
    ...     def get_unique_id(self): return b"id"
    ...     def NcclCommunicator(self, size, uid, rank): return self
    ...     def allReduce(self, send, recv, count, kind, op, stream):
    ...         self.calls.append(("allReduce", count, kind, stream))
    >>> nccl = StandIn()
    >>> reducer = NCCLReducer(SingleCommunicator(), nccl=nccl, stream=lambda: 7)
    >>> _ = reducer.allreduce_(np.zeros(5))
    >>> nccl.calls
    [('allReduce', 5, 8, 7)]
    """

    #: NCCL's data type constants by dtype name (attribute names of ``cupy.cuda.nccl``).
    DTYPES = {
        "float16": "NCCL_FLOAT16",
        "float32": "NCCL_FLOAT32",
        "float64": "NCCL_FLOAT64",
        "int32": "NCCL_INT32",
        "int64": "NCCL_INT64",
    }

    def __init__(self, mpi: Communicator, *, nccl: Any, stream: Callable[[], int]):
        self.nccl, self._stream = nccl, stream
        uid = nccl.get_unique_id() if mpi.rank == 0 else None
        uid = mpi.broadcast_object(uid, root=0)
        self.comm = nccl.NcclCommunicator(mpi.size, uid, mpi.rank)

    def _kind(self, array: Array) -> int:
        name = str(array.dtype)
        if name not in self.DTYPES:
            raise TypeError(f"NCCL: no reduction for dtype {name}; known: {list(self.DTYPES)}")
        return getattr(self.nccl, self.DTYPES[name])

    @staticmethod
    def _pointer(array: Array) -> int:
        data = getattr(array, "data", None)
        pointer = getattr(data, "ptr", None)
        if pointer is None:  # NumPy stand-in
            pointer = array.__array_interface__["data"][0]
        return int(pointer)

    def allreduce_(self, array: Array) -> Array:
        pointer = self._pointer(array)
        self.comm.allReduce(
            pointer, pointer, int(array.size), self._kind(array), self.nccl.NCCL_SUM, self._stream()
        )
        return array

    def broadcast_(self, array: Array, root: int = 0) -> Array:
        pointer = self._pointer(array)
        self.comm.bcast(pointer, int(array.size), self._kind(array), root, self._stream())
        return array


# --------------------------------------------------------------------------------------------
# init, threads and devices
# --------------------------------------------------------------------------------------------
_ENGINES = ("auto", "mpi", "single")
_world: Communicator | None = None


def init(
    engine: str | bool | Communicator | None = "auto",
    *,
    abort_on_error: bool = True,
    threads: bool = True,
) -> Communicator:
    """The communicator of this process (created once, then returned again).

    Parameters
    ----------
    engine : "auto", "mpi", "single", True, False, None or a Communicator
        ``"auto"`` (or None): ``"mpi"`` when an MPI launcher started this process, else
        ``"single"``. True is ``"mpi"`` (``--distributed``), False ``"single"``.
    abort_on_error : bool
        With more than one process, install an exception hook that prints one line naming the
        rank and the error, then aborts the whole job (no rank is left waiting in a
        collective).
    threads : bool
        Set the NumPy backend's threads to cores / processes on this host
        (:func:`set_rank_threads`; ``ANYCNN_NUM_THREADS`` overrides).

    Raises
    ------
    DistributedError
        ``"mpi"`` without mpi4py (the message says how to install it), or an unknown engine.

    Examples
    --------
    Outside ``mpiexec``, ``"auto"`` gives the same as ``"single"``: one process.

    >>> from anycnn.training import distributed
    >>> comm = distributed.init("single", threads=False)
    >>> comm.engine, comm.rank, comm.size
    ('single', 0, 1)
    """
    global _world
    if isinstance(engine, Communicator):
        return engine
    if engine is None or engine is True or engine is False:
        engine = {None: "auto", True: "mpi", False: "single"}[engine]
    key = str(engine).strip().lower()
    if key not in _ENGINES:
        raise DistributedError(f"unknown distributed engine {engine!r}; known: auto, mpi, single")
    if key == "auto":
        key = "mpi" if launched_by_mpi() else "single"
    if _world is not None and _world.engine == key:
        return _world
    if key == "single":  # asked for by name under mpiexec: N independent processes
        world: Communicator = SingleCommunicator()
    else:
        try:
            world = MPICommunicator()
        except DistributedError:
            size = _launch_size(os.environ)
            if engine == "auto" and (size is None or size == 1):
                world = SingleCommunicator()  # mpiexec -n 1 without mpi4py: one process
            else:
                raise
    _world = world
    if world.size > 1 and abort_on_error:
        _install_abort_hook(world)
    if threads:
        set_rank_threads(world)
    return world


def error_line(comm: Communicator, error: BaseException) -> str:
    """The one line a failing rank prints: ``anycnn: rank R of N failed: Type: message``."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    what = type(error).__name__ + (f": {message}" if message else "")
    return f"anycnn: rank {comm.rank} of {comm.size} failed: {what}"


def _install_abort_hook(comm: Communicator) -> None:
    previous = sys.excepthook

    def hook(kind: type[BaseException], error: BaseException, tb: Any) -> None:
        if os.environ.get("ANYCNN_DEBUG"):
            traceback.print_exception(kind, error, tb)
        print(error_line(comm, error), file=sys.stderr, flush=True)
        comm.abort(1)
        previous(kind, error, tb)  # pragma: no cover - abort does not return

    sys.excepthook = hook


def rank_threads(comm: Communicator, cores: int | None = None) -> int:
    """Threads for each process: usable cores / processes on this host (at least 1), or
    ``ANYCNN_NUM_THREADS``."""
    value = os.environ.get("ANYCNN_NUM_THREADS", "").strip()
    if value:
        return max(1, int(value))
    if cores is None:
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cores = os.cpu_count() or 1
    return max(1, cores // max(1, comm.local_size))


def set_rank_threads(comm: Communicator) -> int:
    """Give the NumPy backend's ops (and BLAS, through threadpoolctl) the threads
    of :func:`rank_threads`, so ``mpiexec -n 2`` on 2 cores does not oversubscribe them.
    Does nothing when this process is alone on its host (the backend's own default, which
    reads ``ANYCNN_NUM_THREADS`` too, stands). Returns the count.

    Examples
    --------
    >>> from anycnn.training.distributed import SingleCommunicator, set_rank_threads
    >>> set_rank_threads(SingleCommunicator()) >= 1      # alone on the host: nothing changes
    True
    """
    count = rank_threads(comm)
    if comm.local_size <= 1:
        return count
    from anycnn.backend import registry

    registry.limit_threads(count)  # the backends that have a say (Note [Backend capabilities])
    from threadpoolctl import threadpool_limits  # a dependency of anycnn

    threadpool_limits(count, user_api="blas")
    return count


def select_device(backend: Any, comm: Communicator) -> Any:
    """The backend on this process's GPU: one process per GPU, GPU ``local_rank`` modulo the
    GPUs of this host (``backend.on("N")``, as the name ``"cuda:N"`` gives), made current
    (``Backend.use_device``: CuPy's streams and NCCL follow it). A backend without devices to
    choose from (``Backend.device_count`` None: the CPU), or one whose device was named
    (``"cuda:1"``), is returned as it is (a named device is made current).

    Examples
    --------
    >>> import anycnn
    >>> from anycnn.training.distributed import SingleCommunicator, select_device
    >>> backend = anycnn.get_backend()                  # a CPU backend: returned as it is
    >>> select_device(backend, SingleCommunicator()) is backend
    True
    """
    count = backend.base.device_count  # Note [Backend capabilities]: None on the CPU backends
    if count is None:
        return backend
    if backend.parent is None:  # no device named: the local rank's
        index = comm.local_rank % max(1, int(count()))
        backend = backend.on(str(index)) if index else backend
    use = backend.base.use_device
    if use is not None:
        use(backend.default_device)
    return backend


# --------------------------------------------------------------------------------------------
# Sharding and gradient averaging
# --------------------------------------------------------------------------------------------
def shard(count: int, comm: Communicator) -> tuple[int, int]:
    """This rank's slice ``[start, stop)`` of ``count`` items: ``[r count / N, (r+1) count / N)``
    (sizes differ by at most one; empty where ``count < N``).

    Examples
    --------
    >>> from anycnn.training.distributed import Communicator, shard
    >>> class Rank(Communicator):                       # rank r of 3, without MPI
    ...     def __init__(self, rank): self.rank, self.size = rank, 3
    >>> [shard(10, Rank(r)) for r in range(3)], shard(2, Rank(0))
    ([(0, 3), (3, 6), (6, 10)], (0, 0))
    """
    return count * comm.rank // comm.size, count * (comm.rank + 1) // comm.size


class GradientAverager:
    """The data-parallel gradient hook (``Note [Data-parallel step]``): after
    back-propagation, ``(b_r / B) g`` of every parameter is packed into one persistent flat
    buffer per dtype, summed across ranks with one in-place allreduce and unpacked into the
    gradients. The buffers are allocated once; a step allocates nothing.

    Call it with the :class:`anycnn.training.loop.Trainer` (it reads ``network`` and
    ``shard_weight``), or use :meth:`average` directly. Needs a backend whose arrays can be
    written in place (NumPy, CuPy, PyTorch).

    Examples
    --------
    On one process the average is the gradient times this rank's weight ``b_r / B``
    (array-api-strict's arrays are read-only, so this one names NumPy):

    >>> import numpy as np
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> from anycnn.training.distributed import GradientAverager, SingleCommunicator
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), backend="numpy",
    ...               dtype="float64")
    >>> _ = net.compute_gradients(np.ones((2, 1, 2, 2)), np.eye(2))
    >>> before = np.array(net.gradients()["fc1.weight"])
    >>> GradientAverager(SingleCommunicator(), net).average(0.5)
    >>> np.allclose(net.gradients()["fc1.weight"], 0.5 * before)
    True
    """

    def __init__(self, comm: Communicator, network: Any):
        self.comm, self.network = comm, network
        self.xp = xp = network.backend.xp
        if not network.backend.writable:  # Note [Backend capabilities]
            raise DistributedError(
                f"distributed training needs a backend with writable arrays (numpy, cupy, "
                f"torch); the network is on {network.backend.name!r}"
            )
        self.layout: dict[str, list[tuple[str, int, int, tuple[int, ...]]]] = {}
        self.buffers: dict[str, Array] = {}
        sizes: dict[str, int] = {}
        dtypes: dict[str, Any] = {}
        for name, p in network.parameters().items():
            key = str(p.dtype)
            start = sizes.get(key, 0)
            count = int(np.prod(p.shape, dtype=np.int64))
            self.layout.setdefault(key, []).append((name, start, start + count, tuple(p.shape)))
            sizes[key], dtypes[key] = start + count, p.dtype
        # One extra slot at the end carries SDLM's pattern count (reduce_curvature).
        for key, total in sizes.items():
            self.buffers[key] = xp.zeros(
                (total + 1,), dtype=dtypes[key], device=network.backend.default_device
            )
        self.calls = 0

    def __call__(self, trainer: Any) -> None:
        self.average(trainer.shard_weight)

    def _pack(self, buffer: Array, values: Mapping[str, Array], entries: list, weight: float):
        numpy_buffer = isinstance(buffer, np.ndarray)
        for name, start, stop, _ in entries:
            value = values.get(name)
            target = buffer[start:stop]
            if value is None or weight == 0:
                target[...] = 0
                continue
            flat = self.xp.reshape(value, (-1,))
            if weight == 1.0:
                target[...] = flat
            elif numpy_buffer:
                np.multiply(flat, weight, out=target)
            else:
                target[...] = flat
                target *= weight
        buffer[-1] = 0

    def average(self, weight: float) -> None:
        """Replace every gradient by ``sum over ranks of weight_r * g_r`` (one allreduce per
        dtype). ``weight`` is this rank's ``b_r / B`` (0 for an empty shard)."""
        grads = self.network.gradients()
        for key, entries in self.layout.items():
            buffer = self.buffers[key]
            self._pack(buffer, grads, entries, float(weight))
            self.comm.allreduce_(buffer)
            for name, start, stop, shape in entries:
                if name in grads:
                    grads[name][...] = self.xp.reshape(buffer[start:stop], shape)
        self.calls += 1

    def reduce_curvature(
        self, totals: dict[str, Array], count: int
    ) -> tuple[dict[str, Array], int]:
        """Sum SDLM's pattern-weighted curvature sums and the pattern count over the ranks
        (one allreduce per dtype; the count rides in the buffer's last slot). A rank without
        patterns passes empty ``totals`` and 0."""
        result: dict[str, Array] = {}
        counted = count
        for key, entries in self.layout.items():
            buffer = self.buffers[key]
            self._pack(buffer, totals, entries, 1.0)
            buffer[-1] = float(count)
            self.comm.allreduce_(buffer)
            for name, start, stop, shape in entries:
                result[name] = self.xp.reshape(buffer[start:stop], shape) * 1.0  # a copy
            counted = int(round(float(buffer[-1])))
        return result, counted
