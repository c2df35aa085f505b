"""anycnn's CPU backend: NumPy arrays; with Numba installed, direct convolutions and loops
compiled by it (``_direct.py``, ``_jit.py``), else hot ops on BLAS (im2col + GEMM) and NumPy
strides.

Importing this package is cheap: it builds the :class:`anycnn.backend.Backend` record and
imports the ops only when they are first used.
"""

from __future__ import annotations

from anycnn.backend import Backend


def _fast_ops():
    # _nd's table: the 2-D ops of _ops, and 1-D / 3-D maps mapped onto them (issue 18)
    from anycnn_numpy import _nd

    return _nd.OPS


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
        "NumPy arrays on the CPU; convolutions, resampling and f' compiled by Numba (installed "
        "with anycnn where it has wheels; ANYCNN_NUMBA=0 turns it off), else im2col + BLAS GEMM"
    ),
    install_hint="pip install numpy",
    namespace=_namespace,
    device=lambda: "cpu",
    fast_ops=_fast_ops,
    to_numpy=_to_numpy,
)
