"""The float64 twin of a float32 network's gradient check (Note [Float32 gradient checks]) is
the same model: a convolution's input-map table travels with it (issue 22: the quarter
campaign of main 15fdaa2 found the twin built without the network's extra state unnoticed)."""

from __future__ import annotations

import numpy as np

from anycnn import Convolution, Flatten, FullyConnected, Network, gradcheck


def test_a_float32_network_with_an_input_map_table_is_checked_on_its_float64_twin():
    table = np.array([[True, False, True], [False, True, True]])
    net = Network(
        [Convolution(2, 3, selection=table, activation="tanh"), Flatten(), FullyConnected(2)],
        input_shape=(3, 5, 5),
        dtype="float32",
        backend="cpu",
    )
    rng = np.random.default_rng(0)
    x = net.backend.asarray(rng.random((2, 3, 5, 5)), dtype="float32")
    t = net.backend.asarray(rng.random((2, 2)), dtype="float32")
    report = gradcheck(net, x, t, max_entries=4)
    assert report.passed, report
    assert [check.name for check in report.checks] == list(net.parameters())
