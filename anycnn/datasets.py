"""Data sets on the host: IDX reading, MNIST-style loading, preprocessing and mini-batch indices.

Everything here is pure NumPy and runs on the host; no array backend is imported. The training
loop moves each mini-batch to the device as it is used, so that the host holds one float copy of
the data set at most and the device holds one batch (the memory rule of the issue tracker:
"Hold one float copy of the data set at most; move batches to the device as they are used").

The helpers are written so that they do not make hidden copies:

* :func:`read_idx` decompresses straight into the returned array (one allocation, no
  intermediate ``bytes`` object); big-endian data is byte-swapped in place.
* :func:`normalize` and :func:`scale01` convert integer images to float once and then work in
  place on that float array (``copy=False`` lets :func:`normalize` work in place on float input).
* :func:`pad` allocates the padded array once, in the requested dtype.
* :func:`mean_std` accumulates in float64 over blocks of examples, never over a full-size
  temporary.

To pad for LeNet-5 with one float copy only, pad the ``uint8`` images first (one byte per pixel)
and normalise the padded array with the statistics of the unpadded training set::

    mean, std = mean_std(ds.train_images)
    x_train, _, _ = normalize(pad(ds.train_images, 32), mean=mean, std=std)

The padding is 0 before normalisation, so it becomes the normalised background value
``-mean / std``, as LeCun pads.
"""

from __future__ import annotations

import gzip
import importlib
import io
import math
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "DatasetError",
    "Dataset",
    "KNOWN_DATASETS",
    "IDX_FILES",
    "read_idx",
    "load",
    "search_path",
    "mean_std",
    "normalize",
    "scale01",
    "one_hot",
    "pad",
    "batches",
]


class DatasetError(ValueError):
    """A data file or data set is missing, malformed or inconsistent.

    The message names the file or directory, what was expected and what was found.

    Examples
    --------
    >>> import numpy as np
    >>> try:
    ...     Dataset("toy", np.zeros((2, 4, 4), np.uint8), np.array([0, 7]),
    ...             np.zeros((1, 4, 4), np.uint8), np.array([0]), num_classes=2)
    ... except DatasetError as error:
    ...     print("toy" in str(error), "label" in str(error))
    True True
    """


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------

#: IDX type code -> (big-endian dtype as stored in the file, name used in messages).
_IDX_TYPES: dict[int, tuple[np.dtype[Any], str]] = {
    0x08: (np.dtype(">u1"), "uint8"),
    0x09: (np.dtype(">i1"), "int8"),
    0x0B: (np.dtype(">i2"), "int16"),
    0x0C: (np.dtype(">i4"), "int32"),
    0x0D: (np.dtype(">f4"), "float32"),
    0x0E: (np.dtype(">f8"), "float64"),
}
_MAX_NDIM = 4
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20

# Note [Reading untrusted IDX files]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# An IDX header claims a size; a hostile or damaged file claims gigabytes it does not hold. So
# memory follows the data actually present, never the claim: a raw file's header must agree
# with the file size exactly (checked with fstat, before any allocation) and the file must not
# be sparse (a 92 KiB sparse file once made the loader zero-fill 3.1 GB); a gzip stream is read
# in chunks into a growing buffer and refused as soon as it expands more than MAX_GZIP_RATIO
# times the compressed bytes consumed (deflate reaches ~1032:1 on zeros; MNIST's files expand
# ~5 times). ``load(limit=...)`` reads only the first ``limit`` images (``read_idx(max_items=)``).
# Nothing above MAX_IDX_BYTES is read at all.

#: the largest IDX data anycnn reads from one file
MAX_IDX_BYTES = 16 * 2**30
#: the largest expansion of a gzip-compressed IDX file (decompressed / compressed bytes)
MAX_GZIP_RATIO = 100
#: a raw file with fewer than 1/_SPARSE_RATIO of its bytes on disk is refused as sparse
_SPARSE_RATIO = 16


def _type_codes() -> str:
    return ", ".join(f"0x{code:02X} {name}" for code, (_, name) in _IDX_TYPES.items())


def _read_exactly(f: io.BufferedIOBase, n: int) -> bytes:
    """Read up to ``n`` bytes, looping over short reads; fewer only at end of file."""
    parts = []
    while n > 0:
        part = f.read(n)
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _count_rest(f: io.BufferedIOBase) -> int:
    """Read to end of stream, discarding the data; return how many bytes there were."""
    total = 0
    while True:
        part = f.read(_CHUNK)
        if not part:
            return total
        total += len(part)


def _readinto_full(f: io.BufferedIOBase, buf: memoryview) -> int:
    """Fill ``buf`` from ``f``; return how many bytes were read (less only at end of file)."""
    got = 0
    n = len(buf)
    while got < n:
        k = f.readinto(buf[got:])
        if not k:
            break
        got += k
    return got


def read_idx(path: str | os.PathLike[str], *, max_items: int | None = None) -> np.ndarray:
    """Read an IDX file (the MNIST file format) into a native-endian NumPy array.

    The file may be raw or gzip-compressed; compression is detected from the magic bytes
    ``1f 8b``, not from the file name. The IDX header is two zero bytes, a type code, the number
    of dimensions, then each dimension as a big-endian ``uint32``; the data follow in C order.

    Parameters
    ----------
    path : str or os.PathLike
        The IDX file, e.g. ``train-images-idx3-ubyte.gz``.
    max_items : int, optional
        Read only the first ``max_items`` entries along the first axis (``load(limit=...)``):
        the rest of a gzip-compressed file is then neither decompressed nor checked.

    Returns
    -------
    numpy.ndarray
        A writable, C-contiguous, native-endian array with the shape from the header (its first
        size cut to ``max_items``) and the dtype given by the type code: 0x08 ``uint8``,
        0x09 ``int8``, 0x0B ``int16``, 0x0C ``int32``, 0x0D ``float32``, 0x0E ``float64``.

    Raises
    ------
    DatasetError
        If the file cannot be read, is not an IDX file (bad magic, unknown type code, 0 or more
        than 4 dimensions, a dimension of size 0), is truncated (fewer data bytes than the header
        announces), has trailing bytes after the data, or is a corrupt gzip stream; or if the
        header announces more than :data:`MAX_IDX_BYTES`, a raw file is sparse (far fewer bytes
        on disk than the header announces), or a gzip stream expands more than
        :data:`MAX_GZIP_RATIO` times (Note [Reading untrusted IDX files]). The message names
        the file, what was expected and what was found.

    Notes
    -----
    Memory follows the data actually present, never the header's claim: a raw file's header is
    checked against its size (and its blocks on disk) before anything is allocated, and a gzip
    stream is read in chunks into a growing buffer, its expansion checked as it decompresses.
    Big-endian data are byte-swapped in place.

    Examples
    --------
    >>> images = read_idx(search_path("mnist")[0] / "t10k-images-idx3-ubyte.gz", max_items=3)
    >>> images.shape, images.dtype.name
    ((3, 28, 28), 'uint8')
    """
    return _read_idx(Path(path), max_items)[0]


def _read_idx(path: Path, max_items: int | None) -> tuple[np.ndarray, int]:
    where = str(path)
    if max_items is not None and (
        isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1
    ):
        raise DatasetError(f"read_idx: max_items must be a positive int or None, got {max_items!r}")
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
            raw.seek(0)
            stat = os.fstat(raw.fileno())
            if head == _GZIP_MAGIC:
                with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                    stream = _Expansion(f, raw, stat.st_size, where)
                    return _parse_idx(stream, where, None, max_items)
            return _parse_idx(raw, where, stat, max_items)
    except DatasetError:
        raise
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DatasetError(
            f"{where}: corrupt gzip stream ({type(exc).__name__}: {exc}); the file starts with "
            f"the gzip magic 1f 8b but does not decompress"
        ) from exc
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read IDX file: {exc}") from exc


class _Expansion:
    """A gzip stream whose expansion is checked while it decompresses: more than
    :data:`MAX_GZIP_RATIO` times the compressed bytes consumed so far (plus 8 MiB) is refused."""

    def __init__(self, f: Any, raw: Any, size: int, where: str):
        self.f, self.raw, self.size, self.where, self.out = f, raw, size, where, 0

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        self.out += len(data)
        if self.out > MAX_GZIP_RATIO * self.raw.tell() + 2**23:
            raise DatasetError(
                f"{self.where}: gzip stream expands more than {MAX_GZIP_RATIO} times (at least "
                f"{self.out} bytes from {self.raw.tell()} of {self.size}): a decompression bomb? "
                "Decompress it yourself if it is genuine"
            )
        return data


def _parse_idx(
    f: Any, where: str, stat: os.stat_result | None, max_items: int | None
) -> tuple[np.ndarray, int]:
    """The array (its first axis cut to ``max_items``) and the first size the header gives."""
    compressed = stat is None
    kind = "gzip-compressed IDX file" if compressed else "IDX file"
    magic = _read_exactly(f, 4)
    if len(magic) < 4:
        raise DatasetError(
            f"{where}: not an IDX file: expected a 4-byte header (0x00 0x00, type code, number "
            f"of dimensions), found only {len(magic)} byte(s)"
        )
    if magic[0] != 0 or magic[1] != 0:
        raise DatasetError(
            f"{where}: not an IDX file: magic 0x{magic.hex()} does not start with two zero "
            f"bytes (expected e.g. 0x00000803 for images, 0x00000801 for labels)"
        )
    code, ndim = magic[2], magic[3]
    if code not in _IDX_TYPES:
        raise DatasetError(
            f"{where}: not an IDX file: unknown type code 0x{code:02X} in magic 0x{magic.hex()} "
            f"(expected one of {_type_codes()})"
        )
    if not 1 <= ndim <= _MAX_NDIM:
        raise DatasetError(
            f"{where}: unsupported IDX file: magic 0x{magic.hex()} announces {ndim} dimensions, "
            f"expected 1 to {_MAX_NDIM}"
        )
    dims_raw = _read_exactly(f, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise DatasetError(
            f"{where}: truncated IDX header: {ndim} dimension(s) need {4 * ndim} bytes of sizes, "
            f"found {len(dims_raw)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
    zero = [i for i, d in enumerate(dims) if d == 0]
    if zero:
        raise DatasetError(
            f"{where}: invalid IDX header: dimension {zero[0]} of {_shape(dims)} has size 0, "
            f"expected every size > 0"
        )
    dtype, name = _IDX_TYPES[code]
    expected = math.prod(dims) * dtype.itemsize
    header_len = 4 + 4 * ndim
    announce = f"header announces {_shape(dims)} {name} = {expected} bytes of data"
    # Note [Reading untrusted IDX files]: check the claim against what is there before
    # allocating anything, and allocate only what is read.
    if stat is not None:
        found = stat.st_size - header_len
        if found < expected:
            raise DatasetError(f"{where}: truncated {kind}: {announce}, found {found}")
        if found > expected:
            raise DatasetError(
                f"{where}: trailing bytes after IDX data: {announce}, found {found} "
                f"({found - expected} byte(s) too many)"
            )
    if expected > MAX_IDX_BYTES:
        found = _count_rest(f)
        if found < expected:
            raise DatasetError(f"{where}: truncated {kind}: {announce}, found {found}")
        raise DatasetError(
            f"{where}: {announce}, more than the {MAX_IDX_BYTES} bytes anycnn reads from one IDX "
            "file (datasets.MAX_IDX_BYTES)"
        )
    items = dims[0] if max_items is None else min(dims[0], max_items)
    want = items * (expected // dims[0])
    if stat is not None:
        on_disk = getattr(stat, "st_blocks", None)
        if on_disk is not None and want > 2**26 and on_disk * 512 * _SPARSE_RATIO < want:
            raise DatasetError(
                f"{where}: sparse file: {announce}, but only {on_disk * 512} bytes are on disk "
                f"(less than 1/{_SPARSE_RATIO}); copy it without holes (cp --sparse=never) if "
                "it is genuine"
            )
        buf = bytearray(want)
        got = _readinto_full(f, memoryview(buf))
        if got < want:  # the file shrank while being read
            raise DatasetError(f"{where}: truncated {kind}: {announce}, found {got}")
    else:
        buf = bytearray()
        while len(buf) < want:  # grows with what the stream holds, not with the claim
            part = f.read(min(_CHUNK, want - len(buf)))
            if not part:
                break
            buf += part
        if len(buf) < want:
            raise DatasetError(f"{where}: truncated {kind}: {announce}, found {len(buf)}")
        if items == dims[0]:
            extra = _count_rest(f)
            if extra:
                raise DatasetError(
                    f"{where}: trailing bytes after IDX data: {announce}, found "
                    f"{expected + extra} ({extra} byte(s) too many)"
                )
    arr = np.frombuffer(buf, dtype=dtype).reshape((items, *dims[1:]))
    if not dtype.isnative:
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return arr, dims[0]


def _shape(dims: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in dims)


# --------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------

#: The four IDX files of an MNIST-style data set, as (role, file stem). Each may be raw or
#: ``.gz``; the dotted spelling ``train-images.idx3-ubyte`` is accepted too.
IDX_FILES: tuple[tuple[str, str], ...] = (
    ("train_images", "train-images-idx3-ubyte"),
    ("train_labels", "train-labels-idx1-ubyte"),
    ("test_images", "t10k-images-idx3-ubyte"),
    ("test_labels", "t10k-labels-idx1-ubyte"),
)

#: Data sets known by name -> directory names they may be stored under (first is canonical).
KNOWN_DATASETS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST"),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "fashion", "FashionMNIST"),
    # UCR time series (anycnn.data.ucr reads their .ts files): carried under data/ucr/<Name>/.
    "gunpoint": ("GunPoint", "ucr/GunPoint", "gunpoint"),
    "arrowhead": ("ArrowHead", "ucr/ArrowHead", "arrowhead"),
    "osuleaf": ("OSULeaf", "ucr/OSULeaf", "osuleaf"),
}

_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10}

_PACKAGE_DIR = Path(__file__).resolve().parent
#: The repository's embedded copy (``<repo>/data/<name>``).
_EMBEDDED_DIR = _PACKAGE_DIR.parent / "data"
#: Data installed inside the package, should it be packaged later (``anycnn/_data/<name>``).
_PACKAGED_DIR = _PACKAGE_DIR / "_data"
#: Debian's dataset-* packages: ``dataset-fashion-mnist`` installs the four .gz files in
#: /usr/share/datasets/fashion-mnist/.
_SYSTEM_DIR = Path("/usr/share/datasets")


def user_data_dir() -> Path:
    """Where ``anycnn download`` writes data sets by default and :func:`load` looks for them:
    ``$XDG_DATA_HOME/anycnn``, else ``~/.local/share/anycnn``."""
    base = os.environ.get("XDG_DATA_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".local" / "share") / "anycnn"


def _labels_check(labels: np.ndarray, num_classes: int, where: str, *, what: str = "label") -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{where}: {what} {int(labels[i])} at index {i} is outside [0, {num_classes})"
            + (f" ({bad.size} labels out of range in all)" if bad.size > 1 else "")
        )


@dataclass(eq=False)
class Dataset:
    """A classification data set split into training and test examples, held on the host.

    Parameters
    ----------
    name : str
        The data set's name (``"mnist"``, ``"fashion-mnist"``, or the directory's name).
    train_images : numpy.ndarray
        Training images, ``(N, H, W)`` or ``(N, C, H, W)``, ``uint8`` grey levels as read or
        floats after preprocessing; ``(60000, 28, 28)`` ``uint8`` for MNIST.
    train_labels : numpy.ndarray
        Training labels, ``(N,)`` integers in ``[0, num_classes)``; stored as ``int64``.
    test_images : numpy.ndarray
        Test images, same per-example shape as ``train_images``.
    test_labels : numpy.ndarray
        Test labels, ``(M,)``, stored as ``int64``.
    num_classes : int, default 10
        Number of classes.
    source : pathlib.Path or None
        The directory the data came from, or None for data built in memory.

    Raises
    ------
    DatasetError
        If image and label counts differ, a label is out of range, the shapes are not those of
        images, or the dtypes are not numeric.

    Examples
    --------
    >>> import numpy as np
    >>> ds = Dataset("toy", np.zeros((4, 8, 8), np.uint8), np.array([0, 1, 0, 1]),
    ...              np.zeros((2, 8, 8), np.uint8), np.array([1, 0]), num_classes=2)
    >>> ds.image_shape, ds.train_labels.dtype.name
    ((8, 8), 'int64')
    """

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int = 10
    source: Path | None = field(default=None)

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}" + (f" from {self.source}" if self.source else "")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int | np.integer):
            raise DatasetError(f"{where}: num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise DatasetError(f"{where}: num_classes must be >= 1, got {self.num_classes}")
        self.num_classes = int(self.num_classes)
        if self.source is not None:
            self.source = Path(self.source)
        for split in ("train", "test"):
            images = np.asarray(getattr(self, f"{split}_images"))
            labels = np.asarray(getattr(self, f"{split}_labels"))
            _check_images(images, f"{where}: {split}_images")
            labels = _as_labels(labels, f"{where}: {split}_labels")
            _check_counts(images, labels, f"{where}: {split}", f"{split}_images", f"{split}_labels")
            _labels_check(labels, self.num_classes, f"{where}: {split}_labels")
            setattr(self, f"{split}_images", images)
            setattr(self, f"{split}_labels", labels)
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise DatasetError(
                f"{where}: training and test images differ in shape: "
                f"{_shape(self.train_images.shape[1:])} vs {_shape(self.test_images.shape[1:])}"
            )

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(28, 28)``."""
        return tuple(self.train_images.shape[1:])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={_shape(self.train_images.shape)} "
            f"{self.train_images.dtype}, test={_shape(self.test_images.shape)} "
            f"{self.test_images.dtype}, num_classes={self.num_classes}, source={self.source!r})"
        )


def _check_images(images: np.ndarray, where: str) -> None:
    if images.ndim not in (3, 4):
        raise DatasetError(
            f"{where}: expected images of shape (N, H, W) or (N, C, H, W), got shape {images.shape}"
        )
    if images.dtype == np.bool_ or not (
        np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)
    ):
        raise DatasetError(f"{where}: expected uint8 or float images, got dtype {images.dtype}")


def _as_labels(labels: np.ndarray, where: str) -> np.ndarray:
    if labels.ndim != 1:
        raise DatasetError(f"{where}: expected labels of shape (N,), got shape {labels.shape}")
    if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}: expected integer labels, got dtype {labels.dtype}")
    return labels.astype(np.int64, copy=False)


def _check_counts(
    images: np.ndarray, labels: np.ndarray, where: str, images_name: str, labels_name: str
) -> None:
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{where}: {images.shape[0]} images in {images_name} but {labels.shape[0]} labels "
            f"in {labels_name}; expected one label per image"
        )


def search_path(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """List the directories searched, in order, for the data set called ``name``.

    Parameters
    ----------
    name : str
        A known data set name, e.g. ``"mnist"``.
    data_dir : str or os.PathLike, optional
        An explicit directory searched first.

    Returns
    -------
    list of pathlib.Path
        For each root in order -- ``data_dir``, ``$ANYCNN_DATA``, the repository's embedded
        ``data/``, the package's ``_data/``, :func:`user_data_dir` (where ``anycnn download``
        writes), ``/usr/share/datasets`` -- the subdirectories named
        after the data set (``<root>/<name>``, then aliases such as ``fashion`` for
        ``fashion-mnist``); for ``data_dir`` and ``$ANYCNN_DATA`` the root itself follows, as
        they may hold the four files directly.

    Examples
    --------
    >>> str(search_path("mnist", data_dir="/data")[0])     # data_dir first, then aliases
    '/data/mnist'
    """
    aliases = KNOWN_DATASETS[name]
    places: list[Path] = []
    roots: list[tuple[Path, bool]] = []
    if data_dir is not None:
        roots.append((Path(data_dir).expanduser(), True))
    env = os.environ.get("ANYCNN_DATA")
    if env:
        roots.append((Path(env).expanduser(), True))
    roots += [
        (_EMBEDDED_DIR, False),
        (_PACKAGED_DIR, False),
        (user_data_dir(), False),
        (_SYSTEM_DIR, False),
    ]
    for root, direct in roots:
        places += [root / alias for alias in aliases]
        if direct:
            places.append(root)
    return places


def _find_files(directory: Path) -> dict[str, Path | None]:
    """Map each role of :data:`IDX_FILES` to the file found in ``directory`` (raw first)."""
    found: dict[str, Path | None] = {}
    for role, stem in IDX_FILES:
        dotted = stem.replace("-idx", ".idx")
        found[role] = next(
            (
                p
                for p in (directory / n for n in (stem, stem + ".gz", dotted, dotted + ".gz"))
                if p.is_file()
            ),
            None,
        )
    return found


def _missing_message(directory: Path, found: dict[str, Path | None]) -> str:
    missing = [stem for role, stem in IDX_FILES if found[role] is None]
    present = [p.name for p in found.values() if p is not None]
    return (
        f"{directory}: incomplete data set directory: missing {', '.join(missing)} "
        f"(raw or .gz); found {', '.join(present) or 'none of them'}"
    )


def load(
    name_or_path: str | os.PathLike[str] = "mnist",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Load an MNIST-style data set (four IDX files) into host memory.

    Parameters
    ----------
    name_or_path : str or os.PathLike, default "mnist"
        ``"mnist"``, ``"fashion-mnist"``, or a directory holding the four IDX files
        ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
        ``t10k-labels-idx1-ubyte``, each raw or gzip-compressed (``.gz``), also accepted with a
        dot before ``idx`` (``train-images.idx3-ubyte``). A ``pathlib.Path`` or a string with a
        path separator is always a directory; another string that is not a known name is taken
        as a directory if one exists.
    data_dir : str or os.PathLike, optional
        For a name: a directory searched first, holding the files directly or in a ``<name>/``
        subdirectory. Then come ``$ANYCNN_DATA`` (same rule), the repository's embedded copy
        ``data/<name>/`` (MNIST ships there, so training works offline), ``anycnn/_data/<name>/``
        and ``/usr/share/datasets/<name>/`` (where Debian's ``dataset-fashion-mnist`` package
        installs Fashion-MNIST). See :func:`search_path`. Note that a directory holding the files
        directly matches any name.
    limit : int, optional
        Keep only the first ``limit`` training and the first ``limit`` test examples (for tests
        and quick runs); only those images are read from the files (Note [Reading untrusted
        IDX files]), the labels in full.
    num_classes : int, optional
        Number of classes; 10 for the known data sets, and for a directory one more than the
        largest label found.

    Returns
    -------
    Dataset
        ``uint8`` images ``(N, H, W)`` (``(60000, 28, 28)`` and ``(10000, 28, 28)`` for MNIST)
        and ``int64`` labels; ``source`` is the directory the files were read from.

    Raises
    ------
    DatasetError
        For an unknown name (the message lists the known ones), a data set found nowhere (the
        message lists the places searched), a directory missing some of the four files (the
        message lists the missing ones), or any malformed file (see :func:`read_idx`), image and
        label counts that differ, or labels out of range.

    Examples
    --------
    >>> ds = load("mnist", limit=100)      # the embedded MNIST, offline
    >>> ds.train_images.shape, ds.train_images.dtype.name, ds.num_classes
    ((100, 28, 28), 'uint8', 10)

    UCR time series (``"gunpoint"``, ``"arrowhead"``, ``"osuleaf"``, or a directory holding
    ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts``) are read by :func:`anycnn.data.ucr.load`: signals
    ``(N, C, L)`` float64.
    """
    ucr = importlib.import_module("anycnn.data.ucr")  # the .ts reader: NumPy only
    if ucr.is_ucr(name_or_path):
        return ucr.load(name_or_path, data_dir=data_dir, limit=limit, num_classes=num_classes)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"load: limit must be a positive int or None, got {limit!r}")
    name, directory = _resolve(name_or_path, data_dir)
    files = _find_files(directory)
    arrays: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for role, path in files.items():
        assert path is not None
        # Note [Reading untrusted IDX files]: only the images a limit keeps are read; labels
        # (one byte each) are read in full for the class count.
        keep = limit if role.endswith("_images") else None
        arrays[role], counts[role] = _read_idx(path, keep)

    for split in ("train", "test"):
        img_path, lab_path = files[f"{split}_images"], files[f"{split}_labels"]
        assert img_path is not None and lab_path is not None
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3:
            raise DatasetError(
                f"{img_path}: expected images of shape (N, H, W), got {_shape(images.shape)}"
            )
        if labels.ndim != 1:
            raise DatasetError(
                f"{lab_path}: expected labels of shape (N,), got {_shape(labels.shape)}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"{lab_path}: expected integer labels, got {labels.dtype}")
        if counts[f"{split}_images"] != labels.shape[0]:
            raise DatasetError(
                f"{directory}: {split} split: {counts[f'{split}_images']} images in {img_path} "
                f"but {labels.shape[0]} labels in {lab_path}; expected one label per image"
            )

    if num_classes is None:
        if name in _NUM_CLASSES:
            num_classes = _NUM_CLASSES[name]
        else:
            num_classes = int(max(arrays["train_labels"].max(), arrays["test_labels"].max())) + 1
    for split in ("train", "test"):
        labels = arrays[f"{split}_labels"]
        _labels_check(labels, num_classes, str(files[f"{split}_labels"]))
        if limit is not None:
            for role in (f"{split}_images", f"{split}_labels"):
                if arrays[role].shape[0] > limit:
                    # Copy so that the full-size buffer is freed.
                    arrays[role] = arrays[role][:limit].copy()
    return Dataset(
        name=name,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        num_classes=num_classes,
        source=directory,
    )


def _resolve(
    name_or_path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None
) -> tuple[str, Path]:
    """Return (data set name, directory holding all four files) or raise DatasetError."""
    is_path = not isinstance(name_or_path, str) or os.sep in name_or_path or "/" in name_or_path
    key = None if is_path else str(name_or_path).strip().lower().replace("_", "-")
    if key is not None and key not in KNOWN_DATASETS:
        if Path(name_or_path).is_dir():
            is_path = True
        else:
            raise DatasetError(
                f"unknown data set {name_or_path!r}: known names are "
                f"{', '.join(repr(k) for k in KNOWN_DATASETS)}; a path to a directory holding "
                f"the four IDX files ({', '.join(stem for _, stem in IDX_FILES)}, raw or .gz) "
                f"works too"
            )
    if is_path:
        directory = Path(name_or_path).expanduser()
        if not directory.is_dir():
            raise DatasetError(f"{directory}: not a directory (expected one holding the IDX files)")
        found = _find_files(directory)
        if any(p is None for p in found.values()):
            raise DatasetError(_missing_message(directory, found))
        return directory.resolve().name, directory

    assert key is not None
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise DatasetError(f"data_dir {str(data_dir)!r} is not a directory")
    places = search_path(key, data_dir)
    for place in places:
        if not place.is_dir():
            continue
        found = _find_files(place)
        if all(p is not None for p in found.values()):
            return key, place
        if any(p is not None for p in found.values()):
            raise DatasetError(
                f"data set {key!r}: "
                + _missing_message(place, found)
                + "; places searched: "
                + ", ".join(str(p) for p in _places_that_matter(key, data_dir))
            )
    others = ", ".join(KNOWN_DATASETS[key][1:])
    raise DatasetError(
        f"data set {key!r} not found: none of "
        + ", ".join(str(p) for p in _places_that_matter(key, data_dir))
        + (f" (nor their spellings {others})" if others else "")
        + f" holds the four IDX files ({', '.join(stem for _, stem in IDX_FILES)}, raw or .gz). "
        f"Get them with: anycnn download {key} (or --data-dir DIR / data_dir=, ANYCNN_DATA, or "
        "the directory itself as --dataset)"
    )


def _places_that_matter(name: str, data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """The search path told to a user: the roots they chose (``--data-dir``, ``$ANYCNN_DATA``)
    with and without the name, the download location, the system one, and the built-in ones
    only where they exist -- each with the canonical name only (the aliases are searched too)."""
    canonical = KNOWN_DATASETS[name][0]
    chosen = [Path(data_dir).expanduser()] if data_dir is not None else []
    env = os.environ.get("ANYCNN_DATA")
    if env:
        chosen.append(Path(env).expanduser())
    places = [p for root in chosen for p in (root / canonical, root)]
    places += [root / canonical for root in (_EMBEDDED_DIR, _PACKAGED_DIR) if root.is_dir()]
    places += [user_data_dir() / canonical, _SYSTEM_DIR / canonical]
    return places


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------

_BLOCK_ELEMS = 1 << 22  # elements per block when accumulating statistics (~32 MiB in float64)


def _float_dtype(dtype: npt.DTypeLike, where: str) -> np.dtype[Any]:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise DatasetError(f"{where}: dtype must be a float dtype, got {dtype!r}") from exc
    if not np.issubdtype(dt, np.floating):
        raise DatasetError(f"{where}: dtype must be a float dtype (float32, float64), got {dt}")
    return dt


def _numeric(images: Any, where: str) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype == np.bool_ or not (
        np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
        raise DatasetError(f"{where}: expected integer or float images, got dtype {x.dtype}")
    if x.size == 0:
        raise DatasetError(f"{where}: expected at least one pixel, got shape {x.shape}")
    return x


def mean_std(images: npt.ArrayLike) -> tuple[float, float]:
    """Compute the scalar mean and standard deviation over all pixels of a set of images.

    These are the statistics :func:`normalize` uses (notes section 2.1): one mean and one
    standard deviation for the whole training set, later reused for the test set.

    Parameters
    ----------
    images : array_like
        Integer or float images of any shape, e.g. ``(N, 28, 28)`` ``uint8``.

    Returns
    -------
    mean, std : float
        The mean and the population standard deviation, accumulated in float64.

    Notes
    -----
    Computed in two passes over blocks of examples, so that no full-size float temporary is
    made: the memory rule allows one float copy of the data set at most.

    Examples
    --------
    >>> import numpy as np
    >>> mean_std(np.array([[0, 2], [4, 6]], dtype=np.uint8))
    (3.0, 2.23606797749979)
    """
    x = _numeric(images, "mean_std")
    flat = x.reshape(-1) if x.flags.c_contiguous else x.ravel()
    n = flat.size
    total = 0.0
    for i in range(0, n, _BLOCK_ELEMS):
        total += float(np.sum(flat[i : i + _BLOCK_ELEMS], dtype=np.float64))
    mean = total / n
    sq = 0.0
    for i in range(0, n, _BLOCK_ELEMS):
        block = flat[i : i + _BLOCK_ELEMS].astype(np.float64)
        block -= mean
        sq += float(np.dot(block, block))
    return mean, math.sqrt(sq / n)


def normalize(
    images: npt.ArrayLike,
    *,
    mean: float | None = None,
    std: float | None = None,
    dtype: npt.DTypeLike = "float32",
    copy: bool = True,
) -> tuple[np.ndarray, float, float]:
    """Shift and scale images to zero mean and unit variance: ``(x - mean) / std``.

    Notes section 2.1 (after LeCun et al., "Efficient BackProp"): inputs with zero mean and unit
    variance speed up learning. The statistics are scalars over all pixels of the *training* set;
    pass the returned ``mean`` and ``std`` back in to normalise the test set with the same
    transformation::

        x_train, mean, std = normalize(ds.train_images)
        x_test, _, _ = normalize(ds.test_images, mean=mean, std=std)

    Parameters
    ----------
    images : array_like
        Integer (e.g. ``uint8``) or float images of any shape.
    mean, std : float, optional
        Statistics to use; both computed from ``images`` by :func:`mean_std` when not given
        (give both or neither).
    dtype : dtype, default "float32"
        Float dtype of the result.
    copy : bool, default True
        With ``False``, an ``images`` array that already has ``dtype`` is normalised in place
        and returned (no second float copy). Integer images are always converted, once.

    Returns
    -------
    x : numpy.ndarray
        Normalised images, ``dtype``, same shape.
    mean, std : float
        The statistics used.

    Raises
    ------
    DatasetError
        If only one of ``mean`` and ``std`` is given, ``std`` is not positive and finite (e.g.
        all pixels equal), or ``dtype`` is not a float dtype.

    Notes
    -----
    Memory: one float array of the data set's size is allocated (the result) at most; the
    arithmetic is done in place on it.

    Examples
    --------
    >>> import numpy as np
    >>> x, mean, std = normalize(np.array([[[0, 2], [4, 6]]], dtype=np.uint8))
    >>> x.dtype.name, mean, float(x.mean())
    ('float32', 3.0, 0.0)
    """
    dt = _float_dtype(dtype, "normalize")
    x = _numeric(images, "normalize")
    if (mean is None) != (std is None):
        raise DatasetError(
            "normalize: give both mean and std (the training set's statistics) or neither, "
            f"got mean={mean!r}, std={std!r}"
        )
    if mean is None or std is None:
        mean, std = mean_std(x)
    mean, std = float(mean), float(std)
    if not math.isfinite(mean):
        raise DatasetError(f"normalize: mean must be finite, got {mean}")
    if not (math.isfinite(std) and std > 0):
        raise DatasetError(
            f"normalize: std must be finite and > 0, got {std}"
            + (" (all pixels are equal)" if std == 0 else "")
        )
    out = x.astype(dt, copy=copy)
    out -= dt.type(mean)
    out /= dt.type(std)
    return out, mean, std


def scale01(images: npt.ArrayLike, dtype: npt.DTypeLike = "float32") -> np.ndarray:
    """Map ``uint8`` grey levels 0..255 to floats in [0, 1]: ``x / 255``.

    This is DeepLearnToolbox's preprocessing (``double(x) / 255``), an alternative to
    :func:`normalize` (notes section 2.1).

    Parameters
    ----------
    images : array_like
        ``uint8`` images of any shape.
    dtype : dtype, default "float32"
        Float dtype of the result.

    Returns
    -------
    numpy.ndarray
        The scaled images; one new float array, divided in place.

    Raises
    ------
    DatasetError
        If ``images`` is not ``uint8`` (floats have presumably been scaled already) or
        ``dtype`` is not a float dtype.

    Examples
    --------
    >>> import numpy as np
    >>> scale01(np.array([0, 51, 255], dtype=np.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    """
    dt = _float_dtype(dtype, "scale01")
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise DatasetError(f"scale01: expected uint8 grey levels 0..255, got dtype {x.dtype}")
    out = x.astype(dt)
    out /= dt.type(255)
    return out


def one_hot(
    labels: npt.ArrayLike,
    num_classes: int,
    *,
    low: float = 0.0,
    high: float = 1.0,
    dtype: npt.DTypeLike = "float32",
) -> np.ndarray:
    """Encode class labels as one-of-c target vectors, ``(N, num_classes)``.

    Row ``n`` is ``low`` everywhere except ``high`` in column ``labels[n]``. The default 0/1
    coding suits sigmoid or softmax outputs; ``low=-1`` gives the +-1 coding for tanh outputs
    (notes section 2.1).

    Parameters
    ----------
    labels : array_like
        ``(N,)`` integer labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes c >= 1.
    low, high : float, default 0.0 and 1.0
        Target values for the other classes and for the labelled class.
    dtype : dtype, default "float32"
        Float dtype of the result.

    Returns
    -------
    numpy.ndarray
        ``(N, num_classes)`` targets.

    Raises
    ------
    DatasetError
        If ``labels`` is not a 1-d integer array, ``num_classes`` is not a positive int, or a
        label is out of range (the message names the first bad value, its index and the range).

    Examples
    --------
    >>> one_hot([2, 0], 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    >>> one_hot([1], 3, low=-1.0).tolist()      # the +-1 coding for tanh outputs
    [[-1.0, 1.0, -1.0]]
    """
    dt = _float_dtype(dtype, "one_hot")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise DatasetError(f"one_hot: num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise DatasetError(f"one_hot: num_classes must be >= 1, got {num_classes}")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DatasetError(f"one_hot: expected labels of shape (N,), got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"one_hot: expected integer labels, got dtype {y.dtype}")
    _labels_check(y, int(num_classes), "one_hot", what="label")
    out = np.full((y.shape[0], int(num_classes)), low, dtype=dt)
    out[np.arange(y.shape[0]), y] = high
    return out


def pad(
    images: npt.ArrayLike,
    to: int | tuple[int, int] = 32,
    *,
    value: float = 0.0,
    dtype: npt.DTypeLike | None = None,
) -> np.ndarray:
    """Pad images with a constant border, centred, to ``to`` x ``to`` (28x28 -> 32x32 for LeNet-5).

    LeCun et al. (1998) pad MNIST's 28x28 digits to 32x32 so that stroke ends reach the centre
    of the top feature detectors' receptive fields; the border is the background value, which
    after :func:`normalize` is ``-mean / std`` (pass it as ``value``), or 0 before it.

    Parameters
    ----------
    images : array_like
        ``(N, H, W)`` or ``(N, C, H, W)`` images with ``H, W <= to``.
    to : int or (int, int), default 32
        Output height and width. When ``to - H`` is odd the extra row goes at the bottom (and
        the extra column at the right).
    value : float, default 0.0
        The border value.
    dtype : dtype, optional
        Dtype of the result; default that of ``images``. Padding ``uint8`` images first and
        normalising afterwards keeps one float copy only (see the module docstring).

    Returns
    -------
    numpy.ndarray
        ``(N, to, to)`` or ``(N, C, to, to)``; allocated once and filled.

    Raises
    ------
    DatasetError
        If the images are not 3-d or 4-d, larger than ``to``, or ``value`` cannot be stored in
        the result's integer dtype.

    Examples
    --------
    >>> import numpy as np
    >>> pad(np.ones((1, 28, 28), dtype=np.uint8)).shape    # LeCun's 32x32 MNIST
    (1, 32, 32)
    """
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise DatasetError(
            f"pad: expected images of shape (N, H, W) or (N, C, H, W), got shape {x.shape}"
        )
    if isinstance(to, int | np.integer) and not isinstance(to, bool):
        th, tw = int(to), int(to)
    elif (
        isinstance(to, tuple)
        and len(to) == 2
        and all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in to)
    ):
        th, tw = int(to[0]), int(to[1])
    else:
        raise DatasetError(f"pad: to must be an int or a pair of ints, got {to!r}")
    h, w = x.shape[-2], x.shape[-1]
    if h > th or w > tw:
        raise DatasetError(f"pad: images are {h}x{w}, larger than the target {th}x{tw}")
    dt = x.dtype if dtype is None else np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        if not (float(value).is_integer() and info.min <= value <= info.max):
            raise DatasetError(
                f"pad: value {value!r} cannot be stored in {dt} images (expected an integer in "
                f"[{info.min}, {info.max}]); normalise first or pass dtype='float32'"
            )
    out = np.full((*x.shape[:-2], th, tw), value, dtype=dt)
    top, left = (th - h) // 2, (tw - w) // 2
    out[..., top : top + h, left : left + w] = x
    return out


def batches(
    n: int,
    batch_size: int,
    *,
    rng: np.random.Generator | int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[np.ndarray]:
    """Yield the example indices of each mini-batch of one epoch over ``n`` examples.

    Index the host arrays with each batch and move only that batch to the device::

        for idx in batches(len(y), 50, rng=rng):
            xb, yb = backend.asarray(x[idx]), backend.asarray(y[idx])

    Parameters
    ----------
    n : int
        Number of examples (>= 0).
    batch_size : int
        Examples per batch (>= 1); the last batch may be smaller unless ``drop_last``.
    rng : numpy.random.Generator or int, optional
        Source of the permutation when ``shuffle``; an int seeds a new generator, None uses a
        fresh unseeded one.
    shuffle : bool, default True
        Visit the examples in a random permutation (otherwise in order).
    drop_last : bool, default False
        Skip a final batch smaller than ``batch_size``.

    Yields
    ------
    numpy.ndarray
        ``int64`` indices of one batch; over the epoch every index in ``range(n)`` appears
        exactly once (except the dropped remainder).

    Raises
    ------
    DatasetError
        If ``n`` is negative or ``batch_size`` < 1 (raised at the call, not at the first
        iteration).

    Examples
    --------
    >>> [b.tolist() for b in batches(5, 2, shuffle=False)]
    [[0, 1], [2, 3], [4]]
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise DatasetError(f"batches: n must be an int >= 0, got {n!r}")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise DatasetError(f"batches: batch_size must be an int >= 1, got {batch_size!r}")
    if rng is not None and not isinstance(rng, np.random.Generator | int | np.integer):
        raise DatasetError(
            f"batches: rng must be a numpy.random.Generator, an int or None, got {rng!r}"
        )
    n, batch_size = int(n), int(batch_size)
    if shuffle:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        order = gen.permutation(n).astype(np.int64, copy=False)
    else:
        order = np.arange(n, dtype=np.int64)
    return _batch_iter(order, batch_size, drop_last)


def _batch_iter(order: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
    n = order.shape[0]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
