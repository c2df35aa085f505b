"""Data sets by name or directory: MNIST-style sets of four IDX files, found on a search path.

Everything here runs on the host; no array backend is imported. The training loop moves each
mini-batch to the device as it is used, so that the host holds one float copy of the data set
at most and the device holds one batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anycnn.data.idx import DatasetError, _read_idx, _shape

__all__ = ["Dataset", "KNOWN_DATASETS", "IDX_FILES", "load", "search_path", "user_data_dir"]


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
}

_NUM_CLASSES = {"mnist": 10, "fashion-mnist": 10}

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: The repository's embedded copy (``<repo>/data/<name>``).
_EMBEDDED_DIR = _PACKAGE_DIR.parent / "data"
#: Data installed inside the package, should it be packaged later (``anycnn/data/_files/<name>``).
_PACKAGED_DIR = _PACKAGE_DIR / "data" / "_files"
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
    """
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
