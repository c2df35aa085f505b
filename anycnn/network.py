"""A network: a sequence of layers built from an input shape, with forward, backward, the loss,
and parameters and gradients by name (``"conv1.kernel"``, ``"sub2.beta"``, ...).

Besides the notes' step (``forward``, ``backward``, ``compute_gradients``), a network has the
API users of Keras and PyTorch expect: :meth:`Network.fit` / :meth:`Network.evaluate` /
:meth:`Network.predict` / :meth:`Network.predict_classes` on arrays, :meth:`Network.save` and
:func:`anycnn.load`, :meth:`Network.state_dict`, :meth:`Network.to` and
:func:`anycnn.to_torch`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import array_api_compat
import numpy as np

from anycnn.backend import Backend, backend_of, get_backend, lookup, resolve_dtype
from anycnn.layers import LAYER_TYPES, BuildContext, Layer, LayerError, get_loss
from anycnn.layers.base import Array
from anycnn.testing import dtype_name


def check_label_range(labels: np.ndarray, classes: int, prefix: str, owner: str) -> None:
    """Raise ValueError naming the first label outside ``[0, classes)``: ``"<prefix>label 12 at
    index 3 is outside [0, 10) for <owner> with 10 outputs"`` (:meth:`Network.fit`,
    :meth:`Network.evaluate` and :func:`anycnn.training.loop.evaluate` share it)."""
    bad = np.flatnonzero((labels < 0) | (labels >= classes))
    if bad.size:
        first = int(bad[0])
        raise ValueError(
            f"{prefix}label {int(labels[first])} at index {first} is outside [0, {classes}) "
            f"for {owner} with {classes} outputs"
        )


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

    Raises
    ------
    LayerError
        A layer that cannot take the shape the previous one produces (the message names both).
    ValueError, TypeError
        A bad ``input_shape``, ``dtype``, ``seed`` or layer list.

    Warns
    -----
    UserWarning
        A sigmoid or tanh output layer under the cross-entropy loss (4.3: its softmax wants
        linear outputs).

    Examples
    --------
    The network of the notes' section 3 on the current backend (NumPy or array-api-strict in
    the doctests), a forward pass and the loss gradient:

    >>> import numpy as np, anycnn
    >>> from anycnn import Convolution, Subsampling, Flatten, FullyConnected, Network
    >>> net = Network([Convolution(2, 3, activation="tanh"), Subsampling(2), Flatten(),
    ...                FullyConnected(3, activation="identity")],
    ...               input_shape=(1, 8, 8), loss="cross_entropy", dtype="float64")
    >>> [layer.name for layer in net.layers]
    ['conv1', 'sub2', 'flatten2', 'fc3']
    >>> x = net.backend.asarray(np.ones((4, 1, 8, 8)), dtype="float64")
    >>> t = net.backend.asarray(np.eye(3)[[0, 1, 2, 0]], dtype="float64")
    >>> loss = net.compute_gradients(x, t)
    >>> sorted(net.gradients())[:2]
    ['conv1.bias', 'conv1.kernel']
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
        seen: set[int] = set()  # ids: one scan per layer made 40k layers take 31 s (issue 20)
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Network: expected Layer objects, got {type(layer).__name__}")
            if id(layer) in seen:
                raise ValueError(
                    f"Network: the same {type(layer).__name__} object appears twice in the "
                    "layers; a layer holds its own parameters, so create one per position"
                )
            seen.add(id(layer))
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
        self._layer_index: dict[str | None, Layer] = {layer.name: layer for layer in self.layers}
        self._outputs: Array | None = None
        #: How raw inputs become the network's inputs (``anycnn.train.Preprocessing``), recorded
        #: by :meth:`fit` (and read back from a checkpoint by :func:`anycnn.load`), applied by
        #: :meth:`predict`, :meth:`predict_classes` and :meth:`evaluate`; ``None``: inputs are
        #: used as given (floats, cast to the network's dtype).
        self.preprocessing: Any = None
        #: The optimizer of the last :meth:`fit` (saved by :meth:`save`, moved by :meth:`to`).
        self.optimizer: Any = None
        #: Passes over training data so far by :meth:`fit` (stored as the checkpoint's epoch).
        self.epochs_trained = 0
        self._flag_output_and_loss()
        # Note [Deferred up-sampling]: the layers whose up-sampling the layer below
        # forms in its own backward pass.
        self._defer_up: dict[int, Any] = {  # layers whose backward takes defer_up=True
            index: layer
            for index, layer in enumerate(self.layers)
            if index > 0 and layer.defers_upsampling and self.layers[index - 1].takes_upsampled
        }

    def _flag_output_and_loss(self) -> None:
        """Warn about an output activation that fights the loss (4.3: the cross-entropy's softmax
        wants linear outputs; a squashed output makes its gradient vanish)."""
        activation = getattr(self.layers[-1], "activation", None)
        name = getattr(activation, "name", "identity")
        if self.loss.name == "cross_entropy" and name in ("sigmoid", "tanh", "lecun_tanh"):
            warnings.warn(
                f"Network {self.name!r}: the output layer {self.layers[-1].describe()} applies "
                f"{name} before the cross-entropy loss, which applies the softmax itself "
                "(section 4.3); use activation='identity' on the output layer",
                UserWarning,
                stacklevel=3,
            )

    # -- parameters --------------------------------------------------------------------------
    def _slots(self) -> Iterator[tuple[str, Layer, str]]:
        for layer in self.layers:
            for role in layer.params:
                yield f"{layer.name}.{role}", layer, role

    def _slot_of(self, name: str) -> list[tuple[str, Layer, str]]:
        """The slot of parameter ``name`` by a dict lookup (a scan per call made restoring a
        checkpoint of 40k layers quadratic, issue 20); a scan when the index does not have it."""
        if len(self._layer_index) != len(self.layers):
            self._layer_index = {layer.name: layer for layer in self.layers}
        owner, _, role = name.rpartition(".")
        layer = self._layer_index.get(owner)
        if layer is not None and role in layer.params:
            return [(name, layer, role)]
        return list(self._slots())

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
        """Replace a parameter by a copy of ``value``.

        ``value`` may be an array of the network's backend, a NumPy array or any DLPack-capable
        array (``Note [Array interop]`` in :mod:`anycnn.backend`); it must have the parameter's
        shape and dtype and be finite. It is copied, so the optimizer's in-place updates never
        reach the caller's array. ``check=False`` (the optimizers' own path) takes a fresh array
        of the network's backend as it is, without a copy.

        Raises
        ------
        KeyError
            No such parameter (the message lists them).
        TypeError, ValueError
            Wrong dtype, shape or device, or NaN/Inf in the value.

        Examples
        --------
        >>> import numpy as np, anycnn
        >>> net = anycnn.models.dlt(backend="cpu")
        >>> bias = np.ones(6, dtype=np.float32)
        >>> net.set_parameter("conv1.bias", bias)
        >>> net.parameters()["conv1.bias"] is bias       # a copy: bias stays the caller's
        False
        """
        for slot, layer, role in self._slot_of(name):
            if slot == name:
                if check:
                    where = f"set_parameter({name})"
                    current = layer.params[role]
                    value = self._to_network(value, where, "value")
                    if tuple(value.shape) != tuple(current.shape):
                        raise ValueError(
                            f"{where}: expected shape {tuple(current.shape)}, "
                            f"got {tuple(value.shape)}"
                        )
                    if value.dtype != current.dtype:
                        raise TypeError(
                            f"{where}: expected dtype {current.dtype}, got {value.dtype}"
                        )
                    self._check_finite(value, "the value", where)
                    value = self.backend.xp.asarray(value, copy=True)
                layer.params[role] = value
                return
        raise KeyError(f"no parameter {name!r}; parameters: {', '.join(self.parameters())}")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every parameter by name, as NumPy copies on the host (PyTorch's ``state_dict``).

        >>> import anycnn
        >>> state = anycnn.models.dlt(backend="cpu").state_dict()
        >>> {name: value.shape for name, value in state.items()}["fc5.weight"]
        (10, 192)
        """
        return {
            name: np.array(self.backend.to_host(value), copy=True)
            for name, value in self.parameters().items()
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Set every parameter from ``state`` (:meth:`state_dict`'s layout; host, backend or
        DLPack arrays). Everything is checked before anything is assigned.

        Raises
        ------
        KeyError
            A parameter is missing from ``state``, or ``state`` names one the network lacks.
        TypeError, ValueError
            As :meth:`set_parameter`.
        """
        names = list(self.parameters())
        missing = [n for n in names if n not in state]
        unexpected = [n for n in state if n not in names]
        if missing or unexpected:
            raise KeyError(
                f"load_state_dict: missing {missing or 'nothing'}, unexpected "
                f"{unexpected or 'nothing'}; parameters: {', '.join(names)}"
            )
        snapshot = self.parameters()
        try:
            for name in names:
                self.set_parameter(name, state[name])
        except Exception:
            for name, value in snapshot.items():  # all or nothing
                self.set_parameter(name, value, check=False)
            raise

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
        if owner.base is not self.backend.base:
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
        self._check_device(x, "x", where)
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

    def _check_device(self, a: Any, what: str, where: str) -> None:
        device = array_api_compat.device(a)
        if device != self.backend.default_device:
            raise ValueError(
                f"{where}: {what} is on device {device} but the network is on "
                f"{self.backend.default_device} (backend {self.backend.label}); move the data "
                f"with net.backend.asarray({what}) or the network with net.to(...)"
            )

    def _to_network(self, a: Any, where: str, what: str) -> Any:
        """``a`` as an array of the network's backend and device: host and DLPack-capable arrays
        are brought over (zero-copy where possible), dtypes are kept."""
        if isinstance(a, list | tuple | int | float):
            raise TypeError(
                f"{where}: {what} must be an array, got {type(a).__name__}; "
                f"use net.backend.asarray({what})"
            )
        if not array_api_compat.is_array_api_obj(a):
            raise TypeError(
                f"{where}: {what} must be an array, got {type(a).__module__}.{type(a).__name__}"
            )
        owner = backend_of(a, op=where)
        if owner.base is not self.backend.base or array_api_compat.device(a) != (
            self.backend.default_device
        ):
            a = self.backend.asarray(a)
        return a

    def check_targets(self, t: Any, n: int, where: str = "Network.backward") -> None:
        owner = backend_of(t, op=where)
        if owner.base is not self.backend.base:
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
        self._check_device(t, "targets", where)
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
        self._backward_from(self.loss.gradient(self._outputs, t))

    def _objective_and_backward(self, y: Array, t: Array) -> Array:
        """:meth:`objective` and :meth:`backward` (unchecked) after the forward pass that gave
        ``y``, the loss's value and gradient taken together (``Loss.value_and_gradient``: one
        log-softmax for the cross-entropy). The same bits as the two calls."""
        value, dy = self.loss.value_and_gradient(y, t)
        value = value + self.penalty()
        self._backward_from(dy)
        return value

    def _backward_from(self, dy: Array) -> None:
        """Back-propagate ``dy = dE/dy`` of the last forward pass's outputs through the layers."""
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
        return self._objective_and_backward(y, t)

    # -- the Keras-style API -----------------------------------------------------------------
    # Note [Inputs of the high-level API]
    # ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
    # fit / evaluate / predict / predict_classes take raw inputs: host NumPy arrays, arrays of
    # any backend, or DLPack-capable arrays (Note [Array interop]). With a preprocessing recorded
    # on the network (fit's `preprocessing=`, or a CLI checkpoint) the inputs are raw images,
    # prepared on the host a chunk at a time exactly as `anycnn train` prepares them. Without
    # one, they must already be floats of the network's input shape; they are cast to the
    # network's dtype (that is the documented contract of these methods, as in Keras), never
    # anything else: integer pixels without a preprocessing are an error saying what to pass.
    def _chunks(self, x: Any, batch_size: int, where: str) -> Iterator[Array]:
        """Network-ready batches of at most ``batch_size`` examples of the raw inputs ``x``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{where}: batch_size must be an int >= 1, got {batch_size!r}")
        if self.preprocessing is not None:
            host = self._host(x, where, "x")
            if host.ndim < 2 or host.shape[0] < 1:
                raise ValueError(f"{where}: x must be a non-empty batch, got {host.shape}")
            from anycnn.training import loop as train

            train._check_fits(host, tuple(self.input_shape), self.name)
            train._check_finite_host(host, f"{where}: x")
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                for start in range(0, host.shape[0], batch_size):
                    batch = self.preprocessing(host[start : start + batch_size], self.dtype_name)
                    yield self.backend.asarray(batch, dtype=self.dtype_name)
            return
        a = self._to_network(x, where, "x")
        xp = self.backend.xp
        if not xp.isdtype(a.dtype, "real floating"):
            raise TypeError(
                f"{where}: x has dtype {dtype_name(a.dtype)}; without a preprocessing the network "
                "takes floats. Pass preprocessing='scale01' (pixels / 255) or 'normalize' to "
                "fit(), or convert the data yourself"
            )
        if a.dtype != self.dtype:
            a = xp.astype(a, self.dtype)
        self.check_input(a, where)
        n = a.shape[0]  # slice stops past the end are not in the Array API (strict rejects them)
        for start in range(0, n, batch_size):
            yield a[start : min(start + batch_size, n), ...]

    def _host(self, a: Any, where: str, what: str) -> np.ndarray:
        """Any array (or nested list) as a NumPy array on the host."""
        if isinstance(a, np.ndarray):
            return a
        if array_api_compat.is_array_api_obj(a):
            return np.asarray(backend_of(a, op=where).to_host(a))
        if isinstance(a, list | tuple):
            return np.asarray(a)
        raise TypeError(
            f"{where}: {what} must be an array, got {type(a).__module__}.{type(a).__name__}"
        )

    def _labels(self, y: Any, n: int, where: str) -> np.ndarray:
        """Integer class labels from integer labels ``(N,)`` or one-of-c targets ``(N, C)``."""
        labels = self._host(y, where, "y")
        classes = self.output_shape[0] if len(self.output_shape) == 1 else None
        if classes is None:
            raise ValueError(f"{where}: {self.name} must end with a vector of class scores")
        if labels.ndim == 2:
            if labels.shape != (n, classes):
                raise ValueError(
                    f"{where}: one-of-c targets must have shape ({n}, {classes}) for "
                    f"{self.layers[-1].describe()}, got {labels.shape}"
                )
            high = labels.max(axis=1, keepdims=True)
            low = labels.min(axis=1, keepdims=True)
            if not (
                np.all(high > low)
                and np.all(np.count_nonzero(labels == high, axis=1) == 1)
                and np.all((labels == high) | (labels == low))
            ):
                raise ValueError(
                    f"{where}: 2-d targets must be one-of-c (one high value per row, the rest "
                    "low); give integer class labels of shape (N,) otherwise"
                )
            return np.argmax(labels, axis=1).astype(np.int64)
        if labels.ndim != 1 or labels.shape[0] != n:
            raise ValueError(
                f"{where}: expected {n} labels, one per example: integers of shape ({n},) or "
                f"one-of-c targets of shape ({n}, {classes}); got shape {labels.shape}"
            )
        if labels.dtype.kind not in "iu":
            raise TypeError(
                f"{where}: labels must be integers (class indices) of shape ({n},), got dtype "
                f"{labels.dtype}; or give one-of-c targets of shape ({n}, {classes})"
            )
        check_label_range(labels, classes, f"{where}: ", self.layers[-1].describe())
        return labels.astype(np.int64, copy=False)

    def predict(self, x: Any, *, batch_size: int = 1000) -> Array:
        """The outputs ``y`` (the last layer's scores, Keras' ``predict``) for inputs ``x``,
        computed in chunks of ``batch_size``; an array of the network's backend ``(N, *out)``.

        ``x`` is raw data when the network records a preprocessing, floats of its input shape
        otherwise (``Note [Inputs of the high-level API]``); host, backend or DLPack arrays.
        With ``loss="cross_entropy"`` the outputs are the logits (the softmax is the loss's).
        The class indices are :meth:`predict_classes`.

        Examples
        --------
        >>> import numpy as np, anycnn
        >>> net = anycnn.models.dlt(backend="cpu")
        >>> y = net.predict(np.zeros((3, 1, 28, 28), dtype=np.float32))
        >>> y.shape
        (3, 10)
        """
        xp = self.backend.xp
        parts = [
            self.forward(batch, check=False)
            for batch in self._chunks(x, batch_size, "Network.predict")
        ]
        return parts[0] if len(parts) == 1 else xp.concat(parts)

    def predict_classes(self, x: Any, *, batch_size: int = 1000) -> Array:
        """The class indices ``argmax(y)`` for inputs ``x`` (see :meth:`predict`), an integer
        array ``(N,)`` of the network's backend.

        >>> import numpy as np, anycnn
        >>> net = anycnn.models.dlt(backend="cpu")
        >>> net.predict_classes(np.zeros((2, 1, 28, 28), dtype=np.float32)).shape
        (2,)
        """
        xp = self.backend.xp
        parts = [
            xp.argmax(self.forward(batch, check=False), axis=1)
            for batch in self._chunks(x, batch_size, "Network.predict_classes")
        ]
        return parts[0] if len(parts) == 1 else xp.concat(parts)

    def _preparation(self) -> Any:
        from anycnn.training import loop as train

        if self.preprocessing is not None:
            return self.preprocessing
        return train.Preprocessing("none", tuple(self.input_shape))

    def evaluate(self, x: Any, y: Any, *, batch_size: int = 1000) -> dict[str, float]:
        """The mean loss and the error rate on labelled data, as ``anycnn evaluate`` computes
        them (:func:`anycnn.training.loop.evaluate`, the same code).

        ``y``: integer class labels ``(N,)`` or one-of-c targets ``(N, C)``. Returns
        ``{"loss", "error", "mistakes", "count"}`` (``error`` a fraction).

        Examples
        --------
        >>> import numpy as np, anycnn
        >>> net = anycnn.models.dlt(backend="cpu")
        >>> x = np.zeros((4, 1, 28, 28), dtype=np.float32)
        >>> sorted(net.evaluate(x, np.array([0, 1, 2, 3])))
        ['count', 'error', 'loss', 'mistakes']
        """
        from anycnn.training import loop as train

        where = "Network.evaluate"
        prep = self._preparation()
        images = self._host(x, where, "x")
        if images.ndim < 2 or images.shape[0] < 1:
            raise ValueError(f"{where}: x must be a non-empty batch, got shape {images.shape}")
        if self.preprocessing is None:
            images = self._raw_floats(images, where)
        labels = self._labels(y, images.shape[0], where)
        return train.evaluate(self, images, labels, prep, batch_size=batch_size)

    def _raw_floats(self, images: np.ndarray, where: str) -> np.ndarray:
        """Host inputs for a network without preprocessing: floats of its input shape."""
        if images.dtype.kind != "f":
            raise TypeError(
                f"{where}: x has dtype {images.dtype}; without a preprocessing the network "
                "takes floats. Pass preprocessing='scale01' (pixels / 255) or 'normalize' to "
                "fit(), or convert the data yourself"
            )
        if tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"{where}: {self.layers[0].describe()} expects a batch of shape "
                f"(N, {', '.join(map(str, self.input_shape))}), got {tuple(images.shape)}"
            )
        return images

    def fit(
        self,
        x: Any,
        y: Any,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        optimizer: Any = "sgd",
        lr: Any = None,
        validation_data: tuple[Any, Any] | None = None,
        callbacks: Sequence[Callable[[Any], Any]] = (),
        shuffle: bool = True,
        seed: int = 0,
        progress: bool = False,
        preprocessing: Any = None,
        gradient_hooks: Sequence[Callable[[Any], Any]] = (),
        distributed: Any = None,
    ) -> History:
        """Train on arrays for ``epochs`` passes with the loop of ``anycnn train``
        (:func:`anycnn.training.loop.train`: the same code, so the same seed gives the same bits).

        Parameters
        ----------
        x : array
            Training inputs: host, backend or DLPack arrays. Raw images (``(N, H, W)`` or
            ``(N, C, H, W)``, uint8 or floats) when ``preprocessing`` is given; otherwise floats
            of shape ``(N, *input_shape)``, cast to the network's dtype.
        y : array
            Integer class labels ``(N,)`` or one-of-c targets ``(N, C)``; the targets the loss
            sees are made from the labels (:func:`anycnn.training.loop.target_values`).
        epochs, batch_size : int
            Passes over the data; patterns per update (1 is online learning).
        optimizer : str or anycnn.optim.Optimizer
            ``"sgd"``, ``"momentum"``, ``"sdlm"`` (with ``lr``) or an optimizer of this network.
            A later ``fit`` with the same name continues with the same optimizer (its momentum
            and step count), as Keras does; a learning-rate schedule counts the epochs of each
            ``fit`` call from 0.
        lr : float or anycnn.optim.Schedule, optional
            The global rate for an optimizer given by name (its default when omitted).
        validation_data : (x, y), optional
            Evaluated after each epoch (``val_loss``, ``val_error`` in the history).
        callbacks : sequence of callables
            Called with each epoch's :class:`anycnn.training.loop.EpochRecord`.
        shuffle : bool
            Visit the examples in a new random order each epoch (seeded by ``seed``).
        seed : int
            Seeds the shuffling (and SDLM's curvature samples).
        progress : bool
            A progress bar on stderr.
        preprocessing : None, "auto", "scale01", "normalize" or Preprocessing
            Fitted on ``x``, recorded on the network (:attr:`preprocessing`), saved by
            :meth:`save` and applied by :meth:`predict` and :meth:`evaluate`. ``None`` keeps
            the one the network already has (none for a new network; the recorded one for a
            network loaded from a checkpoint); one given explicitly replaces it, with a
            :class:`UserWarning`.
        gradient_hooks : sequence of callables
            Run by the loop's step between back-propagation and the update
            (:data:`anycnn.training.loop.GradientHook`: gradient averaging across processes,
            clipping).
        distributed : None, bool, "auto", "mpi", "single" or a communicator
            As :func:`anycnn.training.loop.train`: under ``mpiexec`` every process runs ``fit`` on
            the same arrays and trains its shard of each global batch
            (:mod:`anycnn.training.distributed`).

        Returns
        -------
        History
            ``history.history["loss"]``, ``["error"]``, ``["seconds"]`` (and ``val_loss``,
            ``val_error``) per epoch, and the records.

        Examples
        --------
        >>> import numpy as np, anycnn
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.random((64, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 64)
        >>> net = anycnn.models.dlt(backend="cpu")
        >>> history = net.fit(x, y, epochs=2, batch_size=16, lr=0.5)
        >>> len(history.history["loss"]), sorted(net.evaluate(x, y))[:2]
        (2, ['count', 'error'])
        """
        from anycnn import data as datasets
        from anycnn.training import loop as train
        from anycnn.training import optim

        where = "Network.fit"
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}: {name} must be an int >= 1, got {value!r}")
        images = self._host(x, where, "x")
        if images.ndim < 2 or images.shape[0] < 1:
            raise ValueError(f"{where}: x must be a non-empty batch, got shape {images.shape}")
        labels = self._labels(y, images.shape[0], where)
        if validation_data is not None:
            if not isinstance(validation_data, tuple | list) or len(validation_data) != 2:
                raise TypeError(f"{where}: validation_data must be a pair (x, y)")
            test_images = self._host(validation_data[0], where, "validation_data[0]")
            test_labels = self._labels(
                validation_data[1], test_images.shape[0], f"{where}: validation_data"
            )
        else:
            test_images, test_labels = images[:0], labels[:0]

        if preprocessing is None and self.preprocessing is None:
            images = self._raw_floats(images, where)
            test_images = self._raw_floats(test_images, f"{where}: validation_data")
            prep: Any = train.Preprocessing("none", tuple(self.input_shape))
        elif preprocessing is None:
            prep = self.preprocessing  # kept: the network was trained on data so prepared
        else:
            prep = preprocessing
            old = self.preprocessing
            same = isinstance(prep, train.Preprocessing) and old is not None
            if old is not None and not (same and prep.config() == old.config()):
                shown = prep.kind if isinstance(prep, train.Preprocessing) else repr(prep)
                warnings.warn(
                    f"{where}: preprocessing={shown} replaces the network's recorded "
                    f"preprocessing {old.kind!r} (fitted on the data it was trained on); "
                    "predict and evaluate will apply the new one. Leave preprocessing=None "
                    "to keep it",
                    UserWarning,
                    stacklevel=2,
                )
        if isinstance(optimizer, str):
            key = optimizer.strip().lower()
            if (
                self.optimizer is not None
                and self.optimizer.name == key
                and lr is None
                and self.optimizer.network is self
            ):
                opt = self.optimizer
            else:
                opt = optim.build_optimizer(key, self, lr=lr)
        elif isinstance(optimizer, optim.Optimizer):
            if lr is not None:
                raise ValueError(f"{where}: give lr to the optimizer itself, not to fit")
            opt = optimizer
        else:
            raise TypeError(
                f"{where}: optimizer must be a name ('sgd', 'momentum', 'sdlm') or an "
                f"anycnn.optim.Optimizer, got {type(optimizer).__name__}"
            )

        # The data set of the loop holds images (N, H, W) / (N, C, H, W); vectors (N, D) of a
        # network on vectors ride as (N, 1, 1, D) and are reshaped back by the preprocessing.
        def as_images(a: np.ndarray) -> np.ndarray:
            return a.reshape(a.shape[0], 1, 1, a.shape[1]) if a.ndim == 2 else a

        dataset = datasets.Dataset(
            name="arrays",
            train_images=as_images(images),
            train_labels=labels,
            test_images=as_images(test_images),
            test_labels=test_labels,
            num_classes=int(self.output_shape[0]),
        )
        result = train.train(
            self,
            dataset,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=opt,
            seed=seed,
            shuffle=shuffle,
            progress=progress,
            callbacks=callbacks,
            preprocessing=prep,
            evaluate_test=validation_data is not None,
            gradient_hooks=gradient_hooks,
            distributed=distributed,
        )
        self.optimizer = opt
        self.epochs_trained += len(result.history)
        self.preprocessing = None if result.preprocessing.kind == "none" else result.preprocessing
        return History.from_records(result.history)

    def to(self, target: str | Backend, *, optimizer: Any = None) -> Network:
        """Move the network, in place, to another backend or device (``"strict"``, ``"torch"``,
        ``"cuda:1"``, a :class:`~anycnn.Backend`) and return it, as PyTorch's ``Module.to``.

        Parameters (and their values, exactly), the preprocessing, and the state of the
        network's optimizer (:attr:`optimizer`, the one of the last :meth:`fit`) and of
        ``optimizer`` move with it, so training continues where it stood. The layer objects are
        rebuilt on the target: hold on to the network, not to its layers.

        >>> import anycnn
        >>> net = anycnn.models.dlt(backend="cpu")
        >>> net.to("strict").backend.name
        'array_api_strict'
        """
        from anycnn.interop import move

        return move(self, target, optimizer=optimizer)

    def save(self, path: str | os.PathLike[str], *, include_optimizer: bool = True) -> Path:
        """Write the network (and its preprocessing and optimizer) to one ``.npz`` file, in the
        pickle-free checkpoint format of :mod:`anycnn.training.checkpoint`; :func:`anycnn.load`
        reads it back (and so does ``anycnn evaluate``).

        Examples
        --------
        >>> import os, tempfile, numpy as np, anycnn
        >>> net = anycnn.models.dlt(backend="cpu")
        >>> path = net.save(os.path.join(tempfile.mkdtemp(), "dlt.npz"))
        >>> again = anycnn.load(path, backend="cpu")
        >>> x = np.ones((2, 1, 28, 28), dtype=np.float32)
        >>> bool(np.array_equal(net.predict(x), again.predict(x)))
        True
        """
        from anycnn.training import checkpoint

        info: dict[str, Any] = {}
        if self.preprocessing is not None:
            info["preprocessing"] = self.preprocessing.config()
        optimizer = self.optimizer if include_optimizer else None
        return checkpoint.save_checkpoint(
            Path(path), self, epoch=self.epochs_trained, optimizer=optimizer, info=info
        )

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
        """A table of the layers, their output shapes and parameter counts, with the
        preprocessing the network applies to raw inputs (when it has one)."""
        lines = [
            f"{self.name}: input {self.input_shape}, {self.dtype_name}, "
            f"backend {self.backend.label}, loss {self.loss.name}"
        ]
        prep = self.preprocessing
        if prep is not None:
            stats = "" if prep.mean is None else f" (mean {prep.mean:.6g}, std {prep.std:.6g})"
            lines.append(f"  preprocessing {prep.kind}{stats}, applied by predict/evaluate")
        for layer in self.layers:
            count = layer.parameter_count()
            lines.append(
                f"  {layer.name:<10} {layer!r:<44} -> {layer.output_shape}  {count} params"
            )
        lines.append(f"  {self.num_parameters()} parameters")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Network {self.name!r}: {len(self.layers)} layers on {self.backend.label}>"


@dataclass
class History:
    """What :meth:`Network.fit` returns, as Keras' ``History``: ``history`` maps ``"loss"``,
    ``"error"``, ``"seconds"`` (and ``"val_loss"``, ``"val_error"`` with validation data) to one
    value per epoch; ``records`` are the loop's :class:`anycnn.training.loop.EpochRecord`.

    >>> import numpy as np, anycnn
    >>> net = anycnn.models.dlt()
    >>> history = net.fit(np.zeros((8, 1, 28, 28)), np.arange(8), epochs=2, batch_size=4)
    >>> history.epoch, sorted(history.history)
    ([0, 1], ['error', 'loss', 'seconds'])
    """

    history: dict[str, list[float]] = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)

    @property
    def epoch(self) -> list[int]:
        """The epochs (0-based, as Keras)."""
        return [record.epoch - 1 for record in self.records]

    @classmethod
    def from_records(cls, records: Sequence[Any]) -> History:
        history: dict[str, list[float]] = {
            "loss": [r.train_loss for r in records],
            "error": [r.train_error for r in records],
            "seconds": [r.seconds for r in records],
        }
        if records and records[0].test_error is not None:
            history["val_loss"] = [r.test_loss for r in records]
            history["val_error"] = [r.test_error for r in records]
        return cls(history, list(records))


def load(
    path: str | os.PathLike[str],
    *,
    backend: str | Backend | None = None,
    dtype: str | None = None,
) -> Network:
    """Read a network written by :meth:`Network.save` (or a checkpoint of ``anycnn train``):
    its parameters, its preprocessing, and its optimizer (``net.optimizer``), on ``backend``
    (the current one by default).

    Raises
    ------
    anycnn.checkpoint.CheckpointError
        A file that is not a readable anycnn checkpoint (the message names it and why).

    >>> import os, tempfile, anycnn
    >>> path = anycnn.models.dlt().save(os.path.join(tempfile.mkdtemp(), "dlt.npz"))
    >>> anycnn.load(path).name
    'dlt'
    """
    from anycnn.training import checkpoint
    from anycnn.training import loop as train

    restored = checkpoint.load_checkpoint(path, backend=backend, dtype=dtype)
    net = restored.network
    if restored.info.get("preprocessing"):
        net.preprocessing = train.Preprocessing.from_config(restored.info["preprocessing"])
    net.optimizer = restored.optimizer
    net.epochs_trained = restored.epoch
    return net


__all__ = ["History", "Network", "load"]
