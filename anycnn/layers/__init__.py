"""Layers of the notes: fully connected (2), convolution (3.1), subsampling (3.2), flatten,
activations and losses."""

from anycnn.layers.activations import (
    Activation,
    Identity,
    LeCunTanh,
    ReLU,
    Sigmoid,
    Tanh,
    get_activation,
)
from anycnn.layers.base import BuildContext, Layer, LayerError
from anycnn.layers.combine import LearnedCombination, to_selection
from anycnn.layers.conv import (
    Convolution,
    Convolution1D,
    Convolution2D,
    Convolution3D,
    from_cross_correlation,
    lenet5_table,
    selection_table,
    to_cross_correlation,
)
from anycnn.layers.dense import Flatten, FullyConnected
from anycnn.layers.losses import CrossEntropy, Loss, SquaredError, get_loss
from anycnn.layers.subsample import Subsampling, Subsampling1D, Subsampling2D, Subsampling3D

LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (Convolution, LearnedCombination, Subsampling, FullyConnected, Flatten)
}

__all__ = [
    "Activation",
    "BuildContext",
    "Convolution",
    "Convolution1D",
    "Convolution2D",
    "Convolution3D",
    "CrossEntropy",
    "Flatten",
    "FullyConnected",
    "Identity",
    "LAYER_TYPES",
    "Layer",
    "LayerError",
    "LearnedCombination",
    "LeCunTanh",
    "Loss",
    "ReLU",
    "Sigmoid",
    "SquaredError",
    "Subsampling",
    "Subsampling1D",
    "Subsampling2D",
    "Subsampling3D",
    "Tanh",
    "from_cross_correlation",
    "get_activation",
    "get_loss",
    "lenet5_table",
    "selection_table",
    "to_cross_correlation",
    "to_selection",
]
