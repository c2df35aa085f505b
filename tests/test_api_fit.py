"""Network.fit / evaluate / predict / predict_classes (issue 15): the Keras-style API on arrays,
through the one training loop of ``anycnn train``."""

from __future__ import annotations

import json

import numpy as np
import pytest

import anycnn
from anycnn import cli, datasets, models, optim

LIMIT = 120  # examples of the embedded MNIST: a few batches, seconds per backend


def _params(net):
    return net.state_dict()


def test_fit_then_evaluate_reproduces_the_cli_bit_for_bit(backend, tmp_path):
    """The same seed, data, model and optimizer through `anycnn train` and through fit give the
    same parameters and the same test loss and error, to the last bit (one loop, not two)."""
    metrics = tmp_path / "metrics.json"
    runs = tmp_path / "runs"
    argv = [
        "train", "--model", "dlt", "--epochs", "2", "--batch-size", "25", "--limit", str(LIMIT),
        "--backend", backend.name, "--dtype", "float64", "--seed", "3", "--quiet",
        "--metrics", str(metrics), "--checkpoint-dir", str(runs),
    ]  # fmt: skip
    assert cli.main(argv) == 0
    stored = json.loads(metrics.read_text())
    by_cli = anycnn.load(runs / "epoch-0002.npz", backend=backend)

    data = datasets.load("mnist", limit=LIMIT)
    net = models.dlt(backend=backend, dtype="float64", seed=3)  # --seed seeds the weights too
    opt = optim.optimizer_from_config(net, stored["optimizer"])
    history = net.fit(
        data.train_images,
        data.train_labels,
        epochs=2,
        batch_size=25,
        optimizer=opt,
        seed=3,
        preprocessing="auto",
    )
    result = net.evaluate(data.test_images, data.test_labels)
    assert result["error"] == stored["final_test_error"]
    assert result["loss"] == stored["history"][-1]["test_loss"]
    assert history.history["loss"] == [r["train_loss"] for r in stored["history"]]
    for name, value in _params(by_cli).items():
        np.testing.assert_array_equal(_params(net)[name], value, err_msg=name)
    # the CLI's checkpoint carries its preprocessing: predict on raw images applies it
    assert by_cli.preprocessing == net.preprocessing
    np.testing.assert_array_equal(
        backend.to_host(by_cli.predict(data.test_images)),
        backend.to_host(net.predict(data.test_images)),
    )


def _toy(rng, n=40):
    x = rng.random((n, 1, 28, 28))
    labels = rng.integers(0, 10, n)
    return x, labels


def test_integer_labels_and_one_hot_targets_train_alike(backend, rng):
    x, labels = _toy(rng)
    one_hot = np.eye(10)[labels]
    a = models.dlt(backend=backend, dtype="float64")
    b = models.dlt(backend=backend, dtype="float64")
    a.fit(x, labels, epochs=1, batch_size=8, lr=0.5)
    b.fit(backend.asarray(x), backend.asarray(one_hot), epochs=1, batch_size=8, lr=0.5)
    for name, value in _params(a).items():
        np.testing.assert_array_equal(_params(b)[name], value, err_msg=name)
    assert a.evaluate(x, labels) == b.evaluate(x, one_hot)


@pytest.mark.parametrize(
    ("labels", "error", "match"),
    [
        (np.full(6, 10), ValueError, r"label 10 at index 0 is outside \[0, 10\)"),
        (np.zeros(6), TypeError, r"labels must be integers .* got dtype float64"),
        (np.zeros((6, 10)), ValueError, r"2-d targets must be one-of-c"),
        (np.zeros((6, 9)), ValueError, r"one-of-c targets must have shape \(6, 10\)"),
        (np.zeros(5, dtype=int), ValueError, r"expected 6 labels, one per example"),
    ],
    ids=["out-of-range", "float-labels", "not-one-hot", "wrong-classes", "wrong-count"],
)
def test_bad_labels_say_what_is_expected(labels, error, match):
    net = models.dlt(backend="numpy", dtype="float64")
    with pytest.raises(error, match=match):
        net.fit(np.zeros((6, 1, 28, 28)), labels, epochs=1)


def test_predict_returns_outputs_and_predict_classes_the_indices(backend, rng):
    net = models.dlt(backend=backend, dtype="float64")
    x = rng.random((7, 1, 28, 28))
    y = net.predict(x, batch_size=3)  # host input, in chunks of 3, 3 and 1
    expected = np.concatenate(
        [backend.to_host(net.forward(backend.asarray(x[i : i + 3]))) for i in (0, 3, 6)]
    )
    assert tuple(y.shape) == (7, 10)
    np.testing.assert_array_equal(backend.to_host(y), expected)
    classes = net.predict_classes(backend.asarray(x), batch_size=3)
    np.testing.assert_array_equal(backend.to_host(classes), expected.argmax(axis=1))


def test_inputs_are_cast_to_the_network_dtype_and_integers_need_a_preprocessing(backend, rng):
    net = models.dlt(backend=backend)  # float32
    x = rng.random((3, 1, 28, 28))  # float64 on the host
    np.testing.assert_array_equal(
        backend.to_host(net.predict(x)),
        backend.to_host(net.forward(backend.asarray(x, dtype="float32"))),
    )
    with pytest.raises(TypeError, match=r"x has dtype uint8; .*preprocessing='scale01'"):
        net.predict(np.zeros((2, 1, 28, 28), dtype=np.uint8))


def test_preprocessing_is_part_of_the_model(backend, rng):
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)  # raw pixels, no channel axis
    labels = rng.integers(0, 10, 30)
    net = models.lenet5(backend=backend, dtype="float64")
    net.fit(images, labels, epochs=1, batch_size=10, lr=0.01, preprocessing="normalize")
    prep = net.preprocessing
    assert prep.kind == "normalize" and prep.mean == pytest.approx(images.mean())
    assert "preprocessing normalize (mean" in net.summary()
    manual = net.forward(backend.asarray(prep(images, "float64")))
    np.testing.assert_array_equal(backend.to_host(net.predict(images)), backend.to_host(manual))


@pytest.mark.jax  # in the default suite on JAX (tests/conftest.py SUBSET_VARIANTS)
def test_validation_history_and_no_shuffle(backend, rng):
    x, labels = _toy(rng, 24)
    net = models.dlt(backend=backend, dtype="float64")
    seen = []
    history = net.fit(
        x,
        labels,
        epochs=2,
        batch_size=8,
        lr=0.5,
        validation_data=(x[:8], labels[:8]),
        callbacks=[seen.append],
        shuffle=False,
    )
    assert sorted(history.history) == ["error", "loss", "seconds", "val_error", "val_loss"]
    assert history.epoch == [0, 1] and [r.epoch for r in seen] == [1, 2]
    assert history.history["val_loss"][-1] == net.evaluate(x[:8], labels[:8])["loss"]
    # without shuffling the order does not depend on the seed
    a = models.dlt(backend=backend, dtype="float64")
    b = models.dlt(backend=backend, dtype="float64")
    a.fit(x, labels, epochs=1, batch_size=8, lr=0.5, shuffle=False, seed=1)
    b.fit(x, labels, epochs=1, batch_size=8, lr=0.5, shuffle=False, seed=2)
    for name, value in _params(a).items():
        np.testing.assert_array_equal(_params(b)[name], value, err_msg=name)


def test_a_second_fit_continues_with_the_same_optimizer(rng):
    x, labels = _toy(rng, 16)
    once = models.dlt(backend="numpy", dtype="float64")
    once.fit(x, labels, epochs=1, batch_size=8, optimizer="momentum", lr=0.1, shuffle=False)
    opt = once.optimizer
    once.fit(x, labels, epochs=1, batch_size=8, optimizer="momentum", shuffle=False)
    assert once.optimizer is opt and opt.steps == 4


def test_softmax_activation_and_sigmoid_cross_entropy_are_flagged():
    with pytest.raises(ValueError, match=r"'softmax': the softmax belongs to the loss.*identity"):
        anycnn.FullyConnected(10, activation="softmax")
    with pytest.warns(UserWarning, match=r"applies sigmoid before the cross-entropy loss"):
        anycnn.Network([anycnn.FullyConnected(3, activation="sigmoid")], (4,), loss="cross_entropy")


def test_fit_on_vectors(rng):
    """A network on vectors (N, D) trains through the same loop."""
    net = anycnn.Network(
        [anycnn.FullyConnected(3, activation="identity")],
        (4,),
        loss="cross_entropy",
        dtype="float64",
    )
    x, labels = rng.random((12, 4)), rng.integers(0, 3, 12)
    history = net.fit(x, labels, epochs=3, batch_size=4, lr=0.5)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert tuple(net.predict(x).shape) == (12, 3)


def test_anycnn_train_is_callable():
    """`anycnn.train(net, ...)` runs the loop; `anycnn.train.train` is the same function."""
    data = datasets.load("mnist", limit=20)
    net = models.dlt(backend="numpy", dtype="float64")  # the kernels the other tests compiled
    result = anycnn.train(net, data, epochs=1, batch_size=10, progress=False)
    assert len(result.history) == 1


def test_fit_runs_the_loops_gradient_hooks(rng):
    """fit is the loop of `anycnn train`: its step's gradient hooks run here too."""
    x, labels = _toy(rng, 8)
    calls = []
    net = models.dlt(backend="numpy")
    net.fit(x, labels, epochs=1, batch_size=4, gradient_hooks=[calls.append])
    assert len(calls) == 2 and all(isinstance(c, anycnn.train.Trainer) for c in calls)
