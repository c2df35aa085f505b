"""Network.fit keeps the preprocessing a network carries (a CLI checkpoint's) unless one is given,
and warns when a given one replaces it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import anycnn


def _data(seed, n=32):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n)


@pytest.fixture
def loaded(tmp_path):
    """A network with a 'normalize' preprocessing, saved and loaded back (as from a checkpoint)."""
    net = anycnn.models.dlt(backend="cpu")
    x, y = _data(0)
    net.fit(x, y, epochs=1, batch_size=16, lr=0.1, preprocessing="normalize")
    net.save(tmp_path / "net.npz")
    return anycnn.load(tmp_path / "net.npz", backend="cpu")


def test_fit_keeps_the_recorded_preprocessing(loaded):
    before = loaded.preprocessing.config()
    assert before["kind"] == "normalize"
    x, y = _data(1)
    x = (x // 2).astype(np.uint8)  # other statistics: a refit would change mean and std
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.fit(x, y, epochs=1, batch_size=16, lr=0.1)
    assert loaded.preprocessing.config() == before


def test_fit_warns_when_an_explicit_preprocessing_replaces_it(loaded):
    x, y = _data(1)
    with pytest.warns(UserWarning, match=r"preprocessing='scale01' replaces .*'normalize'"):
        loaded.fit(x, y, epochs=1, batch_size=16, lr=0.1, preprocessing="scale01")
    assert loaded.preprocessing.kind == "scale01"
    with warnings.catch_warnings():  # the same Preprocessing object again: nothing replaced
        warnings.simplefilter("error")
        loaded.fit(x, y, epochs=1, batch_size=16, lr=0.1, preprocessing=loaded.preprocessing)
