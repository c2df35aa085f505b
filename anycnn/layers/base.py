"""The layer protocol shared by every layer.

A layer is built once for an input shape (without the batch axis) on a backend and dtype; it owns
named parameters (``params["kernel"]``) and their gradients (``grads["kernel"]``), both arrays of
that backend. ``forward(x)`` keeps what ``backward`` needs; ``backward(dy)`` takes ``dE/dy`` for
its output ``y = x^l``, fills ``grads`` and returns ``dE/dx`` for its input ``x^{l-1}``.

How this maps onto the notes' sensitivities: a layer with activation ``f`` first forms its
sensitivity ``delta^l = dE/du^l = f'(u^l) o dE/dx^l`` (eq. 3-4), then its parameter gradients,
then ``dE/dx^{l-1}``. Chained, this is exactly the recurrences of 3.1.1 and 3.2.1, e.g. a
convolution below a subsampling layer gets ``delta = f'(u) o beta up(delta_next)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from anycnn.backend import Backend

Array = Any
Shape = tuple[int, ...]


class LayerError(ValueError):
    """A layer cannot be built or called with these shapes or values; the message names it.

    Examples
    --------
    >>> from anycnn import Convolution, Network
    >>> from anycnn.layers import LayerError
    >>> try:
    ...     Network([Convolution(2, 5)], input_shape=(1, 4, 4))
    ... except LayerError as error:
    ...     print(type(error).__name__, "conv1" in str(error))
    LayerError True
    """


@dataclass
class BuildContext:
    """What a layer needs to allocate its parameters.

    Examples
    --------
    How :class:`anycnn.Network` builds each layer:

    >>> import numpy as np, anycnn
    >>> from anycnn.layers import BuildContext, FullyConnected
    >>> be = anycnn.get_backend()
    >>> layer = FullyConnected(3)
    >>> layer.build((4,), BuildContext(be, be.xp.float64, np.random.default_rng(0)))   # its output
    (3,)
    >>> tuple(layer.params["weight"].shape)
    (3, 4)
    """

    backend: Backend
    dtype: Any  # the namespace's dtype
    rng: np.random.Generator


class Upsampled:
    """``dE/dx = kron_upsample(delta, n)``, handed down before it is formed.

    Note [Deferred up-sampling]
    ~~~~~~~~~~~~~~~~~~~~~~~~~~~
    Section 3.1.1 writes a convolution layer's sensitivity below a subsampling layer as one
    formula, ``delta_j = beta_j (f'(u_j) o up(delta_j^{l+1}))``, and 3.4 counts the up-sampling
    among the bottlenecks. Formed op by op it writes the up-sampled map (n^2 times the deltas of
    the layer above), reads it back for f', writes delta and reads it again for the bias and the
    kernel gradients: at DLT's C1, four passes over the step's largest arrays. When the layer
    below takes it (``takes_upsampled``: a convolution, whose ``conv_backward`` op up-samples, Note
    [Fused ops] in anycnn.ops), :class:`anycnn.Network` asks the subsampling layer above it for this
    instead of ``up(delta)`` (``backward(dy, defer_up=True)``; for a block sum or mean, with
    beta and the mean's 1/n^2 already applied to ``delta``), and the convolution forms
    ``delta_j`` in the same pass as its gradients. Both sides are layer capabilities: a layer
    that can hand its up-sampling down says ``defers_upsampling``, one that takes it says
    ``takes_upsampled``; the network pairs them, whatever their classes.
    """

    __slots__ = ("delta", "n")

    def __init__(self, delta: Array, n: int):
        self.delta, self.n = delta, n


class Layer:
    """Base class of all layers (see the module docstring for the protocol).

    Examples
    --------
    >>> from anycnn import Convolution, Flatten, FullyConnected, Network
    >>> from anycnn.layers import Layer
    >>> net = Network([Convolution(2, 3), Flatten(), FullyConnected(2)], input_shape=(1, 6, 6))
    >>> [(layer.name, layer.output_shape) for layer in net.layers if isinstance(layer, Layer)]
    [('conv1', (2, 4, 4)), ('flatten1', (32,)), ('fc2', (2,))]
    """

    #: prefix of the default name: conv, sub, fc, ...; None for layers that are not numbered
    kind: str | None = None
    #: Whether ``backward`` accepts an :class:`Upsampled` ``dy`` (Note [Deferred up-sampling]).
    takes_upsampled: bool = False
    #: Whether ``backward(dy, defer_up=True)`` may return an :class:`Upsampled` for the layer
    #: below to up-sample (Note [Deferred up-sampling]).
    defers_upsampling: bool = False
    #: a layer with an activation f sets it, and its forward pass saves its output y = f(u)
    activation: Any
    _y: Array
    # The backend's namespace and hot ops, looked up once at build time (:meth:`build`): at
    # batch 1 a training step is dominated by interpreter overhead, and array_namespace() on
    # every call was a tenth of it (Note [Hot-op dispatch]: a network stays on its backend).
    _xp: Any
    _ops: Any

    def __init__(self, name: str | None = None):
        self.name = name
        self.params: dict[str, Array] = {}
        self.grads: dict[str, Array] = {}
        self.input_shape: Shape | None = None
        self.output_shape: Shape | None = None
        self._backend: Backend | None = None

    # -- building -------------------------------------------------------------------------
    def build(self, input_shape: Shape, context: BuildContext) -> Shape:
        """Check the input shape, allocate parameters, return the output shape."""
        self.input_shape = tuple(input_shape)
        self._backend = context.backend
        self._xp = context.backend.xp
        self._ops = context.backend.ops
        self.output_shape = tuple(self._build(self.input_shape, context))
        return self.output_shape

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        raise NotImplementedError

    def _sensitivity(self, dy: Array) -> Array:
        """``delta = f'(u) o dy`` (eqs. 3-4) from the saved output ``self._y``: the backend's
        ``sensitivity`` op (Note [Fused ops] in anycnn.ops)."""
        return self._ops.sensitivity(dy, self._y, self.activation)

    def error(self, message: str) -> LayerError:
        return LayerError(f"{self.describe()}: {message}")

    def describe(self) -> str:
        return f"{self!r} ({self.name})" if self.name else repr(self)

    def _host_param(self, context: BuildContext, values: np.ndarray) -> Array:
        return context.backend.asarray(values, dtype=context.dtype)

    # -- computing ------------------------------------------------------------------------
    def forward(self, x: Array) -> Array:
        raise NotImplementedError

    def backward(self, dy: Array, need_input_grad: bool = True) -> Array | None:
        raise NotImplementedError

    def curvature(
        self, d2y: Array, need_input_grad: bool = True
    ) -> tuple[Array | None, dict[str, Array]]:
        """LeCun's diagonal Gauss-Newton pass of this layer, after a forward pass: from
        ``d2y``, the curvature of ``E^n`` with respect to the output ``y``, per pattern, return
        ``(d2x, {role: h})``: the same for the input (``None`` without ``need_input_grad``) and,
        per parameter, the curvature summed over the batch (``Note [Diagonal Gauss-Newton
        curvature]`` in :mod:`anycnn.training.optim`, whose ``diagonal_hessian`` runs these from
        the output layer down for SDLM).

        Raises
        ------
        NotImplementedError
            In this base class: a layer that has no rule (SDLM cannot train it).
        """
        raise NotImplementedError(
            f"diagonal_hessian: no curvature rule for {self.describe()}; give the layer a "
            "method curvature(d2y, need_input_grad) -> (d2x, {role: h})"
        )

    def _squared_slope(self, d2y: Array) -> Array:
        """``d2u = f'(u)^2 o d2y`` from the saved output: Gauss-Newton drops the f'' term (it
        can be negative), the squared counterpart of eq. (4)."""
        slope = self.activation.derivative(self._y)
        return d2y * (slope * slope)

    # -- description ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments (checkpoints rebuild layers from these)."""
        return {}

    def parameter_count(self) -> int:
        """How many free parameters the layer has (entries of its parameter arrays by default)."""
        return sum(math.prod(p.shape) for p in self.params.values())

    def extra_state(self) -> dict[str, np.ndarray]:
        """Non-parameter arrays a checkpoint must keep (e.g. an input-map table), on the host."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
