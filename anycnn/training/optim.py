"""Update rules: online and mini-batch SGD, momentum, per-layer rates, learning-rate schedules and
LeCun's stochastic diagonal Levenberg-Marquardt (SDLM).

Every optimizer updates the parameters of one :class:`~anycnn.network.Network` from the gradients
its last :meth:`~anycnn.network.Network.backward` left (``network.gradients()``), following eq. (6)
of the notes, ``Delta W = -eta dE/dW``, with a rate ``eta`` per parameter (the end of section 2:
"in practice there is often a learning rate parameter eta_ij specific to each weight"; section
4.2: "at least have a different rate for each layer").

The code is written once against the Array API. Where the backend says its arrays may be written
(``Backend.writable``: NumPy, CuPy, PyTorch), parameters and momentum buffers are updated in
place, which saves one allocation per parameter and step; elsewhere (array-api-strict, JAX) the
new value is handed to ``network.set_parameter(name, value, check=False)``. Both paths perform
the same floating-point operations in the same order, so they give bit-identical results.

Batch size 1 is online (stochastic) learning as LeCun trains, one pattern per update; any larger
batch is mini-batch SGD. The losses report the *mean* per-pattern error over a batch, so a rate
does not depend on the batch size.

Learning-rate schedules map the epoch (0-based) to the global rate: :class:`Constant`,
:class:`Step`, :class:`Piecewise` and :func:`lecun1998`, the schedule of LeCun et al. (1998),
section III.C: 0.0005 for the first two passes, 0.0002 for the next three, 0.0001 for the next
three, 0.00005 for the next four and 0.00001 thereafter.

Note [Diagonal Gauss-Newton curvature]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
SDLM (LeCun et al. 1998, Appendix C; LeCun, Bottou, Orr and Mueller, "Efficient BackProp", 1998,
section 9.1) gives parameter ``w_k`` the step ``eta_k = epsilon / (mu + h_kk)``, where ``h_kk``
estimates the diagonal of the Hessian of the per-pattern error ``E^n``, ``mu`` (0.02 in the
paper) keeps the step bounded where the curvature is small, and ``epsilon`` is the global rate
(the schedule above). ``h_kk`` is estimated once before each pass, on a few hundred patterns
(LeCun: 500), and kept fixed during the pass.

The estimate is the Gauss-Newton approximation propagated backwards "like the gradient, with
squares": second derivatives of the activation (``f''``) are dropped, which keeps every term
non-negative, and so are the off-diagonal terms. With ``u`` a layer's total input, ``y = f(u)``
its output and ``x`` its input, :func:`diagonal_hessian` runs, from the output layer down, the
rule each loss and layer owns (``Loss.curvature(y, t)``, ``Layer.curvature(d2y,
need_input_grad)``; a new layer type gives its own to be trained by SDLM):

* at the outputs, the diagonal second derivative of ``E^n`` with respect to ``y``: 1 for the
  squared error (eq. 1); ``(sum_k t_k) p (1 - p)`` with ``p = softmax(y)`` for the softmax
  cross-entropy (the diagonal of ``diag(p) - p p^T``);
* in every layer, ``d2u = f'(u)^2 o d2y`` (the squared counterpart of eq. 4);
* fully connected (eq. 2): ``h_W = d2u^T (x o x)``, ``h_b = sum d2u``, ``d2x = d2u (W o W)``
  (the squared version of eq. 5 and of ``W^T delta``);
* convolution (3.1): ``h_k = conv_kernel_grad(x o x, d2u)`` (eq. 7 with squared inputs),
  ``h_b = sum_{u,v} d2u``, ``d2x = conv_full(d2u, k o k)`` (3.2.1 with squared kernels);
* subsampling (3.2): ``h_beta = sum_{u,v} d2u o d^2`` with ``d = down(x)``, ``h_b = sum d2u``,
  ``d2x = beta^2 up(d2u)`` for block sums (``up(d2u) / n^4`` for block means, the transposed
  decimation for ``"decimate"``);
* learned combinations (3.3): the effective kernel ``K = alpha k`` is a convolution, so
  ``h_K = conv_kernel_grad(x o x, d2u)``, ``h_k = sum_j alpha_ij^2 h_K[j, i]`` (per input) or
  ``alpha^2 h_K`` (per pair), and ``h_c[j, i] = sum d2u_j (du_j/dc_ij)^2`` with
  ``du_j/dc_ij = alpha_ij (x_i * k_ij - sum_m alpha_mj x_m * k_mj)`` (eqs. 8-10); the penalty
  ``Omega`` of 3.3.1 is not included.

A shared weight appears once per output unit in these layers, so ``sum over connections of
x^2 d2u`` (LeCun's formula for shared weights) is ``sum_units (du/dw)^2 d2u``. The result is the
mean over the patterns of the batch. It equals the exact Gauss-Newton diagonal
``diag(J^T H_E J)`` for a network of one layer; with hidden layers it is LeCun's diagonal
approximation of it (cross terms between paths are dropped). tests/test_optim.py checks both:
the exact diagonal for one layer, and the approximation against squared layer Jacobians computed
by brute force.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from anycnn.network import Network

Array = Any

__all__ = [
    "SGD",
    "SDLM",
    "Constant",
    "Momentum",
    "Optimizer",
    "Piecewise",
    "Schedule",
    "Step",
    "as_schedule",
    "build_optimizer",
    "diagonal_hessian",
    "lecun1998",
    "optimizer_from_config",
    "register_optimizer",
    "schedule_from_config",
]


# --------------------------------------------------------------------------------------------
# Learning-rate schedules
# --------------------------------------------------------------------------------------------
def _check_rate(value: Any, what: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise ValueError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    if positive and value == 0:  # a global rate of 0 trains nothing: surely a mistake
        raise ValueError(
            f"{what} must be > 0 (a zero rate never changes the parameters), got {value!r}"
        )
    return value


class Schedule:
    """A learning-rate schedule: :meth:`rate` gives the global rate of epoch ``epoch`` (0-based).

    Examples
    --------
    A new schedule gives :meth:`rate` and :meth:`config`:

    >>> from anycnn.training.optim import Schedule
    >>> class Halving(Schedule):
    ...     name = "halving"
    ...     def __init__(self, lr): self.lr = lr
    ...     def rate(self, epoch): return self.lr / 2**epoch
    ...     def config(self): return {"name": self.name, "lr": self.lr}
    >>> Halving(0.1), [Halving(0.1).rate(e) for e in range(3)]
    (Halving(lr=0.1), [0.1, 0.05, 0.025])
    """

    name = "schedule"

    def rate(self, epoch: int) -> float:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """The same rate every epoch.

    >>> Constant(0.1).rate(7)
    0.1
    """

    name = "constant"

    def __init__(self, lr: float):
        self.lr = _check_rate(lr, "the learning rate", positive=True)

    def rate(self, epoch: int) -> float:
        return self.lr

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr}


class Step(Schedule):
    """``lr * gamma ** (epoch // every)``: the rate shrinks by ``gamma`` every ``every`` epochs.

    >>> [Step(0.02, every=4, gamma=0.5).rate(epoch) for epoch in (0, 3, 4, 8)]
    [0.02, 0.02, 0.01, 0.005]
    """

    name = "step"

    def __init__(self, lr: float, every: int = 1, gamma: float = 0.5):
        self.lr = _check_rate(lr, "the learning rate", positive=True)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Step: every must be a positive int, got {every!r}")
        self.every = every
        self.gamma = _check_rate(gamma, "Step: gamma")

    def rate(self, epoch: int) -> float:
        return self.lr * self.gamma ** (epoch // self.every)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "lr": self.lr, "every": self.every, "gamma": self.gamma}


class Piecewise(Schedule):
    """``rates[i]`` for ``epochs[i]`` epochs each, in turn, then ``final`` for ever.

    >>> [Piecewise([0.1, 0.01], [1, 2], final=0.001).rate(epoch) for epoch in range(4)]
    [0.1, 0.01, 0.01, 0.001]
    """

    name = "piecewise"

    def __init__(self, rates: Sequence[float], epochs: Sequence[int], final: float):
        if len(rates) != len(epochs):
            raise ValueError(
                f"Piecewise: give one number of epochs per rate, got {len(rates)} rates and "
                f"{len(epochs)} epoch counts"
            )
        self.rates = [_check_rate(r, "Piecewise: a rate") for r in rates]
        self.epochs = []
        for count in epochs:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"Piecewise: epoch counts must be positive ints, got {count!r}")
            self.epochs.append(count)
        self.final = _check_rate(final, "Piecewise: the final rate")

    def rate(self, epoch: int) -> float:
        end = 0
        for value, count in zip(self.rates, self.epochs, strict=True):
            end += count
            if epoch < end:
                return value
        return self.final

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rates": list(self.rates),
            "epochs": list(self.epochs),
            "final": self.final,
        }


#: The global rates of LeCun et al. (1998), section III.C, and how many passes each lasts.
LECUN1998_RATES = (0.0005, 0.0002, 0.0001, 0.00005)
LECUN1998_EPOCHS = (2, 3, 3, 4)
LECUN1998_FINAL = 0.00001


def lecun1998(scale: float = 1.0) -> Piecewise:
    """LeCun et al. (1998)'s schedule of the global rate ``epsilon``, times ``scale``.

    0.0005 for the first two passes, 0.0002 for the next three, 0.0001 for the next three,
    0.00005 for the next four and 0.00001 thereafter (the paper trains LeNet-5 with SDLM for 20
    passes). ``scale`` keeps the shape and moves the level, e.g. ``lecun1998(lr / 0.0005)``
    starts at ``lr``.

    >>> [lecun1998().rate(e) for e in (0, 1, 2, 5, 8, 12)]
    [0.0005, 0.0005, 0.0002, 0.0001, 5e-05, 1e-05]
    """
    scale = _check_rate(scale, "lecun1998: scale", positive=True)

    def scaled(rate: float) -> float:  # 12 digits: 0.0012, not 0.0012000000000000001
        return float(f"{rate * scale:.12g}")

    return Piecewise(
        [scaled(r) for r in LECUN1998_RATES], list(LECUN1998_EPOCHS), scaled(LECUN1998_FINAL)
    )


SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (Constant, Step, Piecewise)}


def schedule_from_config(config: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.config`.

    >>> schedule_from_config({"name": "step", "lr": 0.1, "every": 2, "gamma": 0.5}).rate(2)
    0.05
    """
    options = dict(config)
    name = options.pop("name", None)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**options)


def as_schedule(lr: float | Schedule | Mapping[str, Any]) -> Schedule:
    """A schedule from a number (constant rate), a :class:`Schedule` or its config.

    >>> as_schedule(0.1)
    Constant(lr=0.1)
    """
    if isinstance(lr, Schedule):
        return lr
    if isinstance(lr, Mapping):
        return schedule_from_config(lr)
    return Constant(lr)


# --------------------------------------------------------------------------------------------
# Optimizers
# --------------------------------------------------------------------------------------------
class Optimizer:
    """Base class of the update rules.

    Parameters
    ----------
    network : Network
        The network whose parameters are updated.
    lr : float, Schedule or dict
        The global learning rate, or a schedule of it by epoch (:class:`Constant`, :class:`Step`,
        :func:`lecun1998`, ...).
    layer_rates : dict of str to float, optional
        Multipliers of the global rate by layer name (``{"conv1": 0.5}``) or by parameter name
        (``{"sub2.beta": 0.1}``; a parameter's entry wins over its layer's). Others get 1.

    Use: :meth:`start_epoch` before each pass (SDLM estimates its curvature there), then for each
    batch ``network.compute_gradients(x, t)`` and :meth:`step`. :meth:`state_dict` /
    :meth:`load_state_dict` carry the state (momentum buffers, curvature, the step counter)
    through checkpoints as host arrays.

    Raises
    ------
    ValueError
        A negative or non-finite rate or multiplier, a zero global rate, or a ``layer_rates`` key
        that names no layer or parameter (the message lists them).

    Examples
    --------
    A new update rule overrides ``_update(name, p, g)`` and moves the parameter with
    ``_apply(name, p, delta)`` (``p <- p - delta``, in place where the backend allows it);
    here, sign descent:

    >>> import numpy as np
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")
    >>> x = net.backend.asarray(np.linspace(-1, 1, 8).reshape(2, 1, 2, 2), dtype="float64")
    >>> t = net.backend.asarray(np.eye(2), dtype="float64")
    >>> from anycnn.training.optim import Optimizer
    >>> class SignDescent(Optimizer):
    ...     name = "sign-descent"
    ...     def _update(self, name, p, g):
    ...         self._apply(name, p, self.rate(name) * self._xp.sign(g))
    >>> opt = SignDescent(net, 0.1, layer_rates={"fc1.bias": 0.5})
    >>> opt.rate("fc1.weight"), opt.rate("fc1.bias")
    (0.1, 0.05)
    >>> before = net.state_dict()["fc1.bias"]
    >>> loss = net.compute_gradients(x, t)
    >>> opt.step()
    >>> np.abs(net.state_dict()["fc1.bias"] - before).tolist()    # each bias moved by 0.05
    [0.05, 0.05]
    """

    name = "optimizer"
    #: names of the per-parameter state arrays (each shaped like its parameter)
    slots: tuple[str, ...] = ()
    #: The global rate used when none is given (the constructor, :func:`build_optimizer` and
    #: ``anycnn train`` without ``--lr``); for SDLM the first value of :attr:`default_schedule`.
    default_lr: float = 0.05
    #: The schedule used when no rate is given: ``"constant"``, or ``"lecun"``
    #: (:func:`lecun1998` scaled to start at :attr:`default_lr`).
    default_schedule: str = "constant"
    #: Whether the constructor takes ``momentum=`` (:meth:`build` passes a given one through;
    #: a class without it refuses a non-zero one).
    takes_momentum: bool = False

    def __init__(
        self,
        network: Network,
        lr: float | Schedule | Mapping[str, Any] | None = None,
        *,
        layer_rates: Mapping[str, float] | None = None,
    ):
        if not isinstance(network, Network):
            raise TypeError(
                f"{type(self).__name__}: expected a Network, got {type(network).__name__}"
            )
        self.network = network
        self.schedule = self.default_rate() if lr is None else as_schedule(lr)
        self.layer_rates = dict(layer_rates or {})
        self.multipliers = self._multipliers(self.layer_rates)
        self.steps = 0
        self.epoch = 0
        self.lr = self.schedule.rate(0)
        self._xp = network.backend.xp
        self._in_place = network.backend.writable  # Note [Backend capabilities]
        # Note [Fused updates] in anycnn.ops: a backend's one-kernel updates, where it has them.
        self._fused = network.backend.ops.updates if self._in_place else {}
        self._state: dict[str, dict[str, Array]] = {slot: {} for slot in self.slots}

    @classmethod
    def default_rate(cls, lr: float | None = None) -> Schedule:
        """The default schedule of this optimizer, starting at ``lr`` (default
        :attr:`default_lr`)."""
        lr = cls.default_lr if lr is None else lr
        if cls.default_schedule == "lecun":
            return lecun1998(lr / LECUN1998_RATES[0])
        return Constant(lr)

    @classmethod
    def build(
        cls,
        network: Network,
        *,
        lr: float | Schedule | None = None,
        momentum: float | None = None,
        layer_rates: Mapping[str, float] | None = None,
        **options: Any,
    ) -> Optimizer:
        """This optimizer from the generic options of :func:`build_optimizer` (``momentum``
        None: the class's default; a class without momentum refuses a non-zero one)."""
        if cls.takes_momentum:
            if momentum is not None:
                options["momentum"] = momentum
        elif momentum:
            raise ValueError(f"the {cls.name} optimizer has no momentum; use --optimizer momentum")
        return cls(network, lr, layer_rates=layer_rates, **options)

    def _multipliers(self, layer_rates: Mapping[str, float]) -> dict[str, float]:
        owners = self.network.parameter_layers()
        layer_names = {layer.name for layer in self.network.layers}
        for key, value in layer_rates.items():
            if key not in layer_names and key not in owners:
                with_params = sorted({str(layer.name) for layer in owners.values()})
                raise ValueError(
                    f"layer_rates: {key!r} is neither a layer nor a parameter of "
                    f"{self.network.name}; layers with parameters: {', '.join(with_params)}"
                )
            _check_rate(value, f"layer_rates[{key!r}]")
        return {
            name: float(layer_rates.get(name, layer_rates.get(str(layer.name), 1.0)))
            for name, layer in owners.items()
        }

    # -- the loop -----------------------------------------------------------------------------
    def start_epoch(self, epoch: int, data: Iterable[tuple[Array, Array]] | None = None) -> None:
        """Prepare pass ``epoch`` (0-based): take its rate from the schedule.

        ``data`` (batches ``(x, t)`` of the network's backend) is used by SDLM only."""
        self.epoch = int(epoch)
        self.lr = self.schedule.rate(self.epoch)

    def rate(self, name: str) -> float:
        """The current learning rate of parameter ``name``: global rate times its multiplier."""
        return self.lr * self.multipliers[name]

    def step(self) -> None:
        """Update every parameter from the gradients of the last backward pass."""
        params = self.network.parameters()
        grads = self.network.gradients()
        for name, p in params.items():
            g = grads.get(name)
            if g is None:
                raise RuntimeError(
                    f"{type(self).__name__}.step: no gradient for {name!r}; call "
                    "network.compute_gradients(x, t) before step()"
                )
            self._update(name, p, g)
        self.steps += 1

    def _update(self, name: str, p: Array, g: Array) -> None:
        raise NotImplementedError

    def _apply(self, name: str, p: Array, delta: Array) -> None:
        """``p <- p - delta``, in place where the namespace allows it."""
        if self._in_place:
            p -= delta
        else:
            self.network.set_parameter(name, p - delta, check=False)

    def _buffer(self, slot: str, name: str, like: Array) -> Array:
        buffers = self._state[slot]
        if name not in buffers:
            buffers[name] = self._xp.zeros_like(like)
        return buffers[name]

    # -- state --------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able settings; :func:`optimizer_from_config` rebuilds the optimizer."""
        return {"name": self.name, "lr": self.schedule.config(), "layer_rates": self.layer_rates}

    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as host arrays: ``steps`` and ``<slot>/<parameter>`` (copies)."""
        backend = self.network.backend
        state: dict[str, np.ndarray] = {"steps": np.asarray(self.steps, dtype=np.int64)}
        for slot, buffers in self._state.items():
            for name, value in buffers.items():
                state[f"{slot}/{name}"] = np.array(backend.to_host(value), copy=True)
        return state

    def expected_state(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Every key :meth:`load_state_dict` accepts, with its shape and dtype name."""
        shapes: dict[str, tuple[tuple[int, ...], str]] = {"steps": ((), "int64")}
        for slot in self.slots:
            for name, p in self.network.parameters().items():
                shapes[f"{slot}/{name}"] = (tuple(p.shape), self.network.dtype_name)
        return shapes

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; everything is checked before anything is assigned.

        Raises
        ------
        ValueError
            An unknown key, a missing ``steps``, or an array of the wrong shape or dtype.
        """
        expected = self.expected_state()
        if "steps" not in state:
            raise ValueError(f"{type(self).__name__}.load_state_dict: 'steps' is missing")
        for key, value in state.items():
            if key not in expected:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: unexpected state {key!r} "
                    f"(a {self.name} optimizer keeps: steps"
                    + "".join(f", {slot}/<parameter>" for slot in self.slots)
                    + ")"
                )
            shape, dtype = expected[key]
            array = np.asarray(value)
            if array.shape != shape or array.dtype != np.dtype(dtype):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: {key!r} must be {dtype} of shape "
                    f"{shape}, got {array.dtype} of shape {array.shape}"
                )
        backend = self.network.backend
        self.steps = int(state["steps"])
        self._state = {slot: {} for slot in self.slots}
        for key, value in state.items():
            if key == "steps":
                continue
            slot, name = key.split("/", 1)
            self._state[slot][name] = backend.asarray(
                np.array(value),
                dtype=self.network.dtype_name,  # np.array copies
            )
        self._restored()

    def _restored(self) -> None:
        """Hook after :meth:`load_state_dict`."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} lr={self.schedule!r} on {self.network.name}>"


class SGD(Optimizer):
    """Stochastic gradient descent, eq. (6): ``p <- p - eta dE/dp``.

    Online with batches of one pattern (LeCun), mini-batch otherwise. ``eta`` is the global rate
    of the epoch times the parameter's multiplier (``layer_rates``).

    >>> import numpy as np, anycnn
    >>> net = anycnn.models.dlt(dtype="float64")
    >>> x = net.backend.asarray(np.ones((2, 1, 28, 28)), dtype="float64")
    >>> t = net.backend.asarray(np.eye(10)[[1, 2]], dtype="float64")
    >>> opt = SGD(net, 0.5)
    >>> loss = net.compute_gradients(x, t)
    >>> opt.step()
    >>> opt.steps
    1
    """

    name = "sgd"
    default_lr = 0.05

    def _update(self, name: str, p: Array, g: Array) -> None:
        fused = self._fused.get("sgd_update_")
        if fused is not None:  # the same update in one kernel (Note [Fused updates])
            fused(p, g, self.rate(name))
            return
        self._apply(name, p, self.rate(name) * g)


class Momentum(Optimizer):
    """SGD with (heavy-ball) momentum: ``v <- m v + eta g``, ``p <- p - v``.

    ``m = 0`` is plain SGD. The velocity ``v`` starts at zero and is kept per parameter; a
    change of rate (schedule) applies to new gradients only.

    >>> import anycnn
    >>> opt = Momentum(anycnn.models.dlt(), 0.02, momentum=0.9)
    >>> opt.config()["momentum"], opt.slots
    (0.9, ('velocity',))
    """

    name = "momentum"
    slots = ("velocity",)
    default_lr = 0.02
    takes_momentum = True

    def __init__(
        self,
        network: Network,
        lr: float | Schedule | Mapping[str, Any] | None = None,
        *,
        momentum: float = 0.9,
        layer_rates: Mapping[str, float] | None = None,
    ):
        super().__init__(network, lr, layer_rates=layer_rates)
        momentum = _check_rate(momentum, "the momentum")
        if momentum >= 1:
            raise ValueError(f"the momentum must be in [0, 1), got {momentum!r}")
        self.momentum = momentum

    def _update(self, name: str, p: Array, g: Array) -> None:
        v = self._buffer("velocity", name, p)
        fused = self._fused.get("momentum_update_")
        if fused is not None:  # the same update in one kernel (Note [Fused updates])
            fused(p, g, v, self.rate(name), self.momentum)
            return
        if self._in_place:
            v *= self.momentum
            v += self.rate(name) * g
        else:
            v = v * self.momentum + self.rate(name) * g
            self._state["velocity"][name] = v
        self._apply(name, p, v)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "momentum": self.momentum}


class SDLM(Optimizer):
    """LeCun's stochastic diagonal Levenberg-Marquardt (1998, Appendix C).

    Each parameter ``w_k`` moves by ``-eta_k dE/dw_k`` with ``eta_k = epsilon / (mu + h_kk)``:
    ``epsilon`` is the global rate (by default :func:`lecun1998` scaled to start at
    :attr:`default_lr`, 0.003) times the parameter's multiplier, and ``h_kk`` the diagonal
    Gauss-Newton curvature estimated by :func:`diagonal_hessian` before each pass, on the
    batches given to :meth:`start_epoch` (``Note [Diagonal Gauss-Newton curvature]``). ``mu``
    (0.02 in the paper) bounds the step by ``epsilon / mu``.

    Parameters
    ----------
    network : Network
    lr : float, Schedule or dict
        ``epsilon``; by default :func:`lecun1998` scaled to start at :attr:`default_lr` (0.003).
    mu : float
        The damping, > 0.
    samples : int
        How many patterns the training loop draws to estimate ``h`` before each pass (LeCun:
        500); :meth:`start_epoch` averages over whatever batches it is given.
    momentum : float
        Optional momentum on top of the scaled steps (0 in the paper).
    layer_rates : dict, optional
        Multipliers of ``epsilon`` by layer or parameter.

    Examples
    --------
    The curvature is estimated on the batches given to :meth:`start_epoch`; every step size is
    then at most ``epsilon / mu``:

    >>> import numpy as np
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")
    >>> x = net.backend.asarray(np.linspace(-1, 1, 8).reshape(2, 1, 2, 2), dtype="float64")
    >>> t = net.backend.asarray(np.eye(2), dtype="float64")
    >>> from anycnn.training.optim import SDLM
    >>> opt = SDLM(net, 0.01, mu=0.02)
    >>> opt.start_epoch(0, [(x, t)])
    >>> xp = net.backend.xp
    >>> all(float(xp.max(eta)) <= 0.01 / 0.02 for eta in opt.step_sizes().values())
    True
    >>> loss = net.compute_gradients(x, t)
    >>> opt.step()
    >>> opt.steps, opt.config()["mu"]
    (1, 0.02)
    """

    name = "sdlm"
    slots: tuple[str, ...] = ("hessian", "velocity")
    default_lr = 0.003
    default_schedule = "lecun"
    takes_momentum = True

    def __init__(
        self,
        network: Network,
        lr: float | Schedule | Mapping[str, Any] | None = None,
        *,
        mu: float = 0.02,
        samples: int = 500,
        momentum: float = 0.0,
        layer_rates: Mapping[str, float] | None = None,
    ):
        super().__init__(network, lr, layer_rates=layer_rates)
        mu = _check_rate(mu, "SDLM: mu")
        if mu <= 0:
            raise ValueError(f"SDLM: mu must be > 0 (it bounds the step by epsilon / mu), got {mu}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"SDLM: samples must be a positive int, got {samples!r}")
        momentum = _check_rate(momentum, "SDLM: momentum")
        if momentum >= 1:
            raise ValueError(f"SDLM: momentum must be in [0, 1), got {momentum!r}")
        self.mu, self.samples, self.momentum = mu, samples, momentum
        self.slots = ("hessian", "velocity") if momentum > 0 else ("hessian",)
        self._state = {slot: {} for slot in self.slots}
        self._scale: dict[str, Array] = {}

    def estimate_curvature(
        self,
        data: Iterable[tuple[Array, Array]],
        *,
        reduce: Callable[[dict[str, Array], int], tuple[dict[str, Array], int]] | None = None,
    ) -> dict[str, Array]:
        """Mean diagonal Gauss-Newton curvature over the patterns of ``data``, stored as ``h``.

        ``reduce`` (data parallelism:
        :meth:`anycnn.training.distributed.GradientAverager.reduce_curvature`) turns this
        process's pattern-weighted sums and count into the sums and count over all processes
        before the division."""
        total: dict[str, Array] = {}
        count = 0
        for x, t in data:
            n = int(x.shape[0])
            h = diagonal_hessian(self.network, x, t)
            for name, value in h.items():
                weighted = value * float(n)
                total[name] = weighted if name not in total else total[name] + weighted
            count += n
        if reduce is not None:
            total, count = reduce(total, count)
        if count == 0:
            raise ValueError("SDLM: no patterns to estimate the curvature on")
        self._state["hessian"] = {name: value * (1.0 / count) for name, value in total.items()}
        return self._state["hessian"]

    def start_epoch(
        self,
        epoch: int,
        data: Iterable[tuple[Array, Array]] | None = None,
        *,
        reduce: Callable[[dict[str, Array], int], tuple[dict[str, Array], int]] | None = None,
    ) -> None:
        """Take the epoch's ``epsilon`` and, with ``data``, re-estimate ``h`` before the pass.

        Without ``data`` the last estimate is kept (it must exist). ``reduce``: see
        :meth:`estimate_curvature`."""
        super().start_epoch(epoch)
        if data is not None:
            self.estimate_curvature(data, reduce=reduce)
        elif not self._state["hessian"]:
            raise ValueError(
                "SDLM.start_epoch: give data (batches (x, t)) to estimate the curvature on"
            )
        self._rescale()

    def _rescale(self) -> None:
        hessian = self._state["hessian"]
        self._scale = {
            name: (1.0 / (self.mu + hessian[name])) * self.rate(name)
            for name in self.network.parameters()
        }

    def step_sizes(self) -> dict[str, Array]:
        """The current per-parameter steps ``eta_k = epsilon_k / (mu + h_kk)`` (backend arrays)."""
        if not self._scale:
            raise RuntimeError("SDLM: call start_epoch(epoch, data) first")
        return dict(self._scale)

    def _restored(self) -> None:
        if self._state["hessian"]:
            self._rescale()

    def _update(self, name: str, p: Array, g: Array) -> None:
        scale = self._scale.get(name)
        if scale is None:
            raise RuntimeError("SDLM.step: call start_epoch(epoch, data) before the first step")
        if self.momentum == 0:
            self._apply(name, p, scale * g)
            return
        v = self._buffer("velocity", name, p)
        if self._in_place:
            v *= self.momentum
            v += scale * g
        else:
            v = v * self.momentum + scale * g
            self._state["velocity"][name] = v
        self._apply(name, p, v)

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "mu": self.mu,
            "samples": self.samples,
            "momentum": self.momentum,
        }


#: The optimizers by name; :func:`register_optimizer` adds one (``anycnn train --optimizer``,
#: :func:`build_optimizer` and :func:`optimizer_from_config` look names up here).
OPTIMIZERS: dict[str, type[Optimizer]] = {}


def register_optimizer(cls: type[Optimizer]) -> type[Optimizer]:
    """Register an :class:`Optimizer` subclass under its ``name`` (usable as a decorator).

    Raises :class:`ValueError` for a name already taken by another class.

    Examples
    --------
    >>> import anycnn
    >>> from anycnn.training.optim import OPTIMIZERS, SGD, build_optimizer, register_optimizer
    >>> @register_optimizer
    ... class HalfSGD(SGD):
    ...     name = "half-sgd"
    ...     def _update(self, name, p, g):
    ...         self._apply(name, p, 0.5 * self.rate(name) * g)
    >>> net = anycnn.Network([anycnn.Flatten(), anycnn.FullyConnected(2)], input_shape=(1, 2, 2))
    >>> type(build_optimizer("half-sgd", net, lr=0.1)).__name__
    'HalfSGD'
    >>> del OPTIMIZERS["half-sgd"]               # leave the registry as it was
    """
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise TypeError(f"register_optimizer: expected an Optimizer subclass, got {cls!r}")
    key = str(cls.name).strip().lower()
    if OPTIMIZERS.get(key, cls) is not cls:
        raise ValueError(f"register_optimizer: the name {key!r} is taken by {OPTIMIZERS[key]!r}")
    OPTIMIZERS[key] = cls
    return cls


for _cls in (SGD, Momentum, SDLM):
    register_optimizer(_cls)


def optimizer_from_config(network: Network, config: Mapping[str, Any]) -> Optimizer:
    """Rebuild an optimizer for ``network`` from :meth:`Optimizer.config`.

    >>> import anycnn
    >>> net = anycnn.models.dlt()
    >>> optimizer_from_config(net, SGD(net, 0.5).config()).rate("conv1.kernel")
    0.5
    """
    options = dict(config)
    name = options.pop("name", None)
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    options["lr"] = schedule_from_config(options["lr"])
    return OPTIMIZERS[name](network, **options)


def build_optimizer(
    name: str,
    network: Network,
    *,
    lr: float | Schedule | None = None,
    momentum: float | None = None,
    layer_rates: Mapping[str, float] | None = None,
    **options: Any,
) -> Optimizer:
    """An optimizer by name from :data:`OPTIMIZERS` (``"sgd"``, ``"momentum"``, ``"sdlm"``...).

    ``lr`` defaults to the class's :meth:`Optimizer.default_rate` (SGD 0.05, momentum 0.02,
    SDLM :func:`lecun1998` from 0.003); ``momentum`` to the class's default (0.9 for
    ``"momentum"``, 0 for ``"sdlm"``; refused by ``"sgd"``); other options go to the class
    (``mu``, ``samples``).

    >>> import anycnn
    >>> build_optimizer("momentum", anycnn.models.dlt(), lr=0.02).config()["momentum"]
    0.9
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key].build(
        network, lr=lr, momentum=momentum, layer_rates=layer_rates, **options
    )


# --------------------------------------------------------------------------------------------
# The diagonal Gauss-Newton curvature (Note [Diagonal Gauss-Newton curvature])
# --------------------------------------------------------------------------------------------
def diagonal_hessian(
    network: Network, x: Array, t: Array, *, check: bool = True
) -> dict[str, Array]:
    """LeCun's diagonal Gauss-Newton estimate of ``d^2 E^n / dw_k^2``, averaged over a batch.

    Runs a forward pass, then a second backward pass that mirrors back-propagation with squared
    slopes, weights and kernels (``Note [Diagonal Gauss-Newton curvature]`` in this module, after
    LeCun et al. 1998, Appendix C, and "Efficient BackProp", section 9). Every entry is >= 0.

    Parameters
    ----------
    network : Network
    x, t : arrays of the network's backend
        A batch ``(N, *input_shape)`` and its targets ``(N, classes)``.

    Returns
    -------
    dict of str to array
        By parameter name, in the network's order: the mean over the ``N`` patterns of the
        per-pattern curvature, shaped like the parameter.

    Raises
    ------
    NotImplementedError
        A layer or loss without a curvature rule: each owns its rule, as the method
        ``Layer.curvature(d2y, need_input_grad) -> (d2x, {role: h})`` and
        ``Loss.curvature(y, t) -> d2y`` (:class:`anycnn.layers.Layer`, :class:`anycnn.layers.Loss`).

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn import Flatten, FullyConnected, Network
    >>> net = Network([Flatten(), FullyConnected(2)], input_shape=(1, 2, 2), dtype="float64")
    >>> x = net.backend.asarray(np.linspace(-1, 1, 8).reshape(2, 1, 2, 2), dtype="float64")
    >>> t = net.backend.asarray(np.eye(2), dtype="float64")
    >>> from anycnn.training.optim import diagonal_hessian
    >>> h = diagonal_hessian(net, x, t)
    >>> {name: tuple(value.shape) for name, value in h.items()}
    {'fc1.weight': (2, 4), 'fc1.bias': (2,)}
    >>> all(bool(net.backend.xp.all(value >= 0)) for value in h.values())
    True
    """
    if check:
        network.check_input(x, "diagonal_hessian")
        network.check_targets(t, x.shape[0], "diagonal_hessian")
    y = network.forward(x, check=False)
    d2 = network.loss.curvature(y, t)
    found: dict[str, Array] = {}
    scale = 1.0 / float(x.shape[0])
    for index in range(len(network.layers) - 1, -1, -1):
        layer = network.layers[index]
        d2, h = layer.curvature(d2, index > 0)
        for role, value in h.items():
            found[f"{layer.name}.{role}"] = value * scale
    return {name: found[name] for name in network.parameters()}
