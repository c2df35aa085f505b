"""What Network promises at its edges (issue 22: survivors of the mutation campaigns): the
documented batch size of the chunked entry points, the names in its error messages, the label
range, the output/loss warning both ways, penalties of several layers, the deferred
up-sampling's hand-over, and moving an optimizer with the network. Small and in process."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import anycnn
from anycnn import (
    Convolution,
    Flatten,
    FullyConnected,
    LearnedCombination,
    Network,
    Subsampling,
    optim,
)


def _tiny(**kwargs):
    return Network([Flatten(), FullyConnected(3)], input_shape=(1, 2, 2), backend="cpu", **kwargs)


def _x(n, dtype=np.float32):
    return np.random.default_rng(0).random((n, 1, 2, 2)).astype(dtype)


@pytest.mark.parametrize("prepared", [False, True], ids=["floats", "preprocessing"])
@pytest.mark.parametrize("method", ["predict", "predict_classes", "evaluate"])
def test_the_chunked_entry_points_take_1000_examples_at_a_time_by_default(
    method, prepared, monkeypatch
):
    net = _tiny()
    if prepared:
        net.preprocessing = anycnn.train.Preprocessing("none", (1, 2, 2))
    sizes = []
    forward = net.forward

    def spy(x, **kwargs):
        sizes.append(int(x.shape[0]))
        return forward(x, **kwargs)

    monkeypatch.setattr(net, "forward", spy)
    args = (_x(1001), np.zeros(1001, np.int64)) if method == "evaluate" else (_x(1001),)
    out = getattr(net, method)(*args)
    assert sizes == [1000, 1]
    if method != "evaluate":
        assert out.shape[0] == 1001


@pytest.mark.parametrize("method", ["predict", "predict_classes"])
def test_chunks_join_to_one_output_of_every_example(method):
    net = _tiny()
    x = _x(7)
    whole = np.asarray(getattr(net, method)(x, batch_size=7))
    assert np.array_equal(np.asarray(getattr(net, method)(x, batch_size=3)), whole)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda net: net.predict([[1.0]]), r"^Network\.predict: x must be an array"),
        (lambda net: net.predict_classes([[1.0]]), r"^Network\.predict_classes: x must be an"),
        (lambda net: net.evaluate(object(), [0]), r"^Network\.evaluate: x must be an array"),
        (lambda net: net.evaluate(_x(2, np.uint8), [0, 1]), r"^Network\.evaluate: x has dtype"),
        (lambda net: net.set_parameter("fc1.bias", [0.0] * 3), r"value must be an array"),
    ],
)
def test_errors_name_the_entry_point_and_the_argument(call, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(_tiny())


@pytest.mark.parametrize("method", ["predict", "evaluate"])
def test_an_empty_batch_is_refused_with_or_without_a_preprocessing(method):
    net = _tiny()
    args = (np.zeros((0, 1, 2, 2), np.float32),) + (
        (np.zeros(0, np.int64),) if method == "evaluate" else ()
    )
    with pytest.raises(ValueError, match="empty|non-empty"):
        getattr(net, method)(*args)
    net.fit(_x(4), np.array([0, 1, 2, 0]), epochs=1, preprocessing="normalize", batch_size=2)
    with pytest.raises(ValueError, match="non-empty batch"):
        getattr(net, method)(*args)
    with pytest.raises(ValueError, match="non-empty batch"):
        getattr(net, method)(*((np.zeros(4, np.float32),) + args[1:]))


def test_evaluate_refuses_a_label_equal_to_the_number_of_classes():
    net = _tiny()
    assert net.evaluate(_x(2), np.array([0, 2]))["count"] == 2
    assert net.evaluate(_x(2), [0, 2]) == net.evaluate(_x(2), (0, 2))  # labels as a list
    with pytest.raises(ValueError, match="3"):
        net.evaluate(_x(2), np.array([0, 3]))
    with pytest.raises(ValueError):
        net.evaluate(_x(2), np.array([-1, 0]))


def test_one_of_c_targets_must_be_exactly_one_high_and_the_rest_low():
    net = _tiny()
    good = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert net.evaluate(_x(2), good)["count"] == 2
    for bad in ([[0.0, 1.0, 0.5], [1.0, 0.0, 0.0]], [[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]):
        with pytest.raises(ValueError, match="one-of-c"):
            net.evaluate(_x(2), np.array(bad))


def test_class_labels_need_a_vector_output():
    net = Network([Convolution(2, 1)], input_shape=(1, 2, 2), backend="cpu")
    with pytest.raises(ValueError, match="must end with a vector of class scores"):
        net.evaluate(_x(2), np.array([0, 1]))


def test_the_first_non_finite_value_is_the_one_named():
    net = _tiny()
    x = _x(2)
    x[0, 0, 1, 0] = np.nan
    x[1, 0, 1, 1] = np.inf
    with pytest.raises(
        ValueError, match=r"2 non-finite .* the first is nan at index \(0, 0, 1, 0\)"
    ):
        net.forward(x)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "lecun_tanh"])
def test_a_squashing_output_before_cross_entropy_warns_naming_the_output_layer(name):
    with pytest.warns(UserWarning, match=r"output layer FullyConnected\(3.* applies " + name):
        Network(
            [Flatten(), FullyConnected(3, activation=name)],
            input_shape=(1, 2, 2),
            loss="cross_entropy",
            backend="cpu",
        )


@pytest.mark.parametrize(
    "activation, loss", [("identity", "cross_entropy"), ("sigmoid", "squared_error")]
)
def test_a_linear_output_or_another_loss_does_not_warn(activation, loss):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Network(
            [Flatten(), FullyConnected(3, activation=activation)],
            input_shape=(1, 2, 2),
            loss=loss,
            backend="cpu",
        )


def test_a_build_error_says_whether_the_input_or_the_previous_layer_gave_the_shape():
    with pytest.raises(ValueError, match="from the input"):
        Network([Convolution(2, 5)], input_shape=(1, 3, 3), backend="cpu")
    with pytest.raises(ValueError, match="from the previous layer"):
        Network([Convolution(2, 2), Convolution(2, 5)], input_shape=(1, 3, 3), backend="cpu")


def test_the_penalty_is_the_sum_of_every_layers_penalty():
    net = Network(
        [LearnedCombination(2, 1, lam=0.5), LearnedCombination(2, 1, lam=0.25)],
        input_shape=(2, 3, 3),
        backend="cpu",
        dtype="float64",
    )
    parts = [float(layer.penalty()) for layer in net.layers]
    assert all(p > 0 for p in parts)
    assert float(net.penalty()) == pytest.approx(sum(parts), rel=1e-12)


def test_a_convolution_receives_the_delta_its_subsampling_did_not_upsample(monkeypatch):
    """Note [Deferred up-sampling]: a subsampling above a convolution hands its delta down at the
    subsampled size (defer_up=True), and the convolution's backward up-samples it."""
    net = Network(
        [Convolution(2, 3), Subsampling(2), Flatten(), FullyConnected(2)],
        input_shape=(1, 6, 6),
        backend="cpu",
        dtype="float64",
    )
    conv = net.layers[0]
    seen = []
    backward = conv.backward

    def spy(dy, **kwargs):
        seen.append(type(dy).__name__)
        return backward(dy, **kwargs)

    monkeypatch.setattr(conv, "backward", spy)
    rng = np.random.default_rng(0)
    net.compute_gradients(rng.random((3, 1, 6, 6)), rng.random((3, 2)))
    assert seen == ["Upsampled"]  # the pooled delta with its factor, not a 4x larger array


def test_load_puts_the_network_on_the_backend_asked_for(tmp_path):
    path = _tiny(dtype="float64").save(tmp_path / "n.npz")
    assert anycnn.load(path, backend="strict").backend.name == "array_api_strict"
    assert anycnn.load(path, backend="cpu").backend.name != "array_api_strict"


def test_to_moves_a_given_optimizer_with_the_network():
    net = _tiny(dtype="float64")
    opt = optim.build_optimizer("momentum", net, lr=0.1)
    rng = np.random.default_rng(0)
    net.compute_gradients(rng.random((2, 1, 2, 2)), rng.random((2, 3)))
    opt.step()
    net.to("strict", optimizer=opt)
    state = opt.state_dict()
    assert opt.network is net and state["steps"] == 1
    assert all(
        type(v).__module__.startswith("array_api_strict") for v in opt._state["velocity"].values()
    )


def test_fit_is_quiet_by_default(capsys):
    _tiny().fit(_x(4), np.array([0, 1, 2, 0]), epochs=1, batch_size=2)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_replacing_the_preprocessing_warns_at_the_callers_line():
    net = _tiny()
    pixels = (_x(4) * 255).astype(np.uint8)
    net.fit(pixels, np.array([0, 1, 2, 0]), epochs=1, preprocessing="scale01", batch_size=2)
    with pytest.warns(UserWarning, match="replaces the network's recorded preprocessing") as got:
        net.fit(pixels, np.array([0, 1, 2, 0]), epochs=1, preprocessing="normalize", batch_size=2)
    # at the caller's line (stacklevel=2), not inside anycnn; under mutmut a trampoline is
    # the caller, so the test states where the warning must not point
    import anycnn.network

    assert got[0].filename != anycnn.network.__file__


@pytest.mark.parametrize(
    "mu, message",
    [(0, "> 0"), (-1, ">= 0"), (-1e-9, ">= 0"), (True, "a number"), (float("inf"), "finite")],
)
def test_sdlm_refuses_mu_at_0_below_and_not_a_number(mu, message):
    with pytest.raises(ValueError, match=f"SDLM: mu must be .*{message}"):
        optim.SDLM(_tiny(), 0.01, mu=mu)


@pytest.mark.parametrize("mu", [1e-12, 1, 0.02])
def test_sdlm_takes_a_positive_mu_as_a_float(mu):
    opt = optim.SDLM(_tiny(), 0.01, mu=mu)
    assert opt.config()["mu"] == mu and type(opt.config()["mu"]) is float


@pytest.mark.parametrize("backend", ["strict", "cpu"])
def test_gradcheck_of_a_float32_network_takes_its_float64_twin_on_the_same_backend(backend):
    net = Network(
        [Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), backend=backend, dtype="float32"
    )
    rng = np.random.default_rng(0)
    x = net.backend.asarray(rng.random((2, 1, 2, 2)), dtype="float32")
    t = net.backend.asarray(rng.random((2, 2)), dtype="float32")
    report = anycnn.gradcheck(net, x, t)
    assert report.passed, report


def test_targets_on_another_device_are_refused_naming_the_call():
    import array_api_strict

    net = Network(
        [Flatten(), FullyConnected(3)],
        input_shape=(1, 2, 2),
        backend="strict:device1",
        dtype="float64",
    )
    net.forward(net.backend.asarray(np.zeros((2, 1, 2, 2))))
    t = array_api_strict.asarray(np.zeros((2, 3)))  # the default device
    with pytest.raises(ValueError, match=r"^Network\.backward: targets is on device"):
        net.backward(t)


def test_an_array_on_another_device_of_the_same_library_is_brought_over():
    import array_api_strict

    net = Network(
        [Flatten(), FullyConnected(3)], input_shape=(1, 2, 2), backend="strict", dtype="float64"
    )
    x = array_api_strict.asarray(np.zeros((2, 1, 2, 2)), device=array_api_strict.Device("device1"))
    assert net.predict(x).device == net.backend.default_device


def test_evaluate_takes_a_batch_of_vectors_for_a_vector_input():
    """A network whose input is a vector evaluates an (N, features) batch: two axes are a batch
    (the quarter campaign of b76a358: ``ndim < 3`` refusing it survived)."""
    net = Network([FullyConnected(3)], input_shape=(5,), backend="cpu")
    x = np.random.default_rng(0).standard_normal((6, 5)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    result = net.evaluate(x, y)
    wrong = int(np.sum(np.asarray(net.predict_classes(x)) != y))
    assert result["count"] == 6
    assert result["mistakes"] == wrong
    assert result["error"] == pytest.approx(wrong / 6)
