"""UCR time series: the carried .ts files, their reader and the data-room entry point (issue 18).

Oracles: the files' SHA-256 sums as copied from the aeon wheel, and hand-written .ts files whose
content the test states."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from anycnn import data as datasets
from anycnn.data import ucr

ROOT = Path(__file__).resolve().parents[1]
UCR_DIR = ROOT / "data" / "ucr"
SIZES = {  # name -> (train, test, length, classes), from the archive's description
    "gunpoint": (50, 150, 150, 2),
    "arrowhead": (36, 175, 251, 3),
    "osuleaf": (200, 242, 427, 6),
}


@pytest.mark.parametrize("name", sorted(ucr.UCR_DATASETS))
def test_carried_files_match_their_checksums(name):
    folder = UCR_DIR / ucr.UCR_DATASETS[name]
    sums = {}
    for line in (folder / "SHA256SUMS").read_text().splitlines():
        digest, file = line.split()
        sums[file] = digest
    assert sorted(sums) == sorted(p.name for p in folder.glob("*.ts"))
    for file, digest in sums.items():
        assert hashlib.sha256((folder / file).read_bytes()).hexdigest() == digest, file


@pytest.mark.parametrize("name", sorted(ucr.UCR_DATASETS))
def test_load_by_name_gives_the_archive_split(name):
    train, test, length, classes = SIZES[name]
    ds = datasets.load(name)
    assert ds.train_images.shape == (train, 1, length)
    assert ds.test_images.shape == (test, 1, length)
    assert ds.train_images.dtype == np.float64 and ds.num_classes == classes
    # every class appears in training, labels index @classLabel
    assert sorted(set(ds.train_labels.tolist())) == list(range(classes))
    assert ds.test_labels.max() < classes
    # UCR series are z-normalised one by one
    np.testing.assert_allclose(ds.train_images.mean(axis=2), 0.0, atol=1e-3)


def test_values_and_labels_are_those_of_the_text():
    path = UCR_DIR / "GunPoint" / "GunPoint_TRAIN.ts"
    data = [line for line in path.read_text().splitlines() if line and line[0] not in "#@"]
    f = ucr.read_ts(path)
    first_values, first_label = data[0].rsplit(":", 1)
    np.testing.assert_array_equal(f.series[0, 0], [float(v) for v in first_values.split(",")])
    assert f.class_labels[f.labels[0]] == first_label
    assert f.labels.tolist() == [f.class_labels.index(line.rsplit(":", 1)[1]) for line in data]


def test_load_by_directory_names_and_limit(tmp_path):
    ds = datasets.load(UCR_DIR / "ArrowHead", limit=5)
    assert ds.train_images.shape == (5, 1, 251) and ds.test_images.shape == (5, 1, 251)
    assert ds.name == "arrowhead"
    assert ucr.load("ArrowHead").num_classes == 3  # the archive's spelling works too
    with pytest.raises(datasets.DatasetError, match="unknown UCR data set 'nosuch'"):
        ucr.load("nosuch")
    with pytest.raises(datasets.DatasetError, match="no <Name>_TRAIN.ts"):
        ucr.load(tmp_path)


def _ts(tmp_path, body, *, header=None, name="Toy", split="TRAIN"):
    header = (
        "#a toy\n@problemName Toy\n@timeStamps false\n@univariate true\n@classLabel true a b\n@data\n"
        if header is None
        else header
    )
    path = tmp_path / f"{name}_{split}.ts"
    path.write_text(header + body)
    return path


def test_a_multivariate_file_gives_channels(tmp_path):
    path = _ts(tmp_path, "1,2,3:4,5,6:a\r\n\n7,8,9:1,2,3:b\n")
    f = ucr.read_ts(path)
    assert f.series.shape == (2, 2, 3)
    np.testing.assert_array_equal(f.series[1], [[7, 8, 9], [1, 2, 3]])
    assert f.labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        ("1,2,x:a\n", None, r"line 7: dimension 1, value 3: expected a number, found 'x'"),
        ("1,?,3:a\n", None, r"line 7: .*missing value .*not supported"),
        ("1,nan,3:a\n", None, r"line 7: dimension 1, value 2: expected a finite number"),
        ("1,2,3:a\n1,2:b\n", None, r"line 8: dimension 1 has 2 values, expected 3"),
        ("1,2,3:a\n1,2,3:4,5,6:b\n", None, r"line 8: 2 dimension\(s\), expected 1"),
        ("1,2,3:c\n", None, r"line 7: class label 'c' is not one of @classLabel's a, b"),
        ("1,2,3\n", None, r"line 7: expected 'values:label'"),
        ("", None, r"no series after @data"),
        ("", "@classLabel true a\n", r"no @data line"),
        ("1:a\n", "@classLabel true a\n", r"line 2: expected a header line .* found '1:a'"),
        ("1:a\n", "@timeStamps true\n@data\n", r"line 1: @timeStamps true: .*not supported"),
        ("1:a\n", "@classLabel false\n@data\n", r"line 1: @classLabel false"),
        ("1:a\n", "@targetLabel true\n@data\n", r"line 1: @targetLabel true: a regression"),
        ("1:a\n", "@data\n", r"no '@classLabel true <labels>'"),
        ("1:a\n", "hello\n@data\n", r"line 1: expected a header line"),
        ("1:a\n", "@classLabel maybe a\n@data\n", r"line 1: @classlabel must be 'true'"),
        ("1:a\n", "@classLabel true a a\n@data\n", r"line 1: @classLabel lists a label twice"),
        ("1,2:a\n", "@classLabel true a\n@seriesLength 3\n@data\n", r"line 4: .*expected 3"),
        ("1:a\n", "@classLabel true a\n@seriesLength x\n@data\n", r"@seriesLength must be"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, body, header, message):
    path = _ts(tmp_path, body, header=header)
    with pytest.raises(datasets.DatasetError, match=message) as info:
        ucr.read_ts(path)
    assert str(path) in str(info.value)


def test_bytes_that_are_not_utf8_are_one_error(tmp_path):
    path = tmp_path / "Toy_TRAIN.ts"
    path.write_bytes(b"@classLabel true a\n@data\n1,2\xff:a\n")
    with pytest.raises(datasets.DatasetError, match=r"line 3: not UTF-8 text"):
        ucr.read_ts(path)


def test_a_long_line_is_refused_without_being_held(tmp_path, monkeypatch):
    monkeypatch.setattr(ucr, "MAX_LINE_BYTES", 64)
    path = _ts(tmp_path, ",".join(["1.5"] * 100) + ":a\n")
    with pytest.raises(datasets.DatasetError, match=r"line 7: longer than 64 bytes"):
        ucr.read_ts(path)


def test_a_huge_file_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "Big_TRAIN.ts"
    with open(path, "wb") as f:  # sparse: claims 1 GiB, holds nothing
        f.truncate(2**30)
    monkeypatch.setattr(ucr, "MAX_TS_BYTES", 2**20)
    with pytest.raises(datasets.DatasetError, match=r"1073741824 bytes, more than the 1048576"):
        ucr.read_ts(path)


def test_train_and_test_must_agree(tmp_path):
    _ts(tmp_path, "1,2,3:a\n")
    _ts(tmp_path, "1,2,3:a\n", header="@classLabel true b a\n@data\n", split="TEST")
    with pytest.raises(datasets.DatasetError, match=r"Toy_TEST.ts: @classLabel b a differs"):
        datasets.load(tmp_path)
    _ts(tmp_path, "1,2:a\n", split="TEST")
    with pytest.raises(datasets.DatasetError, match=r"Toy_TEST.ts: series of 1 dimension"):
        datasets.load(tmp_path)
    _ts(tmp_path, "1,2,3:b\n", split="TEST")
    ds = datasets.load(tmp_path)
    assert ds.name == "Toy" and ds.train_labels.tolist() == [0] and ds.test_labels.tolist() == [1]


def test_an_unreadable_file_is_one_error(tmp_path):
    path = tmp_path / "Gone_TRAIN.ts"
    with pytest.raises(datasets.DatasetError, match=r"Gone_TRAIN.ts: cannot read .ts file"):
        ucr.read_ts(path)
    if os.geteuid() != 0:  # root reads anything
        path.write_text("@data\n")
        path.chmod(0)
        with pytest.raises(datasets.DatasetError, match="cannot read"):
            ucr.read_ts(path)


@pytest.mark.parametrize("length", [150, 37])
def test_cnn1d_global_ends_with_the_mean_over_the_signal(length):
    """models.cnn1d_global: the last subsampling is the mean of each map over every position
    left (one block as long as the signal, a padded mean), whatever the length."""
    from anycnn import models

    net = models.cnn1d_global(length=length, classes=3, dtype="float64")
    x = np.random.default_rng(length).standard_normal((2, 1, length))
    h = net.backend.asarray(x, dtype="float64")
    for layer in net.layers[:5]:
        h = layer.forward(h)
    maps = net.backend.to_host(h)
    pooled = net.backend.to_host(net.layers[5].forward(h))
    assert pooled.shape == (2, 64, 1)
    np.testing.assert_allclose(pooled[..., 0], maps.mean(axis=2), rtol=1e-13)
    assert net.output_shape == (3,) and net.num_parameters() == 9058 + 65


@pytest.mark.parametrize(
    "maps, parameters", [((16, 32, 64), 9123), ((32, 64, 128), 35651), ((4, 4, 4), 183)]
)
def test_cnn1d_global_maps(maps, parameters):
    """cnn1d_global's ``maps`` sets the three stages' maps (the README's variants: 32, 64, 128
    has 35,651 parameters on ArrowHead); the default is the recipe's 16, 32, 64."""
    from anycnn import models

    net = models.cnn1d_global(length=251, classes=3, maps=maps)
    convs = [layer for layer in net.layers if type(layer).__name__ == "Convolution"]
    assert [layer.maps for layer in convs] == list(maps)
    m1, m2, m3 = maps  # kernels 7, 5, 3 and a bias per map; 3 outputs on m3 means
    assert net.num_parameters() == parameters
    assert parameters == 8 * m1 + (5 * m1 + 1) * m2 + (3 * m2 + 1) * m3 + 3 * (m3 + 1)
    assert models.cnn1d_global(length=251, classes=3).num_parameters() == 9123


@pytest.mark.parametrize("maps", [(16, 32), (16, 0, 64), (16, 32.0, 64), (True, 32, 64), "abc"])
def test_cnn1d_global_refuses_bad_maps(maps):
    from anycnn import models

    with pytest.raises(ValueError, match=r"cnn1d_global: maps must be three positive ints, got"):
        models.cnn1d_global(length=251, classes=3, maps=maps)


def test_the_ucr_recipe_defaults():
    """cnn1d_global's training defaults (the UCR recipe of issue 18): 8,000 updates of 8 series,
    however many passes that takes, shifts of up to 10 % of the length, reversals with
    probability 1/2, and the command line's augmentation is that."""
    from anycnn.training import loop

    defaults = loop.TRAINING_DEFAULTS["cnn1d_global"]
    assert defaults["augment_shift"] == 0.1 and defaults["batch_size"] == 8
    assert defaults["augment_reverse"] == 0.5
    assert "augment_reverse" not in loop.TRAINING_DEFAULTS["cnn1d"]
    passes = {n: loop.default_epochs(defaults, n, 8) for n in (50, 36, 200, 3)}
    assert passes == {50: 1143, 36: 1600, 200: 320, 3: 8000}
    assert loop.default_epochs(loop.TRAINING_DEFAULTS["cnn1d"], 50, 4) == 300


def test_cnn1d_global_learns_a_small_problem():
    """The recipe's network, rate, momentum, batch and shifts learn 32 noisy series whose class
    is the sign of a bump anywhere along them (float32, NumPy; on GunPoint the recipe needs
    hundreds of passes to leave its first plateau, too long for the default suite)."""
    from anycnn import data, models
    from anycnn.data.augment import Shift
    from anycnn.training import loop, optim

    rng = np.random.default_rng(0)
    labels = np.arange(32) % 2
    x = rng.standard_normal((32, 1, 60)) * 0.3
    for i, where in enumerate(rng.integers(5, 45, size=32)):
        x[i, 0, where : where + 10] += 3.0 if labels[i] else -3.0
    ds = data.Dataset("bumps", x.astype(np.float32), labels, x[:4], labels[:4], 2)
    net = models.build_for(ds, "cnn1d_global", seed=0)
    defaults = loop.TRAINING_DEFAULTS["cnn1d_global"]
    opt = optim.build_optimizer("momentum", net, lr=defaults["lr"], momentum=0.9)
    result = loop.train(
        net, ds, epochs=15, batch_size=defaults["batch_size"], optimizer=opt, progress=False,
        evaluate_test=False, augment=Shift(defaults["augment_shift"]),
    )  # fmt: skip
    first, last = result.history[0], result.history[-1]
    assert first.train_error >= 0.2 and first.train_loss > 0.6
    assert last.train_error == 0 and last.train_loss < 0.05
