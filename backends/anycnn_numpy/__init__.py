"""anycnn's CPU backend: NumPy arrays, fast hot ops on BLAS (im2col + GEMM) and NumPy strides,
and a few loops compiled by Numba when it is installed (``_jit.py``).

Importing this package is cheap: it builds the :class:`anycnn.backend.Backend` record and
imports the ops only when they are first used.
"""

from __future__ import annotations

from anycnn.backend import Backend


def _fast_ops():
    from anycnn_numpy import _ops

    return _ops.OPS


def _namespace():
    import array_api_compat.numpy

    return array_api_compat.numpy


def _to_numpy(x):
    import numpy

    return numpy.asarray(x)


backend = Backend(
    name="numpy",
    array_module="numpy",
    aliases=("cpu", "np"),
    description=(
        "NumPy arrays on the CPU; convolutions as im2col + BLAS GEMM; kernel gradients, "
        "resampling and f' compiled by Numba when it is installed (anycnn[jit])"
    ),
    install_hint="pip install numpy",
    namespace=_namespace,
    device=lambda: "cpu",
    fast_ops=_fast_ops,
    to_numpy=_to_numpy,
)
