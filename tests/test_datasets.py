"""anycnn.datasets: IDX reading, data set search and loading, preprocessing, batch indices.

Host NumPy only; every data file is written here in ``tmp_path``, except for one test that
loads the embedded MNIST copy in ``data/mnist/``.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from anycnn import datasets
from anycnn.data import DatasetError, preprocessing
from anycnn.data import datasets as named_sets

REPO = Path(__file__).resolve().parent.parent
# The embedded copy: data/mnist in a checkout, anycnn/_data/mnist in an installed wheel (tox).
MNIST_DIR = next(
    (
        d
        for d in (named_sets._EMBEDDED_DIR / "mnist", named_sets._PACKAGED_DIR / "mnist")
        if d.is_dir()
    ),
    REPO / "data" / "mnist",
)

CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(a: np.ndarray, *, code: int | None = None) -> bytes:
    """Encode an array as an IDX file: 0, 0, type code, ndim, big-endian uint32 sizes, data."""
    a = np.asarray(a)
    code = CODES[a.dtype] if code is None else code
    head = struct.pack(">HBB", 0, code, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape)
    return head + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, a: np.ndarray, *, compress: bool | None = None) -> Path:
    data = idx_bytes(a)
    if compress if compress is not None else path.name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_set(
    directory: Path,
    *,
    n_train: int = 12,
    n_test: int = 5,
    seed: int = 0,
    gz: bool = True,
    skip: tuple[str, ...] = (),
) -> dict[str, np.ndarray]:
    """Write a small MNIST-style data set (28x28 uint8 images, labels 0..9) to ``directory``."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, a in arrays.items():
        if stem not in skip:
            write_idx(directory / (stem + (".gz" if gz else "")), a)
    return arrays


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("ANYCNN_DATA", raising=False)


# ------------------------------------------------------------------------------------ read_idx


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    # No ".gz" suffix even when compressed: gzip is detected by its magic bytes, not the name.
    got = datasets.read_idx(write_idx(tmp_path / "f-idx3-ubyte", a, compress=compress))
    assert got.dtype == dtype and got.dtype.isnative
    assert got.shape == a.shape
    np.testing.assert_array_equal(got, a)
    assert got.flags.writeable and got.flags.c_contiguous


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 3, 4), (2, 1, 3, 4)])
def test_read_idx_ndim(tmp_path, shape):
    a = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    np.testing.assert_array_equal(datasets.read_idx(write_idx(tmp_path / "f.gz", a)), a)


def test_read_idx_gz_name_but_raw_content(tmp_path):
    a = np.arange(10, dtype=np.uint8)
    path = write_idx(tmp_path / "labels.gz", a, compress=False)
    np.testing.assert_array_equal(datasets.read_idx(path), a)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_truncated(tmp_path, compress):
    data = idx_bytes(np.zeros((6, 28, 28), np.uint8))[: 16 + 1000]
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DatasetError) as exc:
        datasets.read_idx(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "truncated" in msg
    assert "6x28x28 uint8 = 4704 bytes" in msg
    assert "found 1000" in msg


def test_read_idx_huge_header_is_truncated_not_memoryerror(tmp_path):
    head = struct.pack(">HBB", 0, 0x0E, 3) + struct.pack(">3I", 2**31, 2**31, 2**31)
    for name, data in [("raw", head + b"x" * 10), ("gz", gzip.compress(head + b"x" * 10))]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DatasetError, match="truncated.*found 10"):
            datasets.read_idx(path)


def test_read_idx_truncated_header(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(struct.pack(">HBB", 0, 8, 3) + struct.pack(">I", 5))
    with pytest.raises(DatasetError, match=r"truncated IDX header: 3 dimension\(s\) need 12 bytes"):
        datasets.read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DatasetError, match="found only 2 byte"):
        datasets.read_idx(path)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_trailing_bytes(tmp_path, compress):
    data = idx_bytes(np.zeros(5, np.uint8)) + b"abc"
    path = tmp_path / "labels"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DatasetError) as exc:
        datasets.read_idx(path)
    msg = str(exc.value)
    assert str(path) in msg and "trailing" in msg
    assert "5 uint8 = 5 bytes" in msg and "found 8" in msg and "3 byte(s) too many" in msg


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "f"
    # A doubly compressed file: after one gunzip, the stream starts with the gzip magic.
    path.write_bytes(gzip.compress(b"\x1f\x8b\x08\x00" + b"\x00" * 20))
    with pytest.raises(DatasetError, match=r"not an IDX file: magic 0x1f8b0800"):
        datasets.read_idx(path)
    path.write_bytes(b"P5\n28 28\n255\n" + b"\x00" * 784)  # a PGM image
    with pytest.raises(DatasetError, match=rf"{path}: not an IDX file: magic 0x50350a32"):
        datasets.read_idx(path)


def test_read_idx_wrong_dtype_code(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8), code=0x0A))
    with pytest.raises(DatasetError) as exc:
        datasets.read_idx(path)
    msg = str(exc.value)
    assert "unknown type code 0x0A" in msg and "0x08 uint8" in msg and "0x0E float64" in msg


@pytest.mark.parametrize("ndim", [0, 5])
def test_read_idx_bad_ndim(tmp_path, ndim):
    path = tmp_path / "f"
    path.write_bytes(struct.pack(">HBB", 0, 8, ndim) + struct.pack(f">{ndim}I", *[1] * ndim) + b"x")
    with pytest.raises(DatasetError, match=f"announces {ndim} dimensions, expected 1 to 4"):
        datasets.read_idx(path)


def test_read_idx_zero_size(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(struct.pack(">HBB", 0, 8, 2) + struct.pack(">2I", 3, 0))
    with pytest.raises(DatasetError, match="dimension 1 of 3x0 has size 0"):
        datasets.read_idx(path)


def test_read_idx_corrupt_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.int32)))
    path = tmp_path / "f.gz"
    # Flip bytes in the middle of the deflate stream.
    path.write_bytes(good[:30] + bytes(b ^ 0xFF for b in good[30:60]) + good[60:])
    with pytest.raises(DatasetError, match=rf"{path}: corrupt gzip stream"):
        datasets.read_idx(path)
    # Compressed stream cut short.
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match="corrupt gzip stream"):
        datasets.read_idx(path)
    # Bad CRC.
    path.write_bytes(good[:-8] + bytes(4) + good[-4:])
    with pytest.raises(DatasetError, match="corrupt gzip stream"):
        datasets.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="cannot read IDX file"):
        datasets.read_idx(tmp_path / "nope")


def test_dataset_error_is_value_error():
    assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------------------------------- load


@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
def test_load_directory(tmp_path, no_env, gz):
    arrays = make_set(tmp_path / "set", gz=gz)
    ds = datasets.load(tmp_path / "set")
    assert ds.source == tmp_path / "set"
    assert ds.name == "set" and ds.num_classes == 10
    np.testing.assert_array_equal(ds.train_images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_labels, arrays["t10k-labels-idx1-ubyte"])
    assert ds.train_images.dtype == np.uint8 and ds.train_images.shape == (12, 28, 28)
    assert ds.train_labels.dtype == np.int64 and ds.test_labels.dtype == np.int64
    assert ds.test_images.shape == (5, 28, 28) and ds.image_shape == (28, 28)
    # A string path works the same.
    assert datasets.load(str(tmp_path / "set")).train_images.shape == (12, 28, 28)


def test_load_dotted_names(tmp_path, no_env):
    arrays = make_set(tmp_path / "k", gz=False)
    for stem in arrays:
        (tmp_path / "k" / stem).rename(tmp_path / "k" / stem.replace("-idx", ".idx"))
    ds = datasets.load(tmp_path / "k")
    np.testing.assert_array_equal(ds.train_labels, arrays["train-labels-idx1-ubyte"])


def test_load_limit(tmp_path, no_env):
    arrays = make_set(tmp_path / "s", n_train=12, n_test=5)
    ds = datasets.load(tmp_path / "s", limit=4)
    assert ds.train_images.shape == (4, 28, 28) and ds.train_labels.shape == (4,)
    assert ds.test_images.shape == (4, 28, 28) and ds.test_labels.shape == (4,)
    np.testing.assert_array_equal(ds.train_images, arrays["train-images-idx3-ubyte"][:4])
    buffer = ds.train_images
    while isinstance(buffer, np.ndarray) and buffer.base is not None:
        buffer = buffer.base
    assert len(memoryview(buffer).cast("B")) == 4 * 28 * 28  # only the kept images were read
    ds = datasets.load(tmp_path / "s", limit=8)  # larger than the test split: all 5 kept
    assert ds.train_images.shape[0] == 8 and ds.test_images.shape[0] == 5
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DatasetError, match="limit must be a positive int"):
            datasets.load(tmp_path / "s", limit=bad)


def test_load_count_mismatch(tmp_path, no_env):
    make_set(tmp_path / "s")
    write_idx(tmp_path / "s" / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with pytest.raises(DatasetError) as exc:
        datasets.load(tmp_path / "s")
    msg = str(exc.value)
    assert "12 images" in msg and "11 labels" in msg
    assert "train-images-idx3-ubyte.gz" in msg and "train-labels-idx1-ubyte.gz" in msg


def test_load_labels_out_of_range(tmp_path, no_env):
    make_set(tmp_path / "s")
    labels = np.zeros(5, np.uint8)
    labels[3] = 12
    write_idx(tmp_path / "s" / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DatasetError) as exc:
        datasets.load(tmp_path / "s", num_classes=10)
    msg = str(exc.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "label 12 at index 3" in msg
    assert "[0, 10)" in msg
    # Without num_classes, a directory's class count is inferred from its labels.
    assert datasets.load(tmp_path / "s").num_classes == 13


def test_load_images_not_3d(tmp_path, no_env):
    make_set(tmp_path / "s")
    write_idx(tmp_path / "s" / "train-images-idx3-ubyte.gz", np.zeros((12, 784), np.uint8))
    with pytest.raises(DatasetError, match=r"expected images of shape \(N, H, W\), got 12x784"):
        datasets.load(tmp_path / "s")


def test_load_directory_missing_files(tmp_path, no_env):
    make_set(tmp_path / "s", skip=("t10k-images-idx3-ubyte", "train-labels-idx1-ubyte"))
    with pytest.raises(DatasetError) as exc:
        datasets.load(tmp_path / "s")
    msg = str(exc.value)
    assert str(tmp_path / "s") in msg
    assert "missing train-labels-idx1-ubyte, t10k-images-idx3-ubyte" in msg
    assert "train-images-idx3-ubyte.gz" in msg.split("found")[1]


def test_load_name_missing_files_lists_places(tmp_path, no_env):
    make_set(tmp_path / "root" / "mnist", skip=("t10k-labels-idx1-ubyte",))
    with pytest.raises(DatasetError) as exc:
        datasets.load("mnist", data_dir=tmp_path / "root")
    msg = str(exc.value)
    assert "missing t10k-labels-idx1-ubyte" in msg
    assert "places searched" in msg and str(tmp_path / "root" / "mnist") in msg


def test_load_not_a_directory(tmp_path, no_env):
    with pytest.raises(DatasetError, match="not a directory"):
        datasets.load(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="data_dir .* is not a directory"):
        datasets.load("mnist", data_dir=tmp_path / "nowhere")


def test_load_unknown_name(no_env):
    with pytest.raises(DatasetError) as exc:
        datasets.load("cifar-10")
    msg = str(exc.value)
    assert "unknown data set 'cifar-10'" in msg
    assert "'mnist'" in msg and "'fashion-mnist'" in msg and "directory" in msg


def test_search_order_data_dir_then_env(tmp_path, monkeypatch):
    make_set(tmp_path / "arg" / "mnist", n_train=3)  # <data_dir>/<name>/
    make_set(tmp_path / "env", n_train=4)  # files directly in $ANYCNN_DATA
    monkeypatch.setenv("ANYCNN_DATA", str(tmp_path / "env"))
    ds = datasets.load("mnist", data_dir=tmp_path / "arg")
    assert ds.source == tmp_path / "arg" / "mnist" and ds.train_images.shape[0] == 3
    assert ds.name == "mnist"
    # data_dir without the data set: the search goes on to $ANYCNN_DATA.
    (tmp_path / "empty").mkdir()
    ds = datasets.load("mnist", data_dir=tmp_path / "empty")
    assert ds.source == tmp_path / "env" and ds.train_images.shape[0] == 4
    ds = datasets.load("mnist")
    assert ds.source == tmp_path / "env"
    places = datasets.search_path("mnist", tmp_path / "arg")
    assert places.index(tmp_path / "arg" / "mnist") < places.index(tmp_path / "arg")
    assert places.index(tmp_path / "arg") < places.index(tmp_path / "env" / "mnist")
    assert places.index(tmp_path / "env") < places.index(MNIST_DIR)
    assert places[-1].parent == Path("/usr/share/datasets")


def test_search_env_subdirectory_and_aliases(tmp_path, monkeypatch):
    make_set(tmp_path / "env" / "fashion", n_train=6)  # zalando's repository layout
    monkeypatch.setenv("ANYCNN_DATA", str(tmp_path / "env"))
    ds = datasets.load("Fashion_MNIST")
    assert ds.name == "fashion-mnist" and ds.source == tmp_path / "env" / "fashion"
    assert Path("/usr/share/datasets/fashion-mnist") in datasets.search_path("fashion-mnist")


def test_not_found_lists_places(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYCNN_DATA", str(tmp_path / "env"))
    monkeypatch.setattr(named_sets, "_EMBEDDED_DIR", tmp_path / "no-embedded")
    monkeypatch.setattr(named_sets, "_PACKAGED_DIR", tmp_path / "no-packaged")
    monkeypatch.setattr(named_sets, "_SYSTEM_DIR", tmp_path / "no-system")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    with pytest.raises(DatasetError) as exc:
        datasets.load("fashion-mnist")
    msg = str(exc.value)
    assert "'fashion-mnist' not found" in msg
    for place in ("env/fashion-mnist", "xdg/anycnn/fashion-mnist", "no-system/fashion-mnist"):
        assert str(tmp_path / place) in msg
    assert "ANYCNN_DATA" in msg


def test_not_found_message_names_the_places_that_matter(tmp_path, monkeypatch):
    """Issue 13: built-in roots that do not exist (a venv's site-packages/data/...) and the
    aliases are not listed one by one; the CLI spelling and a way to get the data are."""
    monkeypatch.delenv("ANYCNN_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(named_sets, "_EMBEDDED_DIR", tmp_path / "no-embedded")
    monkeypatch.setattr(named_sets, "_PACKAGED_DIR", tmp_path / "no-packaged")
    with pytest.raises(DatasetError) as exc:
        datasets.load("fashion-mnist")
    msg = str(exc.value)
    assert "no-embedded" not in msg and "no-packaged" not in msg
    assert str(tmp_path / "xdg" / "anycnn" / "fashion-mnist") in msg
    assert msg.count("/fashion,") + msg.count("FashionMNIST,") == 0  # aliases named once
    assert "anycnn download fashion-mnist" in msg and "--data-dir" in msg


def test_embedded_found_without_env(no_env):
    places = datasets.search_path("mnist")
    assert places[0] == named_sets._EMBEDDED_DIR / "mnist" and MNIST_DIR in places


def test_dataset_validates(tmp_path):
    imgs = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(DatasetError, match="3 images in train_images but 2 labels in train_labels"):
        datasets.Dataset("x", imgs, np.zeros(2, np.int64), imgs, np.zeros(3, np.int64))
    with pytest.raises(
        DatasetError, match=r"test_labels: label -1 at index 2 is outside \[0, 10\)"
    ):
        datasets.Dataset("x", imgs, np.zeros(3, np.int64), imgs, np.array([0, 1, -1]))
    with pytest.raises(DatasetError, match="integer labels"):
        datasets.Dataset("x", imgs, np.zeros(3), imgs, np.zeros(3, np.int64))
    ds = datasets.Dataset("x", imgs, np.zeros(3, np.uint8), imgs, np.zeros(3, np.int32), source=".")
    assert ds.train_labels.dtype == np.int64 and isinstance(ds.source, Path)
    assert "num_classes=10" in repr(ds)


# ------------------------------------------------------------------------------- preprocessing


def test_normalize_train_stats_reused_for_test():
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)
    test = rng.integers(100, 256, (20, 28, 28), dtype=np.uint8)
    x, mean, std = datasets.normalize(train)
    assert x.dtype == np.float32 and x.shape == train.shape
    assert mean == pytest.approx(train.mean()) and std == pytest.approx(train.std())
    assert abs(float(x.mean(dtype=np.float64))) < 1e-5
    assert float(x.std(dtype=np.float64)) == pytest.approx(1.0, rel=1e-5)
    xt, mt, st = datasets.normalize(test, mean=mean, std=std, dtype="float64")
    assert (mt, st) == (mean, std) and xt.dtype == np.float64
    np.testing.assert_allclose(xt, (test - mean) / std)
    assert float(xt.mean()) > 0.3  # test set is brighter: its own stats were not used


def test_normalize_in_place_and_errors():
    x = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    y, _, _ = datasets.normalize(x)
    assert y is not x and x[0, 0, 0] == 0
    z, _, _ = datasets.normalize(x, copy=False)
    assert z is x and abs(float(x.mean())) < 1e-6
    with pytest.raises(DatasetError, match="give both mean and std"):
        datasets.normalize(x, mean=0.0)
    with pytest.raises(DatasetError, match=r"std must be finite and > 0, got 0.0 \(all pixels"):
        datasets.normalize(np.full((2, 3, 3), 7, np.uint8))
    with pytest.raises(DatasetError, match="float dtype"):
        datasets.normalize(x, dtype="int32")


def test_mean_std_matches_numpy_across_blocks(monkeypatch):
    monkeypatch.setattr(preprocessing, "_BLOCK_ELEMS", 1000)
    a = np.random.default_rng(3).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    mean, std = datasets.mean_std(a)
    assert mean == pytest.approx(a.mean(), rel=1e-12) and std == pytest.approx(a.std(), rel=1e-12)
    mean, std = datasets.mean_std(a[:, ::2, ::2])  # non-contiguous input
    assert std == pytest.approx(a[:, ::2, ::2].std(), rel=1e-12)


def test_scale01():
    a = np.array([[[0, 255], [51, 102]]], np.uint8)
    s = datasets.scale01(a)
    assert s.dtype == np.float32
    np.testing.assert_allclose(s, [[[0.0, 1.0], [0.2, 0.4]]], rtol=1e-6)
    assert datasets.scale01(a, "float64").dtype == np.float64
    with pytest.raises(DatasetError, match="expected uint8"):
        datasets.scale01(s)


def test_one_hot_01_and_pm1():
    y = np.array([2, 0, 1, 2], np.uint8)
    t = datasets.one_hot(y, 3)
    assert t.dtype == np.float32 and t.shape == (4, 3)
    np.testing.assert_array_equal(t, [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    t = datasets.one_hot(y, 3, low=-1.0, dtype="float64")
    assert t.dtype == np.float64
    np.testing.assert_array_equal(t, [[-1, -1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]])
    assert datasets.one_hot(np.array([], np.int64), 10).shape == (0, 10)


def test_one_hot_errors():
    with pytest.raises(DatasetError, match=r"label 10 at index 1 is outside \[0, 10\)"):
        datasets.one_hot(np.array([3, 10, 11]), 10)
    with pytest.raises(DatasetError, match=r"label -2 at index 0"):
        datasets.one_hot([-2], 10)
    with pytest.raises(DatasetError, match="integer labels"):
        datasets.one_hot(np.array([1.0]), 10)
    with pytest.raises(DatasetError, match=r"shape \(N,\)"):
        datasets.one_hot(np.zeros((2, 2), np.int64), 10)
    with pytest.raises(DatasetError, match="num_classes must be >= 1"):
        datasets.one_hot([0], 0)


def test_pad_shape_and_centring():
    a = np.arange(2 * 28 * 28, dtype=np.float32).reshape(2, 28, 28) + 1
    p = datasets.pad(a)
    assert p.shape == (2, 32, 32) and p.dtype == np.float32
    np.testing.assert_array_equal(p[:, 2:30, 2:30], a)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert np.all(p[:, border] == 0)
    q = datasets.pad(a[:, None], 32, value=-0.5)  # (N, C, H, W)
    assert q.shape == (2, 1, 32, 32) and np.all(q[:, 0, border] == -0.5)
    np.testing.assert_array_equal(q[:, 0, 2:30, 2:30], a)
    r = datasets.pad(np.ones((1, 3, 3), np.uint8), (6, 4))  # odd difference: extra at bottom
    np.testing.assert_array_equal(r[0].sum(axis=1), [0, 3, 3, 3, 0, 0])
    np.testing.assert_array_equal(r[0].sum(axis=0), [3, 3, 3, 0])  # and at the right


def test_pad_uint8_then_normalize_keeps_background():
    a = np.random.default_rng(4).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    mean, std = datasets.mean_std(a)
    p = datasets.pad(a)
    assert p.dtype == np.uint8
    x, _, _ = datasets.normalize(p, mean=mean, std=std)
    assert x[0, 0, 0] == pytest.approx(-mean / std)
    assert datasets.pad(a, dtype="float32").dtype == np.float32


def test_pad_errors():
    with pytest.raises(DatasetError, match="28x28, larger than the target 20x20"):
        datasets.pad(np.zeros((1, 28, 28)), 20)
    with pytest.raises(DatasetError, match=r"shape \(N, H, W\) or \(N, C, H, W\)"):
        datasets.pad(np.zeros((28, 28)))
    with pytest.raises(DatasetError, match="cannot be stored in uint8"):
        datasets.pad(np.zeros((1, 28, 28), np.uint8), value=-0.4)


@pytest.mark.parametrize("n,bs", [(10, 3), (9, 3), (1, 5), (0, 2)])
def test_batches_cover_every_index_once(n, bs):
    out = list(datasets.batches(n, bs, rng=np.random.default_rng(0)))
    assert all(b.dtype == np.int64 for b in out)
    assert [len(b) for b in out] == [min(bs, n - i) for i in range(0, n, bs)]
    allidx = np.concatenate(out) if out else np.array([], np.int64)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))
    if n >= 9:
        assert not np.array_equal(allidx, np.arange(n))  # shuffled


def test_batches_options():
    assert [b.tolist() for b in datasets.batches(5, 2, shuffle=False)] == [[0, 1], [2, 3], [4]]
    assert [len(b) for b in datasets.batches(5, 2, shuffle=False, drop_last=True)] == [2, 2]
    a = [b.tolist() for b in datasets.batches(20, 4, rng=7)]
    assert a == [b.tolist() for b in datasets.batches(20, 4, rng=7)]  # int seed: reproducible
    for bad in (0, -3, 1.5):
        with pytest.raises(DatasetError, match="batch_size must be an int >= 1"):
            datasets.batches(10, bad)  # raised at the call, before iterating
    with pytest.raises(DatasetError, match="n must be an int >= 0"):
        datasets.batches(-1, 2)


def test_data_room_imports_no_backend():
    for path in Path(datasets.__file__).parent.glob("*.py"):
        src = path.read_text()
        assert "import cupy" not in src, path
        assert not re.search(r"from anycnn(?!\.data)|import anycnn(?!\.data)", src), path


# ------------------------------------------------------------------------- the embedded MNIST


def _md5sums(path: Path) -> dict[str, str]:
    return {
        line.split()[1]: line.split()[0] for line in path.read_text().splitlines() if line.strip()
    }


def test_embedded_mnist(monkeypatch):
    monkeypatch.delenv("ANYCNN_DATA", raising=False)
    ds = datasets.load("mnist")
    assert ds.source == MNIST_DIR and ds.name == "mnist" and ds.num_classes == 10
    assert ds.train_images.shape == (60000, 28, 28) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10000, 28, 28) and ds.test_images.dtype == np.uint8
    assert ds.train_labels.shape == (60000,) and ds.test_labels.shape == (10000,)
    # Class counts of the official MNIST files.
    assert np.bincount(ds.train_labels).tolist() == [
        5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949,
    ]  # fmt: skip
    assert np.bincount(ds.test_labels).tolist() == [
        980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009,
    ]  # fmt: skip
    # What read_idx returned, written back as IDX, has the published MD5 of the raw files.
    sums = _md5sums(MNIST_DIR / "MD5SUMS.uncompressed")
    arrays = {
        "train-images-idx3-ubyte": ds.train_images,
        "train-labels-idx1-ubyte": ds.train_labels.astype(np.uint8),
        "t10k-images-idx3-ubyte": ds.test_images,
        "t10k-labels-idx1-ubyte": ds.test_labels.astype(np.uint8),
    }
    for stem, a in arrays.items():
        assert hashlib.md5(idx_bytes(a)).hexdigest() == sums[stem], stem
    # And the stored .gz files are the ones listed in MD5SUMS.
    for name, digest in _md5sums(MNIST_DIR / "MD5SUMS").items():
        assert hashlib.md5((MNIST_DIR / name).read_bytes()).hexdigest() == digest, name
