"""The NumPy backend's hot ops in 1 and 3 spatial dimensions, on top of its 2-D ones.

The mappings (1-D signals as maps one row high; 3-D volumes as one 2-D convolution whose input
maps are the kernel's depth taps) are :func:`anycnn.backend.planar.dimension_generic`'s, shared
with the CuPy backend: Note [1-D and 3-D on the 2-D kernels] there. Every 2-D call they make
takes the path the backend's cost model chooses for its shape (Note [Choosing a path] in
``_plan``).
"""

from __future__ import annotations

import numpy as np

from anycnn.backend import planar


def dimension_generic(table: dict) -> dict:
    """The backend's op table with every map op taking 1, 2 or 3 spatial axes: 2-D calls go to
    ``table``'s op (one ``ndim`` test more), 1-D and 3-D ones through the mappings of Note [1-D
    and 3-D on the 2-D kernels] onto those same 2-D ops. Other ops are left as they are."""
    return planar.dimension_generic(table, np)
