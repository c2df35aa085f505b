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
``optim/<key>``            the optimizer's :meth:`~anycnn.optim.Optimizer.state_dict`
                           (``optim/steps``, ``optim/velocity/conv1.kernel``, ...)
=========================  ====================================================================

Writing is atomic (:func:`save_checkpoint`): the file is written to a temporary name in the same
directory, flushed and fsync-ed, then renamed over the target with :func:`os.replace`, so a crash
leaves either the old file or the new one, never half of one.

Reading (:func:`load_checkpoint`) rebuilds the network from its configuration and checks every
array's name, shape and dtype against it, and the optimizer state against the optimizer rebuilt
from its config, *before* assigning anything. A truncated file, a file of another kind (a pickle
renamed ``.npz``), or a checkpoint of another model raises :class:`CheckpointError` naming the
file and what is wrong.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from anycnn.backend import Backend
from anycnn.network import Network

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
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
    model or optimizer. The message names the file and what is wrong."""


def _version() -> str:
    try:
        from anycnn import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - during a partial import
        return "unknown"


def _json_bytes(value: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(value, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def _test_stall(path: Path) -> None:
    """A test hook: ``ANYCNN_TEST_CHECKPOINT_STALL=seconds`` (every write) or
    ``ANYCNN_TEST_CHECKPOINT_STALL=epoch-0002.npz=seconds`` (that file only) sleeps between
    writing the temporary file and renaming it, so tests/test_hardening.py can SIGKILL a training
    process exactly there. Read at each write, only here; unset it does nothing."""
    value = os.environ.get("ANYCNN_TEST_CHECKPOINT_STALL")
    if value:
        name, _, seconds = value.rpartition("=")
        if not name or name == path.name:
            import time

            time.sleep(float(seconds))


def checkpoint_path(directory: str | os.PathLike[str], epoch: int) -> Path:
    """The file of epoch ``epoch`` (1-based) in ``directory``: ``epoch-0003.npz``."""
    return Path(directory) / f"epoch-{int(epoch):04d}.npz"


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The checkpoint of the highest epoch in ``directory``, or ``None`` when there is none."""
    folder = Path(directory)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob("epoch-*.npz"):
        digits = path.stem.split("-", 1)[1]
        if digits.isdigit():
            found.append((int(digits), path))
    return max(found)[1] if found else None


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
    """
    path = Path(path)
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

    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            np.savez(stream, **arrays)  # type: ignore[arg-type]  # numpy stubs: allow_pickle
            stream.flush()
            os.fsync(stream.fileno())
        _test_stall(path)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where supported
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    # A process killed between writing and renaming leaves its temporary file behind; once this
    # target is safely written, such leftovers for the same target are garbage.
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            leftover.unlink()
    return path


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    ``network`` holds the stored parameters; ``optimizer`` (when one was stored and a network was
    rebuilt) holds its state; ``rng()`` gives a generator in the stored state."""

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
            f"({type(error).__name__}: {_quote(str(error))})"
        ) from None
    return np.random.Generator(bit_generator)


def _quote(text: str, limit: int = 80) -> str:
    """``text`` made safe to print on one line: control characters and non-ASCII escaped
    (a name read from a file can hold newlines or terminal escape codes), cut to ``limit``."""
    shown = text.encode("ascii", "backslashreplace").decode("ascii")
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in shown)
    if len(shown) > limit:
        shown = shown[: limit - 3] + "..."
    return repr(shown)


def _read_all(path: Path) -> dict[str, np.ndarray]:
    """Every array of the file, read now (a truncated member fails here, not later)."""
    where = str(path)
    if path.is_dir():
        raise CheckpointError(
            f"{where}: a directory, not a checkpoint file; pass one of its epoch-NNNN.npz files"
        )
    if not path.is_file():
        raise CheckpointError(f"{where}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise CheckpointError(f"{where}: not an anycnn checkpoint (a single .npy array)")
            arrays = {key: archive[key] for key in archive.files}
        for key, value in arrays.items():  # members not named .npy come back as raw bytes
            if not isinstance(value, np.ndarray):
                raise CheckpointError(
                    f"{where}: not an anycnn checkpoint: member {key!r} is not an .npy array"
                )
        return arrays
    except CheckpointError:
        raise
    except ValueError as error:
        text = str(error)
        if "pickle" in text:
            with open(path, "rb") as stream:
                head = stream.read(6)
            never = "which is never loaded (allow_pickle=False)"
            if head.startswith(b"PK"):
                what = f"an .npz archive holding an array of pickled Python objects, {never}"
            elif head.startswith(b"\x93NUMPY"):
                what = f"an .npy array of pickled Python objects, {never}"
            elif head[:1] == b"\x80":
                what = f"a Python pickle, {never}"
            else:
                what = "neither an .npz archive nor an .npy array"
            raise CheckpointError(
                f"{where}: not an anycnn checkpoint: the file is {what}"
            ) from None
        raise CheckpointError(f"{where}: not a readable .npz checkpoint ({text})") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError) as error:
        raise CheckpointError(
            f"{where}: truncated or corrupt checkpoint ({type(error).__name__}: {error})"
        ) from None


def _json_entry(arrays: Mapping[str, np.ndarray], key: str, where: str) -> Any:
    if key not in arrays:
        raise CheckpointError(f"{where}: not an anycnn checkpoint (no {key!r} entry)")
    value = arrays[key]
    if value.dtype != np.uint8 or value.ndim != 1:
        raise CheckpointError(f"{where}: {key!r} must be a 1-d uint8 array of JSON")
    try:
        return json.loads(value.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{where}: {key!r} is not valid JSON ({error})") from None


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The stored ``meta/info`` JSON (epoch, optimizer, history...) without restoring anything.

    Raises :class:`CheckpointError` for a file that is not a readable checkpoint."""
    path = Path(path)
    info = _json_entry(_read_all(path), "meta/info", str(path))
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an anycnn checkpoint (format tag missing)")
    return info


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config without the initialisation seeds (of the network and of its layers): two
    networks that differ only there are the same model (tables are compared separately)."""
    out = {k: v for k, v in config.items() if k != "seed"}
    out["layers"] = [
        {k: v for k, v in spec.items() if k != "seed"} for spec in config.get("layers", [])
    ]
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
    """
    from anycnn import optim  # optim imports network; keep module import light

    path = Path(path)
    where = str(path)
    arrays = _read_all(path)
    info = _json_entry(arrays, "meta/info", where)
    config = _json_entry(arrays, "meta/config", where)
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not an anycnn checkpoint (format tag missing)")
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{where}: checkpoint format version {version!r} is newer than this anycnn "
            f"({_version()}) reads (<= {FORMAT_VERSION}); upgrade anycnn"
        )
    if not isinstance(config, dict) or "layers" not in config:
        raise CheckpointError(f"{where}: 'meta/config' is not a network configuration")
    stored_model = config.get("name", "network")
    if model is not None and stored_model != model:
        raise CheckpointError(
            f"{where}: this is a checkpoint of model {stored_model!r}, not {model!r}"
        )

    extra = {
        key[len("extra/") :]: value for key, value in arrays.items() if key.startswith("extra/")
    }
    if network is None:
        try:
            network = Network.from_config(config, extra_state=extra, backend=backend, dtype=dtype)
        except (ValueError, TypeError, KeyError) as error:
            raise CheckpointError(
                f"{where}: cannot rebuild the network from the stored configuration: {error}"
            ) from None
    else:
        if _comparable(network.config()) != _comparable(config):
            raise CheckpointError(
                f"{where}: this checkpoint is of another model: it holds {stored_model!r} "
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
    unknown = sorted(
        key for key in arrays if not key.startswith(("param/", "extra/", "optim/", "meta/"))
    )
    if unknown:
        raise CheckpointError(f"{where}: unexpected entries {', '.join(unknown)}")

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
        for key, value in optimizer_state.items():
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
    epoch = info.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise CheckpointError(f"{where}: bad epoch {epoch!r}")
    state = info.get("rng_state")
    if state is not None:
        _generator_from_state(state, where)

    # -- assign -------------------------------------------------------------------------------
    for name in params:
        value = np.array(arrays[f"param/{name}"], dtype=np.dtype(dtype_name), copy=True)
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
    old, new = stored.get("layers", []), current.get("layers", [])
    if len(old) != len(new):
        parts.append(f"{len(old)} layers in the checkpoint, {len(new)} here")
    for a, b in zip(old, new, strict=False):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                name = a.get("name", "?")
                parts.append(f"{name}.{key} {a.get(key)!r} in the checkpoint, {b.get(key)!r} here")
    return "; ".join(parts[:4]) or "the input-map tables differ"


def _describe(config: Mapping[str, Any]) -> str:
    kinds = [spec.get("type", "?") for spec in config.get("layers", [])]
    return f"input {tuple(config.get('input_shape', ()))}, {len(kinds)} layers"
