"""Count host-device transfers and synchronisations, to prove a training step has none: GPU-proof
tooling (tests/test_cuda_proof.py), not library API (issue 19, item 4).

A training step on the GPU should never wait for the device: every ``float(loss)``, ``.item()``,
``bool(array)``, printed array, ``cupy.asnumpy`` or NumPy array put on the device stalls the host
until the queue drains, and makes the step impossible to capture into a CUDA graph.
:func:`count_transfers` records each such event while it is active, with the line of code (outside
CuPy) that caused it::

    with count_transfers() as log:
        net.compute_gradients(x, t)
    assert not log, log.summary()

How it sees them: it wraps, for the duration of the block, the Python-level entry points that
copy between host and device or synchronise (``cupy.ndarray.get/set/item/tolist``, the
conversions ``__float__ __int__ __bool__ __complex__ __array__``, printing, ``cupy.asnumpy``,
``cupy.asarray``/``cupy.array`` of host data, ``Stream``/``Event.synchronize``, the runtime's
``memcpy*``/``*Synchronize`` when called from Python) and CuPy's own hook
``cupy._core.syncdetect._declare_synchronize``, which CuPy's Cython code calls before every
device-to-host copy of ``ndarray.get`` and in ``Device.synchronize`` (checked in CuPy 14.2: the
hook is reached from ``ndarray.get``, so the wrapper sees copies made from compiled code too).
A copy that compiled code makes without that hook (none known in the code anycnn runs) would go
unseen; the CUDA-graph capture test is the hardware-level proof, since a capture fails on any
synchronous copy.

Not thread-safe: it patches the cupy module while active.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from anycnn_cupy._guard import require_cupy

cupy = require_cupy(__name__)

__all__ = ["HostTransferError", "TransferEvent", "TransferLog", "count_transfers"]

_SKIP_DIRS = tuple(
    os.sep + part + os.sep for part in ("cupy", "cupy_backends", "cupyx", "array_api_compat")
)
_THIS = os.path.abspath(__file__)


class HostTransferError(RuntimeError):
    """Raised by ``count_transfers(raise_on_first=True)`` at the first transfer."""


@dataclass(frozen=True)
class TransferEvent:
    """One transfer or synchronisation: ``kind`` is ``"d2h"``, ``"h2d"``, ``"sync"`` or
    ``"copy"`` (a runtime memcpy called from Python), ``via`` the call, ``where`` the first
    line of code outside CuPy, array-api-compat and this module that led to it."""

    kind: str
    via: str
    where: str

    def __str__(self) -> str:
        return f"{self.kind:<4} {self.via:<28} at {self.where}"


@dataclass
class TransferLog:
    """The events seen inside :func:`count_transfers`; false when there were none."""

    events: list[TransferEvent] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[TransferEvent]:
        return [e for e in self.events if e.kind == kind]

    @property
    def d2h(self) -> list[TransferEvent]:
        return self.of_kind("d2h")

    @property
    def h2d(self) -> list[TransferEvent]:
        return self.of_kind("h2d")

    @property
    def syncs(self) -> list[TransferEvent]:
        return self.of_kind("sync")

    def __len__(self) -> int:
        return len(self.events)

    def summary(self) -> str:
        if not self.events:
            return "no host-device transfer or synchronisation"
        counts = ", ".join(
            f"{len(self.of_kind(k))} {k}" for k in ("d2h", "h2d", "sync", "copy") if self.of_kind(k)
        )
        return f"{len(self.events)} events ({counts}):\n" + "\n".join(f"  {e}" for e in self.events)


def _where() -> str:
    for frame in reversed(traceback.extract_stack()):
        path = os.path.abspath(frame.filename)
        if path == _THIS or os.path.basename(path) == "contextlib.py":
            continue
        if any(part in path for part in _SKIP_DIRS):
            continue
        return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "<unknown>"


class _Recorder:
    def __init__(self, log: TransferLog, raise_on_first: bool):
        self.log = log
        self.raise_on_first = raise_on_first
        self.local = threading.local()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        depth = getattr(self.local, "depth", 0)
        self.local.depth = depth + 1
        try:
            yield
        finally:
            self.local.depth = depth

    def record(self, kind: str, via: str) -> None:
        if getattr(self.local, "depth", 0):
            return  # an outer wrapped call already names it
        event = TransferEvent(kind, via, _where())
        self.log.events.append(event)
        if self.raise_on_first:
            raise HostTransferError(str(event))


def _is_host_data(obj: Any) -> bool:
    return not isinstance(obj, cupy.ndarray)


@contextlib.contextmanager
def count_transfers(*, raise_on_first: bool = False) -> Iterator[TransferLog]:
    """Record every host-device transfer and synchronisation inside the block.

    Parameters
    ----------
    raise_on_first : bool
        Raise :class:`HostTransferError` at the first event instead (its traceback then shows
        the whole call chain).

    Yields
    ------
    TransferLog
        ``log.events``, ``log.d2h``, ``log.h2d``, ``log.syncs``, ``log.summary()``.
    """
    log = TransferLog()
    recorder = _Recorder(log, raise_on_first)
    restore: list[tuple[Any, str, Any, bool]] = []

    def patch(owner: Any, name: str, make: Any) -> None:
        original = getattr(owner, name)
        own = name in vars(owner) if isinstance(owner, type) else True
        restore.append((owner, name, original, own))
        setattr(owner, name, make(original))

    def method(kind: str, via: str) -> Any:
        def make(original: Any) -> Any:
            def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
                recorder.record(kind, via)
                with recorder.inside():
                    return original(self, *args, **kwargs)

            return wrapper

        return make

    def function(kind: str, via: str, when: Any = None) -> Any:
        def make(original: Any) -> Any:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                if when is None or when(*args, **kwargs):
                    recorder.record(kind, via)
                with recorder.inside():
                    return original(*args, **kwargs)

            return wrapper

        return make

    def memcpy_kind(*args: Any, **kwargs: Any) -> bool:
        kind = args[3] if len(args) > 3 else kwargs.get("kind")
        return kind != cupy.cuda.runtime.memcpyDeviceToDevice

    from cupy._core import syncdetect

    ndarray = cupy.ndarray
    runtime = cupy.cuda.runtime
    for name, via in [
        ("get", "ndarray.get"),
        ("item", "ndarray.item"),
        ("tolist", "ndarray.tolist"),
        ("__float__", "float(array)"),
        ("__int__", "int(array)"),
        ("__bool__", "bool(array)"),
        ("__complex__", "complex(array)"),
        ("__array__", "numpy.asarray(array)"),
        ("__repr__", "repr(array)"),
        ("__str__", "str(array)"),
        ("__format__", "format(array)"),
    ]:
        patch(ndarray, name, method("d2h", via))
    patch(ndarray, "set", method("h2d", "ndarray.set"))
    patch(cupy, "asnumpy", function("d2h", "cupy.asnumpy"))
    patch(
        cupy,
        "asarray",
        function("h2d", "cupy.asarray(host data)", lambda a, *args, **kw: _is_host_data(a)),
    )
    patch(
        cupy,
        "array",
        function("h2d", "cupy.array(host data)", lambda a, *args, **kw: _is_host_data(a)),
    )
    patch(cupy.cuda.Stream, "synchronize", method("sync", "Stream.synchronize"))
    patch(cupy.cuda.Event, "synchronize", method("sync", "Event.synchronize"))
    for name in ("deviceSynchronize", "streamSynchronize", "eventSynchronize"):
        patch(runtime, name, function("sync", f"runtime.{name}"))
    for name in ("memcpy", "memcpyAsync"):
        patch(runtime, name, function("copy", f"runtime.{name}", memcpy_kind))
    patch(
        syncdetect,
        "_declare_synchronize",
        function("sync", "CuPy sync (ndarray.get, Device.synchronize)"),
    )
    try:
        yield log
    finally:
        for owner, name, original, own in reversed(restore):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)
