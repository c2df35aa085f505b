"""Checkpoints: a network, its optimizer state and where training stands, in one ``.npz`` file.

Format (``format_version`` 1), every entry a plain array, read with ``allow_pickle=False``:

=========================  ====================================================================
key                        content
=========================  ====================================================================
``meta/config``            the network's :meth:`~anycnn.network.Network.config`, JSON in uint8
``meta/info``              JSON in uint8: format, version, anycnn version, epoch (1-based, the
                           number of finished passes), the optimizer's config, the state of the
                           NumPy generator (``bit_generator.state``), the preprocessing, the
                           metrics history and any extra fields of the training loop
``param/<name>``           each parameter (``param/conv1.kernel``), the network's dtype
``extra/<name>``           each array of :meth:`~anycnn.network.Network.extra_state`
``optim/<key>``            the optimizer's :meth:`~anycnn.training.optim.Optimizer.state_dict`
                           (``optim/steps``, ``optim/velocity/conv1.kernel``, ...)
=========================  ====================================================================

Writing is atomic (:func:`save_checkpoint`): the file is written to a temporary name in the same
directory, flushed and fsync-ed, then renamed over the target with :func:`os.replace`, so a crash
leaves either the old file or the new one, never half of one.

Reading treats the file as untrusted input (Note [Reading an untrusted checkpoint]): names,
compression, dtypes, shapes and sizes are checked from the zip directory and the .npy headers,
and every size the configuration gives is bounded by the file's own arrays, before any array is
read; nothing is ever unpickled, and nothing named in the file is looked up as code.

:func:`load_checkpoint` rebuilds the network from its configuration and checks every
array's name, shape and dtype against it, and the optimizer state against the optimizer rebuilt
from its config, *before* assigning anything. A truncated file, a file of another kind (a pickle
renamed ``.npz``), or a checkpoint of another model raises :class:`CheckpointError` naming the
file and what is wrong.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import re
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from anycnn.backend import Backend
from anycnn.network import Network

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "DirectoryLock",
    "atomic_write",
    "not_replaceable",
    "epoch_of",
    "printable",
    "checkpoint_path",
    "latest_checkpoint",
    "load_checkpoint",
    "read_info",
    "save_checkpoint",
]

FORMAT = "anycnn-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, truncated, not a checkpoint, or of another
    model or optimizer. The message names the file and what is wrong.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from anycnn.training.checkpoint import CheckpointError, load_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     bad = pathlib.Path(tmp) / "epoch-0001.npz"
    ...     _ = bad.write_text("not a checkpoint")
    ...     try:
    ...         load_checkpoint(bad)
    ...     except CheckpointError as error:
    ...         print("epoch-0001.npz" in str(error))
    True
    """


def _version() -> str:
    try:
        from anycnn import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - during a partial import
        return "unknown"


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def checkpoint_path(directory: str | os.PathLike[str], epoch: int) -> Path:
    """The file of epoch ``epoch`` (1-based) in ``directory``: ``epoch-0003.npz``.

    Examples
    --------
    >>> from anycnn.training.checkpoint import checkpoint_path
    >>> checkpoint_path("runs", 3).as_posix()
    'runs/epoch-0003.npz'
    """
    return Path(directory) / f"epoch-{int(epoch):04d}.npz"


_EPOCH_FILE = re.compile(r"epoch-([0-9]{1,9})\.npz")


def epoch_of(path: str | os.PathLike[str]) -> int | None:
    """The epoch a checkpoint's file name gives (``epoch-0003.npz``: 3), or ``None`` for a name
    of another form (ASCII digits only: ``epoch-\u00b2.npz`` is not one).

    Examples
    --------
    >>> from anycnn.training.checkpoint import epoch_of
    >>> epoch_of("runs/epoch-0003.npz"), epoch_of("runs/model.npz")
    (3, None)
    """
    match = _EPOCH_FILE.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint of the highest epoch in ``directory``, or ``None`` when there is none.
    Files whose names are not ``epoch-<digits>.npz`` are ignored.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from anycnn.training.checkpoint import latest_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     for name in ("epoch-0002.npz", "epoch-0010.npz", "notes.npz"):
    ...         _ = (pathlib.Path(tmp) / name).write_bytes(b"")
    ...     print(latest_checkpoint(tmp).name)
    epoch-0010.npz
    """
    found = []
    for path in Path(directory).glob("epoch-*.npz"):  # none in a missing folder or a file
        epoch = epoch_of(path)
        if epoch is not None:
            found.append((epoch, path.name, path))
    return max(found)[2] if found else None


# -- writing files ----------------------------------------------------------------------------
def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else by
    setting and restoring it."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("Umask:"))
        return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words ("a FIFO", "a character device")."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def not_replaceable(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` must not be replaced by a written file, or ``None`` when it may be.

    Only a regular file, a missing path, or a symlink to a regular file outside ``/dev`` and
    ``/proc`` (or a dangling one) may be replaced. A FIFO, a device, a socket or a directory is
    named (``"is a FIFO"``), found with :func:`os.lstat` (which never opens, so a FIFO cannot
    block); a symlink to one of those reads ``"is a symlink to a character device (/dev/null)"``.

    Examples
    --------
    >>> import os, pathlib, tempfile
    >>> from anycnn.training.checkpoint import not_replaceable
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     fifo = pathlib.Path(tmp) / "fifo"
    ...     os.mkfifo(fifo)
    ...     print(not_replaceable(fifo), not_replaceable(pathlib.Path(tmp) / "new.json"))
    is a FIFO None
    """
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISREG(mode):
        return None
    if not stat.S_ISLNK(mode):
        return f"is {_kind(mode)}"
    target = os.path.realpath(path)
    try:
        target_mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None  # a dangling link: replaced, never followed
    except OSError as error:
        return f"is a symlink to {target} that cannot be examined ({error.strerror})"
    if not stat.S_ISREG(target_mode):
        return f"is a symlink to {_kind(target_mode)} ({target})"
    for root in ("/dev", "/proc"):
        if target == root or target.startswith(root + "/"):
            return f"is a symlink into {root} ({target})"
    return None


def atomic_write(path: str | os.PathLike[str], write: Any, *, what: str = "file") -> Path:
    """Write ``path`` atomically: ``write(stream)`` fills a temporary file in the same
    directory, which is flushed, fsync-ed and renamed over ``path`` (:func:`os.replace`), so a
    crash leaves the old file or the new one, never half of one.

    - The file gets the permissions a new file gets (``0666`` less the umask), not
      :func:`tempfile.mkstemp`'s ``0600``.
    - The temporary name is short whatever the target's (``.<first 64 characters>.<random>.tmp``),
      so a 250-character file name still fits the 255-byte limit.
    - A symlink at ``path`` is replaced, never followed: a plot or checkpoint named like a link
      to another file never overwrites that file.
    - An error (a full disk) is an :class:`OSError` naming ``path`` and ``what`` it is.
    - A FIFO, a device, a socket or a directory at ``path`` (or a symlink to one, or into
      ``/dev`` or ``/proc``) is refused with a :class:`ValueError` (:func:`not_replaceable`),
      never replaced.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from anycnn.training.checkpoint import atomic_write
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = atomic_write(pathlib.Path(tmp) / "notes.txt", lambda f: f.write(b"hello"))
    ...     print(path.read_bytes(), sorted(p.name for p in pathlib.Path(tmp).iterdir()))
    b'hello' ['notes.txt']
    """
    path = Path(path)
    why = not_replaceable(path)
    if why is not None:
        raise ValueError(f"cannot write the {what} {path}: it {why}; expected a regular file")
    stem = path.name[:64]
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OSError(
            error.errno, f"cannot write the {what} {path}: {error.strerror}", str(path)
        ) from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.errno is not None:
            raise OSError(
                error.errno, f"cannot write the {what} {path}: {error.strerror}", str(path)
            ) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where supported
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    # A process killed between writing and renaming leaves its temporary file behind; once this
    # target is safely written, such leftovers for the same target are garbage.
    for leftover in path.parent.glob(f".{glob.escape(stem)}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return path


def save_checkpoint(
    path: str | os.PathLike[str],
    network: Network,
    *,
    epoch: int,
    optimizer: Any = None,
    rng: np.random.Generator | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary file, fsync, :func:`os.replace`).

    Parameters
    ----------
    path : path
        The target file (``.npz``); its directory must exist.
    network : Network
    epoch : int
        Passes finished so far (1 after the first epoch).
    optimizer : anycnn.optim.Optimizer, optional
        Its config and state dict are stored.
    rng : numpy.random.Generator, optional
        Its ``bit_generator.state`` is stored, so shuffling resumes where it stopped.
    info : mapping, optional
        More JSON-able fields (preprocessing, metrics history, training options).

    Returns
    -------
    pathlib.Path

    Examples
    --------
    A tiny network on the current backend, saved after its first epoch and read back:

    >>> import tempfile
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")
    >>> from anycnn.training.checkpoint import load_checkpoint, read_info, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_checkpoint(f"{tmp}/epoch-0001.npz", net, epoch=1, info={"note": "hi"})
    ...     info = read_info(path)
    ...     restored = load_checkpoint(path)
    >>> info["epoch"], info["note"], restored.epoch
    (1, 'hi', 1)
    >>> sorted(restored.network.parameters()) == sorted(net.parameters())
    True
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
        # load_checkpoint refuses such a file: never write one
        raise ValueError(f"save_checkpoint: epoch must be an int >= 0, got {epoch!r}")
    backend = network.backend
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "anycnn_version": _version(),
        "epoch": int(epoch),
        "model": network.name,
        "optimizer": None if optimizer is None else optimizer.config(),
        "rng_state": None if rng is None else rng.bit_generator.state,
        "parameters": {name: list(p.shape) for name, p in network.parameters().items()},
    }
    if info:
        meta.update({k: v for k, v in info.items() if k not in meta})
    arrays: dict[str, np.ndarray] = {
        "meta/config": _json_bytes(network.config()),
        "meta/info": _json_bytes(meta),
    }
    for name, value in network.parameters().items():
        arrays[f"param/{name}"] = np.asarray(backend.to_host(value))
    for name, value in network.extra_state().items():
        arrays[f"extra/{name}"] = np.asarray(value)
    if optimizer is not None:
        for key, value in optimizer.state_dict().items():
            arrays[f"optim/{key}"] = np.asarray(value)

    return atomic_write(
        path,
        lambda stream: np.savez(stream, **arrays),  # type: ignore[arg-type]  # numpy stubs
        what="checkpoint",
    )


class DirectoryLock:
    """An exclusive lock on a checkpoint directory, held while a run writes there.

    ``fcntl.flock`` on ``<directory>/.anycnn.lock``, which the holder fills with who it is
    (process id, host, start time, command line) and removes as it lets go (whoever locks the
    file checks that it is still the one at that path); a second run on the same directory is
    refused with a :class:`CheckpointError` that says so, instead of the two runs deleting each
    other's temporary files or interleaving their epochs. The kernel drops the lock when the
    holder exits, even by SIGKILL, so a stale lock file never blocks anyone. Where ``fcntl`` is
    missing (Windows) no lock is taken.

    Examples
    --------
    >>> import tempfile
    >>> from anycnn.training.checkpoint import DirectoryLock
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     with DirectoryLock(tmp) as lock:
    ...         held = lock.path.exists()
    ...     print(held, lock.path.exists())
    True False
    """

    NAME = ".anycnn.lock"

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self.path = self.directory / self.NAME
        self._descriptor: int | None = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(100):  # the holder removes the file as it lets go: lock the file there
            try:
                descriptor = os.open(self.path, flags, 0o666)
            except OSError as error:
                raise OSError(
                    error.errno,
                    f"cannot lock the checkpoint directory: {error.strerror}",
                    str(self.path),
                ) from None
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(descriptor)
                os.close(descriptor)
                raise CheckpointError(
                    f"{self.directory}: in use by another anycnn run ({holder}); wait for it to "
                    "end or choose another checkpoint directory"
                ) from None
            except OSError as error:  # no locks on this file system (ENOLCK on some NFS)
                os.close(descriptor)
                raise OSError(
                    error.errno,
                    f"cannot lock the checkpoint directory: {error.strerror}",
                    str(self.path),
                ) from None
            try:
                same = os.path.samestat(os.fstat(descriptor), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(descriptor)  # locked a file its holder had just removed: try again
        else:  # pragma: no cover - a hundred holders in a row
            raise CheckpointError(f"{self.directory}: cannot lock {self.path}")
        import socket
        import sys
        import time

        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(me).encode(), 0)
        self._descriptor = descriptor

    def release(self) -> None:
        """Give the lock up (closing the descriptor drops it)."""
        if self._descriptor is not None:
            with contextlib.suppress(OSError):  # removed while still held: see __init__
                os.unlink(self.path)
            os.close(self._descriptor)
            self._descriptor = None

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _holder(descriptor: int) -> str:
    """Who holds a lock, from what it wrote into the lock file (each field made printable)."""
    try:
        data = os.pread(descriptor, 4096, 0)
        who = json.loads(data.decode("utf-8"))
        return (
            f"process {int(who['pid'])} on host {_clean(str(who['host']), 64)} since "
            f"{_clean(str(who['since']), 40)}: {_clean(str(who['command']), 120)}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    ``network`` holds the stored parameters; ``optimizer`` (when one was stored and a network was
    rebuilt) holds its state; ``rng()`` gives a generator in the stored state.

    Examples
    --------
    >>> import tempfile
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")
    >>> import numpy as np
    >>> from anycnn.training.checkpoint import load_checkpoint, save_checkpoint
    >>> rng = np.random.default_rng(7)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_checkpoint(f"{tmp}/epoch-0002.npz", net, epoch=2, rng=rng)
    ...     checkpoint = load_checkpoint(path)
    >>> checkpoint.epoch, int(checkpoint.rng().integers(100)) == int(rng.integers(100))
    (2, True)
    """

    path: Path
    network: Network
    epoch: int
    info: dict[str, Any]
    optimizer: Any = None
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def anycnn_version(self) -> str:
        return str(self.info.get("anycnn_version", "unknown"))

    def rng(self) -> np.random.Generator | None:
        """A NumPy generator in the state stored with the checkpoint (``None`` if none was)."""
        state = self.info.get("rng_state")
        if state is None:
            return None
        return _generator_from_state(state, str(self.path))


# The bit generators a checkpoint may name. A name read from a file is only ever a key into this
# table, never looked up as an attribute: ``getattr(np.random, name)()`` with a name like "test"
# or "seed" would call that function (numpy.random.test starts pytest, which imports conftest.py
# from the current directory).
_BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    "PCG64": np.random.PCG64,
    "PCG64DXSM": np.random.PCG64DXSM,
    "MT19937": np.random.MT19937,
    "Philox": np.random.Philox,
    "SFC64": np.random.SFC64,
}


def _generator_from_state(state: Any, where: str) -> np.random.Generator:
    """A generator in the stored ``bit_generator.state``; :class:`CheckpointError` for anything
    that is not the state of one of the allowed bit generators (:data:`_BIT_GENERATORS`)."""
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{where}: bad random generator state: a {type(state).__name__}, not an object"
        )
    name = state.get("bit_generator")
    kind = _BIT_GENERATORS.get(name) if isinstance(name, str) else None
    if kind is None:
        shown = name if isinstance(name, str) else type(name).__name__
        raise CheckpointError(
            f"{where}: bad random generator state: bit generator {_quote(shown)} is not one of "
            f"{', '.join(_BIT_GENERATORS)}"
        )
    bit_generator = kind()
    try:
        bit_generator.state = state
    except Exception as error:  # NumPy's setter: TypeError, ValueError, KeyError, OverflowError
        raise CheckpointError(
            f"{where}: bad random generator state for {name} "
            f"({type(error).__name__}: {_clean(str(error))})"
        ) from None
    return np.random.Generator(bit_generator)


def _clean(text: str, limit: int = 300) -> str:
    """An error text from a library, made safe to print on one line (see :func:`_quote`)."""
    shown = text.encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def printable(text: str, limit: int = 80) -> str:
    """A name read from a file (a stored model name), made safe to print: control characters
    (newlines, terminal escape codes) and non-ASCII escaped, cut to ``limit`` characters.

    Examples
    --------
    >>> from anycnn.training.checkpoint import printable
    >>> print(printable("lenet\\n\\x1b[2Jcaf\\u00e9"))   # a newline, an escape code, an accent
    lenet\\n\\x1b[2Jcaf\\xe9
    """
    return _clean(str(text), limit)


def _quote(text: str, limit: int = 80) -> str:
    """``text`` made safe to print on one line: control characters and non-ASCII escaped
    (a name read from a file can hold newlines or terminal escape codes), cut to ``limit``."""
    return repr(_clean(text, limit))


# -- reading: validate the structure from the zip directory and the .npy headers first ---------
# Note [Reading an untrusted checkpoint]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# A checkpoint is treated as untrusted input, as safetensors treats its files. Before a byte of
# array data is read:
#
# 1. the zip central directory (names, flags, methods, sizes; no data) is checked: at most
#    MAX_MEMBERS members, unique names of the form ``meta/config``, ``meta/info``,
#    ``param/<name>``, ``extra/<name>.table``, ``optim/<key>`` (``.npy``), stored or deflated
#    only, no encryption, an uncompressed total under MAX_CHECKPOINT_BYTES, and deflated members
#    no larger than MAX_DEFLATE_RATIO times their compressed size (a bomb's ratio is ~1000);
# 2. every member's .npy header (at most MAX_NPY_HEADER bytes, read through the zip stream) is
#    parsed: a plain numeric dtype (never ``object``: nothing is unpickled), at most 8
#    dimensions, and a member size that equals header + data exactly;
# 3. the two JSON entries (at most MAX_META_BYTES each) are parsed and their structure checked;
# 4. every size the configuration gives (maps, units, kernel sizes, the input shape) is checked
#    against the shapes the parameter headers declare (:func:`_check_sizes`), so that rebuilding
#    the network allocates no more than the file's own arrays hold;
# only then are the arrays read, each exactly as large as its header says, CRC-checked.

#: hard limits of :func:`load_checkpoint` (see Note [Reading an untrusted checkpoint])
MAX_MEMBERS = 100_000
MAX_META_BYTES = 64 * 2**20
MAX_NPY_HEADER = 64 * 2**10
MAX_CHECKPOINT_BYTES = 8 * 2**30
MAX_DEFLATE_RATIO = 64
MAX_INPUT_ELEMENTS = 2**26
MAX_ACTIVATION_ELEMENTS = 2**24
MAX_CLASSES = 2**12
_ALLOWED_DTYPES = {"<f4", "<f8", "|u1", "|b1", "<i8", "<i4", "<i2", "|i1", "<u4", "<u2"}
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,200}(/[A-Za-z0-9_.\-]{1,200}){0,3}")


@dataclass
class _Member:
    info: zipfile.ZipInfo
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran: bool
    offset: int  # bytes of the .npy header

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _refuse_non_archive(path: Path, where: str) -> None:
    with open(path, "rb") as stream:
        head = stream.read(6)
    never = "which is never loaded (allow_pickle=False)"
    if head.startswith(b"\x93NUMPY"):
        from numpy.lib import format as npy

        objects = False
        with contextlib.suppress(Exception), open(path, "rb") as stream:
            npy.read_magic(stream)
            _, _, dtype = npy.read_array_header_1_0(stream, max_header_size=MAX_NPY_HEADER)
            objects = dtype.hasobject
        if objects:
            raise CheckpointError(
                f"{where}: not an anycnn checkpoint: the file is an .npy array of pickled "
                f"Python objects, {never}"
            )
        raise CheckpointError(
            f"{where}: not an anycnn checkpoint: the file is a single .npy array, not an .npz "
            "archive of one"
        )
    if head[:1] == b"\x80":
        raise CheckpointError(
            f"{where}: not an anycnn checkpoint: the file is a Python pickle, {never}"
        )
    if head.startswith(b"PK"):
        return
    raise CheckpointError(
        f"{where}: not an anycnn checkpoint: the file is neither an .npz archive nor an .npy array"
    )


class _Archive:
    """An open checkpoint whose structure has been checked (steps 1 and 2 of
    Note [Reading an untrusted checkpoint]); :meth:`read` reads one member's array."""

    def __init__(self, path: Path):
        self.path, self.where = path, str(path)
        where = self.where
        if path.is_dir():
            raise CheckpointError(
                f"{where}: a directory, not a checkpoint file; pass one of its epoch-NNNN.npz files"
            )
        if not path.is_file():
            raise CheckpointError(f"{where}: no such checkpoint file")
        _refuse_non_archive(path, where)
        try:
            self.zip = zipfile.ZipFile(path)
        except (
            zipfile.BadZipFile,
            zlib.error,
            EOFError,
            OSError,
            ValueError,
            NotImplementedError,
            struct.error,
            RuntimeError,
        ) as error:
            raise CheckpointError(
                f"{where}: truncated or corrupt checkpoint ({type(error).__name__}: "
                f"{_clean(str(error))})"
            ) from None
        try:
            self.members = {key: self._header(key, info) for key, info in self._directory().items()}
        except BaseException:
            self.zip.close()
            raise

    def close(self) -> None:
        self.zip.close()

    def _directory(self) -> dict[str, zipfile.ZipInfo]:
        """The members' directory entries by name (``.npy`` cut off), each one checked."""
        where = self.where
        infos = self.zip.infolist()
        if len(infos) > MAX_MEMBERS:
            raise CheckpointError(f"{where}: {len(infos)} members, more than {MAX_MEMBERS}")
        members: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            raw = info.filename
            key = raw[:-4] if raw.endswith(".npy") else raw
            if not raw.endswith(".npy") and _NAME.fullmatch(raw) and raw.startswith("meta/"):
                raise CheckpointError(
                    f"{where}: not an anycnn checkpoint: member {_quote(raw)} is not an .npy array"
                )
            if not raw.endswith(".npy") or not _NAME.fullmatch(key) or ".." in key:
                raise CheckpointError(f"{where}: unexpected member {_quote(raw)}")
            if not key.startswith(("meta/", "param/", "extra/", "optim/")) or (
                key.startswith("meta/") and key not in ("meta/config", "meta/info")
            ):
                raise CheckpointError(f"{where}: unexpected entry {_quote(key)}")
            if key in members:
                raise CheckpointError(f"{where}: member {_quote(key)} appears twice")
            if info.flag_bits & 0x1:
                raise CheckpointError(f"{where}: member {_quote(key)} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CheckpointError(
                    f"{where}: member {_quote(key)} uses compression method "
                    f"{info.compress_type}; only stored (0) and deflate (8) are read"
                )
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise CheckpointError(
                    f"{where}: member {_quote(key)}: stored, yet its sizes differ "
                    f"({info.compress_size} and {info.file_size} bytes)"
                )
            if (
                info.compress_type == zipfile.ZIP_DEFLATED
                and info.file_size > MAX_DEFLATE_RATIO * info.compress_size + 2**20
            ):
                raise CheckpointError(
                    f"{where}: member {_quote(key)} would expand from {info.compress_size} to "
                    f"{info.file_size} bytes, more than {MAX_DEFLATE_RATIO} times (a "
                    "decompression bomb?)"
                )
            total += info.file_size
            if total > MAX_CHECKPOINT_BYTES:
                raise CheckpointError(
                    f"{where}: the members hold more than {MAX_CHECKPOINT_BYTES} bytes "
                    "uncompressed, more than a checkpoint may (MAX_CHECKPOINT_BYTES)"
                )
            if info.header_offset + info.compress_size > self._size():
                raise CheckpointError(
                    f"{where}: truncated or corrupt checkpoint (member {_quote(key)} ends past "
                    "the end of the file)"
                )
            members[key] = info
        return members

    def _size(self) -> int:
        return self.path.stat().st_size

    def _open(self, info: zipfile.ZipInfo) -> Any:
        return self.zip.open(info)

    def _header(self, key: str, info: zipfile.ZipInfo) -> _Member:
        """The member ``key`` as its checked ``.npy`` header describes it."""
        where = self.where
        from numpy.lib import format as npy

        try:
            with self._open(info) as stream:
                version = npy.read_magic(stream)
                reader = (
                    npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                )
                if version not in ((1, 0), (2, 0), (3, 0)):
                    raise ValueError(f"unknown .npy version {version}")
                shape, fortran, dtype = reader(stream, max_header_size=MAX_NPY_HEADER)
                offset = stream.tell()
        except CheckpointError:
            raise
        except ValueError as error:
            if "pickle" in str(error) or "object" in str(error):
                raise CheckpointError(
                    f"{where}: not an anycnn checkpoint: the file is an .npz archive holding an "
                    "array of pickled Python objects, which is never loaded (allow_pickle=False): "
                    f"member {_quote(key)}"
                ) from None
            raise CheckpointError(
                f"{where}: member {_quote(key)} is not an .npy array ({_clean(str(error))})"
            ) from None
        except Exception as error:  # zipfile/zlib/struct errors of a corrupt member
            raise CheckpointError(
                f"{where}: truncated or corrupt checkpoint (member {_quote(key)}: "
                f"{type(error).__name__}: {_clean(str(error))})"
            ) from None
        if dtype.hasobject or dtype.str not in _ALLOWED_DTYPES:
            if dtype.hasobject:
                raise CheckpointError(
                    f"{where}: not an anycnn checkpoint: the file is an .npz archive holding an "
                    "array of pickled Python objects, which is never loaded (allow_pickle=False): "
                    f"member {_quote(key)}"
                )
            raise CheckpointError(f"{where}: member {_quote(key)} has dtype {dtype.str!r}")
        if len(shape) > 8:
            raise CheckpointError(f"{where}: member {_quote(key)} has {len(shape)} dimensions")
        member = _Member(info, dtype, shape, fortran, offset)
        if info.file_size != offset + member.nbytes:
            raise CheckpointError(
                f"{where}: truncated or corrupt checkpoint (member {_quote(key)}: its header "
                f"declares {dtype} {shape}, {member.nbytes} bytes of data, but the member "
                f"holds {info.file_size - offset})"
            )
        return member

    def read(self, key: str) -> np.ndarray:
        """The array of member ``key``, exactly as large as its checked header says."""
        member = self.members[key]
        try:
            data = bytearray(member.nbytes)  # writable, as np.load's arrays are
            with self._open(member.info) as stream:
                stream.read(member.offset)
                view, got = memoryview(data), 0
                while got < member.nbytes:
                    count = stream.readinto(view[got:])
                    if not count:
                        break
                    got += count
                if got != member.nbytes or stream.read(1):
                    raise EOFError(f"member {key!r} is shorter or longer than its header says")
        except Exception as error:  # a bad CRC, a truncated stream, zlib errors
            raise CheckpointError(
                f"{self.where}: truncated or corrupt checkpoint ({type(error).__name__}: "
                f"{_clean(str(error))})"
            ) from None
        order: Literal["C", "F"] = "F" if member.fortran else "C"
        return np.frombuffer(data, dtype=member.dtype).reshape(member.shape, order=order)

    def json(self, key: str) -> Any:
        where = self.where
        member = self.members.get(key)
        if member is None:
            raise CheckpointError(f"{where}: not an anycnn checkpoint (no {key!r} entry)")
        if member.dtype != np.uint8 or len(member.shape) != 1:
            raise CheckpointError(f"{where}: {key!r} must be a 1-d uint8 array of JSON")
        if member.nbytes > MAX_META_BYTES:
            raise CheckpointError(
                f"{where}: {key!r} holds {member.nbytes} bytes of JSON, more than {MAX_META_BYTES}"
            )
        return _parse_json(self.read(key).tobytes(), key, where)


def _parse_json(data: bytes, key: str, where: str) -> Any:
    """JSON without a non-finite number (NaN, Infinity, 1e999) outside the metrics history; a
    too deeply nested document (the C parser's RecursionError) is one :class:`CheckpointError`
    (the structure is checked afterwards)."""

    def constant(name: str) -> Any:
        if key == "meta/info":  # the metrics history may hold inf (images per second)
            return float(name)  # "Infinity", "-Infinity" and "NaN" are float()'s words too
        raise ValueError(f"{name} is not allowed")

    try:
        document = json.loads(data.decode("utf-8"), parse_constant=constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise CheckpointError(
            f"{where}: {key!r} is not valid JSON ({_clean(str(error))})"
        ) from None
    # the history is only shown (and written back), never computed with
    stack = [
        {k: v for k, v in document.items() if k != "history"}
        if isinstance(document, dict)
        else document
    ]
    while stack:  # 1e999 parses to inf: no non-finite number anywhere (a NaN gain, a rate)
        node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise CheckpointError(f"{where}: {key!r} holds a non-finite number ({node})")
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return document


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_info(info: Any, where: str) -> dict[str, Any]:
    """The structure of ``meta/info`` (step 3 of Note [Reading an untrusted checkpoint])."""
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not an anycnn checkpoint (format tag missing)")
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format version "
            f"{version if _is_int(version) else _quote(str(version))} is newer than this "
            f"anycnn ({_version()}) reads (<= {FORMAT_VERSION}); upgrade anycnn"
        )
    epoch = info.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or not 0 <= epoch <= 10**9:
        raise CheckpointError(f"{where}: bad epoch {_quote(str(epoch))}")
    for key in ("model", "dataset", "anycnn_version", "run_id"):
        if key in info and info[key] is not None and not isinstance(info[key], str):
            raise CheckpointError(f"{where}: {key!r} must be a string in 'meta/info'")
    optimizer = info.get("optimizer")
    if optimizer is not None and (
        not isinstance(optimizer, dict) or not isinstance(optimizer.get("name"), str)
    ):
        raise CheckpointError(f"{where}: bad optimizer configuration: not an object with a name")
    history = info.get("history", [])
    if not isinstance(history, list) or not all(
        isinstance(record, dict)
        and all(
            isinstance(k, str) and (v is None or isinstance(v, int | float))
            for k, v in record.items()
        )
        for record in history
    ):
        raise CheckpointError(
            f"{where}: bad metrics history in 'meta/info': a list of objects of numbers expected"
        )
    prep = info.get("preprocessing")
    if prep is not None:
        if not isinstance(prep, dict) or prep.get("kind") not in ("scale01", "normalize", "none"):
            kind = prep.get("kind") if isinstance(prep, dict) else prep
            raise CheckpointError(
                f"{where}: bad preprocessing {_quote(str(kind))}: 'kind' must be 'scale01', "
                "'normalize' or 'none'"
            )
        for key in ("mean", "std"):
            value = prep.get(key)
            if value is not None and (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
            ):
                raise CheckpointError(f"{where}: bad preprocessing {key} {_quote(str(value))}")
        if prep["kind"] == "normalize" and not (
            isinstance(prep.get("std"), int | float)
            and prep["std"] > 0
            and isinstance(prep.get("mean"), int | float)
        ):
            raise CheckpointError(
                f"{where}: bad preprocessing: 'normalize' needs a finite mean and a std > 0"
            )
    return info


def _check_config(config: Any, where: str) -> dict[str, Any]:
    """The structure of ``meta/config`` (step 3 of Note [Reading an untrusted checkpoint])."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise CheckpointError(f"{where}: 'meta/config' is not a network configuration")
    shape = config.get("input_shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= 4
        or not all(_is_int(s) and s >= 1 for s in shape)
    ):
        raise CheckpointError(
            f"{where}: bad input shape {_quote(str(shape))} in 'meta/config': 1 to 4 positive "
            "sizes expected"
        )
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise CheckpointError(
            f"{where}: input shape {tuple(shape)} has more than {MAX_INPUT_ELEMENTS} elements"
        )
    if not config["layers"] or not all(
        isinstance(spec, dict)
        and isinstance(spec.get("type"), str)
        and isinstance(spec.get("name"), str)
        for spec in config["layers"]
    ):
        raise CheckpointError(
            f"{where}: bad layer list in 'meta/config': objects with a 'type' and a 'name' expected"
        )
    if not isinstance(config.get("name", "network"), str):
        raise CheckpointError(f"{where}: the model name in 'meta/config' is not a string")
    if config.get("dtype") not in ("float32", "float64"):
        raise CheckpointError(
            f"{where}: bad dtype {_quote(str(config.get('dtype')))} in 'meta/config'"
        )
    if not _is_int(config.get("seed")):
        raise CheckpointError(f"{where}: bad seed in 'meta/config'")
    return config


#: elements a layer may allocate beyond what the file's own arrays for it hold
_SLACK = 2**20


def _sizes(value: Any, d: int) -> tuple[int, ...] | None:
    """A kernel size of a configuration as one positive int per spatial axis, or None."""
    if _is_int(value) and value >= 1:
        return (value,) * d
    if isinstance(value, list) and len(value) == d and all(_is_int(v) and v >= 1 for v in value):
        return tuple(value)
    return None


def _check_sizes(config: dict[str, Any], members: Mapping[str, _Member], where: str) -> None:
    """Step 4 of Note [Reading an untrusted checkpoint]: walk the layers with an upper bound of
    each one's input shape and refuse a layer whose configuration would allocate more than the
    file's arrays for it hold (plus :data:`_SLACK`), before :meth:`Network.from_config` allocates
    anything. Exact shapes are checked after the build, with the designed messages."""
    held: dict[str, int] = {}
    for key, member in members.items():
        if key.startswith("param/"):
            layer = key[len("param/") :].rsplit(".", 1)[0]
            held[layer] = held.get(layer, 0) + math.prod(member.shape)
    shape = tuple(config["input_shape"])
    for spec in config["layers"]:
        kind, name = spec["type"], spec["name"]
        # maps (C, *spatial) with 1 to 3 spatial axes (issue 18); (D,) vectors have none
        spatial = shape[1:] if 2 <= len(shape) <= 4 else None
        need = 0
        if kind in ("Convolution", "LearnedCombination") and spatial is not None:
            d = len(spatial)
            maps, kernel = spec.get("maps"), _sizes(spec.get("kernel_size"), d)
            if not (_is_int(maps) and maps >= 1) or kernel is None:
                return  # the layer's own constructor refuses this with its message
            need = maps * shape[0] * (math.prod(kernel) + 2) + maps
            padding = spec.get("padding", 0)
            if padding == "same":
                pads = tuple(k - 1 for k in kernel)
            elif _is_int(padding) or padding in ("valid", None):
                pads = (2 * abs(padding),) * d if _is_int(padding) else (0,) * d
            elif isinstance(padding, list) and len(padding) == d and all(map(_is_int, padding)):
                pads = tuple(2 * abs(p) for p in padding)
            else:  # a form this bound does not know: as if padded by a whole kernel each side
                pads = tuple(2 * k for k in kernel)
            shape = (
                maps,
                *(max(s - k + 1 + p, 1) for s, k, p in zip(spatial, kernel, pads, strict=True)),
            )
        elif kind == "Subsampling" and spatial is not None:
            n = spec.get("n")
            if not (_is_int(n) and n >= 1):
                return
            need = 2 * shape[0]
            shape = (shape[0], *(-(-s // n) for s in spatial))
        elif kind == "FullyConnected":
            units = spec.get("units")
            if not (_is_int(units) and units >= 1):
                return
            need = units * (math.prod(shape) + 1)
            shape = (units,)
        elif kind == "Flatten":
            shape = (math.prod(shape),)
        if need > held.get(name, 0) + _SLACK:
            raise CheckpointError(
                f"{where}: layer {_quote(name)} ({kind}) as configured would allocate about "
                f"{need} parameters, but the file holds {held.get(name, 0)} for it"
            )
        if math.prod(shape) > MAX_ACTIVATION_ELEMENTS:  # what one example costs to run
            raise CheckpointError(
                f"{where}: layer {_quote(name)} ({kind}) would produce {math.prod(shape)} values "
                f"per example, more than {MAX_ACTIVATION_ELEMENTS}"
            )
    if len(shape) == 1 and shape[0] > MAX_CLASSES:
        raise CheckpointError(
            f"{where}: the network has {shape[0]} outputs, more than the {MAX_CLASSES} classes "
            "anycnn trains or evaluates"
        )


def _check_members(config: dict[str, Any], members: Mapping[str, _Member], where: str) -> None:
    """Every member's name and size is one the configuration implies (before any data is read):
    parameters of its layers, the input-map tables of its convolutions, and optimizer state
    shaped like the parameter it belongs to."""
    layers = {spec["name"] for spec in config["layers"]}
    tables = {f"{spec['name']}.table" for spec in config["layers"] if spec["type"] == "Convolution"}
    unexpected = sorted(
        key[len("param/") :]
        for key in members
        if key.startswith("param/") and key[len("param/") :].rsplit(".", 1)[0] not in layers
    )
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected parameters {', '.join(unexpected)} for model "
            f"{_quote(str(config.get('name', 'network')))}"
        )
    unknown = sorted(
        key for key in members if key.startswith("extra/") and key[len("extra/") :] not in tables
    )
    if unknown:
        raise CheckpointError(f"{where}: unexpected entries {', '.join(map(_quote, unknown))}")
    for key, member in members.items():
        if not key.startswith("optim/"):
            continue
        state = key[len("optim/") :]
        if state == "steps":
            if member.shape != () or member.dtype != np.int64:
                raise CheckpointError(
                    f"{where}: optimizer state 'steps' must be int64 of shape (), got "
                    f"{member.dtype} of shape {member.shape}"
                )
            continue
        if "/" not in state:
            raise CheckpointError(f"{where}: unexpected optimizer state {_quote(state)}")
        # a bound only: exact shapes and dtypes are checked against the rebuilt optimizer
        param = members.get("param/" + state.split("/", 1)[1])
        room = (0 if param is None else math.prod(param.shape)) + _SLACK
        if math.prod(member.shape) > room:
            raise CheckpointError(
                f"{where}: optimizer state {state!r} of shape {member.shape} is larger than its "
                "parameter"
            )


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The stored ``meta/info`` JSON (epoch, optimizer, history...) without restoring anything
    (and without reading any array but the JSON).

    Raises :class:`CheckpointError` for a file that is not a readable checkpoint.

    Examples
    --------
    >>> import tempfile
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")
    >>> from anycnn.training.checkpoint import read_info, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     info = read_info(save_checkpoint(f"{tmp}/epoch-0004.npz", net, epoch=4))
    >>> info["epoch"], info["parameters"]["fc1.weight"]
    (4, [2, 4])
    """
    path = Path(path)
    archive = _Archive(path)
    try:
        return _check_info(archive.json("meta/info"), str(path))
    finally:
        archive.close()


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without the initialisation seeds (of the network and of its layers): two
    networks that differ only there are the same model (tables are compared separately)."""
    out = {k: v for k, v in config.items() if k != "seed"}
    out["layers"] = [{k: v for k, v in spec.items() if k != "seed"} for spec in config["layers"]]
    return out


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    network: Network | None = None,
    backend: str | Backend | None = None,
    dtype: str | None = None,
    model: str | None = None,
) -> Checkpoint:
    """Read a checkpoint, validate every array, then restore the network (and optimizer).

    Parameters
    ----------
    path : path
    network : Network, optional
        Restore into this network (to resume training): its configuration must equal the stored
        one, apart from the initialisation seed. By default a network is rebuilt from the stored
        configuration on ``backend`` (the current one by default) in ``dtype`` (the stored one by
        default; a different float dtype converts the parameters).
    model : str, optional
        The model name expected (``"lenet5"``); another one is an error.

    Returns
    -------
    Checkpoint
        With ``network`` restored, ``epoch``, ``info`` (the stored JSON), and ``optimizer``
        rebuilt from its config with its state restored when one was stored.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, not a checkpoint, of a newer format, of another model, or
        an array is missing, unexpected, or of the wrong shape or dtype (the message names it).

    Examples
    --------
    Rebuilt on the current backend, in float32 rather than the stored float64:

    >>> import tempfile
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")
    >>> from anycnn.training.checkpoint import load_checkpoint, save_checkpoint
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_checkpoint(f"{tmp}/epoch-0001.npz", net, epoch=1)
    ...     checkpoint = load_checkpoint(path, dtype="float32")
    >>> checkpoint.epoch, checkpoint.network.dtype_name
    (1, 'float32')
    """
    from anycnn.training import optim  # optim imports network; keep module import light

    path = Path(path)
    where = str(path)
    archive = _Archive(path)
    try:
        info = _check_info(archive.json("meta/info"), where)
        config = _check_config(archive.json("meta/config"), where)
        stored_model = config.get("name", "network")
        if model is not None and stored_model != model:
            raise CheckpointError(
                f"{where}: this is a checkpoint of model {_quote(stored_model)}, not {model!r}"
            )
        _check_members(config, archive.members, where)
        if network is None:
            _check_sizes(config, archive.members, where)
        arrays = {key: archive.read(key) for key in archive.members if not key.startswith("meta/")}
    finally:
        archive.close()

    extra = {
        key[len("extra/") :]: value for key, value in arrays.items() if key.startswith("extra/")
    }
    if network is None:
        try:
            network = Network.from_config(config, extra_state=extra, backend=backend, dtype=dtype)
        except (
            ValueError,
            TypeError,
            KeyError,
            AttributeError,
            IndexError,
            OverflowError,
        ) as error:
            raise CheckpointError(
                f"{where}: cannot rebuild the network from the stored configuration: "
                f"{_clean(str(error))}"
            ) from None
    else:
        if _comparable(network.config()) != _comparable(config):
            raise CheckpointError(
                f"{where}: this checkpoint is of another model: it holds {_quote(stored_model)} "
                f"({_describe(config)}), the network is {network.name!r} "
                f"({_describe(network.config())}); "
                + _difference(_comparable(config), _comparable(network.config()))
            )
        for name, value in network.extra_state().items():
            if name not in extra or not np.array_equal(np.asarray(extra[name]), value):
                raise CheckpointError(
                    f"{where}: this checkpoint is of another model: its {name!r} differs"
                )

    # -- validate everything before assigning anything --------------------------------------
    prep = info.get("preprocessing")
    if isinstance(prep, dict) and prep.get("input_shape") != list(network.input_shape):
        raise CheckpointError(
            f"{where}: the preprocessing's input shape {_quote(str(prep.get('input_shape')))} "
            f"is not the network's {tuple(network.input_shape)}"
        )
    params = network.parameters()
    dtype_name = network.dtype_name
    stored_dtype = config.get("dtype", dtype_name)
    for name, p in params.items():
        key = f"param/{name}"
        if key not in arrays:
            raise CheckpointError(f"{where}: parameter {name!r} is missing")
        value = arrays[key]
        if tuple(value.shape) != tuple(p.shape):
            raise CheckpointError(
                f"{where}: parameter {name!r} has shape {tuple(value.shape)}, the model "
                f"{network.name!r} expects {tuple(p.shape)}"
            )
        if value.dtype != np.dtype(stored_dtype):
            raise CheckpointError(
                f"{where}: parameter {name!r} is {value.dtype}, the checkpoint says {stored_dtype}"
            )
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"{where}: parameter {name!r} holds NaN or Inf")
    unexpected = sorted(
        key for key in arrays if key.startswith("param/") and key[len("param/") :] not in params
    )
    if unexpected:
        raise CheckpointError(
            f"{where}: unexpected parameters {', '.join(k[6:] for k in unexpected)} for model "
            f"{network.name!r}"
        )
    optimizer = None
    optimizer_state = {
        key[len("optim/") :]: value for key, value in arrays.items() if key.startswith("optim/")
    }
    if info.get("optimizer") is not None:
        try:
            optimizer = optim.optimizer_from_config(network, info["optimizer"])
        except (ValueError, TypeError, KeyError) as error:
            raise CheckpointError(f"{where}: bad optimizer configuration: {error}") from None
        expected = optimizer.expected_state()
        if "steps" not in optimizer_state:
            raise CheckpointError(f"{where}: the optimizer state 'optim/steps' is missing")
        steps = int(optimizer_state["steps"])
        if steps < 0:
            raise CheckpointError(f"{where}: the optimizer state 'optim/steps' is {steps} < 0")
        missing = sorted(key for key in expected if key not in optimizer_state)
        if steps > 0 and missing:  # after a step every slot holds every parameter's buffer
            raise CheckpointError(
                f"{where}: optimizer state {', '.join(map(_quote, missing[:3]))}"
                f"{' ...' if len(missing) > 3 else ''} missing after {steps} steps"
            )
        for key, value in optimizer_state.items():
            if key != "steps" and not np.all(np.isfinite(value)):
                raise CheckpointError(f"{where}: optimizer state {key!r} holds NaN or Inf")
            if key not in expected:
                raise CheckpointError(
                    f"{where}: unexpected optimizer state {key!r} for a "
                    f"{info['optimizer'].get('name')} optimizer"
                )
            shape, want = expected[key]
            want = stored_dtype if want == dtype_name else want
            if tuple(value.shape) != tuple(shape) or value.dtype != np.dtype(want):
                raise CheckpointError(
                    f"{where}: optimizer state {key!r} must be {want} of shape {tuple(shape)}, "
                    f"got {value.dtype} of shape {tuple(value.shape)}"
                )
    elif optimizer_state:
        raise CheckpointError(f"{where}: optimizer state without an optimizer configuration")
    epoch = info["epoch"]  # an int in 0..10**9 (_check_info)
    state = info.get("rng_state")
    if state is not None:
        _generator_from_state(state, where)

    # -- assign -------------------------------------------------------------------------------
    for name in params:
        value = np.array(arrays[f"param/{name}"], dtype=np.dtype(dtype_name))  # a copy
        network.set_parameter(name, network.backend.asarray(value, dtype=dtype_name))
    if optimizer is not None:
        converted = {
            key: (value if key == "steps" else value.astype(dtype_name, copy=False))
            for key, value in optimizer_state.items()
        }
        optimizer.load_state_dict(converted)
    return Checkpoint(
        path=path,
        network=network,
        epoch=epoch,
        info=info,
        optimizer=optimizer,
        optimizer_state=optimizer_state,
    )


def _difference(stored: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    """What differs between two model configs, in words: ``dtype 'float64' in the checkpoint,
    'float32' here`` (a layer's setting is named by the layer)."""
    parts = []
    for key in sorted(set(stored) | set(current)):
        if key == "layers" or stored.get(key) == current.get(key):
            continue
        parts.append(f"{key} {stored.get(key)!r} in the checkpoint, {current.get(key)!r} here")
    old, new = stored["layers"], current["layers"]  # _comparable's configs have them
    if len(old) != len(new):
        parts.append(f"{len(old)} layers in the checkpoint, {len(new)} here")
    for a, b in zip(old, new, strict=False):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                name = a.get("name", "?")
                parts.append(f"{name}.{key} {a.get(key)!r} in the checkpoint, {b.get(key)!r} here")
    return "; ".join(parts[:4]) or "the input-map tables differ"


def _describe(config: Mapping[str, Any]) -> str:
    """``input (1, 28, 28), 5 layers`` of a checked model config (_check_config) or a network's."""
    return f"input {tuple(config['input_shape'])}, {len(config['layers'])} layers"
