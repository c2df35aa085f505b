"""A network: a sequence of layers built from an input shape, with forward, backward, the loss,
and parameters and gradients by name (``"conv1.kernel"``, ``"sub2.beta"``, ...)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import array_api_compat
import numpy as np

from anycnn import _checks as checks
from anycnn.backend import Backend, backend_of, get_backend, lookup, resolve_dtype
from anycnn.layers import LAYER_TYPES, BuildContext, Layer, LayerError, Subsampling, get_loss
from anycnn.layers.base import Array
from anycnn.testing import dtype_name


class Network:
    """A sequence of layers (section 2 and 3 of the notes) with a loss.

    Parameters
    ----------
    layers : sequence of Layer
        Unbuilt layers; each is built here for the shape the previous one produces, and every
        shape is checked now, with an error naming the layer.
    input_shape : tuple of int
        One example's shape: ``(C, H, W)`` for maps, ``(D,)`` for vectors.
    loss : str or Loss
        ``"squared_error"`` (eq. 1) or ``"cross_entropy"`` (4.3).
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    backend : str or Backend, optional
        Where the parameters live; the current backend (:func:`anycnn.get_backend`) by default.
    seed : int
        Seeds the parameter initialisation (NumPy's generator on the host).

    Layers without a name are named by kind and position, counting only layers with
    parameters or subsampling (Flatten is not counted): LeNet-5 reads conv1, sub2, conv3, sub4,
    conv5, fc6, fc7.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        input_shape: Sequence[int],
        *,
        loss: Any = "squared_error",
        dtype: str = "float32",
        backend: str | Backend | None = None,
        seed: int = 0,
        name: str = "network",
    ):
        self.backend = (lookup(backend) if backend is not None else get_backend()).require()
        if dtype not in ("float32", "float64"):
            raise ValueError(f"Network: dtype must be 'float32' or 'float64', got {dtype!r}")
        self.dtype_name = dtype
        self.dtype = resolve_dtype(self.backend.xp, dtype)
        self.loss = get_loss(loss)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise TypeError(f"Network: seed must be an int, got {seed!r}")
        self.seed = int(seed)
        self.name = name
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Network: needs at least one layer")
        if not isinstance(input_shape, Sequence) or not all(
            isinstance(s, int | np.integer) and not isinstance(s, bool) for s in input_shape
        ):
            raise TypeError(
                f"Network: input_shape must be a tuple of ints such as (1, 28, 28) or (784,), "
                f"got {input_shape!r}"
            )
        input_shape = tuple(int(s) for s in input_shape)
        if not input_shape or min(input_shape) < 1:
            raise ValueError(f"Network: input_shape must be positive sizes, got {input_shape}")
        self.input_shape = input_shape
        context = BuildContext(self.backend, self.dtype, np.random.default_rng(self.seed))
        shape = input_shape
        position = 0
        taken = set()
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Network: expected Layer objects, got {type(layer).__name__}")
            if sum(other is layer for other in self.layers) > 1:
                raise ValueError(
                    f"Network: the same {type(layer).__name__} object appears twice in the "
                    "layers; a layer holds its own parameters, so create one per position"
                )
            if layer.kind is not None:
                position += 1
                if layer.name is None:
                    layer.name = f"{layer.kind}{position}"
            elif layer.name is None:
                layer.name = f"{type(layer).__name__.lower()}{position}"
            if layer.name in taken:
                raise ValueError(f"Network: two layers are named {layer.name!r}")
            taken.add(layer.name)
            try:
                shape = layer.build(shape, context)
            except LayerError as error:
                previous = "the input" if position <= 1 else "the previous layer"
                raise LayerError(f"{error} (input shape {shape} from {previous})") from None
        self.output_shape = shape
        self._outputs: Array | None = None
        # Note [Deferred up-sampling]: the subsampling layers whose up-sampling the layer below
        # forms in its own backward pass.
        self._defer_up: dict[int, Subsampling] = {
            index: layer
            for index, layer in enumerate(self.layers)
            if index > 0
            and isinstance(layer, Subsampling)
            and self.layers[index - 1].takes_upsampled
        }

    # -- parameters --------------------------------------------------------------------------
    def _slots(self) -> Iterator[tuple[str, Layer, str]]:
        for layer in self.layers:
            for role in layer.params:
                yield f"{layer.name}.{role}", layer, role

    def parameters(self) -> dict[str, Array]:
        """Every parameter by name, in layer order: arrays of the network's backend."""
        return {name: layer.params[role] for name, layer, role in self._slots()}

    def gradients(self) -> dict[str, Array]:
        """The gradients filled by the last :meth:`backward`, by parameter name."""
        return {
            name: layer.grads[role] for name, layer, role in self._slots() if role in layer.grads
        }

    def parameter_layers(self) -> dict[str, Layer]:
        """The layer owning each parameter (per-layer learning rates use this)."""
        return {name: layer for name, layer, _ in self._slots()}

    def set_parameter(self, name: str, value: Array, *, check: bool = True) -> None:
        """Replace a parameter (optimizers and checkpoints call this)."""
        for slot, layer, role in self._slots():
            if slot == name:
                if check:
                    current = layer.params[role]
                    if backend_of(value, op=f"set_parameter({name})") is not self.backend:
                        raise TypeError(
                            f"set_parameter({name}): value is not an array of the network's "
                            f"backend {self.backend.name}"
                        )
                    if tuple(value.shape) != tuple(current.shape):
                        raise ValueError(
                            f"set_parameter({name}): expected shape {tuple(current.shape)}, "
                            f"got {tuple(value.shape)}"
                        )
                    if value.dtype != current.dtype:
                        raise TypeError(
                            f"set_parameter({name}): expected dtype {current.dtype}, "
                            f"got {value.dtype}"
                        )
                    self._check_finite(value, "the value", f"set_parameter({name})")
                layer.params[role] = value
                return
        raise KeyError(f"no parameter {name!r}; parameters: {', '.join(self.parameters())}")

    def num_parameters(self) -> int:
        """Free parameters: kernels outside an input-map selection are not counted (3.1)."""
        return sum(layer.parameter_count() for layer in self.layers)

    # -- computing ---------------------------------------------------------------------------
    def check_input(self, x: Any, where: str = "Network.forward") -> None:
        """Raise a clear error unless x is a batch for this network (backend, shape, dtype,
        device, and no NaN or Inf)."""
        try:
            owner = backend_of(x, op=where)
        except TypeError as error:
            raise TypeError(
                f"{error}; use net.backend.asarray(x) to put data on the network's backend"
            ) from None
        if owner is not self.backend:
            raise TypeError(
                f"{where}: x is a {owner.name} array but the network lives on "
                f"{self.backend.name}; use net.backend.asarray(x)"
            )
        if tuple(x.shape[1:]) != self.input_shape or x.ndim != len(self.input_shape) + 1:
            raise ValueError(
                f"{where}: {self.layers[0].describe()} expects a batch of shape "
                f"(N, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        if x.shape[0] < 1:
            raise ValueError(f"{where}: empty batch (N = 0)")
        if x.dtype != self.dtype:
            raise TypeError(
                f"{where}: x has dtype {dtype_name(x.dtype)} but the network is "
                f"{self.dtype_name}; convert with net.backend.asarray(x, dtype='{self.dtype_name}')"
            )
        if array_api_compat.device(x) != self.backend.default_device:
            raise ValueError(
                f"{where}: x is on {array_api_compat.device(x)} but the network is on "
                f"{self.backend.default_device}"
            )
        self._check_finite(x, "x", where)

    def _check_finite(self, a: Any, what: str, where: str) -> None:
        """Raise a ValueError naming how many entries of ``a`` are NaN or Inf and where the first
        is. One reduction on the device; only the checked path (``check=True``) calls this, never
        the training loop's unchecked steps (train.py checks the host data once instead)."""
        xp = self.backend.xp
        if bool(xp.all(xp.isfinite(a))):
            return
        host = np.asarray(self.backend.to_host(a))
        bad = np.argwhere(~np.isfinite(host))
        first = tuple(int(i) for i in bad[0])
        raise ValueError(
            f"{where}: {what} holds {bad.shape[0]} non-finite value(s) (NaN or Inf) out of "
            f"{host.size}; the first is {host[first]} at index {first}"
        )

    def check_targets(self, t: Any, n: int, where: str = "Network.backward") -> None:
        owner = backend_of(t, op=where)
        if owner is not self.backend:
            raise TypeError(
                f"{where}: targets are a {owner.name} array but the network lives on "
                f"{self.backend.name}"
            )
        expected = (n, *self.output_shape)
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{where}: targets must have shape {expected} to match the outputs of "
                f"{self.layers[-1].describe()}, got {tuple(t.shape)}"
            )
        if t.dtype != self.dtype:
            raise TypeError(
                f"{where}: targets have dtype {dtype_name(t.dtype)}, expected {self.dtype_name}"
            )
        self._check_finite(t, "targets", where)

    def forward(self, x: Array, *, check: bool = True) -> Array:
        """Outputs ``y`` for a batch ``x`` of shape ``(N, *input_shape)``; layers keep what
        backward needs."""
        if check:
            self.check_input(x)
        for layer in self.layers:
            x = layer.forward(x)
        self._outputs = x
        return x

    __call__ = forward

    def loss_value(self, y: Array, t: Array) -> Array:
        """The batch-mean loss as a 0-d backend array (``float()`` it to bring it to the host).

        This is the data term ``E`` only; :meth:`objective` adds the layers' penalties."""
        return self.loss.value(y, t)

    def penalty(self) -> Array:
        """The sum of the layers' penalties ``Omega`` (eq. 11 of the notes), a 0-d backend array.

        A layer may define ``penalty()`` returning a 0-d array of its current parameters; it then
        adds ``dOmega/dparams`` to its own ``grads`` in ``backward``. 0 when no layer has one."""
        total = None
        for layer in self.layers:
            penalty = getattr(layer, "penalty", None)
            if callable(penalty):
                total = penalty() if total is None else total + penalty()
        if total is None:  # a device-side zero: no host-to-device copy inside a training step
            total = self.backend.xp.zeros((), dtype=self.dtype, device=self.backend.default_device)
        return total

    def objective(self, y: Array, t: Array) -> Array:
        """The penalised error ``E~ = E + Omega`` (eq. 11): what :meth:`backward` differentiates."""
        return self.loss.value(y, t) + self.penalty()

    def backward(self, t: Array, *, check: bool = True) -> None:
        """Back-propagate from the outputs of the last forward pass to targets ``t``; fills every
        layer's gradients (the first layer's input gradient is not computed)."""
        if self._outputs is None:
            raise RuntimeError("Network.backward: call forward first")
        if check:
            self.check_targets(t, self._outputs.shape[0])
        dy = self.loss.gradient(self._outputs, t)
        last = len(self.layers) - 1
        for index in range(last, -1, -1):
            deferring = self._defer_up.get(index)
            if deferring is not None:
                dy = deferring.backward(dy, defer_up=True)
            else:
                dy = self.layers[index].backward(dy, need_input_grad=index > 0)

    def compute_gradients(self, x: Array, t: Array, *, check: bool = True) -> Array:
        """Forward, loss and backward for one batch; returns the total error ``E + Omega``
        (:meth:`objective`; the data term alone is :meth:`loss_value`) as a 0-d backend array."""
        if check:
            self.check_input(x, "Network.compute_gradients")
            self.check_targets(t, x.shape[0], "Network.compute_gradients")
        y = self.forward(x, check=False)
        value = self.objective(y, t)
        self.backward(t, check=False)
        return value

    def predict(self, x: Array, *, batch_size: int = 1000) -> Array:
        """Class indices (argmax of the outputs) for a batch, computed in chunks."""
        xp = self.backend.xp
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Network.predict: batch_size must be an int >= 1, got {batch_size!r}")
        self.check_input(x, "Network.predict")
        n = x.shape[0]  # slice stops past the end are not in the Array API (strict rejects them)
        parts = [
            xp.argmax(self.forward(x[i : min(i + batch_size, n), ...], check=False), axis=1)
            for i in range(0, n, batch_size)
        ]
        return parts[0] if len(parts) == 1 else xp.concat(parts)

    # -- description -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able description from which :meth:`from_config` rebuilds the same network."""
        return {
            "name": self.name,
            "input_shape": list(self.input_shape),
            "loss": self.loss.config(),
            "dtype": self.dtype_name,
            "seed": self.seed,
            "layers": [
                {"type": type(layer).__name__, "name": layer.name, **layer.config()}
                for layer in self.layers
            ],
        }

    def extra_state(self) -> dict[str, np.ndarray]:
        """Non-parameter arrays by name (input-map tables), on the host."""
        return {
            f"{layer.name}.{key}": value
            for layer in self.layers
            for key, value in layer.extra_state().items()
        }

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        *,
        extra_state: dict[str, np.ndarray] | None = None,
        backend: str | Backend | None = None,
        dtype: str | None = None,
    ) -> Network:
        """Rebuild a network from :meth:`config` (parameters freshly initialised)."""
        extra_state = extra_state or {}
        layers = []
        for spec in config["layers"]:
            spec = dict(spec)
            kind = spec.pop("type")
            if kind not in LAYER_TYPES:
                raise ValueError(f"unknown layer type {kind!r} in the configuration")
            if kind == "Convolution" and spec.get("selection") == "table":
                key = f"{spec['name']}.table"
                if key not in extra_state:
                    raise ValueError(f"the configuration needs the input-map table {key!r}")
                spec["selection"] = extra_state[key]
            layers.append(LAYER_TYPES[kind](**spec))
        return cls(
            layers,
            config["input_shape"],
            loss=config["loss"],
            dtype=dtype or config["dtype"],
            backend=backend,
            seed=config["seed"],
            name=config.get("name", "network"),
        )

    def summary(self) -> str:
        lines = [
            f"{self.name}: input {self.input_shape}, {self.dtype_name}, "
            f"backend {self.backend.name}, loss {self.loss.name}"
        ]
        for layer in self.layers:
            count = layer.parameter_count()
            lines.append(
                f"  {layer.name:<10} {layer!r:<44} -> {layer.output_shape}  {count} params"
            )
        lines.append(f"  {self.num_parameters()} parameters")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Network {self.name!r}: {len(self.layers)} layers on {self.backend.name}>"


__all__ = ["Network", "checks"]
