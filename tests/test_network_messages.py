"""Promises of :class:`anycnn.Network` that the quarter campaign of main 15fdaa2 found open
(issue 22): the input shape's type check, which layer a build error blames, one-of-c targets
whose rows use different low values, the prefix of the label-range error, the warning of a
replaced preprocessing, the default name of a configuration without one, and preprocessing of
inputs too large for the network's dtype without floating-point warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from anycnn import Flatten, FullyConnected, Network, Subsampling
from anycnn.layers import LayerError
from anycnn.training import loop as train


def _net(**options):
    return Network(
        [Subsampling(2, "mean", name="sub"), Flatten(), FullyConnected(3, name="fc")],
        input_shape=(1, 4, 4),
        dtype="float64",
        **options,
    )


def test_input_shape_of_floats_is_a_type_error():
    with pytest.raises(TypeError, match="input_shape must be a tuple of ints"):
        Network([FullyConnected(3)], input_shape=(4.0,))


def test_a_build_error_names_the_input_or_the_previous_layer():
    with pytest.raises(LayerError, match=r"from the input\)$"):
        Network([Subsampling(3, "mean")], input_shape=(1, 4, 4))
    with pytest.raises(LayerError, match=r"from the previous layer\)$"):
        Network([Subsampling(2, "mean"), Subsampling(3, "mean")], input_shape=(1, 4, 4))


def test_one_of_c_rows_may_use_their_own_low_value():
    net = _net()
    x = np.arange(32.0).reshape(2, 1, 4, 4)
    targets = np.array([[2.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # each row: one high, rest low
    result = net.evaluate(x, targets)
    assert result["count"] == 2
    assert result == net.evaluate(x, np.array([0, 0]))


def test_label_range_error_starts_with_the_method():
    net = _net()
    with pytest.raises(ValueError, match=r"^Network\.evaluate: label 3 at index 1 is outside"):
        net.evaluate(np.zeros((2, 1, 4, 4)), np.array([0, 3]))


def test_fit_names_itself_when_x_is_not_an_array():
    net = _net()
    net.preprocessing = train.Preprocessing("none", (1, 4, 4))
    with pytest.raises(TypeError, match=r"^Network\.fit: x must be an array"):
        net.fit(object(), np.array([0]), epochs=1)


def test_replacing_the_recorded_preprocessing_warns_with_its_kind():
    net = _net()
    x = np.arange(32.0).reshape(2, 1, 4, 4)
    y = np.array([0, 1])
    net.fit(x, y, epochs=1, batch_size=2, preprocessing="normalize")
    new = train.Preprocessing("none", (1, 4, 4))
    with pytest.warns(UserWarning) as caught:
        net.fit(x, y, epochs=1, batch_size=2, preprocessing=new)
    message = str(caught[0].message)
    assert message.startswith("Network.fit: preprocessing=none replaces ")
    assert message.endswith(
        "predict and evaluate will apply the new one. Leave preprocessing=None to keep it"
    )


def test_from_config_without_a_name_is_called_network():
    config = _net(name="other").config()
    del config["name"]
    assert Network.from_config(config).name == "network"


def test_preprocessing_values_beyond_float32_give_no_floating_point_warning():
    net = Network(
        [Subsampling(2, "mean"), Flatten(), FullyConnected(3)],
        input_shape=(1, 4, 4),
        dtype="float32",
    )
    net.preprocessing = train.Preprocessing("none", (1, 4, 4))
    x = np.full((1, 1, 4, 4), 1e300)  # finite on the host, Inf once cast to float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = net.predict(x)
    assert out.shape == (1, 3)


def test_an_input_on_another_device_is_named_by_the_method():
    xs = pytest.importorskip("array_api_strict")
    net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), backend="strict")
    x = xs.asarray(np.zeros((1, 1, 2, 2), dtype=np.float32), device=xs.Device("device1"))
    with pytest.raises(ValueError, match=r"^Network\.forward: x is on device"):
        net.forward(x)
