"""Activation functions f and their derivatives f', computed from the saved outputs (3.4).

The notes (section 2.1) use the logistic ``f(u) = 1 / (1 + exp(-beta u))`` and the hyperbolic
tangent ``f(u) = a tanh(b u)`` with LeCun's ``a = 1.7159, b = 2/3``. Section 3.4 advises computing
f' without re-evaluating f; each derivative here takes the output ``y = f(u)`` (and ``u`` for the
ones that need it). All are stable for ``|u|`` up to 1e4 and beyond: no overflow warnings.

Each activation of the notes describes itself as data (:meth:`Activation.describe`:
``("logistic", gain)``, ``("tanh", a, b)``, ...), and its arithmetic is written once, in the table
of :mod:`anycnn.backend.activations` (Note [Activation descriptions]): the methods here are that
table's Array API reference, and each backend runs the same description its own way (in place,
fused into a convolution, compiled, as a CUDA kernel). Layers call the backend's ops
``activate(u, f)`` and ``sensitivity(dy, y, f)``, the fused forms 3.4 recommends over calling f
and f' as functions; an activation without a description (a user's own) goes through its
``apply`` and ``sensitivity`` methods there.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from anycnn.backend import activations as _table

Array = Any


class Activation:
    """Base class: ``forward(u) -> y`` and ``derivative(y, u) -> f'(u)``.

    An activation of a known kind says so with :meth:`describe` (Note [Activation descriptions]
    in :mod:`anycnn.backend.activations`): its four methods are then the table's Array API
    reference, and every backend computes it with its own code for that kind (in place, fused,
    compiled). One that returns ``None`` from :meth:`describe` (the default) gives ``forward``
    and ``derivative`` itself, and every backend calls those.

    Examples
    --------
    A new activation gives ``forward`` and ``derivative`` (from the output ``y``):

    >>> import numpy as np, anycnn
    >>> from anycnn.layers import Activation
    >>> class Softsign(Activation):
    ...     name = "softsign"
    ...     def forward(self, u): return u / (1 + abs(u))
    ...     def derivative(self, y, u=None): return (1 - abs(y)) ** 2
    >>> u = anycnn.get_backend().asarray(np.array([-1.0, 0.0, 3.0]), "float64")
    >>> [float(v) for v in Softsign().forward(u)], Softsign(), Softsign().describe()
    ([-0.5, 0.0, 0.75], Softsign(), None)
    """

    name = "activation"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # A subclass that redefines f or f' but not describe() must not hand its parent's
        # description to the backends (they would compute the parent's f): its describe() says
        # None. Its inherited methods still run the description its class declared.
        super().__init_subclass__(**kwargs)
        if "describe" in vars(cls):
            cls._declared = vars(cls)["describe"]
        elif {"forward", "derivative", "apply", "sensitivity"} & set(vars(cls)):
            cls.describe = Activation.describe  # type: ignore[method-assign]

    def describe(self) -> tuple[Any, ...] | None:
        """What this activation computes as data, ``(kind, *constants)`` (e.g.
        ``("logistic", 1.0)``), or ``None`` when it is not one of the table's kinds."""
        return None

    #: The ``describe`` the class declared, which the reference methods below run.
    _declared = describe

    def forward(self, u: Array) -> Array:
        desc = self._declared()
        if desc is None:
            raise NotImplementedError(f"{type(self).__name__}.forward")
        return _table.forward(desc, u, array_api_compat.array_namespace(u))

    def derivative(self, y: Array, u: Array | None = None) -> Array:
        desc = self._declared()
        if desc is None:
            raise NotImplementedError(f"{type(self).__name__}.derivative")
        return _table.derivative(desc, y, array_api_compat.array_namespace(y))

    def apply(self, u: Array, xp: Any) -> Array:
        """``f(u)``, free to overwrite ``u`` (a temporary of the caller's)."""
        return self.forward(u)

    def sensitivity(self, dy: Array, y: Array, xp: Any) -> Array:
        """``f'(u) o dy`` from the saved output ``y``; ``dy`` and ``y`` are left unchanged."""
        desc = self.describe()
        if desc is None:
            return dy * self.derivative(y)
        return _table.sensitivity(desc, dy, y, xp)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Identity(Activation):
    """``f(u) = u``; used for linear outputs (cross-entropy) and plain subsampling.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import Identity
    >>> u = anycnn.get_backend().asarray(np.array([-2.0, 0.0, 3.0]), "float64")
    >>> [float(v) for v in Identity().forward(u)], Identity().derivative(u), Identity().describe()
    ([-2.0, 0.0, 3.0], 1.0, ('identity',))
    """

    name = "identity"

    def describe(self) -> tuple[Any, ...]:
        return ("identity",)


class Sigmoid(Activation):
    """Logistic ``f(u) = 1 / (1 + exp(-gain u))`` (2.1); ``f' = gain y (1 - y)``.

    For ``gain u`` below about -88 (float32; -709 in float64) ``exp(-gain u)`` is infinite and
    ``f = 1 / inf = 0``, the correctly rounded result; NumPy's overflow warning for that case is
    silenced, other libraries give no warning.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import Sigmoid
    >>> u = anycnn.get_backend().asarray(np.array([-2.0, 0.0, 3.0]), "float64")
    >>> y = Sigmoid().forward(u)
    >>> float(y[1]), float(Sigmoid().derivative(y)[1])        # f(0) = 1/2, f'(0) = 1/4
    (0.5, 0.25)
    >>> Sigmoid(2.0).describe()
    ('logistic', 2.0)
    """

    name = "sigmoid"

    def __init__(self, gain: float = 1.0):
        self.gain = float(gain)

    def describe(self) -> tuple[Any, ...]:
        return ("logistic", self.gain)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "gain": self.gain}


class Tanh(Activation):
    """Scaled hyperbolic tangent ``f(u) = a tanh(b u)`` (2.1); ``f' = (b / a)(a - y)(a + y)``.

    The slope is the notes' ``(b / a)(a^2 - y^2)`` factored so that a saturated unit gets
    exactly 0, as plain ``tanh``'s does: where ``y`` rounds to ``a``, ``a - y`` is exact
    (Sterbenz) and 0, whereas ``a^2`` and ``y^2`` round apart (LeCun's tanh in float32 leaked
    ``f' = 9.3e-8`` at ``u = 1e4``).

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import Tanh
    >>> u = anycnn.get_backend().asarray(np.array([-2.0, 0.0, 3.0]), "float64")
    >>> f = Tanh(2.0, 0.5)                                    # a = 2, b = 1/2
    >>> y = f.forward(u)
    >>> round(float(y[2]), 4), float(f.derivative(y)[1]), f  # 2 tanh(3/2); f'(0) = a b
    (1.8103, 1.0, Tanh(a=2.0, b=0.5))
    """

    name = "tanh"

    def __init__(self, a: float = 1.0, b: float = 1.0):
        self.a, self.b = float(a), float(b)

    def describe(self) -> tuple[Any, ...]:
        return ("tanh", self.a, self.b)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "a": self.a, "b": self.b}


class LeCunTanh(Tanh):
    """LeCun's ``1.7159 tanh(2u / 3)``: ``f(+-1) = +-1`` at the point of maximum curvature (2.1).

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import LeCunTanh
    >>> u = anycnn.get_backend().asarray(np.array([-1.0, 1.0]), "float64")
    >>> [round(float(v), 4) for v in LeCunTanh().forward(u)]
    [-1.0, 1.0]
    """

    name = "lecun_tanh"

    def __init__(self) -> None:
        super().__init__(1.7159, 2.0 / 3.0)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


class ReLU(Activation):
    """``f(u) = max(u, 0)``; ``f' = 1`` where ``y > 0``, else 0.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import ReLU
    >>> u = anycnn.get_backend().asarray(np.array([-2.0, 0.0, 3.0]), "float64")
    >>> y = ReLU().forward(u)
    >>> [float(v) for v in y], [float(v) for v in ReLU().derivative(y)]
    ([0.0, 0.0, 3.0], [0.0, 0.0, 1.0])
    """

    name = "relu"

    def describe(self) -> tuple[Any, ...]:
        return ("relu",)


ACTIVATIONS: dict[str, type[Activation]] = {
    cls.name: cls for cls in (Identity, Sigmoid, Tanh, LeCunTanh, ReLU)
}
ACTIVATIONS["linear"] = Identity
ACTIVATIONS["logistic"] = Sigmoid


def get_activation(spec: str | Activation | dict[str, Any] | None) -> Activation:
    """An activation from a name (``"sigmoid"``, ``"tanh"``, ``"lecun_tanh"``, ``"relu"``,
    ``"identity"``), a config dict, or an instance; ``None`` means identity.

    Examples
    --------
    >>> from anycnn.layers import get_activation
    >>> get_activation("tanh"), get_activation({"name": "sigmoid", "gain": 2.0})
    (Tanh(a=1.0, b=1.0), Sigmoid(gain=2.0))
    >>> get_activation(None)
    Identity()
    """
    if spec is None:
        return Identity()
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, dict):
        options = dict(spec)
        name = options.pop("name")
        return _by_name(name)(**options)
    if isinstance(spec, str):
        return _by_name(spec)()
    raise TypeError(f"activation must be a name, a dict or an Activation, got {spec!r}")


def _by_name(name: str) -> type[Activation]:
    try:
        return ACTIVATIONS[name.lower()]
    except KeyError:
        if name.lower() == "softmax":  # what a Keras user writes for a classifier's last layer
            raise ValueError(
                "unknown activation 'softmax': the softmax belongs to the loss here; give the "
                "output layer activation='identity' and the network loss='cross_entropy' "
                "(section 4.3), which applies the softmax itself"
            ) from None
        raise ValueError(
            f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
