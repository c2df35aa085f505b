"""The import guard of the modules of anycnn_cupy that need CuPy itself."""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = 'pip install "anycnn[cuda12]" (CUDA 12 driver) or "anycnn[cuda13]" (CUDA 13)'


def require_cupy(module: str) -> ModuleType:
    """Import CuPy for ``module``, or raise an ImportError that says what to install.

    Only the modules that run on the GPU call this; ``import anycnn_cupy`` (the backend record)
    never imports CuPy.
    """
    try:
        import cupy
    except ImportError as error:
        raise ImportError(
            f"{module} needs CuPy, which cannot be imported here ({error}); {INSTALL_HINT}. "
            "Importing anycnn or anycnn_cupy itself does not need CuPy: use "
            "anycnn.backend.lookup('cupy').unavailable_reason to ask why the backend is unusable."
        ) from error
    return cupy
