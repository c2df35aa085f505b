"""anycnn's CPU backend: NumPy arrays; with Numba installed, direct convolutions and loops
compiled by it, else hot ops on BLAS (im2col + GEMM) and NumPy strides.

Importing this package is cheap: it builds the :class:`anycnn.backend.Backend` record and
imports the ops only when they are first used. Neither changes anything for the whole process:
the one process-wide setting the backend profits from, malloc keeping freed memory
(:func:`keep_freed_memory`), is an opt-in that ``anycnn train`` makes.

One module per job (section 3.4 of the notes asks for no per-block Python work and no
per-example Python loops; these are how):

* ``_conv``: the convolution ops and their fused forms, sent to the direct kernels or to im2col;
* ``_direct``: the direct convolutions compiled by Numba (``Note [Direct convolutions]``);
* ``_im2col``: convolutions as im2col + BLAS, and the BLAS products (``Note [Wide columns]``);
* ``_resample``: up- and down-sampling and the trainable subsampling layer's gradients;
* ``_dense``: the fully connected layers;
* ``_activation``: activations from their descriptions: ``activate`` in place, ``sensitivity``,
  and what the compiled kernels apply themselves;
* ``_kernels``: the other compiled loops (``Note [Resampling kernels]``, ...);
* ``_jit``: whether the compiled kernels are on (``ANYCNN_NUMBA=0`` turns them off);
* ``_threads``: the pool that runs an op's batch slices side by side, and BLAS's threads;
* ``_memory``: per-thread scratch buffers, and malloc's setting (``Note [Fresh pages]``).

:func:`_fast_ops` below is the one table that wires these into the backend's ops.
"""

from __future__ import annotations

from anycnn.backend import Backend


def _fast_ops():
    """The backend's hot ops by name: the same names and signatures as :mod:`anycnn.ops`."""
    from anycnn_numpy import _activation, _conv, _dense, _nd, _resample

    # _nd: the map ops also take 1-D signals and 3-D volumes, mapped onto these 2-D ones (issue 18)
    return _nd.dimension_generic(
        {
            "conv_valid": _conv.conv_valid,
            "conv_valid_activate": _conv.conv_valid_activate,
            "conv_backward": _conv.conv_backward,
            "subsample_forward": _resample.subsample_forward,
            "subsample_backward": _resample.subsample_backward,
            "sensitivity": _activation.sensitivity,
            "activate": _activation.activate,
            "conv_full": _conv.conv_full,
            "conv_kernel_grad": _conv.conv_kernel_grad,
            "kron_upsample": _resample.kron_upsample,
            "block_sum": _resample.block_sum,
            "block_mean": _resample.block_mean,
            "decimate": _resample.decimate,
            "decimate_transpose": _resample.decimate_transpose,
            "fully_connected": _dense.fully_connected,
            "fully_connected_weight_grad": _dense.fully_connected_weight_grad,
            "fully_connected_input_grad": _dense.fully_connected_input_grad,
        }
    )


def set_num_threads(count: int) -> int:
    """Set how many threads the NumPy backend's ops use (1 = the calling thread only).

    The default is the number of usable cores, at most 4; ``ANYCNN_NUM_THREADS`` overrides it.
    Returns the previous value. BLAS threads are not affected. Results are the same bits on any
    number of threads.
    """
    from anycnn_numpy import _threads

    return _threads.set_num_threads(count)


def get_num_threads() -> int:
    """How many threads the NumPy backend's ops use."""
    from anycnn_numpy import _threads

    return _threads.get_num_threads()


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for the next allocation (``Note [Fresh pages]``):
    a training step then reuses the pages of the last step's temporaries instead of faulting in
    fresh ones. It changes malloc for the whole process, so the library never calls it; the
    ``anycnn train`` command does. True if the setting was made (glibc only;
    ``ANYCNN_NUMPY_KEEP_FREED_MEMORY=0`` declines it)."""
    from anycnn_numpy import _memory

    return _memory.keep_freed_memory()


def _thread_count(count):
    """The threads of this backend's ops: ``count`` None asks, an int sets; the count now."""
    if count is not None:
        set_num_threads(count)
    return get_num_threads()


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
    threads=_thread_count,
    compile_note=_compile_note,
    kernel_status=_kernel_status,
    tune_process=lambda: keep_freed_memory(),  # looked up at call time (monkeypatchable)
)
