"""The training loop: learning, exact resume, divergence, preprocessing and targets."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from anycnn import datasets, layers, models, optim, train
from anycnn.network import Network


@pytest.fixture(scope="module")
def mnist():
    return datasets.load("mnist", limit=300)


def _small(ds, n):
    return datasets.Dataset(
        "mnist", ds.train_images[:n], ds.train_labels[:n], ds.test_images[:n], ds.test_labels[:n]
    )


def _params(net):
    return {k: np.array(net.backend.to_host(v), copy=True) for k, v in net.parameters().items()}


def _optimizer(kind, net):
    if kind == "sgd":
        return optim.SGD(net, 0.5, layer_rates={"conv1": 0.5})
    if kind == "momentum":
        return optim.Momentum(net, optim.Step(0.3, every=1, gamma=0.5), momentum=0.8)
    return optim.SDLM(net, 0.01, samples=40)


def _small_cnn():
    """A small convolutional net that leaves its initial plateau within a few dozen updates
    (LeNet-5 and DLT need an epoch of full MNIST for that)."""
    return Network(
        [
            layers.Convolution(4, 5, activation="tanh"),
            layers.Subsampling(2, "sum", activation="tanh"),
            layers.Flatten(),
            layers.FullyConnected(10, activation="identity"),
        ],
        (1, 28, 28),
        loss="cross_entropy",
        backend="cpu",
        name="small",
    )


@pytest.mark.parametrize("kind", ["sgd", "momentum", "sdlm"])
def test_training_reduces_the_loss(mnist, kind):
    ds = _small(mnist, 200)
    net = _small_cnn()
    prep = train.Preprocessing.fit(net, ds.train_images)
    before = train.evaluate(net, ds.train_images, ds.train_labels, prep)
    opt = {
        "sgd": lambda: optim.SGD(net, 0.1),
        "momentum": lambda: optim.Momentum(net, 0.02),
        "sdlm": lambda: optim.SDLM(net, 0.005, samples=100),
    }[kind]()
    result = train.train(net, ds, epochs=3, batch_size=10, optimizer=opt, progress=False, seed=1)
    after = train.evaluate(net, ds.train_images, ds.train_labels, prep)
    assert after["loss"] < 0.8 * before["loss"]
    assert after["error"] < before["error"]
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.test_error == result.history[-1].test_error


@pytest.mark.parametrize("kind", ["sgd", "momentum", "sdlm"])
def test_resume_gives_bit_identical_parameters(mnist, tmp_path, kind):
    ds = _small(mnist, 120)
    straight = models.dlt(backend="cpu", seed=3)
    opt_a = _optimizer(kind, straight)
    train.train(
        straight,
        ds,
        epochs=2,
        batch_size=20,
        optimizer=opt_a,
        seed=7,
        progress=False,
        checkpoint_dir=tmp_path / "a",
    )

    first = models.dlt(backend="cpu", seed=3)
    train.train(
        first,
        ds,
        epochs=1,
        batch_size=20,
        optimizer=_optimizer(kind, first),
        seed=7,
        progress=False,
        checkpoint_dir=tmp_path / "b",
    )
    del first  # the "interrupted" process is gone; a new one resumes from the files
    resumed = models.dlt(backend="cpu", seed=99)  # another init: every parameter is restored
    opt_b = _optimizer(kind, resumed)
    result = train.train(
        resumed,
        ds,
        epochs=2,
        batch_size=20,
        optimizer=opt_b,
        seed=12345,
        progress=False,
        checkpoint_dir=tmp_path / "b",
        resume=True,
    )

    assert result.resumed_from == tmp_path / "b" / "epoch-0001.npz"
    assert [r.epoch for r in result.history] == [1, 2]
    a, b = _params(straight), _params(resumed)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    state_a, state_b = opt_a.state_dict(), opt_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)
    assert opt_b.steps == 2 * 6


def test_resume_with_nothing_left_to_do(mnist, tmp_path):
    ds = _small(mnist, 40)
    net = models.dlt(backend="cpu")
    train.train(
        net,
        ds,
        epochs=1,
        batch_size=20,
        optimizer=optim.SGD(net, 1.0),
        progress=False,
        checkpoint_dir=tmp_path,
    )
    again = models.dlt(backend="cpu")
    result = train.train(
        again,
        ds,
        epochs=1,
        batch_size=20,
        optimizer=optim.SGD(again, 1.0),
        progress=False,
        checkpoint_dir=tmp_path,
        resume=True,
    )
    assert len(result.history) == 1
    for name, value in _params(net).items():
        np.testing.assert_array_equal(value, _params(again)[name])


def test_resume_with_another_optimizer_is_refused(mnist, tmp_path):
    from anycnn.training.checkpoint import CheckpointError

    ds = _small(mnist, 40)
    net = models.dlt(backend="cpu")
    train.train(
        net,
        ds,
        epochs=1,
        batch_size=20,
        optimizer=optim.SGD(net, 1.0),
        progress=False,
        checkpoint_dir=tmp_path,
    )
    other = models.dlt(backend="cpu")
    with pytest.raises(CheckpointError, match="'sgd' optimizer; resume with the same one"):
        train.train(
            other,
            ds,
            epochs=2,
            batch_size=20,
            optimizer=optim.Momentum(other, 0.1),
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
        )


def _linear(backend="cpu"):
    return Network(
        [layers.Flatten(), layers.FullyConnected(10, activation="identity")],
        (1, 28, 28),
        loss="squared_error",
        backend=backend,
        name="linear",
    )


def test_divergence_names_epoch_and_batch_and_keeps_the_last_checkpoint(mnist, tmp_path):
    ds = _small(mnist, 200)
    net = _linear()
    # rate 1e-3 is stable; from the second epoch on, 1e-3 * 1e4 = 10 makes every step overshoot
    # (||x||^2 ~ 100 for MNIST digits in [0, 1]) and the loss overflows within a few batches.
    opt = optim.SGD(net, optim.Step(1e-3, every=1, gamma=1e4))
    with pytest.raises(train.DivergenceError) as caught:
        train.train(
            net,
            ds,
            epochs=3,
            batch_size=1,
            optimizer=opt,
            progress=False,
            checkpoint_dir=tmp_path,
            report_every=7,
            preprocessing="scale01",
        )
    error = caught.value
    assert error.epoch == 2 and error.batch > 1
    assert f"epoch 2, batch {error.batch}" in str(error)
    assert error.checkpoint == tmp_path / "epoch-0001.npz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.npz"]
    stored = train.ckpt.load_checkpoint(tmp_path / "epoch-0001.npz")
    assert stored.epoch == 1
    for value in stored.network.parameters().values():
        assert np.all(np.isfinite(np.asarray(value)))


def test_a_checkpoint_is_not_rewritten_when_training_diverges(mnist, tmp_path):
    ds = _small(mnist, 50)
    net = _linear()
    train.train(
        net,
        ds,
        epochs=1,
        batch_size=10,
        optimizer=optim.SGD(net, 1e-3),
        progress=False,
        checkpoint_dir=tmp_path,
        preprocessing="scale01",
    )
    path = tmp_path / "epoch-0001.npz"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    again = _linear()
    with pytest.raises(train.DivergenceError, match="epoch 2"):
        train.train(
            again,
            ds,
            epochs=2,
            batch_size=1,
            optimizer=optim.SGD(again, 100.0),
            progress=False,
            checkpoint_dir=tmp_path,
            resume=True,
            preprocessing="scale01",
        )
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0001.npz"]


def test_preprocessing_per_model(mnist):
    lenet = models.lenet5(backend="cpu")
    prep = train.Preprocessing.fit(lenet, mnist.train_images)
    assert prep.kind == "normalize"
    mean, std = datasets.mean_std(mnist.train_images)
    assert (prep.mean, prep.std) == (mean, std)
    x = prep(mnist.train_images[:5], "float32")
    assert x.shape == (5, 1, 32, 32) and x.dtype == np.float32
    background = np.float32(-mean / std)
    assert np.all(x[:, :, :2, :] == background) and np.all(x[:, :, :, -2:] == background)
    np.testing.assert_allclose(
        x[:, 0, 2:30, 2:30],
        (mnist.train_images[:5].astype(np.float64) - mean) / std,
        rtol=1e-5,
        atol=1e-5,
    )
    dlt = models.dlt(backend="cpu")
    prep = train.Preprocessing.fit(dlt, mnist.train_images)
    assert prep.kind == "scale01"
    x = prep(mnist.train_images[:5], "float64")
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float64
    np.testing.assert_array_equal(x[:, 0], mnist.train_images[:5] / 255.0)
    assert train.Preprocessing.from_config(prep.config()) == prep
    with pytest.raises(ValueError, match=r"cannot feed model 'dlt'.*\(1, 28, 28\)"):
        train.Preprocessing.fit(dlt, np.zeros((3, 32, 32), np.uint8))


def test_target_values():
    assert train.target_values(models.lenet5(backend="cpu")) == (0.0, 1.0)
    assert train.target_values(models.lenet5(loss="squared_error", backend="cpu")) == (-1.0, 1.0)
    assert train.target_values(models.dlt(backend="cpu")) == (0.0, 1.0)


def test_labels_out_of_range(mnist):
    ds = datasets.Dataset(
        "twelve",
        mnist.train_images[:20],
        np.arange(20) % 12,
        mnist.test_images[:20],
        np.arange(20) % 12,
        num_classes=12,
    )
    net = models.dlt(backend="cpu")
    with pytest.raises(ValueError, match="labels out of range.*up to 11.*'dlt' has 10 outputs"):
        train.train(net, ds, epochs=1, progress=False)


def test_metrics_file_and_progress_bar(mnist, tmp_path, capsys):
    ds = _small(mnist, 60)
    net = models.dlt(backend="cpu")
    seen = []
    train.train(
        net,
        ds,
        epochs=2,
        batch_size=20,
        optimizer=optim.SGD(net, 1.0),
        progress=True,
        metrics_path=tmp_path / "m.json",
        callbacks=[seen.append],
        run_info={"command": "test"},
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["final_test_error"] == seen[-1].test_error
    assert metrics["command"] == "test" and metrics["model"] == "dlt"
    assert metrics["optimizer"]["name"] == "sgd" and metrics["batch_size"] == 20
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "img/s" in err  # tqdm on stderr


def test_online_learning_batch_of_one(mnist):
    ds = _small(mnist, 30)
    net = models.dlt(backend="cpu")
    opt = optim.SGD(net, 0.5)
    result = train.train(net, ds, epochs=1, batch_size=1, optimizer=opt, progress=False)
    assert opt.steps == 30
    assert 0 <= result.history[0].train_error <= 1


# --------------------------------------------------------------------------------------------
# The training-step seam: Trainer.step and its gradient hooks
# --------------------------------------------------------------------------------------------
def test_gradient_hooks_run_between_backward_and_the_update(mnist):
    """A hook that doubles the gradients gives, with SGD at rate r, the parameters of rate 2r;
    one that zeroes them leaves the parameters where they were."""
    ds = _small(mnist, 40)

    def run(rate, hooks):
        net = _small_cnn()
        seen = []

        def record(trainer):
            seen.append(trainer.optimizer.steps)  # the update of this step has not run yet

        train.train(
            net,
            ds,
            epochs=1,
            batch_size=10,
            optimizer=optim.SGD(net, rate),
            progress=False,
            evaluate_test=False,
            gradient_hooks=[record, *hooks],
        )
        return _params(net), seen

    def double(trainer):
        for g in trainer.network.gradients().values():
            g *= 2.0

    def zero(trainer):
        for g in trainer.network.gradients().values():
            g *= 0.0

    plain, seen = run(0.2, [])
    doubled, _ = run(0.1, [double])
    assert seen == [0, 1, 2, 3]
    for name in plain:
        np.testing.assert_allclose(doubled[name], plain[name], rtol=1e-5, atol=1e-6)
    still, _ = run(0.2, [zero])
    start = _params(_small_cnn())
    for name in start:
        np.testing.assert_array_equal(still[name], start[name])


def test_trainer_parts_give_the_result_of_train(mnist):
    """Trainer(...).run() is train(...): same parameters bit for bit, one step at a time too."""
    ds = _small(mnist, 30)
    net = _small_cnn()
    train.train(net, ds, epochs=2, batch_size=8, optimizer=optim.SGD(net, 0.1), progress=False)
    other = _small_cnn()
    trainer = train.Trainer(
        other, ds, epochs=2, batch_size=8, optimizer=optim.SGD(other, 0.1), progress=False
    )
    records = [trainer.run_epoch(epoch) for epoch in range(trainer.start, trainer.epochs)]
    assert [r.epoch for r in records] == [1, 2]
    for name, value in _params(net).items():
        np.testing.assert_array_equal(_params(other)[name], value)


def test_optimizer_defaults_live_in_the_classes_and_the_registry():
    net = _small_cnn()
    assert optim.SGD(net).lr == optim.SGD.default_lr
    assert optim.Momentum(net).lr == optim.Momentum.default_lr
    assert optim.build_optimizer("sdlm", net).lr == optim.SDLM.default_lr

    class Halving(optim.SGD):
        name = "halving"
        default_lr = 0.25

        def _update(self, name, p, g):
            self._apply(name, p, 0.5 * self.rate(name) * g)

    try:
        optim.register_optimizer(Halving)
        built = optim.build_optimizer("halving", net)
        assert type(built) is Halving and built.lr == 0.25
        with pytest.raises(ValueError, match="taken"):
            optim.register_optimizer(type("Other", (optim.SGD,), {"name": "halving"}))
    finally:
        optim.OPTIMIZERS.pop("halving", None)
    with pytest.raises(ValueError, match="sgd optimizer has no momentum"):
        optim.build_optimizer("sgd", net, momentum=0.5)
