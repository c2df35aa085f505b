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


def _threads(count):
    """The threads of this backend's ops: ``count`` None asks, an int sets."""
    from anycnn_numpy import _ops

    return _ops.get_num_threads() if count is None else _ops.set_num_threads(count)


def _compile_note():
    """What the first pass compiles (Numba's kernels), or None when Numba is off."""
    from anycnn_numpy import _jit

    if not _jit.status()[0]:
        return None
    where = _jit.cache_dir() or "Numba's cache"
    return f"compiling CPU kernels once (~{_jit.COMPILE_SECONDS} s), cached in {where}"


def _kernel_status():
    from anycnn_numpy import _jit

    return f"numpy's compiled CPU kernels: {_jit.status()[1]}"


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
    # Note [Backend capabilities] in anycnn.backend.registry
    writable=True,
    threads=_threads,
    compile_note=_compile_note,
    kernel_status=_kernel_status,
    tune_process=lambda: keep_freed_memory(),  # looked up at call time (monkeypatchable)
)
