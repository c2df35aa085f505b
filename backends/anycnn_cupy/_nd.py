"""The CuPy backend's hot ops in 1 and 3 spatial dimensions, on top of its 2-D ones.

The mappings (1-D signals as maps one row high; 3-D volumes as one 2-D convolution whose input
maps are the kernel's depth taps) are :func:`anycnn.backend.planar.dimension_generic`'s, shared
with the NumPy backend (Note [1-D and 3-D on the 2-D kernels] there): every 1-D or 3-D
convolution becomes one im2col + cuBLAS GEMM of the 2-D ops, and the resampling ops are CuPy
array expressions.

UNTESTED ON GPU HARDWARE: checked on the CPU with NumPy standing in for CuPy
(tests/test_cupy_backend.py), against the reference ops and SciPy.
"""

from __future__ import annotations

from anycnn.backend import planar
from anycnn_cupy._guard import require_cupy

cupy = require_cupy(__name__)


def dimension_generic(table: dict) -> dict:
    """The backend's op table with every map op taking 1, 2 or 3 spatial axes: 2-D calls go to
    ``table``'s op, 1-D and 3-D ones through the mappings of Note [1-D and 3-D on the 2-D
    kernels] (:mod:`anycnn.backend.planar`) onto those same 2-D ops."""
    return planar.dimension_generic(table, cupy)
