"""anycnn's CUDA backend: CuPy arrays, convolutions as cuBLAS GEMMs, fused elementwise kernels.

Importing this package never imports CuPy: the record below names the module, and CuPy is
imported and the GPU probed only when the backend is first asked whether it is usable
(``anycnn backends``, ``set_backend("cuda")``, ``auto``). The rest of the public API is loaded on
first access, and those modules import CuPy (an ImportError says what to install when it is
missing):

* the fused kernels of the notes' chains (:mod:`anycnn_cupy._fused`):
  :func:`upsampled_sensitivity`, :func:`subsample_forward`, :func:`bias_activation`,
  :func:`activation_and_derivative`, :func:`sensitivity`, :func:`subsample_sensitivity`,
  :func:`sgd_update_`, :func:`momentum_update_`, the table :data:`FUSED` and
  :func:`supports_activation` (which needs no CuPy). The layers and optimizers reach them
  through the backend's op table (``conv_backward``, ``subsample_backward``, ``activate``,
  ``sensitivity``, ``conv_valid_activate``, the fused updates: Note [Fused ops] and Note [Fused
  updates] in anycnn.ops), with the activations' codes and C++ from the table of activations;
* :func:`set_gemm` / :func:`gemm_mode`: cuBLAS or the elementwise GEMM for matrix products.

CUDA-graph capture of a training step and the host-transfer counter are GPU-proof tooling in
bench/gpu/ (cuda_graph.py, cuda_transfers.py), not API of this package: nothing here calls them,
and a captured step has rules (fixed shapes, in-place updates, no host reads) that the training
loop does not keep yet.

UNTESTED ON GPU HARDWARE: everything here was written and checked on a machine without a CUDA
device (kernel bodies compiled and run on the CPU, CUDA sources compiled with nvcc);
bench/gpu/run_gpu_proof.sh is the run that will check it on one.
"""

from __future__ import annotations

import importlib
from typing import Any

from anycnn.backend import Backend
from anycnn_cupy._guard import INSTALL_HINT

__all__ = [
    "FUSED",
    "INSTALL_HINT",
    "activation_and_derivative",
    "backend",
    "bias_activation",
    "fused_ops",
    "gemm_mode",
    "momentum_update_",
    "sensitivity",
    "set_gemm",
    "sgd_update_",
    "subsample_forward",
    "subsample_sensitivity",
    "supports_activation",
    "upsampled_sensitivity",
]

# name -> submodule that defines it; loaded on first access (PEP 562), never at import.
_LAZY = {
    "FUSED": "_fused",
    "activation_and_derivative": "_fused",
    "bias_activation": "_fused",
    "momentum_update_": "_fused",
    "sensitivity": "_fused",
    "sgd_update_": "_fused",
    "subsample_forward": "_fused",
    "subsample_sensitivity": "_fused",
    "upsampled_sensitivity": "_fused",
    "supports_activation": "_sources",
    "gemm_mode": "_kernels",
    "set_gemm": "_kernels",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'anycnn_cupy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"anycnn_cupy.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _namespace():
    import array_api_compat.cupy

    return array_api_compat.cupy


def _probe():
    """Raise unless a CUDA device runs a kernel and a GEMM: driver, device, NVRTC and cuBLAS."""
    import cupy

    from anycnn.backend import cuda_reason  # Note [CUDA reasons]

    def runtime() -> int | None:
        try:
            return int(cupy.cuda.runtime.runtimeGetVersion())
        except Exception:  # noqa: BLE001 - the version only improves the message
            return None

    if not cupy.cuda.is_available():  # CuPy 14: a bool, never raises
        try:
            cupy.cuda.runtime.getDeviceCount()  # raises with the driver's own reason
        except Exception as error:
            raise RuntimeError(cuda_reason(error, runtime_version=runtime())) from None
        raise RuntimeError("no CUDA device is usable (cupy.cuda.is_available() is False)")
    # A tiny kernel launch, a GEMM and a copy back: catches a missing libnvrtc / libcublas now
    # rather than in the middle of a training run.
    try:
        a = cupy.arange(4, dtype=cupy.float32).reshape(2, 2) * 2
        cupy.matmul(a, a).sum().item()
    except Exception as error:
        raise RuntimeError(cuda_reason(error, runtime_version=runtime())) from None


def _device():
    import cupy

    return cupy.cuda.Device()


def _device_for(spec):
    """``cuda:1`` -> ``cupy.cuda.Device(1)`` (Note [Devices] in anycnn.backend); untested on
    hardware with more than one GPU."""
    import cupy

    text = spec.removeprefix("cuda:").strip()
    if not text.isdigit():
        raise ValueError(f"backend 'cupy' has no device {spec!r}: give a device number, cuda:N")
    count = cupy.cuda.runtime.getDeviceCount()
    if int(text) >= count:
        raise ValueError(f"backend 'cupy' has no device {spec!r}: {count} CUDA device(s) here")
    return cupy.cuda.Device(int(text))


def _fast_ops():
    from anycnn_cupy import _nd, _ops

    # _nd: the map ops also take 1-D signals and 3-D volumes, mapped onto the 2-D ones (issue 18)
    return _nd.dimension_generic(_ops.OPS)


def fused_ops():
    """The fused operations by name (``anycnn_cupy._fused.FUSED``); imports CuPy."""
    from anycnn_cupy import _fused

    return _fused.FUSED


def _to_numpy(x):
    import cupy

    return cupy.asnumpy(x)


def _device_name(device):
    """The GPU's model, for ``Backend.describe``; untested on hardware."""
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _device_count():
    import cupy

    return int(cupy.cuda.runtime.getDeviceCount())


def _use_device(device):
    device.use()


def _nccl():
    """``cupy.cuda.nccl`` and the current stream's handle (anycnn.training.distributed sums
    CuPy arrays with them on the device); untested on hardware."""
    import cupy

    try:
        from cupy.cuda import nccl
    except ImportError as error:
        raise RuntimeError(
            f"NCCL is not available to CuPy ({error}); install it (pip install "
            "nvidia-nccl-cu12) or train on the CPU"
        ) from None

    def stream() -> int:
        return int(cupy.cuda.get_current_stream().ptr)

    return nccl, stream


backend = Backend(
    name="cupy",
    array_module="cupy",
    aliases=("cuda", "gpu"),
    description="CuPy arrays on an NVIDIA GPU; cuBLAS GEMM convolutions, fused CUDA kernels",
    install_hint=INSTALL_HINT,
    namespace=_namespace,
    device=_device,
    probe=_probe,
    device_for=_device_for,
    fast_ops=_fast_ops,
    to_numpy=_to_numpy,
    # Note [Backend capabilities] in anycnn.backend.registry
    writable=True,
    device_name=_device_name,
    device_count=_device_count,
    use_device=_use_device,
    nccl=_nccl,
)
