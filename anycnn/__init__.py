"""anycnn: classic convolutional neural networks after Bouvrie's "Notes on Convolutional Neural
Networks" (2006), written once against the Array API and run on NumPy/SciPy, CuPy or any Array
API namespace.

Importing anycnn imports neither CuPy nor any optional array library.
"""

from anycnn import functional, ops
from anycnn.backend import (
    Backend,
    BackendUnavailableError,
    available_backends,
    backend_of,
    get_backend,
    set_backend,
    use_backend,
)

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "backend_of",
    "functional",
    "get_backend",
    "ops",
    "set_backend",
    "use_backend",
]
