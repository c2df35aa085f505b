"""The backends' contract: the registry that maps an array namespace to its hot operations.

:mod:`anycnn.backend.registry` holds :class:`Backend` (a namespace, its op table, its device and
capabilities), the plugins found through the ``anycnn.backends`` entry point, and the
current-backend context. Plugins (``backends/anycnn_numpy``, ``backends/anycnn_cupy``) import
this package and :mod:`anycnn.ops`, never the layers; :func:`anycnn.testing.check_backend`
checks a plugin against the reference ops.
"""

from anycnn.backend.registry import *  # noqa: F403 (the public names, registry.__all__)
from anycnn.backend.registry import OP_NAMES as OP_NAMES  # the rest: for plugins and the CLI
from anycnn.backend.registry import __all__ as __all__
from anycnn.backend.registry import cuda_reason as cuda_reason
from anycnn.backend.registry import known_names as known_names
from anycnn.backend.registry import logger as logger
from anycnn.backend.registry import register as register
from anycnn.backend.registry import resolve_dtype as resolve_dtype
