"""Random shifts and time reversals of training examples (anycnn.data.augment, issue 18): the
values against a plain loop, the offsets' bounds and reproducibility, the training loop's use of
them (the same run twice, a resumed run, batches of any size), the command line's flags."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anycnn import Convolution, Flatten, FullyConnected, Network, Subsampling, datasets
from anycnn.data.augment import Shift, augmentation_from_config
from anycnn.training import loop


def _shifted_by_loop(images, offsets):
    out = np.empty_like(images)
    length = images.shape[-1]
    for e, s in enumerate(offsets):
        for t in range(length):
            out[e, ..., t] = images[e, ..., min(max(t - s, 0), length - 1)]
    return out


@pytest.mark.parametrize("shape", [(5, 13), (4, 3, 9), (2, 5, 6, 7)])
def test_shift_moves_each_example_and_fills_with_its_edge(rng, shape):
    images = rng.standard_normal(shape)
    offsets = rng.integers(-shape[-1], shape[-1] + 1, size=shape[0])
    got = Shift(0.5).apply(images, offsets)
    np.testing.assert_array_equal(got, _shifted_by_loop(images, offsets))
    assert got is not images and got.shape == images.shape


@pytest.mark.parametrize("shape", [(6, 13), (4, 3, 9)])
def test_reversal_reads_the_flagged_examples_backwards_before_the_shift(rng, shape):
    images = rng.standard_normal(shape)
    shifts = rng.integers(-3, 4, size=shape[0])
    flags = np.arange(shape[0]) % 2
    got = Shift(0.5, reverse=0.5).apply(images, np.stack([shifts, flags], axis=1))
    reversed_first = np.where(
        flags.reshape((-1,) + (1,) * (len(shape) - 1)) == 1, images[..., ::-1], images
    )
    np.testing.assert_array_equal(got, _shifted_by_loop(reversed_first, shifts))
    assert not np.array_equal(got[1], _shifted_by_loop(images, shifts)[1])  # it did reverse


def test_reversal_keeps_the_shifts_and_flags_about_its_fraction():
    plain = Shift(0.1).offsets(4000, 150, seed=3, epoch=2)
    both = Shift(0.1, reverse=0.25).offsets(4000, 150, seed=3, epoch=2)
    assert both.shape == (4000, 2) and both.dtype == np.int64
    np.testing.assert_array_equal(both[:, 0], plain)
    assert set(np.unique(both[:, 1])) == {0, 1}
    assert 0.22 < both[:, 1].mean() < 0.28
    np.testing.assert_array_equal(both, Shift(0.1, reverse=0.25).offsets(4000, 150, 3, 2))
    assert not np.array_equal(both[:, 1], Shift(0.1, reverse=0.25).offsets(4000, 150, 3, 3)[:, 1])
    assert Shift(0.1, reverse=1.0).offsets(50, 150, 0, 0)[:, 1].all()


@pytest.mark.parametrize("reverse", [-0.1, 1.5, float("nan"), "0.5", True])
def test_bad_reversal_probabilities_are_refused(reverse):
    with pytest.raises(ValueError, match="Shift: reverse"):
        Shift(0.1, reverse=reverse)


def test_offsets_are_bounded_reproducible_and_new_each_pass():
    shift = Shift(0.1)
    a = shift.offsets(500, 150, seed=3, epoch=0)
    assert a.dtype == np.int64 and a.min() == -15 and a.max() == 15
    np.testing.assert_array_equal(a, shift.offsets(500, 150, seed=3, epoch=0))
    assert not np.array_equal(a, shift.offsets(500, 150, seed=3, epoch=1))
    assert not np.array_equal(a, shift.offsets(500, 150, seed=4, epoch=0))
    assert not Shift(0.0).offsets(10, 150, 0, 0).any()


@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan"), "0.1", True])
def test_bad_fractions_are_refused(fraction):
    with pytest.raises(ValueError, match="Shift: fraction"):
        Shift(fraction)


def test_offsets_must_match_the_examples():
    with pytest.raises(ValueError, match="2 offsets for 3 examples"):
        Shift(0.1).apply(np.zeros((3, 8)), np.zeros(2, np.int64))


def test_config_round_trip():
    assert augmentation_from_config(Shift(0.2).config()) == Shift(0.2)
    assert augmentation_from_config(None) is None
    assert augmentation_from_config({"kind": "shift", "fraction": 0.0}) is None
    assert Shift(0.2).config() == {"kind": "shift", "fraction": 0.2}  # as before reversals
    both = Shift(0.2, reverse=0.5)
    assert augmentation_from_config(both.config()) == both
    assert augmentation_from_config(Shift(0.0, reverse=0.5).config()) == Shift(0.0, 0.5)
    with pytest.raises(ValueError, match="augmentation"):
        augmentation_from_config({"kind": "flip"})


def _toy():
    rng = np.random.default_rng(0)
    train = rng.standard_normal((12, 1, 24)).astype(np.float32)
    test = rng.standard_normal((6, 1, 24)).astype(np.float32)
    return datasets.Dataset("toy", train, np.arange(12) % 2, test, np.arange(6) % 2, 2)


def _net():
    return Network(
        [
            Convolution(3, 5, padding="same", activation="tanh"),
            Subsampling(4, "sum", remainder="pad"),
            Flatten(),
            FullyConnected(2, activation="identity"),
        ],
        (1, 24),
        loss="cross_entropy",
        dtype="float64",
        seed=1,
    )


def _params(net):
    return {k: np.array(v) for k, v in net.parameters().items()}


@pytest.mark.parametrize("augment", [Shift(0.25), Shift(0.25, reverse=0.5)])
def test_training_sees_shifted_examples_the_same_for_any_batching(augment):
    """The loop feeds each example at its pass's offset (and reversal): batches of 3 and of 12
    see the same shifted examples (the batch's mean gradient differs, the inputs do not)."""
    ds, seen = _toy(), {}
    for batch in (3, 12):
        net = _net()
        trainer = loop.Trainer(
            net, ds, epochs=1, batch_size=batch, progress=False, augment=augment, seed=7,
            shuffle=False, evaluate_test=False,
        )  # fmt: skip
        inputs = []
        original = trainer.batch_arrays
        trainer.batch_arrays = lambda picks, seen=inputs, feed=original: (
            seen.append(picks),
            feed(picks),
        )[1]
        trainer.run()
        offsets = augment.offsets(12, 24, seed=7, epoch=0)
        assert offsets.any()
        batch_x = [np.asarray(original(p)[0]) for p in inputs]
        seen[batch] = np.concatenate(batch_x)
        expected = trainer.prep(augment.apply(ds.train_images, offsets), "float64")
        np.testing.assert_allclose(seen[batch], expected)
    np.testing.assert_array_equal(seen[3], seen[12])


@pytest.mark.parametrize("augment", [Shift(0.2), Shift(0.2, reverse=0.5)])
def test_augmented_training_is_reproducible_resumable_and_changes_the_result(tmp_path, augment):
    ds = _toy()

    def run(epochs, augment, **kw):
        net = _net()
        loop.train(net, ds, epochs=epochs, batch_size=4, progress=False, augment=augment, **kw)
        return _params(net)

    once = run(3, augment)
    again = run(3, augment)
    plain = run(3, None)
    for name in once:
        np.testing.assert_array_equal(once[name], again[name])
    assert any(not np.array_equal(once[n], plain[n]) for n in once)
    # interrupted after 2 passes, resumed for the third: the same parameters
    run(2, augment, checkpoint_dir=tmp_path)
    resumed = run(3, augment, checkpoint_dir=tmp_path, resume=True)
    for name in once:
        np.testing.assert_array_equal(once[name], resumed[name])


def test_cli_flag_is_recorded_and_checked(tmp_path, capsys):
    from anycnn.cli import main

    metrics = tmp_path / "m.json"
    code = main(
        ["train", "--dataset", "gunpoint", "--model", "cnn1d", "--limit", "8", "--epochs", "1",
         "--augment-shift", "0.2", "--metrics", str(metrics), "--quiet"]
    )  # fmt: skip
    assert code == 0
    assert json.loads(metrics.read_text())["augment"] == {"kind": "shift", "fraction": 0.2}
    capsys.readouterr()
    assert main(["train", "--dataset", "gunpoint", "--augment-shift", "1.5"]) != 0
    assert "argument --augment-shift: must be in [0, 1), got 1.5" in capsys.readouterr().err


def test_cli_reversal_flag_is_recorded_and_checked(tmp_path, capsys):
    from anycnn.cli import main

    metrics = tmp_path / "m.json"
    code = main(
        ["train", "--dataset", "gunpoint", "--model", "cnn1d", "--limit", "8", "--epochs", "1",
         "--augment-shift", "0", "--augment-reverse", "1", "--metrics", str(metrics), "--quiet"]
    )  # fmt: skip
    assert code == 0
    recorded = json.loads(metrics.read_text())["augment"]
    assert recorded == {"kind": "shift", "fraction": 0.0, "reverse": 1.0}
    capsys.readouterr()
    assert main(["train", "--dataset", "gunpoint", "--augment-reverse", "1.5"]) != 0
    assert "argument --augment-reverse: must be in [0, 1], got 1.5" in capsys.readouterr().err


def test_the_ucr_recipe_reverses_by_default(tmp_path):
    """anycnn train --dataset gunpoint (cnn1d_global, the UCR recipe) shifts and reverses."""
    from anycnn.cli import main

    metrics = tmp_path / "m.json"
    argv = ["train", "--dataset", "gunpoint", "--limit", "8", "--epochs", "1"]
    assert main(argv + ["--metrics", str(metrics), "--quiet"]) == 0
    recorded = json.loads(metrics.read_text())["augment"]
    assert recorded == {"kind": "shift", "fraction": 0.1, "reverse": 0.5}
