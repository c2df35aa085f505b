"""anycnn's CUDA backend: CuPy arrays, convolutions as cuBLAS GEMMs, fused elementwise kernels.

Importing this package never imports CuPy: the record below names the module, and CuPy is
imported and the GPU probed only when the backend is first asked whether it is usable
(``anycnn backends``, ``set_backend("cuda")``, ``auto``).

Untested on GPU hardware until a lent GPU runs the suite (see bench/results/ for such runs).
"""

from __future__ import annotations

from anycnn.backend import Backend

INSTALL_HINT = 'pip install "anycnn[cuda12]" (CUDA 12 driver) or "anycnn[cuda13]" (CUDA 13)'


def _namespace():
    import array_api_compat.cupy

    return array_api_compat.cupy


def _probe():
    """Raise unless a CUDA device runs a kernel: driver, device and NVRTC must all work."""
    import cupy

    if not cupy.cuda.is_available():  # CuPy 14: a bool, never raises
        try:
            cupy.cuda.runtime.getDeviceCount()  # raises with the driver's own reason
        except Exception as error:
            raise RuntimeError(f"no CUDA device is usable ({error})") from None
        raise RuntimeError("no CUDA device is usable (cupy.cuda.is_available() is False)")
    # A tiny kernel launch and copy back: catches a missing libnvrtc / libcublas early.
    (cupy.arange(4, dtype=cupy.float32) * 2).sum().item()


def _device():
    import cupy

    return cupy.cuda.Device()


def _fast_ops():
    from anycnn_cupy import _ops

    return _ops.OPS


def _to_numpy(x):
    import cupy

    return cupy.asnumpy(x)


backend = Backend(
    name="cupy",
    array_module="cupy",
    aliases=("cuda", "gpu"),
    description="CuPy arrays on an NVIDIA GPU; cuBLAS GEMM convolutions, fused CUDA kernels",
    install_hint=INSTALL_HINT,
    namespace=_namespace,
    device=_device,
    probe=_probe,
    fast_ops=_fast_ops,
    to_numpy=_to_numpy,
)
