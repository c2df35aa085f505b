"""UCR/UEA time-series classification archives: the ``.ts`` format, any ``<Name>_TRAIN.ts`` /
``<Name>_TEST.ts`` directory, and the three problems anycnn carries (GunPoint, ArrowHead, OSULeaf).

The ``.ts`` format (sktime/aeon, the UEA & UCR archive's own): ``#`` comment lines, ``@key value``
header lines up to ``@data``, then one series per line: each dimension's values separated by
commas, dimensions separated by ``:``, the class label last (``v1,v2,...,vL:label``).

A series of length ``L`` with ``C`` dimensions becomes one ``(C, L)`` example: the data set's
"images" are signals ``(N, C, L)``, what a 1-D network with input ``(C, L)`` takes (univariate:
``C = 1``). Labels are indices into the header's ``@classLabel`` list, in its order.

Reading follows the rules of the IDX reader (``Note [Reading untrusted IDX files]`` in
:mod:`anycnn.data.idx`): memory follows the bytes present, never a claim. A file above
:data:`MAX_TS_BYTES` is refused before it is read, a line longer than :data:`MAX_LINE_BYTES` is
refused without holding it, and every malformed line is a :class:`~anycnn.data.DatasetError`
naming the file, the line number and what was expected.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "UCR_DATASETS",
    "MAX_TS_BYTES",
    "MAX_LINE_BYTES",
    "TsFile",
    "read_ts",
    "load",
    "find_split_files",
    "is_ucr",
    "is_ts_directory",
]

#: The UCR problems anycnn carries under ``data/ucr/<Name>/``: load name -> archive name.
UCR_DATASETS: dict[str, str] = {
    "gunpoint": "GunPoint",
    "arrowhead": "ArrowHead",
    "osuleaf": "OSULeaf",
}

#: the largest ``.ts`` file anycnn reads (the whole UCR 2018 archive's largest is ~250 MB)
MAX_TS_BYTES = 2 * 2**30
#: the longest line anycnn reads from a ``.ts`` file (a series of ~1M values)
MAX_LINE_BYTES = 32 * 2**20

_HEADER_FLAGS = ("timestamps", "missing", "univariate", "equallength", "classlabel")


def _error(message: str) -> Exception:
    from anycnn.data.idx import DatasetError  # the error class of the data room

    return DatasetError(message)


@dataclass(eq=False)
class TsFile:
    """The content of one ``.ts`` classification file.

    Attributes
    ----------
    path : pathlib.Path
    problem : str
        ``@problemName`` (the file's stem without ``_TRAIN``/``_TEST`` if absent).
    class_labels : tuple of str
        ``@classLabel``'s list, in the header's order: label ``i`` is ``class_labels[i]``.
    series : numpy.ndarray
        ``(N, C, L)`` float64.
    labels : numpy.ndarray
        ``(N,)`` int64 indices into ``class_labels``.
    """

    path: Path
    problem: str
    class_labels: tuple[str, ...]
    series: np.ndarray
    labels: np.ndarray


def _flag(value: str, key: str, where: str) -> bool:
    word = value.split()[0].lower() if value.split() else ""
    if word not in ("true", "false"):
        raise _error(f"{where}: @{key} must be 'true' or 'false', got {value!r}")
    return word == "true"


def _lines(f: Any, where: str):
    """(line number, text without the line break) for every line, each read with a bound."""
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise _error(
                f"{where}, line {number}: longer than {MAX_LINE_BYTES} bytes, the longest line "
                "anycnn reads from a .ts file (ucr.MAX_LINE_BYTES)"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(
                f"{where}, line {number}: not UTF-8 text (byte {exc.start}: "
                f"{raw[exc.start : exc.start + 1]!r}); a .ts file is text"
            ) from None
        yield number, text.rstrip("\r\n")


def _values(text: str, where: str, number: int, dim: int) -> np.ndarray:
    parts = text.split(",")
    try:
        values = np.array(parts, dtype=np.float64)
    except ValueError:
        for column, part in enumerate(parts):
            try:
                float(part)
            except ValueError:
                what = "a missing value '?'" if part.strip() == "?" else repr(part[:40])
                raise _error(
                    f"{where}, line {number}: dimension {dim}, value {column + 1}: expected a "
                    f"number, found {what}"
                    + (" (series with missing values are not supported)" if "?" in part else "")
                ) from None
        raise  # pragma: no cover - every part parsed alone
    if not np.isfinite(values).all():
        column = int(np.flatnonzero(~np.isfinite(values))[0])
        raise _error(
            f"{where}, line {number}: dimension {dim}, value {column + 1}: expected a finite "
            f"number, found {parts[column].strip()!r}"
        )
    return values


def read_ts(path: str | os.PathLike[str]) -> TsFile:
    """Read a ``.ts`` classification file of equal-length series (univariate or not).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    TsFile
        ``series`` ``(N, C, L)`` float64, ``labels`` ``(N,)`` int64 in header order.

    Raises
    ------
    anycnn.data.DatasetError
        The message names the file and, for a bad line, its number: a file that cannot be read
        or is larger than :data:`MAX_TS_BYTES`; a line longer than :data:`MAX_LINE_BYTES` or not
        UTF-8; no ``@data``; a header that is not ``@key value``, or that announces time stamps
        or no class labels (regression files); a value that is not a finite number (missing
        values ``?`` included); a series whose number of dimensions or length differs from the
        first one or from ``@seriesLength``; a label not in ``@classLabel``; no series at all.

    Examples
    --------
    >>> from anycnn.data import ucr
    >>> f = ucr.read_ts(ucr.find_split_files("gunpoint")[0])
    >>> f.problem, f.series.shape, f.class_labels
    ('GunPoint', (50, 1, 150), ('1', '2'))
    """
    path = Path(path)
    where = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_TS_BYTES:
                raise _error(
                    f"{where}: {size} bytes, more than the {MAX_TS_BYTES} anycnn reads from one "
                    ".ts file (ucr.MAX_TS_BYTES)"
                )
            return _parse(f, path, where)
    except OSError as exc:
        raise _error(f"{where}: cannot read .ts file: {exc}") from exc


def _parse(f: Any, path: Path, where: str) -> TsFile:
    header: dict[str, str] = {}
    class_labels: tuple[str, ...] | None = None
    lines = _lines(f, where)
    in_data = False
    for number, text in lines:
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not stripped.startswith("@"):
            raise _error(
                f"{where}, line {number}: expected a header line '@key value' or '@data' before "
                f"the series, found {stripped[:40]!r}"
            )
        key, _, value = stripped[1:].partition(" ")
        key = key.lower()
        value = value.strip()
        if key == "data":
            in_data = True
            break
        if key in header:
            raise _error(f"{where}, line {number}: @{key} appears twice in the header")
        header[key] = value
        if key in _HEADER_FLAGS:
            flag = _flag(value, key, f"{where}, line {number}")
            if key == "timestamps" and flag:
                raise _error(
                    f"{where}, line {number}: @timeStamps true: series with time stamps are not "
                    "supported (anycnn reads equally spaced values)"
                )
            if key == "classlabel":
                if not flag:
                    raise _error(
                        f"{where}, line {number}: @classLabel false: a file without class labels "
                        "(regression or unlabelled) cannot train a classifier"
                    )
                names = tuple(value.split()[1:])
                if not names:
                    raise _error(f"{where}, line {number}: @classLabel true lists no class labels")
                if len(set(names)) != len(names):
                    raise _error(f"{where}, line {number}: @classLabel lists a label twice")
                class_labels = names
        elif key == "targetlabel" and _flag(value, key, f"{where}, line {number}"):
            raise _error(
                f"{where}, line {number}: @targetLabel true: a regression file, not a "
                "classification one"
            )
    if not in_data:
        raise _error(f"{where}: no @data line: not a .ts file, or a truncated one")
    if class_labels is None:
        raise _error(
            f"{where}: the header has no '@classLabel true <labels>' line: anycnn reads "
            "classification files"
        )
    index = {name: i for i, name in enumerate(class_labels)}
    length: int | None = None
    if "serieslength" in header:
        text_length = header["serieslength"]
        if not re.fullmatch(r"\d+", text_length) or int(text_length) < 1:
            raise _error(f"{where}: @seriesLength must be a positive integer, got {text_length!r}")
        length = int(text_length)
    dims: int | None = None
    rows: list[np.ndarray] = []
    labels: list[int] = []
    for number, text in lines:
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.split(":")
        if len(fields) < 2:
            raise _error(
                f"{where}, line {number}: expected 'values:label' (dimensions separated by ':', "
                f"the class label last), found no ':'"
            )
        label = fields[-1].strip()
        if label not in index:
            raise _error(
                f"{where}, line {number}: class label {label[:40]!r} is not one of @classLabel's "
                f"{', '.join(class_labels)}"
            )
        if dims is None:
            dims = len(fields) - 1
        elif len(fields) - 1 != dims:
            raise _error(
                f"{where}, line {number}: {len(fields) - 1} dimension(s), expected {dims} as on "
                "the first series"
            )
        series = [_values(field, where, number, d + 1) for d, field in enumerate(fields[:-1])]
        for d, values in enumerate(series):
            if length is None:
                length = values.shape[0]
            if values.shape[0] != length:
                raise _error(
                    f"{where}, line {number}: dimension {d + 1} has {values.shape[0]} values, "
                    f"expected {length} (series of unequal length are not supported)"
                )
        rows.append(np.stack(series))
        labels.append(index[label])
    if not rows:
        raise _error(f"{where}: no series after @data")
    problem = header.get("problemname", "").split()
    name = problem[0] if problem else re.sub(r"_(TRAIN|TEST)$", "", path.stem, flags=re.I)
    return TsFile(
        path=path,
        problem=name,
        class_labels=class_labels,
        series=np.stack(rows),
        labels=np.asarray(labels, dtype=np.int64),
    )


def _split_files(directory: Path) -> tuple[Path, Path] | None:
    """The ``*_TRAIN.ts`` and ``*_TEST.ts`` of ``directory`` (its own name first), or None."""
    preferred = (directory / f"{directory.name}_TRAIN.ts", directory / f"{directory.name}_TEST.ts")
    if all(p.is_file() for p in preferred):
        return preferred
    trains = sorted(directory.glob("*_TRAIN.ts"))
    pairs = [(t, t.with_name(t.name[: -len("_TRAIN.ts")] + "_TEST.ts")) for t in trains]
    pairs = [(t, s) for t, s in pairs if s.is_file()]
    if len(pairs) > 1:
        raise _error(
            f"{directory}: several problems ({', '.join(t.name for t, _ in pairs)}); pass the "
            "directory of one"
        )
    return pairs[0] if pairs else None


def is_ts_directory(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding a ``<Name>_TRAIN.ts`` with its ``_TEST.ts``."""
    p = Path(path).expanduser()
    return p.is_dir() and any(
        t.with_name(t.name[: -len("_TRAIN.ts")] + "_TEST.ts").is_file()
        for t in p.glob("*_TRAIN.ts")
    )


def is_ucr(name_or_path: str | os.PathLike[str]) -> bool:
    """Whether :func:`anycnn.data.load` hands ``name_or_path`` to :func:`load`: a UCR name
    (:data:`UCR_DATASETS`, any case, ``-``/``_`` ignored) or a directory holding a
    ``<Name>_TRAIN.ts`` with its ``_TEST.ts`` and not the four IDX files of an MNIST-style set."""
    if isinstance(name_or_path, str) and "/" not in name_or_path and os.sep not in name_or_path:
        key = name_or_path.strip().lower().replace("_", "").replace("-", "")
        if key in UCR_DATASETS:
            return True
    if not is_ts_directory(name_or_path):
        return False
    from anycnn.data import datasets

    found = datasets._find_files(Path(name_or_path).expanduser())
    return not all(p is not None for p in found.values())


def find_split_files(
    name_or_path: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None = None
) -> tuple[Path, Path]:
    """The ``(TRAIN, TEST)`` ``.ts`` files of a known UCR name or of a directory.

    A name (``"gunpoint"``, any case, or the archive's ``"GunPoint"``) is searched like the
    IDX data sets (:func:`anycnn.data.search_path`: ``data_dir``, ``$ANYCNN_DATA``, the
    repository's ``data/ucr/<Name>/``, ...), in ``<root>/<Name>`` and ``<root>/ucr/<Name>``.
    """
    from anycnn.data import datasets

    is_path = not isinstance(name_or_path, str) or "/" in name_or_path or os.sep in name_or_path
    key = None if is_path else str(name_or_path).strip().lower().replace("_", "").replace("-", "")
    if key is not None and key not in UCR_DATASETS:
        if Path(name_or_path).is_dir():
            is_path = True
        else:
            raise _error(
                f"unknown UCR data set {name_or_path!r}: known names are "
                f"{', '.join(repr(k) for k in UCR_DATASETS)}, or a directory holding "
                "<Name>_TRAIN.ts and <Name>_TEST.ts"
            )
    if is_path:
        directory = Path(name_or_path).expanduser()
        if not directory.is_dir():
            raise _error(f"{directory}: not a directory (expected one holding <Name>_TRAIN.ts)")
        found = _split_files(directory)
        if found is None:
            raise _error(
                f"{directory}: no <Name>_TRAIN.ts with its <Name>_TEST.ts in this directory"
            )
        return found
    assert key is not None
    places = datasets.search_path(key, data_dir)
    for place in places:
        if place.is_dir():
            found = _split_files(place)
            if found is not None:
                return found
    raise _error(
        f"UCR data set {key!r} ({UCR_DATASETS[key]}) not found: none of "
        + ", ".join(str(p) for p in places)
        + f" holds {UCR_DATASETS[key]}_TRAIN.ts and {UCR_DATASETS[key]}_TEST.ts"
    )


def load(
    name_or_path: str | os.PathLike[str],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    num_classes: int | None = None,
) -> Any:
    """Load a UCR problem (its TRAIN and TEST ``.ts`` files) as an :class:`anycnn.data.Dataset`.

    The archive's own split is kept: ``train_images`` are the TRAIN series, ``test_images`` the
    TEST ones, each ``(N, C, L)`` float64 (``C = 1`` for univariate problems); labels index the
    TRAIN file's ``@classLabel`` list, which the TEST file must match.

    Parameters
    ----------
    name_or_path : str or os.PathLike
        ``"gunpoint"``, ``"arrowhead"``, ``"osuleaf"`` (carried under ``data/ucr/``), or a
        directory holding ``<Name>_TRAIN.ts`` and ``<Name>_TEST.ts``.
    data_dir : str or os.PathLike, optional
        Searched first for a name (see :func:`find_split_files`).
    limit : int, optional
        Keep the first ``limit`` series of each split.
    num_classes : int, optional
        Must be at least the number of class labels when given (default: that number).

    Raises
    ------
    anycnn.data.DatasetError
        Any error of :func:`read_ts`, TRAIN and TEST files that disagree in class labels,
        dimensions or length, a bad ``limit`` or ``num_classes``, or a data set found nowhere.

    Examples
    --------
    >>> from anycnn.data import ucr
    >>> ds = ucr.load("gunpoint")
    >>> ds.train_images.shape, ds.test_images.shape, ds.num_classes
    ((50, 1, 150), (150, 1, 150), 2)
    """
    from anycnn.data import datasets

    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise _error(f"load: limit must be a positive int or None, got {limit!r}")
    train_path, test_path = find_split_files(name_or_path, data_dir)
    train, test = read_ts(train_path), read_ts(test_path)
    if train.class_labels != test.class_labels:
        raise _error(
            f"{test_path}: @classLabel {' '.join(test.class_labels)} differs from "
            f"{train_path}'s {' '.join(train.class_labels)}"
        )
    if train.series.shape[1:] != test.series.shape[1:]:
        raise _error(
            f"{test_path}: series of {test.series.shape[1]} dimension(s) x {test.series.shape[2]} "
            f"values, but {train_path} has {train.series.shape[1]} x {train.series.shape[2]}"
        )
    classes = len(train.class_labels)
    if num_classes is None:
        num_classes = classes
    elif num_classes < classes:
        raise _error(
            f"{train_path}: num_classes={num_classes} but @classLabel lists {classes} labels"
        )
    keep = slice(None) if limit is None else slice(0, limit)
    key = next((k for k, v in UCR_DATASETS.items() if v == train.problem), None)
    return datasets.Dataset(
        name=key or train.problem,
        train_images=np.ascontiguousarray(train.series[keep]),
        train_labels=train.labels[keep],
        test_images=np.ascontiguousarray(test.series[keep]),
        test_labels=test.labels[keep],
        num_classes=num_classes,
        source=train_path.parent,
    )
