"""anycnn's CPU backend: NumPy arrays; with Numba installed, direct convolutions and loops
compiled by it (``_direct.py``, ``_jit.py``), else hot ops on BLAS (im2col + GEMM) and NumPy
strides.

Importing this package is cheap: it builds the :class:`anycnn.backend.Backend` record and
imports the ops only when they are first used. Neither changes anything for the whole process:
the one process-wide setting the backend profits from, malloc keeping freed memory
(:func:`keep_freed_memory`), is an opt-in that ``anycnn train`` makes.
"""

from __future__ import annotations

from anycnn.backend import Backend


def _fast_ops():
    from anycnn_numpy import _ops

    return _ops.OPS


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation (``Note [Fresh pages]``):
    a training step then reuses the pages of the last step's temporaries instead of faulting in
    fresh ones. It changes malloc for the whole process, so the library never calls it; the
    ``anycnn train`` command does. True if the setting was made (glibc only;
    ``ANYCNN_NUMPY_KEEP_FREED_MEMORY=0`` declines it)."""
    from anycnn_numpy import _ops

    return _ops.keep_freed_memory()


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
