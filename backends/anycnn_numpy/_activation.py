"""What the NumPy backend's compiled kernels know of activations: the codes of the f that the
direct convolutions apply themselves (``Note [Compiled activations]`` in ``_direct``), the
formulas of the f' that the sensitivity kernels form (``Note [Sensitivity kernel]`` in
``_jit``), and the ``sensitivity`` op. Any other activation, dtype or layout takes the
activation's own methods.
"""

from __future__ import annotations

import numpy as np

from anycnn_numpy import _jit
from anycnn_numpy._threads import run


def compiled_activation(activation, dtype: np.dtype) -> tuple | None:
    """``(kind, p0, p1)`` of the direct kernels' own f (Note [Compiled activations]), or None."""
    from anycnn.layers.activations import Identity, LeCunTanh, Sigmoid, Tanh

    kind = type(activation)  # exact types: a subclass may redefine f
    if dtype != np.float32 or _jit.direct_activations is None:
        return None
    codes = _jit.direct_activations
    t = dtype.type
    if kind is Identity:
        return no_activation(dtype)
    if kind is Sigmoid:
        return (codes[1], t(activation.gain), t(0))
    if kind in (Tanh, LeCunTanh):
        return (codes[2], t(activation.a), t(activation.b))
    return None


def no_activation(dtype: np.dtype) -> tuple:
    """The direct kernels' activation code for f = identity (the bias only)."""
    t = dtype.type
    return (_jit.direct_activations[0], t(0), t(0))


def sensitivity_formula(activation, y) -> tuple | None:
    """``(name, p0, p1, scaled)`` of the compiled ``f'(u) o dy`` (Note [Sensitivity kernel] in
    _kernels) for ``activation`` on outputs like ``y``, or None: ``"logistic"``, ``gain y (1 - y)``
    (``scaled`` when the gain is not 1); ``"tanh"``, ``((a - y)(y + a))(b / a)``; ``"identity"``."""
    from anycnn.layers.activations import Identity, LeCunTanh, Sigmoid, Tanh

    kind = type(activation)  # exact types: a subclass may redefine f'
    if y.dtype not in _jit.COMPILED_DTYPES:
        return None
    if kind is Sigmoid:
        return ("logistic", activation.gain, 0.0, activation.gain != 1.0)
    if kind in (Tanh, LeCunTanh):
        a, b = activation.a, activation.b
        return ("tanh", a, b / a, True)
    if kind is Identity:
        return ("identity", 0.0, 0.0, False)
    return None


def sensitivity(dy, y, activation):
    """Fused ``f'(u) o dy`` (``Note [Fused ops]`` in anycnn.ops) for the logistic and the scaled
    tanh: one compiled pass on the pool's threads (Note [Sensitivity kernel] in _kernels), the bits
    of ``activation.sensitivity``; other activations, dtypes or layouts take that method."""
    kernel = _jit.sensitivity_into
    formula = sensitivity_formula(activation, y)
    if (
        kernel is None
        or formula is None
        or formula[0] == "identity"
        or dy.dtype != y.dtype
        or dy.shape != y.shape
        or not (_jit.compiled_layout(dy) and _jit.compiled_layout(y))
        or y.ndim == 0
        or y.size == 0
    ):
        return activation.sensitivity(dy, y, np)
    t = y.dtype.type
    name, p0, p1, scaled = formula
    code, p0, p1 = (0 if name == "logistic" else 1), t(p0), t(p1)
    n = y.shape[0]
    flat_dy, flat_y = dy.reshape(n, -1), y.reshape(n, -1)
    out = np.empty_like(y)
    flat = out.reshape(n, -1)

    def work(index, start, stop):
        kernel(flat_dy, flat_y, code, p0, p1, scaled, flat, start, stop)

    run(work, n, 3 * flat.shape[1] * y.itemsize, 0)
    return out
