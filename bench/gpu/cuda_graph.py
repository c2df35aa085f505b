"""CUDA-graph capture of a whole training step of fixed shapes, for the CuPy backend: GPU-proof
tooling (tests/test_cuda_proof.py, bench/gpu/timing.py), not library API (issue 19, item 4: it
left anycnn_cupy until a GPU run proves it and the training loop can keep the rules below).

A training step of the notes' networks is a few hundred short kernels; on a GPU most of its time
goes into launching them from Python. Captured once into a CUDA graph (CuPy's
``Stream.begin_capture`` / ``end_capture``), the step replays with one launch
(``Graph.launch``).

>>> x, t = cupy.asarray(images[:256]), cupy.asarray(targets[:256])   # doctest: +SKIP
>>> def step(x, t):                                                  # doctest: +SKIP
...     net.compute_gradients(x, t)
...     for p, g in zip(net.parameters().values(), net.gradients().values()):
...         net.backend.ops.updates["sgd_update_"](p, g, 0.1)
>>> replay = cuda_graph.capture_step(step, x, t)  # one eager step, then the capture
>>> for xb, tb in batches:                                # doctest: +SKIP
...     replay(xb, tb)           # copies into x and t, then launches the graph

# Note [What a captured step may do]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# * The same shapes and the same Python control flow at every step: a replay runs the kernels of
#   the capture with the same arguments, pointers and Python scalars included. A learning rate
#   that changes between replays must be a 0-d device array (sgd_update_ accepts one).
# * Parameters are updated in place. An out-of-place update (net.set_parameter(name, p - lr*g))
#   rebinds the layer to an array allocated during the capture, and every replay then starts
#   again from the parameters the capture began with.
# * No host transfer and no synchronisation inside the step: float(loss), .item(), printing an
#   array, cupy.asnumpy, Stream.synchronize are illegal while a stream captures (CUDA reports
#   cudaErrorStreamCaptureUnsupported or cudaErrorStreamCaptureInvalidated);
#   count_transfers() of bench/gpu/cuda_transfers.py lists them in an uncaptured step.
# * During the warm-up and the capture, cupy.matmul (which array-api-compat's xp.matmul, hence
#   FullyConnected, calls) goes to anycnn_cupy's elementwise GEMM, since CuPy 14 refuses cuBLAS
#   calls while capturing (Note [GEMM inside a graph] in _kernels.py), and cupy.asarray /
#   cupy.array of a host *scalar* (e.g. xp.asarray(0.0, device=...)) becomes a fill kernel, its
#   value baked in like any Python scalar; host arrays raise. These redirections patch the cupy
#   module for the duration of capture_step: do not run CuPy code in other threads meanwhile.
# * Memory: every allocation of the warm-up and of the capture comes from a memory pool private
#   to the captured step and kept alive with it. With CuPy's shared pool, memory the graph writes
#   at every replay could be handed to unrelated arrays after the capture (cupy#8318 shows the
#   same hazard in another guise).
# * The arrays the step leaves in the layers (activations, gradients) are the graph's: they hold
#   each replay's values, until an uncaptured call of the same network replaces them.
#
# UNTESTED ON GPU HARDWARE: the test that captured and uncaptured steps give the same parameters
# (tests/test_cuda_proof.py) is written and skipped on machines without a usable CUDA device.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import numpy
from anycnn_cupy._guard import require_cupy

cupy = require_cupy(__name__)

from anycnn_cupy import _kernels  # noqa: E402 - after the guard

__all__ = ["CaptureError", "CapturedStep", "capture_step"]

CAPTURE_HINT = (
    "a captured step may not copy data between host and device or synchronise (float(), "
    ".item(), printing an array, cupy.asnumpy, Stream.synchronize, NumPy data put on the "
    "device): run it once inside count_transfers() (bench/gpu/cuda_transfers.py) to find "
    "where; nor call "
    "CUDA libraries CuPy refuses during capture (cuBLAS outside cupy.matmul, cuSOLVER, "
    "cuRAND). See Note [What a captured step may do] in bench/gpu/cuda_graph.py"
)


class CaptureError(RuntimeError):
    """A step could not be captured into a CUDA graph; the message says what to look for."""


class CapturedStep:
    """A training step captured into a CUDA graph; call it with new data to replay it.

    ``step(*data)`` copies each array of ``data`` into the matching static input buffer (a CuPy
    array of the same shape and dtype, copied on the device, or a NumPy array, copied from the
    host; ``None`` keeps the buffer's contents), launches the graph, and returns what the step
    returned during the capture (arrays that every replay overwrites). ``step()`` replays on
    the data already in the buffers. Ordering with the caller's stream is kept with events: no
    host synchronisation.

    Attributes
    ----------
    graph : cupy.cuda.Graph
    stream : cupy.cuda.Stream
        The non-blocking stream the step was captured and is replayed on.
    inputs : tuple of cupy.ndarray
        The static input buffers.
    outputs :
        The step's return value during the capture.
    """

    def __init__(
        self, graph: Any, stream: Any, inputs: tuple[Any, ...], outputs: Any, pool: Any, name: str
    ):
        self.graph = graph
        self.stream = stream
        self.inputs = inputs
        self.outputs = outputs
        self._pool = pool  # keeps the graph's memory alive (Note [What a captured step may do])
        self._name = name
        self._before = cupy.cuda.Event(disable_timing=True)
        self._after = cupy.cuda.Event(disable_timing=True)

    def __call__(self, *data: Any) -> Any:
        if data and len(data) != len(self.inputs):
            raise TypeError(
                f"{self._name}: expected {len(self.inputs)} arrays (one per static input), "
                f"got {len(data)}"
            )
        caller = cupy.cuda.get_current_stream()
        self._before.record(caller)
        self.stream.wait_event(self._before)  # data the caller produced is ready
        with self.stream:
            for index, (static, new) in enumerate(zip(self.inputs, data, strict=False)):
                if new is not None and new is not static:
                    self._copy_in(index, static, new)
        self.graph.launch(self.stream)
        self._after.record(self.stream)
        caller.wait_event(self._after)  # the caller's later work sees the updated parameters
        return self.outputs

    def replay(self) -> Any:
        """Launch the graph on the data already in the static inputs."""
        return self()

    def _copy_in(self, index: int, static: Any, new: Any) -> None:
        if tuple(new.shape) != tuple(static.shape) or new.dtype != static.dtype:
            raise ValueError(
                f"{self._name}: input {index} must have shape {tuple(static.shape)} and dtype "
                f"{static.dtype} (the captured shapes), got {tuple(new.shape)} {new.dtype}"
            )
        if isinstance(new, cupy.ndarray):
            cupy.copyto(static, new)
        elif isinstance(new, numpy.ndarray):
            static.set(numpy.ascontiguousarray(new), stream=self.stream)
        else:
            raise TypeError(
                f"{self._name}: input {index} must be a CuPy or NumPy array, "
                f"got {type(new).__name__}"
            )

    def __repr__(self) -> str:
        shapes = ", ".join(str(tuple(a.shape)) for a in self.inputs)
        return f"<CapturedStep {self._name} on inputs {shapes}>"


def _host_scalar(value: Any) -> bool:
    if isinstance(value, bool | numbers.Number | numpy.generic):
        return True
    return isinstance(value, numpy.ndarray) and value.ndim == 0


@contextlib.contextmanager
def redirected_for_capture() -> Iterator[None]:
    """Redirect cupy.matmul to the elementwise GEMM and host scalars to fill kernels for the
    duration of a capture (Note [What a captured step may do]); everything is put back."""
    saved_matmul, saved_asarray, saved_array = cupy.matmul, cupy.asarray, cupy.array

    def matmul(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not _kernels._kernel_gemm_handles(a, b):
            return saved_matmul(a, b, *args, **kwargs)
        return _kernels.gemm(a, b)

    def scalar(value: Any, dtype: Any) -> Any:
        host = numpy.asarray(value)
        return cupy.full((), host.item(), dtype=host.dtype if dtype is None else dtype)

    def refuse(value: Any) -> None:
        raise CaptureError(
            f"a step being captured puts host data ({type(value).__name__}) on the device; "
            "copy it into a static input of capture_step instead. " + CAPTURE_HINT
        )

    def asarray(a: Any, dtype: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(a, cupy.ndarray) or args or kwargs.keys() - {"order", "blocking"}:
            return saved_asarray(a, dtype, *args, **kwargs)
        if _host_scalar(a):
            return scalar(a, dtype)
        refuse(a)

    def array(obj: Any, dtype: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, cupy.ndarray) or args or kwargs.keys() - {"copy", "order", "blocking"}:
            return saved_array(obj, dtype, *args, **kwargs)
        if _host_scalar(obj):
            return scalar(obj, dtype)
        refuse(obj)

    cupy.matmul, cupy.asarray, cupy.array = matmul, asarray, array
    try:
        with _kernels.gemm_mode("kernel"):
            yield
    finally:
        cupy.matmul, cupy.asarray, cupy.array = saved_matmul, saved_asarray, saved_array


def capture_step(
    fn: Callable[..., Any], *static_inputs: Any, warmup: int = 1, stream: Any = None
) -> CapturedStep:
    """Capture ``fn(*static_inputs)`` into a CUDA graph and return a :class:`CapturedStep`.

    ``fn`` first runs ``warmup`` times eagerly on the capture stream (it compiles the kernels,
    creates library handles and lets the memory pool settle; a training step therefore updates
    the parameters ``warmup`` times here, on the data in the static inputs), then once under
    capture, which records its kernels without running them.

    Parameters
    ----------
    fn : callable
        The step; it reads its data only from its arguments and obeys
        Note [What a captured step may do] (module docstring).
    *static_inputs : cupy.ndarray
        The input buffers every replay reads; :class:`CapturedStep` copies new data into them.
    warmup : int
        Eager runs before the capture (at least 1 is advised; 0 compiles during the capture).
    stream : cupy.cuda.Stream, optional
        A non-blocking stream to capture and replay on; a new one by default.

    Raises
    ------
    CaptureError
        The step did something a graph cannot hold; the message says what to look for.
    """
    name = getattr(fn, "__qualname__", type(fn).__name__)
    for index, a in enumerate(static_inputs):
        if not isinstance(a, cupy.ndarray):
            raise TypeError(
                f"capture_step({name}): static input {index} must be a CuPy array (a buffer "
                f"the replays read), got {type(a).__name__}"
            )
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"capture_step({name}): warmup must be an int >= 0, got {warmup!r}")
    if stream is None:
        stream = cupy.cuda.Stream(non_blocking=True)
    if stream.ptr == 0:
        raise ValueError(f"capture_step({name}): the legacy default stream cannot capture")
    pool = cupy.cuda.MemoryPool()
    caller = cupy.cuda.get_current_stream()
    ready = cupy.cuda.Event(disable_timing=True)
    ready.record(caller)
    stream.wait_event(ready)  # the static inputs and parameters the caller wrote are there
    with stream, cupy.cuda.using_allocator(pool.malloc), redirected_for_capture():
        for _ in range(warmup):
            fn(*static_inputs)
        stream.synchronize()  # warm-up errors surface here, before the capture
        stream.begin_capture()
        try:
            outputs = fn(*static_inputs)
        except BaseException as error:
            with contextlib.suppress(Exception):
                stream.end_capture()
            raise CaptureError(
                f"capture_step({name}): the step failed while being captured "
                f"({type(error).__name__}: {error}); {CAPTURE_HINT}"
            ) from error
        try:
            graph = stream.end_capture()
        except Exception as error:
            raise CaptureError(
                f"capture_step({name}): the capture was invalidated "
                f"({type(error).__name__}: {error}); {CAPTURE_HINT}"
            ) from error
    with contextlib.suppress(AttributeError):
        graph.upload(stream)  # instantiate now rather than at the first replay
    done = cupy.cuda.Event(disable_timing=True)
    done.record(stream)
    caller.wait_event(done)  # the warm-up's updates are visible to the caller's stream
    return CapturedStep(graph, stream, tuple(static_inputs), outputs, pool, name)
