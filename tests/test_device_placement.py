"""Every array a training step makes stays on the network's device (issue 22).

array-api-strict has devices besides its default one and refuses to mix them, so a network on
``strict:device1`` catches any array that an op, a layer, the curvature of SDLM or an optimizer
makes without ``device=`` (it would land on the default device): a defect that a CPU-only run
with one device never shows, and that a GPU run would. The numbers must be the default device's,
bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import layers as L
from anycnn.backend import lookup
from anycnn.network import Network
from anycnn.training import optim


def _net(backend, kernels):
    return Network(
        [
            L.Convolution(3, 3, selection="random", inputs_per_map=1, padding=(1, 0), seed=2,
                          activation="tanh"),
            L.Subsampling(2, "sum", activation="tanh", remainder="pad"),
            L.LearnedCombination(2, 2, lam=0.01, kernels=kernels, activation="sigmoid"),
            L.Subsampling(2, "mean", trainable=False, remainder="drop"),
            L.Flatten(),
            L.FullyConnected(3, activation="identity"),
        ],
        (2, 9, 8),
        loss="cross_entropy",
        dtype="float64",
        backend=backend,
        seed=5,
    )  # fmt: skip


def _host(backend, arrays):
    return {k: np.array(backend.to_host(v), copy=True) for k, v in arrays.items()}


@pytest.mark.parametrize(
    "make",
    [
        lambda net: optim.SGD(net, 0.1),
        lambda net: optim.Momentum(net, 0.1, momentum=0.5),
        lambda net: optim.SDLM(net, 0.01, mu=0.05, momentum=0.3),
    ],
    ids=["sgd", "momentum", "sdlm"],
)
@pytest.mark.parametrize("kernels", ["per_input", "per_pair"])
def test_a_training_step_on_another_device_stays_there(make, kernels):
    import array_api_strict as strict

    rng = np.random.default_rng(3)
    x_host = rng.standard_normal((4, 2, 9, 8))
    t_host = np.eye(3)[[0, 2, 1, 1]]
    results = {}
    for name in ("strict", "strict:device1"):
        backend = lookup(name)
        device = backend.default_device
        net = _net(backend, kernels)
        x = backend.asarray(x_host, dtype="float64")
        t = backend.asarray(t_host, dtype="float64")
        opt = make(net)
        opt.start_epoch(0, [(x, t)])
        h = optim.diagonal_hessian(net, x, t)
        assert all(value.device == device for value in h.values()), name
        for _ in range(3):
            loss = net.compute_gradients(x, t)
            assert loss.device == device
            opt.step()
        y = net.forward(x)
        assert y.device == device
        for group in (net.parameters(), net.gradients()):
            assert all(value.device == device for value in group.values()), name
        state = opt.state_dict()  # host copies: the optimizer's buffers came over from device
        results[name] = (
            float(loss),
            _host(backend, net.parameters()),
            _host(backend, h),
            {k: np.array(v, copy=True) for k, v in state.items()},
        )
    assert str(lookup("strict:device1").default_device) == str(strict.Device("device1"))
    base, other = results["strict"], results["strict:device1"]
    assert base[0] == other[0]
    for a, b in zip(base[1:], other[1:], strict=True):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
