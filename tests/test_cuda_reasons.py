"""Why CUDA is unusable, told apart (issue 13): no driver at all is not "a driver too old"
(CuPy 14 says cudaErrorInsufficientDriver for both), and missing CUDA libraries point at the
-ctk extras. Exercised with CuPy's exact messages (shared/reference/ecosystem-facts.md 1); the
real probe is untested on GPU hardware."""

from __future__ import annotations

from anycnn.backend.registry import _driver_version, cuda_reason

INSUFFICIENT = RuntimeError(
    "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
)


def test_no_driver_library_says_no_gpu_or_no_driver():
    text = cuda_reason(INSUFFICIENT, driver_version=None, runtime_version=12090)
    assert text.startswith("no NVIDIA driver found")
    assert "insufficient" not in text and "--backend cpu" in text


def test_old_driver_names_both_versions_and_the_fix():
    text = cuda_reason(INSUFFICIENT, driver_version=12020, runtime_version=13020)
    assert "supports CUDA 12.2 but CuPy was built for CUDA 13.2" in text
    assert "upgrade the driver" in text and "anycnn[cuda12]" in text


def test_no_device_and_missing_libraries():
    text = cuda_reason(
        RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"),
        driver_version=12040,
    )
    assert text.startswith("the NVIDIA driver is installed but finds no GPU")
    text = cuda_reason(
        ImportError('Failure finding "libcublasLt.so.13 or libcublasLt.so.12"'),
        driver_version=12040,
    )
    assert "CUDA libraries are missing" in text and "cuda12-ctk" in text


def test_this_machine():
    """Here: whatever libcuda says is used; with none, the no-driver message."""
    text = cuda_reason(INSUFFICIENT, runtime_version=12090)
    if _driver_version() is None:
        assert text.startswith("no NVIDIA driver found")
    else:
        assert "NVIDIA driver" in text
