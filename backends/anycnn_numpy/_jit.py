"""The NumPy backend's switch for its compiled kernels: Numba is a regular dependency of anycnn
where it has wheels (CPython on x86-64 and 64-bit ARM); elsewhere, or with ``ANYCNN_NUMBA=0``,
every kernel here is None and the backend runs on NumPy and BLAS alone (both paths are tested).

The kernels are module-level functions of ``_kernels`` (the loops: kernel-gradient dot products,
resampling, f', the pool's spin-wait) and ``_direct`` (the direct convolutions), imported from
here when Numba is there. Each is compiled at its first call for each dtype (about a second;
Numba caches the machine code on disk where it can) and runs without the GIL, so the pool
(``_threads``) runs it on batch slices side by side. The ops read the kernels from this module
when they are called (``_jit.correlate_into``...), so a test or a benchmark can switch one off by
setting it to None.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np


def _disabled() -> bool:
    return os.environ.get("ANYCNN_NUMBA", "1").strip() == "0"


def _load() -> dict[str, Any]:
    if _disabled():
        return {}
    try:
        from anycnn_numpy import _direct, _fft_kernels, _kernels  # Note [Direct convolutions]
    except ImportError:
        return {}
    return {
        "correlate_into": _direct.correlate_into,
        "correlate_grad": _direct.correlate_grad,
        "correlate_into_sliced": _direct.correlate_into_sliced,
        "correlate_grad_sliced": _direct.correlate_grad_sliced,
        "helper_wait": _direct.helper_wait,
        "subsample_backward_sliced": _direct.subsample_backward_sliced,
        "subsample_sums_into": _direct.subsample_sums_into,
        "direct_chunk": _direct.chunk_size,
        "direct_activations": (_direct.IDENTITY, _direct.LOGISTIC, _direct.TANH),
        "direct_sensitivities": {
            "identity": _direct.GIVEN,
            "logistic": _direct.LOGISTIC_SENSITIVITY,
            "tanh": _direct.TANH_SENSITIVITY,
        },
        "spin_while": _kernels.spin_while,
        "sensitivity_into": _direct.sensitivity_into,
        "activate_run": _direct._activate_run32,
        "kernel_grad_sum": _kernels.kernel_grad_sum,
        "block_sum_into": _kernels.block_sum_into,
        "block_sum_sliced": _kernels.block_sum_sliced,
        "subsample_forward_sliced": _kernels.subsample_forward_sliced,
        "kron_into": _kernels.kron_into,
        "spectral_mac": _fft_kernels.spectral_mac,
        "spectral_corr": _fft_kernels.spectral_corr,
    }


_kernels = _load()

if _kernels:  # Note [Slices taken in compiled code] in _direct: the drivers' job record
    from anycnn_numpy._direct import ALONE, CALLER, CTRL_SIZE, DONE, HELPER, NEXT, SEQ, WAITED
else:
    ALONE = CALLER = HELPER = NEXT = DONE = SEQ = WAITED = 0
    CTRL_SIZE = 8
logging.getLogger("anycnn").info(
    "numpy backend: %s",
    "Numba kernels enabled (compiled on first use, cached on disk by Numba)"
    if _kernels
    else "Numba kernels off ("
    + ("ANYCNN_NUMBA=0" if _disabled() else "numba is not installed: pip install 'anycnn[jit]'")
    + "); NumPy and BLAS only",
)

#: ``kernel_grad_sum(d, c) = sum_n d[n] @ c[n].T`` for C-contiguous ``d`` (M, O, P) and ``c``
#: (M, K, P) of one float dtype, or None without Numba (Note [Kernel gradient as dot products] in
#: _kernels).
kernel_grad_sum = _kernels.get("kernel_grad_sum")

#: ``block_sum_into(x, n, scale, out, start, stop)``: ``out[start:stop] = scale * (the n x n block
#: sums of x[start:stop])`` for C-contiguous 4-d ``x`` and ``out`` of one float dtype and a
#: ``scale`` of that dtype, the same bits as the NumPy op; or None without Numba.
block_sum_into = _kernels.get("block_sum_into")
#: ``block_sum_sliced(x, n, scale, out, bounds, ctrl, board, role, limit)``: the same as a
#: compiled job (Note [Slices taken in compiled code] in _direct); or None without Numba.
block_sum_sliced = _kernels.get("block_sum_sliced")

#: ``subsample_forward_sliced(x, n, scale, beta, bias, act, d, y, bounds, ctrl, board, role,
#: limit)``: a trainable subsampling layer's forward pass as a compiled job (Note [Fused
#: subsampling] in _kernels); or None without Numba.
subsample_forward_sliced = _kernels.get("subsample_forward_sliced")

#: ``kron_into(x, n, out, start, stop)``: ``out[start:stop] = kron(x[start:stop], ones(n, n))``
#: for C-contiguous 4-d ``x`` and ``out``; or None without Numba.
kron_into = _kernels.get("kron_into")

#: ``sensitivity_into(dy, y, kind, p0, p1, scaled, out, start, stop)``: rows ``start:stop`` of
#: the 2-d ``out = f'(u) o dy`` (Note [Sensitivity kernel] in _direct); or None without Numba.
sensitivity_into = _kernels.get("sensitivity_into")

#: ``activate_run(v, kind, p0, p1)``: ``v = f(v)`` in place over a 1-d C-contiguous float32
#: run, f one of ``direct_activations`` (Note [Compiled activations] in _direct); or None.
activate_run = _kernels.get("activate_run")

#: The direct convolutions (Note [Direct convolutions] in ``_direct``), or None without Numba:
#: ``correlate_into(x, pad_h, pad_w, wts, bias, active, out, start, stop, chunk)``,
#: ``correlate_grad(x, dy, y, sens, up, active, start, stop, chunk, delta_out) -> (grad, bias)``,
#: ``direct_chunk(rows, width, itemsize) -> chunk``.
correlate_into = _kernels.get("correlate_into")
correlate_grad = _kernels.get("correlate_grad")
#: The same over the slices a thread takes in compiled code (Note [Slices taken in compiled code]
#: in _direct): ``correlate_into_sliced(x, pad_h, pad_w, wts, bias, active, act, out, chunk,
#: bounds, ctrl, board, role, limit)`` and ``correlate_grad_sliced(x, dy, y, sens, up, active,
#: chunk, delta_out, grads, biases, bounds, ctrl, board, role, limit)``; None without Numba.
correlate_into_sliced = _kernels.get("correlate_into_sliced")
correlate_grad_sliced = _kernels.get("correlate_grad_sliced")
#: ``subsample_backward_sliced(dy, y, sens, d, beta, delta, out, betas, biases, bounds, ctrl,
#: board, role, limit)``: sensitivity_into then subsample_sums_into, slice by slice; or None.
subsample_backward_sliced = _kernels.get("subsample_backward_sliced")
#: ``helper_wait(board, seen, limit, last, joined) -> bool``: a pool helper between jobs (ibid.).
helper_wait = _kernels.get("helper_wait")
#: ``subsample_sums_into(delta, d, beta, out, start, stop) -> (grad_beta, grad_bias)``: a
#: trainable subsampling layer's gradients from its sensitivity; or None without Numba.
subsample_sums_into = _kernels.get("subsample_sums_into")
direct_chunk = _kernels.get("direct_chunk")
#: Codes of the activations correlate_into applies itself (Note [Compiled activations]):
#: ``(identity, logistic, tanh)``, or None without Numba.
direct_activations = _kernels.get("direct_activations")
#: Codes of the sensitivities correlate_grad forms itself, by formula name, or None.
direct_sensitivities = _kernels.get("direct_sensitivities")

#: The FFT path's products of spectra (Note [Convolutions by the FFT] in ``_fft``), or None:
#: ``spectral_mac(a, b, active, out)``, ``spectral_corr(d, x, active, out)``.
spectral_mac = _kernels.get("spectral_mac")
spectral_corr = _kernels.get("spectral_corr")

#: ``spin_while(flag, index, value, limit) -> bool`` (Note [Spinning helpers] in _threads), or None.
spin_while = _kernels.get("spin_while")

#: Results at most this large (C_out x C_in kh kw) go to the kernel; larger ones to BLAS, whose
#: cache blocking pays there. Products along fewer than MIN_LENGTH positions go to BLAS too.
MAX_RESULT = 4096
MIN_LENGTH = 16


#: About how long the first training step compiles the kernels on a 2-core machine (the
#: issue 13 tester saw 10-14 s; since the compiled drivers of Note [Slices taken in compiled
#: code] 24.0 s, and since each kernel is compiled for one type of its arguments (Note [One type
#: per kernel argument] in _conv) the README's first command compiled in 13.5 s, fresh clone,
#: 2026-12-08 03:01 UTC, quiet; with the float32 kernels on the vector lanes (Note [Examples on
#: the lanes] in _direct) 21.4 s, 05:32 UTC; later runs load them from Numba's cache in well under
#: a second).
COMPILE_SECONDS = 20


def status() -> tuple[bool, str]:
    """Whether the compiled kernels are active, and in words why (not) -- for ``anycnn
    backends`` and the training command's first-use message. Compiles nothing."""
    if _disabled():
        return False, "off: ANYCNN_NUMBA=0 (unset it to compile them)"
    if not _kernels:
        try:
            import numba  # noqa: F401
        except ImportError as error:
            return False, f"off: Numba cannot be imported ({error}; pip install numba)"
        return False, "off: Numba is installed but the kernels could not be built"
    import numba

    where = cache_dir()
    cached = f", cached in {where}" if where else ""
    return True, f"active (Numba {numba.__version__}{cached})"


def cache_dir() -> str | None:
    """Where Numba keeps the kernels' machine code between runs, or None if unknown."""
    correlate = _kernels.get("correlate_into")
    try:
        return str(correlate._cache._cache_path)  # type: ignore[union-attr]
    except AttributeError:  # another Numba's internals: the message just leaves it out
        return None


#: The dtypes the compiled kernels take.
COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def compiled_layout(x: np.ndarray) -> bool:
    """Arrays the compiled kernels take: C-contiguous float32/float64."""
    return x.flags.c_contiguous and x.dtype in COMPILED_DTYPES
