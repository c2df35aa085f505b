"""Fetch MNIST or Fashion-MNIST from their official locations, checksums verified.

``anycnn download fashion-mnist`` (or :func:`download`) writes the four IDX files, gzip-compressed
as published, to ``<to>/<name>/``, by default :func:`anycnn.data.user_data_dir`, where
:func:`anycnn.data.load` finds them. Each file is verified against the MD5 published with
the data set before it takes its final name (written to a temporary file and renamed, so an
interrupted or corrupt download never looks like data); a file already there and intact is not
fetched again. MD5 is what the publishers give: it guards against corruption and truncation,
not against an attacker who also controls the published checksums.

Mirrors are tried in turn: first those passed by the caller (``--mirror URL``), then the
official ones. For MNIST a recompressed copy (another gzip of the same bytes) is accepted when
its decompressed content has the published MD5 of the original file.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from anycnn.data.datasets import user_data_dir
from anycnn.data.idx import DatasetError

__all__ = ["SOURCES", "DownloadError", "download"]


class DownloadError(DatasetError):
    """No mirror gave a file with the published checksum; the message says what each gave.

    A :class:`anycnn.data.DatasetError`, so one ``except`` covers missing and unfetchable
    data.

    Examples
    --------
    >>> from anycnn.data import DatasetError
    >>> from anycnn.data.download import DownloadError
    >>> issubclass(DownloadError, DatasetError)
    True
    """


#: name -> (official base URLs, {file: MD5 of the .gz}, {file: MD5 of its decompressed bytes}).
#: MNIST: Yann LeCun's page (often refuses scripted downloads) and the PyTorch project's copy of
#: the same files; Fashion-MNIST: Zalando Research's bucket and repository.
SOURCES: dict[str, tuple[tuple[str, ...], dict[str, str], dict[str, str]]] = {
    "mnist": (
        (
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        {  # data/mnist/MD5SUMS.uncompressed: the checksums published for the raw files
            "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
        },
    ),
    "fashion-mnist": (
        (
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        {},
    ),
}

_CHUNK = 1 << 20


def _md5(path: Path, *, decompress: bool = False) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    opener = gzip.open if decompress else open
    with opener(path, "rb") as stream:  # type: ignore[operator]
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _intact(path: Path, packed: str, raw: str | None) -> bool:
    """Whether ``path`` has the published MD5 (of the .gz, or of its decompressed bytes)."""
    if _md5(path) == packed:
        return True
    if raw is None:
        return False
    try:
        return _md5(path, decompress=True) == raw
    except (OSError, EOFError):  # not gzip, or truncated
        return False


def download(
    name: str,
    to: str | os.PathLike[str] | None = None,
    *,
    mirrors: Sequence[str] = (),
    timeout: float = 60.0,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Download a data set's four IDX files into ``<to>/<name>/`` and verify them.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
    to : path, optional
        The parent directory; ``$ANYCNN_DATA`` if set, else :func:`anycnn.data.user_data_dir`.
    mirrors : sequence of str
        Base URLs tried before the official ones (each file is ``base + file name``).
    timeout : float
        Seconds to wait for a server before trying the next mirror.
    say : callable, optional
        Called with one line per file (what was fetched from where, or found intact).

    Returns
    -------
    pathlib.Path
        The directory holding the four files (``anycnn train --data-dir`` its parent, or
        nothing at all for the default location).

    Raises
    ------
    DownloadError
        A file that no mirror served with the published checksum (what each gave is listed);
        nothing is left under its final name.

    Examples
    --------
    Without network access, what is checked before anything is fetched (a real call is
    ``download("fashion-mnist")``, which writes the four files where
    :func:`anycnn.data.load` finds them):

    >>> import tempfile
    >>> from anycnn.data.download import DownloadError, SOURCES, download
    >>> sorted(SOURCES)
    ['fashion-mnist', 'mnist']
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     try:
    ...         download("cifar-10", tmp)
    ...     except DownloadError as error:
    ...         print(error)
    download: unknown data set 'cifar-10'; known: mnist, fashion-mnist
    """
    key = name.strip().lower().replace("_", "-")
    if key not in SOURCES:
        raise DownloadError(f"download: unknown data set {name!r}; known: {', '.join(SOURCES)}")
    official, packed, raw = SOURCES[key]
    if to is None:
        env = os.environ.get("ANYCNN_DATA", "").strip()
        to = Path(env).expanduser() if env else user_data_dir()
    folder = Path(to).expanduser() / key
    folder.mkdir(parents=True, exist_ok=True)
    bases = [m if m.endswith("/") else m + "/" for m in mirrors] + list(official)
    for file, checksum in packed.items():
        target = folder / file
        if target.is_file() and _intact(target, checksum, raw.get(file)):
            if say:
                say(f"{target}: already there, checksum verified")
            continue
        failures = []
        for base in bases:
            url = base + file
            try:
                size = _fetch(url, folder, target, checksum, raw.get(file), timeout)
            except (OSError, urllib.error.URLError, ValueError) as error:
                failures.append(f"{url}: {_reason(error)}")
                continue
            if say:
                say(f"{target}: {size / 1e6:.1f} MB from {url}, MD5 verified")
            break
        else:
            raise DownloadError(
                f"download {key}: no mirror gave {file} with the published MD5 {checksum}: "
                + "; ".join(failures)
                + ". Try again later, or pass --mirror URL"
            )
    return folder


def _fetch(url: str, folder: Path, target: Path, packed: str, raw: str | None, timeout: float):
    """Download ``url`` to a temporary file in ``folder``, verify it, rename it to ``target``;
    returns its size. Raises ValueError for a checksum mismatch."""
    request = urllib.request.Request(url, headers={"User-Agent": "anycnn-download"})
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=folder)
    path = Path(temporary)
    try:
        os.chmod(path, 0o666 & ~_umask())  # mkstemp's 0600 would outlive the rename
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as r:
            size = 0
            for chunk in iter(lambda: r.read(_CHUNK), b""):
                out.write(chunk)
                size += len(chunk)
        if not _intact(path, packed, raw):
            raise ValueError(f"checksum mismatch (MD5 {_md5(path)}, {size} bytes)")
        os.replace(path, target)
        return size
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error)
