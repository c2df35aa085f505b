"""anycnn: classic convolutional neural networks after Bouvrie's "Notes on Convolutional Neural
Networks" (2006), written once against the Array API and run on NumPy/SciPy, CuPy or any Array
API namespace.

Importing anycnn imports neither CuPy nor any optional array library.

>>> import anycnn
>>> net = anycnn.models.dlt(backend="cpu")
>>> [name for name in net.parameters()][:2]
['conv1.kernel', 'conv1.bias']
"""

import logging as _logging
import sys as _sys

from anycnn import data, functional, layers, models, ops, training
from anycnn.backend import (
    Backend,
    BackendUnavailableError,
    available_backends,
    backend_of,
    get_backend,
    set_backend,
    use_backend,
)
from anycnn.gradcheck import GradcheckReport, gradcheck
from anycnn.interop import to_torch
from anycnn.layers import (
    Convolution,
    CrossEntropy,
    Flatten,
    FullyConnected,
    LayerError,
    LearnedCombination,
    SquaredError,
    Subsampling,
    from_cross_correlation,
    to_cross_correlation,
    to_selection,
)
from anycnn.network import History, Network, load
from anycnn.training import checkpoint, distributed, optim, plots
from anycnn.training import loop as train
from anycnn.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from anycnn.training.loop import DivergenceError, evaluate
from anycnn.training.optim import SDLM, SGD, Momentum, diagonal_hessian, lecun1998

__version__ = "0.1.0"

# The library's log (backend fallback and why, devices, kernel compilation, thread counts) is
# silent unless the application configures logging; the CLI shows it.
_logging.getLogger("anycnn").addHandler(_logging.NullHandler())

# Note [Module paths of 0.1]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~
# The package was flat in 0.1; its modules now live in rooms (anycnn.training, anycnn.data,
# anycnn.backend). The old paths stay importable as the same module objects, so that
# `import anycnn.optim`, `from anycnn.train import Trainer` and a monkeypatch of
# `anycnn.checkpoint.X` keep working and mean what they meant.
datasets = data
from anycnn.data import download  # noqa: E402

for _old, _module in {
    "train": train,
    "optim": optim,
    "checkpoint": checkpoint,
    "plots": plots,
    "distributed": distributed,
    "datasets": data,
    "download": download,
}.items():
    _sys.modules[f"{__name__}.{_old}"] = _module
del _old, _module


class _CallableModule(type(train)):  # type: ignore[misc]
    """``anycnn.train`` is the training module and, called, its
    :func:`anycnn.training.loop.train`."""

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return self.train(*args, **kwargs)


train.__class__ = _CallableModule

__all__ = [
    "SDLM",
    "SGD",
    "CheckpointError",
    "DivergenceError",
    "LearnedCombination",
    "Momentum",
    "checkpoint",
    "data",
    "datasets",
    "distributed",
    "download",
    "plots",
    "training",
    "diagonal_hessian",
    "evaluate",
    "lecun1998",
    "load_checkpoint",
    "optim",
    "save_checkpoint",
    "to_selection",
    "train",
    "Backend",
    "BackendUnavailableError",
    "Convolution",
    "CrossEntropy",
    "Flatten",
    "FullyConnected",
    "GradcheckReport",
    "History",
    "load",
    "to_torch",
    "LayerError",
    "Network",
    "SquaredError",
    "Subsampling",
    "available_backends",
    "backend_of",
    "from_cross_correlation",
    "functional",
    "get_backend",
    "gradcheck",
    "layers",
    "models",
    "ops",
    "set_backend",
    "to_cross_correlation",
    "use_backend",
]
