"""Recurrences stepped past their first step (issue 22): momentum's velocity, SDLM's running
curvature estimates and scaled steps, and the learning-rate schedules, each over at least three
steps or epochs and compared with its formula computed here on host copies.

On the first step a velocity is still zero, so ``v <- m v + eta g`` cannot tell ``m`` from any
other coefficient; only later steps can.
"""

from __future__ import annotations

import numpy as np
import pytest

from anycnn import layers as L
from anycnn.network import Network
from anycnn.training import optim


def _net(backend, seed=0):
    return Network(
        [L.FullyConnected(4, activation="tanh"), L.FullyConnected(3, activation="identity")],
        (5,),
        loss="cross_entropy",
        dtype="float64",
        backend=backend,
        seed=seed,
    )


def _batches(net, rng, count, n=4):
    b = net.backend
    out = []
    for _ in range(count):
        x = rng.standard_normal((n, *net.input_shape))
        t = np.eye(3)[rng.integers(0, 3, n)]
        out.append((b.asarray(x, dtype="float64"), b.asarray(t, dtype="float64")))
    return out


def _host(net, arrays):
    return {
        k: np.array(net.backend.to_host(v), dtype=np.float64, copy=True) for k, v in arrays.items()
    }


@pytest.mark.parametrize("lr, m", [(0.1, 0.5), (0.05, 0.9)])
def test_momentum_four_steps_follow_the_heavy_ball_recurrence(backend, rng, lr, m):
    """``v_k = m v_{k-1} + eta g_k``, ``p_k = p_{k-1} - v_k``, with a new batch each step and a
    per-layer multiplier."""
    net = _net(backend)
    opt = optim.Momentum(net, lr, momentum=m, layer_rates={"fc1": 0.5})
    eta = {name: lr * (0.5 if name.startswith("fc1") else 1.0) for name in net.parameters()}
    p = _host(net, net.parameters())
    v = {name: np.zeros_like(value) for name, value in p.items()}
    for step, (x, t) in enumerate(_batches(net, rng, 4), start=1):
        net.compute_gradients(x, t)
        g = _host(net, net.gradients())
        opt.step()
        for name in p:
            v[name] = m * v[name] + eta[name] * g[name]
            p[name] = p[name] - v[name]
        got = _host(net, net.parameters())
        for name in p:
            np.testing.assert_allclose(got[name], p[name], rtol=1e-12, atol=1e-14, err_msg=name)
        state = opt.state_dict()
        assert int(state["steps"]) == step
        for name in p:
            np.testing.assert_allclose(state[f"velocity/{name}"], v[name], rtol=1e-12, atol=1e-15)


def test_momentum_velocity_survives_a_change_of_rate(backend, rng):
    """A new rate applies to new gradients only: the old velocity decays by ``m`` untouched."""
    net = _net(backend)
    opt = optim.Momentum(net, optim.Step(0.1, every=1, gamma=0.5), momentum=0.8)
    p = _host(net, net.parameters())
    v = {name: np.zeros_like(value) for name, value in p.items()}
    for epoch, (x, t) in enumerate(_batches(net, rng, 3)):
        opt.start_epoch(epoch)
        assert opt.lr == 0.1 * 0.5**epoch
        net.compute_gradients(x, t)
        g = _host(net, net.gradients())
        opt.step()
        for name in p:
            v[name] = 0.8 * v[name] + opt.lr * g[name]
            p[name] = p[name] - v[name]
    got = _host(net, net.parameters())
    for name in p:
        np.testing.assert_allclose(got[name], p[name], rtol=1e-12, atol=1e-14, err_msg=name)


def test_sdlm_curvature_is_the_pattern_weighted_mean_and_is_re_estimated_each_epoch(backend, rng):
    """``h`` is the mean over patterns of per-batch curvatures (batches of different sizes weigh
    by their size); each epoch with data replaces it, an epoch without keeps the last."""
    net = _net(backend)
    opt = optim.SDLM(net, optim.Step(0.01, every=1, gamma=0.5), mu=0.05)
    data = _batches(net, rng, 2, n=3) + _batches(net, rng, 1, n=1)
    per_batch = [_host(net, optim.diagonal_hessian(net, x, t)) for x, t in data]
    sizes = [3, 3, 1]
    opt.start_epoch(0, data)
    h = _host(net, opt._state["hessian"])
    for name in h:
        mean = sum(n * hb[name] for n, hb in zip(sizes, per_batch, strict=True)) / sum(sizes)
        np.testing.assert_allclose(h[name], mean, rtol=1e-12, atol=1e-300, err_msg=name)
        eta = _host(net, opt.step_sizes())[name]
        np.testing.assert_allclose(eta, 0.01 / (0.05 + mean), rtol=1e-12, err_msg=name)

    # Move the parameters, then epochs 1 (new data: new h, new rate) and 2 (no data: same h).
    for x, t in data:
        net.compute_gradients(x, t)
        opt.step()
    fresh = _batches(net, rng, 1, n=2)
    expected_h = _host(net, optim.diagonal_hessian(net, *fresh[0]))
    opt.start_epoch(1, fresh)
    h1 = _host(net, opt._state["hessian"])
    for name in h1:
        np.testing.assert_allclose(h1[name], expected_h[name], rtol=1e-12, atol=1e-300)
        assert not np.allclose(h1[name], h[name])
        np.testing.assert_allclose(
            _host(net, opt.step_sizes())[name], 0.005 / (0.05 + h1[name]), rtol=1e-12
        )
    opt.start_epoch(2)
    for name, eta in _host(net, opt.step_sizes()).items():
        np.testing.assert_allclose(eta, 0.0025 / (0.05 + h1[name]), rtol=1e-12)
    assert opt.steps == 3


def test_sdlm_with_momentum_four_steps(backend, rng):
    """``v_k = m v_{k-1} + eta o g_k``, ``p_k = p_{k-1} - v_k`` with SDLM's scaled steps."""
    net = _net(backend)
    data = _batches(net, rng, 4)
    opt = optim.SDLM(net, 0.02, mu=0.1, momentum=0.7)
    opt.start_epoch(0, data[:1])
    eta = _host(net, opt.step_sizes())
    p = _host(net, net.parameters())
    v = {name: np.zeros_like(value) for name, value in p.items()}
    for x, t in data:
        net.compute_gradients(x, t)
        g = _host(net, net.gradients())
        opt.step()
        for name in p:
            v[name] = 0.7 * v[name] + eta[name] * g[name]
            p[name] = p[name] - v[name]
    got = _host(net, net.parameters())
    for name in p:
        np.testing.assert_allclose(got[name], p[name], rtol=1e-11, atol=1e-14, err_msg=name)
    state = opt.state_dict()
    assert sorted({key.split("/")[0] for key in state}) == ["hessian", "steps", "velocity"]
    for name in p:
        np.testing.assert_allclose(state[f"velocity/{name}"], v[name], rtol=1e-11, atol=1e-15)


def test_sdlm_without_momentum_three_steps_use_the_same_scaled_rates(backend, rng):
    net = _net(backend)
    data = _batches(net, rng, 3)
    opt = optim.SDLM(net, 0.02, mu=0.1)
    opt.start_epoch(0, data)
    eta = _host(net, opt.step_sizes())
    p = _host(net, net.parameters())
    for x, t in data:
        net.compute_gradients(x, t)
        g = _host(net, net.gradients())
        opt.step()
        for name in p:
            p[name] = p[name] - eta[name] * g[name]
    got = _host(net, net.parameters())
    for name in p:
        np.testing.assert_allclose(got[name], p[name], rtol=1e-12, atol=1e-14, err_msg=name)
    assert "velocity/fc1.weight" not in opt.state_dict()


def test_sdlm_restored_state_rescales_and_continues(rng):
    """After load_state_dict the step sizes come back from the restored curvature."""
    net = _net("numpy")
    data = _batches(net, rng, 2)
    opt = optim.SDLM(net, 0.02, mu=0.1, momentum=0.5)
    opt.start_epoch(0, data)
    for x, t in data:
        net.compute_gradients(x, t)
        opt.step()
    again = optim.SDLM(net, 0.02, mu=0.1, momentum=0.5)
    with pytest.raises(RuntimeError, match="call start_epoch"):
        again.step_sizes()
    again.load_state_dict(opt.state_dict())
    assert again.steps == 2
    for name, eta in _host(net, again.step_sizes()).items():
        np.testing.assert_array_equal(eta, _host(net, opt.step_sizes())[name])


@pytest.mark.parametrize(
    "schedule, formula",
    [
        (optim.Constant(0.3), lambda e: 0.3),
        (optim.Step(0.2, every=3, gamma=0.1), lambda e: 0.2 * 0.1 ** (e // 3)),
        (optim.Step(1.0, every=1, gamma=0.9), lambda e: 0.9**e),
        (
            optim.Piecewise([0.4, 0.2, 0.1], [1, 2, 3], final=0.05),
            lambda e: [0.4, 0.2, 0.2, 0.1, 0.1, 0.1][e] if e < 6 else 0.05,
        ),
        (
            optim.lecun1998(4.0),
            lambda e: (
                4.0 * ([5e-4] * 2 + [2e-4] * 3 + [1e-4] * 3 + [5e-5] * 4)[e]
                if e < 12
                else 4.0 * 1e-5
            ),
        ),
    ],
    ids=["constant", "step3", "step1", "piecewise", "lecun1998x4"],
)
def test_schedules_follow_their_formula_epoch_by_epoch(schedule, formula):
    for epoch in range(16):
        assert schedule.rate(epoch) == pytest.approx(formula(epoch), rel=1e-12), epoch
    again = optim.schedule_from_config(schedule.config())
    assert [again.rate(e) for e in range(16)] == [schedule.rate(e) for e in range(16)]


def test_the_optimizer_takes_each_epochs_rate_from_its_schedule(backend):
    net = _net(backend)
    schedule = optim.Piecewise([0.3, 0.2], [1, 2], final=0.1)
    opt = optim.SGD(net, schedule, layer_rates={"fc2.bias": 2.0})
    assert opt.lr == 0.3  # epoch 0's rate before any start_epoch
    for epoch, rate in enumerate([0.3, 0.2, 0.2, 0.1, 0.1]):
        opt.start_epoch(epoch)
        assert (opt.epoch, opt.lr) == (epoch, rate)
        assert opt.rate("fc2.bias") == 2 * rate and opt.rate("fc1.weight") == rate


def test_sdlm_curvature_through_a_reduce_is_the_mean_over_every_process(rng):
    """``reduce`` (data parallelism) gets this process's pattern-weighted sums and count and
    returns those of all processes: the estimate is their mean, and start_epoch passes it on."""
    net = _net("numpy")
    mine = _batches(net, rng, 1, n=3)
    other = _batches(net, rng, 1, n=1)
    h_mine = _host(net, optim.diagonal_hessian(net, *mine[0]))
    h_other = _host(net, optim.diagonal_hessian(net, *other[0]))
    seen = []

    def reduce(total, count):  # another process held one pattern: `other`
        seen.append((sorted(total), count))
        added = {name: value + net.backend.asarray(h_other[name]) for name, value in total.items()}
        return added, count + 1

    opt = optim.SDLM(net, 0.01, mu=0.05)
    opt.start_epoch(0, mine, reduce=reduce)
    assert seen == [(sorted(net.parameters()), 3)]
    for name, value in _host(net, opt._state["hessian"]).items():
        np.testing.assert_allclose(value, (3 * h_mine[name] + h_other[name]) / 4, rtol=1e-12)
    again = opt.estimate_curvature(mine, reduce=lambda total, count: (total, count))
    for name, value in _host(net, again).items():
        np.testing.assert_allclose(value, h_mine[name], rtol=1e-12)


def test_sdlm_needs_patterns_and_a_curvature_before_stepping(rng):
    net = _net("numpy")
    opt = optim.SDLM(net, 0.01)
    with pytest.raises(ValueError, match="^SDLM: no patterns to estimate the curvature on$"):
        opt.estimate_curvature([])
    one = _batches(net, rng, 1, n=1)  # a single pattern is enough
    assert sorted(opt.estimate_curvature(one)) == sorted(net.parameters())
    fresh = optim.SDLM(net, 0.01)
    net.compute_gradients(*one[0])
    with pytest.raises(RuntimeError, match=r"^SDLM.step: call start_epoch\(epoch, data\) before"):
        fresh.step()
    with pytest.raises(RuntimeError, match=r"^SDLM: call start_epoch\(epoch, data\) first$"):
        fresh.step_sizes()
