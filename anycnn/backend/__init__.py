"""The backends' contract: the registry that maps an array namespace to its hot operations.

:mod:`anycnn.backend.registry` holds :class:`Backend` (a namespace, its op table, its device and
capabilities), the plugins found through the ``anycnn.backends`` entry point, and the
current-backend context. Plugins (``backends/anycnn_numpy``, ``backends/anycnn_cupy``) import
this package and :mod:`anycnn.ops`, never the layers; :func:`anycnn.testing.check_backend`
checks a plugin against the reference ops.
"""

# Also here for the plugins and the CLI (not in __all__): OP_NAMES, cuda_reason, known_names,
# logger, register, resolve_dtype.
from anycnn.backend.registry import (
    OP_NAMES as OP_NAMES,
)
from anycnn.backend.registry import (
    Backend,
    BackendUnavailableError,
    available_backends,
    backend_of,
    get_backend,
    lookup,
    parse_name,
    set_backend,
    use_backend,
)
from anycnn.backend.registry import (
    cuda_reason as cuda_reason,
)
from anycnn.backend.registry import (
    known_names as known_names,
)
from anycnn.backend.registry import (
    logger as logger,
)
from anycnn.backend.registry import (
    register as register,
)
from anycnn.backend.registry import (
    resolve_dtype as resolve_dtype,
)

__all__ = [
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "backend_of",
    "get_backend",
    "lookup",
    "parse_name",
    "set_backend",
    "use_backend",
]
