"""IDX files (LeCun's MNIST format): reading untrusted files into host arrays.

Everything here is pure NumPy on the host. :func:`read_idx` decompresses straight into the
returned array (one allocation, no intermediate ``bytes`` object) and swaps big-endian data in
place; memory follows the data actually present (Note [Reading untrusted IDX files]).
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DatasetError", "read_idx"]


class DatasetError(ValueError):
    """A data file or data set is missing, malformed or inconsistent.

    The message names the file or directory, what was expected and what was found.

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn.data import Dataset
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
    >>> from anycnn.data import search_path
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
