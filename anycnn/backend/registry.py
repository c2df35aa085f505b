"""The backend registry: which array library holds new arrays, and who runs the hot operations.

A :class:`Backend` is a small record: a name and aliases, how to obtain its array namespace and
default device, how to tell whether it is usable (and why not), and a table of fast hot
operations that override the reference implementations in :mod:`anycnn.ops`.

Two rules govern its use (``Note [Hot-op dispatch]`` below):

* the *current* backend (:func:`set_backend`, :func:`use_backend`, ``ANYCNN_BACKEND``) decides
  where **new** arrays live: parameters, data batches;
* hot operations dispatch on the namespace and device of their **inputs**
  (:func:`backend_of`), so a network built on one backend keeps running there whatever the
  current choice is, and arrays of two backends in one call are an error naming both.

Importing this module imports neither CuPy nor any optional array library: the first-party
plugins are recorded by module name and loaded on first use, and CUDA is probed only when the
``cupy`` backend is asked whether it is usable.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import array_api_compat

from anycnn import ops as _reference

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "backend_of",
    "get_backend",
    "lookup",
    "parse_name",
    "set_backend",
    "use_backend",
]

#: What the library decides on its own (backend fallback, devices, kernel compilation, threads).
#: Silent by default (``anycnn/__init__.py`` gives it a NullHandler); the CLI shows it.
logger = logging.getLogger("anycnn")

# Note [Hot-op dispatch]
# ~~~~~~~~~~~~~~~~~~~~~~
# Layers are written once against the Array API. At each public call a layer asks
# `backend_of(x, ...)` for the record that owns its input arrays (one namespace lookup per
# layer call, passed down), then calls `record.ops.<name>(...)`. `record.ops` is the reference
# table of anycnn.ops with the backend's fast versions laid over it: a backend overrides only
# what it does better, and a fast op may itself hand unusual cases back to the reference.
# The global choice of backend never changes where an existing array is computed on; it only
# decides where `Backend.asarray` puts new arrays. This keeps a network and its data together
# (thinc issue #74 shows what mixing costs) and makes `use_backend` cheap and thread-safe.

#: Names of the hot operations, in the order of anycnn.ops. A backend's op table may override
#: any of them and nothing else (tests/test_backend_parity.py checks names and signatures).
OP_NAMES: tuple[str, ...] = tuple(_reference.__all__)
#: Fused ops: every table has them all, a backend's own or the chain on its plain ops
#: (``Note [Fused ops]`` in anycnn.ops).
FUSED_OP_NAMES: tuple[str, ...] = _reference.FUSED_OP_NAMES
#: Optional one-kernel parameter updates (``Note [Fused updates]`` in anycnn.ops).
UPDATE_OP_NAMES: tuple[str, ...] = _reference.UPDATE_OP_NAMES


class BackendUnavailableError(RuntimeError):
    """Raised when a backend is asked for but cannot be used here; the message says why and how
    to fix it.

    Examples
    --------
    >>> import anycnn
    >>> from anycnn.backend import BackendUnavailableError
    >>> try:
    ...     anycnn.set_backend("abacus")
    ... except (BackendUnavailableError, ValueError) as error:
    ...     print("abacus" in str(error))
    True
    """


@dataclass(eq=False)
class Backend:
    """A backend: an array namespace, its default device and its fast hot operations.

    Parameters
    ----------
    name : str
        Canonical name (``"numpy"``, ``"cupy"``, ``"array_api_strict"``, ``"torch"``, ...).
    array_module : str
        Top-level module of the array library; it is imported only when the backend is used.
    aliases : tuple of str
        Other names accepted by :func:`set_backend` (``"cpu"``, ``"cuda"``, ``"gpu"``).
    description : str
        One line for ``anycnn backends``.
    install_hint : str
        What to do when the array library is missing (shown in the reason).
    namespace : callable, optional
        Returns the array namespace (array-api-compat wrapped where needed). Default:
        ``array_api_compat.array_namespace`` of an empty array of ``array_module``.
    device : callable, optional
        Returns the default device for new arrays. Default: the namespace's default device.
    probe : callable, optional
        Raises an exception describing why the backend is unusable (after the import worked),
        e.g. no CUDA device. Called once, lazily; the outcome is cached.
    fast_ops : callable, optional
        Returns a mapping from op names to fast implementations. Called once, lazily. It may
        also hold fused ops (:data:`FUSED_OP_NAMES`; those it lacks are composed from its plain
        ops) and fused parameter updates (:data:`UPDATE_OP_NAMES`, optional).
    to_numpy : callable, optional
        Copies an array of this backend to a NumPy array on the host.
    device_for : callable, optional
        Turns the device part of a name such as ``"cuda:1"`` (here ``"1"``) into a device of this
        backend, raising :class:`ValueError` when there is no such device. By default the
        namespace's own devices (``__array_namespace_info__().devices()``) are matched by name,
        and ``"0"`` means the default device.
    writable : bool
        Whether arrays of this backend may be updated in place (``p -= step``, ``out=``): an
        optimizer then moves parameters and buffers in place (``Note [Backend capabilities]``).
        False (the safe answer) for immutable arrays such as JAX's.
    device_name : callable, optional
        Words for a device of this backend (a GPU's model), for :meth:`describe`.
    threads : callable, optional
        ``threads(None)`` gives how many threads this backend's ops use in this process,
        ``threads(n)`` sets it (and returns it): see :meth:`thread_count`.
    compile_note : callable, optional
        What the backend compiles on its first pass (a sentence), or ``None`` when nothing is
        left to compile: ``anycnn train`` warms up and says so (``cli._warm_up``).
    kernel_status : callable, optional
        One line on the backend's compiled kernels for ``anycnn backends``.
    tune_process : callable, optional
        Makes the process-wide settings a training run may opt into (the library never calls
        it; ``anycnn train`` does), returning whether anything was set.
    device_count : callable, optional
        How many devices of this backend the host has, for one process per device under MPI
        (:func:`anycnn.training.distributed.select_device`); ``None``: nothing to choose.
    use_device : callable, optional
        Makes a device of this backend the process's current one (CuPy's ``Device.use()``).
    nccl : callable, optional
        Returns ``(module, stream)`` for summing this backend's arrays across processes on the
        device: an NCCL module (the calls of ``cupy.cuda.nccl``) and a function giving the
        current stream's handle; raises, saying what to install, when NCCL is missing.

    Examples
    --------
    A backend's name may carry a device (``Note [Devices]``):

    >>> import anycnn
    >>> anycnn.backend.lookup("cpu").name
    'numpy'
    >>> anycnn.backend.lookup("strict:device1").default_device
    array_api_strict.Device('device1')
    """

    name: str
    array_module: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    install_hint: str = ""
    namespace: Callable[[], Any] | None = None
    device: Callable[[], Any] | None = None
    probe: Callable[[], None] | None = None
    fast_ops: Callable[[], Mapping[str, Callable[..., Any]]] | None = None
    to_numpy: Callable[[Any], Any] | None = None
    device_for: Callable[[str], Any] | None = None
    load_error: str | None = None
    # Capabilities (Note [Backend capabilities]); a device record (`on`) asks its base.
    writable: bool = False
    device_name: Callable[[Any], str] | None = None
    threads: Callable[[int | None], int] | None = None
    compile_note: Callable[[], str | None] | None = None
    kernel_status: Callable[[], str] | None = None
    tune_process: Callable[[], bool] | None = None
    device_count: Callable[[], int] | None = None
    use_device: Callable[[Any], None] | None = None
    nccl: Callable[[], tuple[Any, Callable[[], int]]] | None = None
    #: The record of the backend's default device when this one is a device of it (``on``).
    parent: Backend | None = field(default=None, repr=False)
    _state: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- availability ---------------------------------------------------------------------
    def _status(self) -> tuple[bool, str]:
        if self.parent is not None:
            return self.parent._status()
        with self._lock:
            if "status" not in self._state:
                self._state["status"] = self._check()
            return self._state["status"]

    def _check(self) -> tuple[bool, str]:
        if self.load_error is not None:
            return False, self.load_error
        if importlib.util.find_spec(self.array_module) is None:
            hint = f": {self.install_hint}" if self.install_hint else ""
            return False, f"{self.array_module} is not installed{hint}"
        try:
            self._state["xp"] = self._make_namespace()
            if self.probe is not None:
                self.probe()
            self._state["device"] = (
                self.device() if self.device is not None else _default_device(self._state["xp"])
            )
        except Exception as error:  # any failure means unusable; the message is the reason
            return False, f"{self.array_module} is installed but not usable: " + _one_line(error)
        return True, "ok"

    def _make_namespace(self) -> Any:
        if self.namespace is not None:
            return self.namespace()
        module = importlib.import_module(self.array_module)
        return array_api_compat.array_namespace(module.asarray([0.0]))

    @property
    def available(self) -> bool:
        """Whether this backend can be used here (imports and probes lazily, cached)."""
        return self._status()[0]

    @property
    def unavailable_reason(self) -> str | None:
        """Why the backend cannot be used and how to fix it; ``None`` when it is available."""
        ok, reason = self._status()
        return None if ok else reason

    def require(self) -> Backend:
        """Return self, or raise :class:`BackendUnavailableError` saying why it is unusable."""
        ok, reason = self._status()
        if not ok:
            raise BackendUnavailableError(f"backend {self.name!r} is unavailable: {reason}")
        return self

    # -- the namespace, device and ops ----------------------------------------------------
    @property
    def xp(self) -> Any:
        """The array namespace (Array API, compat-wrapped where needed)."""
        return (self.parent or self).require()._state["xp"]

    @property
    def default_device(self) -> Any:
        """The device new arrays are created on."""
        return self.require()._state["device"]

    @property
    def base(self) -> Backend:
        """The backend itself, whichever device this record is for (:meth:`on`)."""
        return self.parent or self

    @property
    def label(self) -> str:
        """The name with the device when it is not the backend's default: ``cupy:1``."""
        if self.parent is None:
            return self.name
        return f"{self.name}:{self.device_spec}"

    @property
    def device_spec(self) -> str:
        """The device part of :attr:`label` (``""`` for the backend's default device)."""
        return str(self._state.get("spec", ""))

    def on(self, device: Any) -> Backend:
        """This backend with new arrays on ``device`` (a device of the namespace, or the device
        part of a name: ``"1"`` for ``"cuda:1"``, ``"device1"`` for ``"strict:device1"``).

        The same record is returned for the same device, and the backend itself for its
        default device, so networks and arrays compare their backends by identity.

        Raises
        ------
        ValueError
            No such device here; the message names the devices there are.
        BackendUnavailableError
            The backend itself is unusable.
        """
        root = self.base.require()
        if isinstance(device, str):
            spec = device.strip()
            resolved = root._resolve_device(spec)
        else:
            resolved, spec = device, str(device)
        if resolved == root.default_device:
            return root
        with root._lock:
            cache = root._state.setdefault("devices", {})
            key = str(resolved)
            record = cache.get(key)
            if record is None:
                record = Backend(
                    name=root.name,
                    array_module=root.array_module,
                    aliases=(),
                    description=root.description,
                    install_hint=root.install_hint,
                    to_numpy=root.to_numpy,
                    device_for=root.device_for,
                    writable=root.writable,
                    parent=root,
                )
                record._state.update(device=resolved, spec=spec)
                cache[key] = record
                logger.info("backend %s: new arrays go to device %s", root.name, resolved)
        return record

    def _resolve_device(self, spec: str) -> Any:
        if self.device_for is not None:
            return self.device_for(spec)
        default = self.default_device
        if spec in ("", "0", str(default)):
            return default
        devices: list[Any] = []
        info = getattr(self.xp, "__array_namespace_info__", None)
        if info is not None:
            with contextlib.suppress(Exception):
                devices = list(info().devices())
        for candidate in devices:
            if spec in (str(candidate), getattr(candidate, "name", None)):
                return candidate
            text = repr(candidate)
            if f"'{spec}'" in text:  # array_api_strict.Device('device1')
                return candidate
        known = ", ".join(repr(str(d)) for d in devices) or repr(str(default))
        raise ValueError(f"backend {self.name!r} has no device {spec!r}; devices here: {known}")

    @property
    def ops(self) -> types.SimpleNamespace:
        """The hot operations: the reference ops of :mod:`anycnn.ops` with this backend's fast
        versions laid over them (``Note [Hot-op dispatch]``)."""
        if self.parent is not None:
            return self.parent.ops
        table = self._state.get("ops")
        if table is None:
            self.require()
            given = dict(self.fast_ops()) if self.fast_ops is not None else {}
            known = (*OP_NAMES, *FUSED_OP_NAMES, *UPDATE_OP_NAMES)
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise TypeError(
                    f"backend {self.name!r} overrides unknown hot ops {unknown}; "
                    f"known ops: {list(OP_NAMES)}, fused ops: {list(FUSED_OP_NAMES)}, "
                    f"updates: {list(UPDATE_OP_NAMES)}"
                )
            overrides = {name: f for name, f in given.items() if name in OP_NAMES}
            table = types.SimpleNamespace(
                **{name: overrides.get(name, getattr(_reference, name)) for name in OP_NAMES}
            )
            table.overridden = frozenset(overrides)
            # Note [Fused ops] in anycnn.ops: every fused op, the backend's own or the chain on
            # this table's plain ops, so that a layer has one code path.
            own = {name: f for name, f in given.items() if name in FUSED_OP_NAMES}
            composed = _reference.compose_fused(table)
            table.fused = {name: own.get(name, composed[name]) for name in FUSED_OP_NAMES}
            table.fused_own = frozenset(own)
            for name, function in table.fused.items():
                setattr(table, name, function)
            # Note [Fused updates] in anycnn.ops: optional; the optimizers ask for them.
            table.updates = {name: f for name, f in given.items() if name in UPDATE_OP_NAMES}
            self._state["ops"] = table
        return table

    # Note [Backend capabilities]
    # ~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    # Code outside the backends asks the record what it can do; it never tests a backend's name
    # or namespace ("is this NumPy?"): `writable` (may arrays be updated in place: optimizers,
    # gradient averaging), `describe()` (the device in words), `thread_count()` /
    # `set_thread_count(n)`, `compile_note()` (anycnn train's warm-up), `kernel_status()`
    # (anycnn backends), `tune_process()` (process-wide settings a run opts into), and for data
    # parallelism `device_count()` / `use_device(d)` (one process per GPU) and `nccl()` (sums
    # on the device). A plugin
    # states its answers in its record; the defaults are the safe ones for any Array API
    # namespace (read-only arrays, one thread, nothing to compile or tune).
    # tests/test_no_library_names.py keeps library names out of the code outside the backends.
    def describe(self) -> str:
        """The backend and its device in words: ``numpy on cpu (2 cores, x86_64)``,
        ``cupy on <CUDA Device 0> (NVIDIA H100 80GB HBM3)``.

        >>> import anycnn
        >>> anycnn.backend.lookup("strict").describe()
        "array_api_strict on array_api_strict.Device('CPU_DEVICE')"
        """
        device = self.default_device
        text = f"{self.name} on {device}"
        name = self.base.device_name
        if name is not None:
            try:
                text += f" ({name(device)})"
            except Exception:  # noqa: BLE001 - the device alone still describes it
                pass
        elif str(device) == "cpu":
            machine = f", {platform.machine()}" if platform.machine() else ""
            text += f" ({os.cpu_count()} cores{machine})"
        return text

    def thread_count(self) -> int:
        """How many threads this backend's ops use in this process (1 when it does not say)."""
        threads = self.base.threads
        return 1 if threads is None else int(threads(None))

    def set_thread_count(self, count: int) -> int:
        """Let this backend's ops use ``count`` threads (where it has a say); returns the count
        it uses now."""
        threads = self.base.threads
        return 1 if threads is None else int(threads(int(count)))

    def owns(self, xp: Any) -> bool:
        """Whether an array namespace belongs to this backend (never imports anything)."""
        check = getattr(array_api_compat, f"is_{self.array_module}_namespace", None)
        if check is not None:
            return bool(check(xp))
        return getattr(xp, "__name__", "").split(".")[0] == self.array_module

    def asarray(self, data: Any, dtype: Any = None, *, copy: bool | None = None) -> Any:
        """Put data on this backend's default device: host data (NumPy arrays, lists, scalars)
        or any array that speaks DLPack (PyTorch tensors, array-api-strict, JAX, CuPy arrays).

        ``dtype`` may be a dtype of the namespace or its name (``"float32"``). Another library's
        array comes through ``from_dlpack``: without a copy when it already lives on this
        device, copied to it otherwise (``Note [Array interop]``). ``copy=True`` always copies.

        Raises
        ------
        TypeError
            An array of a library that does not speak DLPack, or one DLPack cannot bring here
            (the message carries the library's reason).

        Examples
        --------
        >>> import numpy as np, torch, anycnn
        >>> t = torch.arange(4.0)
        >>> x = anycnn.backend.lookup("cpu").asarray(t)     # zero-copy: the same memory
        >>> type(x).__name__, np.shares_memory(x, t.numpy())
        ('ndarray', True)
        """
        xp = self.xp
        if isinstance(dtype, str):
            dtype = resolve_dtype(xp, dtype)
        device = self.default_device
        if (
            array_api_compat.is_array_api_obj(data)
            and not array_api_compat.is_numpy_array(data)
            and not self.owns(array_api_compat.array_namespace(data))
        ):
            data = self._from_dlpack(data, device)
        return xp.asarray(data, dtype=dtype, device=device, copy=copy)

    # Note [Array interop]
    # ~~~~~~~~~~~~~~~~~~~~
    # Arrays of another library reach a backend through DLPack (the Array API's interchange):
    # `xp.from_dlpack(x)` shares the memory when x is on a device this namespace can address
    # (a CPU tensor into NumPy, an array-api-strict array into PyTorch), and raises when it is
    # not (a CUDA tensor into NumPy); then the standard's `from_dlpack(x, device=..., copy=True)`
    # asks the producer for a copy on our device. NumPy arrays skip DLPack: `asarray` takes them
    # on every namespace. The entry points that take user data (`Backend.asarray`,
    # `Network.fit/evaluate/predict/predict_classes/set_parameter`, `anycnn.Network.to`) accept
    # such arrays; the inner step (`forward`, `backward`, `compute_gradients`) does not convert:
    # it checks, so that a training loop never copies behind the user's back.
    def _from_dlpack(self, data: Any, device: Any) -> Any:
        xp = self.xp
        source = array_api_compat.array_namespace(data).__name__
        if not hasattr(data, "__dlpack__"):
            raise TypeError(
                f"{self.name}.asarray: got an array of {source}, which does not speak DLPack; "
                "convert it to NumPy on the host first"
            )
        try:
            return xp.from_dlpack(data)
        except Exception as first:
            try:
                return xp.from_dlpack(data, device=device, copy=True)
            except Exception:
                raise TypeError(
                    f"{self.name}.asarray: cannot bring an array of {source} on "
                    f"{array_api_compat.device(data)} to {device} through DLPack "
                    f"({_one_line(first)})"
                ) from None

    def to_host(self, x: Any) -> Any:
        """Copy an array of this backend into a NumPy array."""
        import numpy

        if self.to_numpy is not None:
            return self.to_numpy(x)
        if array_api_compat.is_numpy_array(x):
            return x
        try:
            return numpy.from_dlpack(x)
        except Exception:  # libraries without DLPack export to the CPU
            return numpy.asarray(x)

    def __repr__(self) -> str:
        status = self.base._state.get("status")
        state = "not probed" if status is None else ("available" if status[0] else "unavailable")
        return f"<Backend {self.label!r} ({state})>"


def resolve_dtype(xp: Any, dtype: Any) -> Any:
    """The namespace's dtype for a name such as ``"float32"``; dtypes pass through.

    >>> import numpy as np
    >>> resolve_dtype(np, "float32")
    <class 'numpy.float32'>
    """
    if isinstance(dtype, str):
        try:
            return getattr(xp, dtype)
        except AttributeError:
            raise ValueError(f"unknown dtype {dtype!r} for {xp.__name__}") from None
    return dtype


def _default_device(xp: Any) -> Any:
    info = getattr(xp, "__array_namespace_info__", None)
    if info is not None:
        with contextlib.suppress(Exception):
            return info().default_device()
    return array_api_compat.device(xp.asarray(0.0))


# Note [CUDA reasons]
# ~~~~~~~~~~~~~~~~~~~
# CuPy 14 imports without a driver and reports every missing piece as the same
# "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
# (ecosystem-facts section 1): on a machine with no NVIDIA driver at all that reads as if the
# driver were merely old. `cuda_reason` tells the cases apart -- no driver library (no GPU, or
# no driver installed), a driver older than CuPy's CUDA runtime (with both versions), no device
# visible, the CUDA libraries (NVRTC, cuBLAS) missing -- each with its fix.


def _driver_version() -> int | None:
    """The NVIDIA driver's CUDA version (12040 for 12.4) from libcuda, or None without one."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll", "libcuda.dylib"):
        try:
            library = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int(0)
        try:
            if library.cuDriverGetVersion(ctypes.byref(version)) == 0:
                return int(version.value)
        except AttributeError:
            pass
        return 0  # a driver library that does not answer: there, but unusable
    return None


def _cuda(version: int | None) -> str:
    return "?" if not version else f"{version // 1000}.{version % 1000 // 10}"


def cuda_reason(
    error: BaseException,
    *,
    driver_version: int | None = -1,
    runtime_version: int | None = None,
) -> str:
    """Why CUDA is unusable, in words, with the fix (Note [CUDA reasons]).

    ``driver_version`` is the driver's CUDA version (``None``: no driver library; -1, the
    default: ask libcuda), ``runtime_version`` CuPy's CUDA runtime version (12090 for 12.9)."""
    text = " ".join(str(error).split())
    if driver_version == -1:
        driver_version = _driver_version()
    fallback = "; train on the CPU meanwhile with --backend cpu"
    if "libnvrtc" in text or "libcublas" in text or "libcudart" in text or "libcufft" in text:
        return (
            f"the CUDA libraries are missing ({text}): install a CUDA toolkit, or reinstall "
            'with the libraries from pip: pip install "anycnn[cuda12-ctk]" (or cuda13-ctk)'
            + fallback
        )
    if "InsufficientDriver" in text or "NoDevice" in text or "driver" in text.lower():
        if driver_version is None:
            return (
                "no NVIDIA driver found (libcuda is not installed): this machine has no NVIDIA "
                "GPU, or its driver is not installed -- install the NVIDIA driver "
                "(nvidia-smi then lists the GPU)" + fallback
            )
        if "NoDevice" in text or "no CUDA-capable device" in text:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            hint = f" (CUDA_VISIBLE_DEVICES={visible!r} hides them?)" if visible is not None else ""
            return f"the NVIDIA driver is installed but finds no GPU{hint}" + fallback
        if runtime_version and driver_version and driver_version < runtime_version:
            return (
                f"the NVIDIA driver supports CUDA {_cuda(driver_version)} but CuPy was built "
                f"for CUDA {_cuda(runtime_version)}: upgrade the driver, or install the CuPy "
                f"of the driver's CUDA major version (anycnn[cuda{driver_version // 1000}])"
                + fallback
            )
        return (
            f"the NVIDIA driver (CUDA {_cuda(driver_version)}) is too old for CuPy's CUDA "
            f"runtime ({_cuda(runtime_version)}): upgrade the driver ({text})" + fallback
        )
    return text


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- the built-in table -----------------------------------------------------------------------
# First-party plugins live in backends/ and register through the `anycnn.backends` entry-point
# group; this table lets a source checkout that was never installed (no entry points) find them.
_FIRST_PARTY_PLUGINS: dict[str, str] = {
    "numpy": "anycnn_numpy:backend",
    "cupy": "anycnn_cupy:backend",
}


def _generic(name: str, module: str, aliases: tuple[str, ...], hint: str, what: str) -> Backend:
    """A backend for an Array API namespace that needs no plugin: it runs the reference ops."""
    return Backend(
        name=name,
        array_module=module,
        aliases=aliases,
        description=f"{what}; reference ops in pure Array API",
        install_hint=hint,
    )


def _strict_namespace() -> Any:
    import array_api_strict

    return array_api_strict


def _torch_namespace() -> Any:
    import torch

    return array_api_compat.array_namespace(torch.zeros(1))


def _torch_device() -> Any:
    import torch

    return torch.device("cpu")


def _torch_device_for(spec: str) -> Any:
    import torch

    try:
        device = torch.device(spec if spec and not spec.isdigit() else f"cpu:{spec or 0}")
    except RuntimeError as error:
        raise ValueError(f"backend 'torch' has no device {spec!r}: {error}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        index = 0 if device.index is None else device.index
        if index >= count:
            raise ValueError(
                f"backend 'torch' has no device {spec!r}: torch sees {count} CUDA device(s)"
            )
        return torch.device("cuda", index)
    raise ValueError(f"backend 'torch' has no device {spec!r}: use cpu or cuda:N")


def _jax_namespace() -> Any:
    """``jax.numpy`` (the Array API namespace of JAX; the top-level ``jax`` module is not one),
    with JAX's 64-bit floats turned on (Note [JAX])."""
    import jax

    if not jax.config.read("jax_enable_x64"):
        jax.config.update("jax_enable_x64", True)
        logger.info("backend jax: turned on jax_enable_x64 (float64 networks need it)")
    import jax.numpy as jnp

    return array_api_compat.array_namespace(jnp.zeros(1))


def _jax_device() -> Any:
    import jax

    return jax.devices()[0]


# Note [JAX]
# ~~~~~~~~~~
# JAX runs on the reference ops like array-api-strict, with two differences the record states.
# Its arrays are immutable (`writable=False`): `a += b` rebinds a name to a new array, which is
# all the layers do with their own temporaries, and the optimizers hand new parameters to
# `Network.set_parameter` (Note [Backend capabilities]). And JAX computes in 32 bits unless
# `jax_enable_x64` is on: `jnp.asarray(x, dtype=float64)` would silently give float32, so the
# backend turns the flag on when it is first used (never at `import anycnn`), logging it. The
# flag is process-wide; arrays made before keep their dtypes, and anycnn always names dtypes.
# New arrays go to JAX's first device (its CPU unless a GPU build of jaxlib is installed).


def _builtin_generic() -> list[Backend]:
    strict = _generic(
        "array_api_strict",
        "array_api_strict",
        ("strict",),
        'pip install "anycnn[test]"',
        "array-api-strict (the standard's reference namespace)",
    )
    strict.namespace = _strict_namespace
    torch = _generic(
        "torch",
        "torch",
        (),
        "pip install torch",
        "PyTorch tensors on the CPU through array-api-compat",
    )
    torch.namespace = _torch_namespace
    torch.device = _torch_device
    torch.device_for = _torch_device_for
    torch.writable = True  # tensors take in-place updates (Note [Backend capabilities])
    jax = _generic(
        "jax",
        "jax",
        (),
        'pip install "anycnn[jax]"',
        "JAX arrays (jax.numpy, 64-bit floats on: Note [JAX])",
    )
    jax.namespace = _jax_namespace
    jax.device = _jax_device
    return [strict, torch, jax]


# --- the registry -----------------------------------------------------------------------------
_registry_lock = threading.Lock()
_registry: dict[str, Backend] | None = None
_namespace_cache: dict[int, Backend] = {}


def _load_plugin(name: str, target: str) -> Backend:
    module_name, _, attribute = target.partition(":")
    try:
        record = getattr(importlib.import_module(module_name), attribute or "backend")
        if not isinstance(record, Backend):
            raise TypeError(f"{target} is a {type(record).__name__}, not an anycnn.Backend")
        return record
    except Exception as error:  # a broken plugin is listed with its error, never fatal
        return Backend(
            name=name,
            array_module=module_name,
            load_error=f"plugin {target} failed to load: {_one_line(error)}",
        )


def _discover() -> dict[str, Backend]:
    targets = dict(_FIRST_PARTY_PLUGINS)
    with contextlib.suppress(Exception):
        for entry in importlib.metadata.entry_points(group="anycnn.backends"):
            targets[entry.name] = entry.value
    found: dict[str, Backend] = {}
    for name, target in targets.items():
        found[name] = _load_plugin(name, target)
    for record in _builtin_generic():
        found.setdefault(record.name, record)
    return found


def _backends() -> dict[str, Backend]:
    global _registry
    if _registry is None:
        with _registry_lock:
            if _registry is None:
                _registry = _discover()
    return _registry


def register(record: Backend) -> Backend:
    """Add (or replace) a backend at run time; plugins normally use the entry-point group."""
    if not isinstance(record, Backend):
        raise TypeError(f"register: expected an anycnn.Backend, got {type(record).__name__}")
    _backends()[record.name] = record
    _namespace_cache.clear()
    return record


def known_names() -> list[str]:
    """Every accepted backend name and alias, plus ``auto``."""
    names = ["auto"]
    for record in _backends().values():
        names += [record.name, *record.aliases]
    return names


_logged: set[str] = set()


def _log_once(message: str) -> None:
    """Log a decision at INFO the first time it is taken in this process."""
    if message not in _logged:
        _logged.add(message)
        logger.info("%s", message)


def parse_name(name: str) -> tuple[str, str]:
    """Split a backend name into the backend and its device: ``"cuda:1"`` gives
    ``("cuda", "1")``, ``"torch:cuda:0"`` gives ``("torch", "cuda:0")``, ``"cpu"`` gives
    ``("cpu", "")``.

    >>> parse_name("cuda:1")
    ('cuda', '1')
    """
    key, _, device = name.strip().partition(":")
    return key.strip().lower().replace("-", "_"), device.strip()


# Note [Devices]
# ~~~~~~~~~~~~~~
# A backend name may carry a device after a colon: "cuda:1", "torch:cuda:0", "strict:device1".
# `lookup` parses it and returns `record.on(device)`: the backend's record for its default device,
# or a derived record (same namespace and ops, `parent` the backend, another `default_device`),
# one per device, so identity comparisons stay valid. New arrays go to that device; hot ops still
# dispatch on their inputs, and `backend_of` returns the backend's own record: a network compares
# `owner.base` and then the device, and names both when they differ.
def lookup(name: str | Backend) -> Backend:
    """The backend record for a name or alias, optionally with a device (``"cuda:1"``);
    ``auto`` resolves to CUDA if usable, else CPU, and logs why it fell back.

    Raises
    ------
    ValueError
        For an unknown name (the message lists the known ones) or an unknown device.
    BackendUnavailableError
        When a device is named on a backend that cannot be used here.

    >>> lookup("cpu").name, lookup("strict:device1").label
    ('numpy', 'array_api_strict:device1')
    """
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    key, device = parse_name(name)
    backends = _backends()
    record: Backend | None = None
    if key == "auto":
        cupy = backends.get("cupy")
        if cupy is not None and cupy.available:
            record = cupy
        else:
            reason = "no CuPy backend" if cupy is None else cupy.unavailable_reason
            _log_once(f"backend auto: CUDA is not usable ({reason}); using numpy (CPU)")
            record = backends["numpy"]
    else:
        for candidate in backends.values():
            if key == candidate.name or key in candidate.aliases:
                record = candidate
                break
    if record is None:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(known_names())}")
    return record.on(device) if device else record


def limit_threads(count: int) -> None:
    """Give the ops of every usable backend that has a say ``count`` threads
    (:meth:`Backend.set_thread_count`), e.g. one process per core under ``mpiexec``."""
    for record in _backends().values():
        if record.threads is not None and record.available:
            record.set_thread_count(count)


def available_backends() -> list[Backend]:
    """Every known backend, probed: ``.available`` and, when not, ``.unavailable_reason``.

    Probing imports each installed array library (CuPy included) once and caches the answer.

    >>> import anycnn
    >>> {b.name: b.available for b in anycnn.available_backends()}["numpy"]
    True
    """
    records = list(_backends().values())
    for record in records:
        record.available  # noqa: B018 - probe and cache
    return records


# --- the current backend ----------------------------------------------------------------------
_current: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "anycnn_backend", default=None
)
_process_default: Backend | None = None


def set_backend(name: str | Backend) -> Backend:
    """Choose the backend for new arrays in this process (``"cpu"``, ``"cuda"``, ``"auto"``...).

    Raises :class:`BackendUnavailableError` at once if it cannot be used. Inside a
    :func:`use_backend` block the block's choice still wins until the block ends. A name may
    carry a device (``"cuda:1"``, ``Note [Devices]``).

    >>> import anycnn
    >>> previous = anycnn.get_backend()
    >>> anycnn.set_backend("cpu").name
    'numpy'
    >>> _ = anycnn.set_backend(previous)
    """
    global _process_default
    record = lookup(name).require()
    _process_default = record
    return record


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """Use a backend for new arrays inside a ``with`` block (per thread and per task).

    >>> import anycnn
    >>> with anycnn.use_backend("cpu") as b:
    ...     b.name
    'numpy'
    """
    record = lookup(name).require()
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def get_backend() -> Backend:
    """The backend new arrays are created on.

    In order: the innermost :func:`use_backend` block, then :func:`set_backend`, then the
    environment variable ``ANYCNN_BACKEND`` (read now, at first use, not at import), then
    ``auto``.

    >>> import anycnn
    >>> with anycnn.use_backend("strict"):
    ...     anycnn.get_backend().name
    'array_api_strict'
    """
    global _process_default
    record = _current.get()
    if record is not None:
        return record
    if _process_default is None:
        name = os.environ.get("ANYCNN_BACKEND", "").strip() or "auto"
        try:
            _process_default = lookup(name).require()
        except (ValueError, BackendUnavailableError) as error:
            raise type(error)(f"ANYCNN_BACKEND={name!r}: {error}") from None
    return _process_default


def _reset_for_tests() -> None:
    """Forget the process default (tests restore state with this)."""
    global _process_default
    _process_default = None


# --- dispatch on arrays -----------------------------------------------------------------------
def backend_of(*arrays: Any, op: str = "anycnn") -> Backend:
    """The backend that owns these arrays; they must share one namespace and one device.

    Python scalars and ``None`` are ignored. A namespace no registered backend claims gets a
    generic backend running the reference ops.

    Raises
    ------
    TypeError
        Arrays from two namespaces, or something that is not an array.
    ValueError
        Arrays on two devices.

    >>> import numpy as np, anycnn
    >>> anycnn.backend_of(np.zeros(3), 2.0).name
    'numpy'
    """
    present = [a for a in arrays if a is not None and not isinstance(a, int | float | bool)]
    if not present:
        raise TypeError(f"{op}: no array argument")
    namespaces = []
    for a in present:
        try:
            namespaces.append(array_api_compat.array_namespace(a))
        except TypeError:
            raise TypeError(
                f"{op}: expected arrays, got {type(a).__module__}.{type(a).__name__}"
            ) from None
    first = namespaces[0]
    for other in namespaces[1:]:
        if other is not first:
            raise TypeError(
                f"{op}: arrays from two backends: {first.__name__} and {other.__name__}; "
                "move them to one backend first (Backend.asarray / Backend.to_host)"
            )
    if len(present) > 1:
        devices = [array_api_compat.device(a) for a in present]
        for d in devices[1:]:
            if d != devices[0]:
                raise ValueError(f"{op}: arrays on two devices: {devices[0]} and {d}")
    record = _namespace_cache.get(id(first))
    if record is None:
        for candidate in _backends().values():
            if candidate.load_error is None and candidate.owns(first):
                record = candidate
                break
        else:
            record = Backend(
                name=first.__name__,
                array_module=first.__name__.split(".")[0],
                namespace=lambda: first,
                description="unregistered Array API namespace; reference ops",
            )
        _namespace_cache[id(first)] = record
    return record
