"""The model zoo: LeNet-5 (LeCun et al. 1998), DeepLearnToolbox's example CNN, and a 1-D network
for time series in the same spirit (``cnn1d``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anycnn.layers import Convolution, Flatten, FullyConnected, Subsampling
from anycnn.network import Network


def dlt(*, backend: Any = None, dtype: str = "float32", seed: int = 0) -> Network:
    """DeepLearnToolbox's ``test_example_CNN`` net, 6c-2s-12c-2s, exactly.

    Input 1@28x28 scaled to [0, 1]; C1 6@5x5 sigmoid; S2 2x2 mean, no coefficient or bias;
    C3 12@5x5 (all 6 inputs) sigmoid; S4 2x2 mean; 192 features; 10 sigmoid outputs; squared
    error (eq. 1); uniform init in ``+-sqrt(6 / (fan_in + fan_out))``, zero biases. The toolbox
    trains it with batch 50 and learning rate 1.

    >>> net = dlt()                     # on the current backend
    >>> net.num_parameters(), net.output_shape
    (3898, (10,))
    """
    layers = [
        Convolution(6, 5, activation="sigmoid", init="glorot"),
        Subsampling(2, "mean", trainable=False),
        Convolution(12, 5, activation="sigmoid", init="glorot"),
        Subsampling(2, "mean", trainable=False),
        Flatten(),
        FullyConnected(10, activation="sigmoid", init="glorot"),
    ]
    return Network(
        layers,
        (1, 28, 28),
        loss="squared_error",
        dtype=dtype,
        backend=backend,
        seed=seed,
        name="dlt",
    )


def lenet5(
    *, loss: str = "cross_entropy", backend: Any = None, dtype: str = "float32", seed: int = 0
) -> Network:
    """LeNet-5 (LeCun et al. 1998) on the 28x28 MNIST image padded to 32x32.

    C1 6@5x5; S2 6@14x14 (2x2 sums with a trainable coefficient and bias); C3 16@5x5 with the
    connection table of Table I; S4 16@5x5; C5 120@5x5 (all inputs); F6 84 units; 10 outputs.
    Hidden units use LeCun's scaled tanh ``1.7159 tanh(2u / 3)``, weights start uniform in
    ``+-2.4 / F_in``. With ``loss="cross_entropy"`` the outputs are linear (softmax in the loss,
    section 4.3); with ``"squared_error"`` they are scaled tanh, for +-1 targets. The paper's
    RBF output layer is replaced by these standard outputs.

    >>> net = lenet5()
    >>> [layer.name for layer in net.layers][:4], net.input_shape
    (['conv1', 'sub2', 'conv3', 'sub4'], (1, 32, 32))
    """
    if loss not in ("cross_entropy", "squared_error"):
        raise ValueError(f"lenet5: loss must be 'cross_entropy' or 'squared_error', got {loss!r}")
    act = "lecun_tanh"
    layers = [
        Convolution(6, 5, activation=act, init="lecun"),
        Subsampling(2, "sum", activation=act),
        Convolution(16, 5, selection="lenet5", activation=act, init="lecun"),
        Subsampling(2, "sum", activation=act),
        Convolution(120, 5, activation=act, init="lecun"),
        Flatten(),
        FullyConnected(84, activation=act, init="lecun"),
        FullyConnected(10, activation="identity" if loss == "cross_entropy" else act, init="lecun"),
    ]
    return Network(
        layers, (1, 32, 32), loss=loss, dtype=dtype, backend=backend, seed=seed, name="lenet5"
    )


def cnn1d(
    *,
    length: int = 150,
    classes: int = 2,
    channels: int = 1,
    loss: str = "cross_entropy",
    backend: Any = None,
    dtype: str = "float32",
    seed: int = 0,
) -> Network:
    """A 1-D network for univariate (or multichannel) time series in the notes' design: three
    convolution / subsampling stages, then a fully connected output (sections 2, 3.1, 3.2).

    Input ``(channels, length)``, normalised. C1 8@9 ``"same"``; S2 4x sums with a trainable beta
    and b; C3 16@7 ``"same"``; S4 4x; C5 32@5 ``"same"``; S6 4x (each subsampling keeps a last,
    partial block: ``remainder="pad"``, so any length works: 150 samples leave 3 positions);
    hidden units LeCun's scaled tanh ``1.7159 tanh(2u / 3)`` with weights uniform in
    ``+-2.4 / F_in`` (as LeNet-5); ``classes`` linear outputs with a softmax cross-entropy
    (section 4.3), or scaled tanh outputs for ``loss="squared_error"``. Subsampling by 4 three
    times leaves few positions for the fully connected layer: few parameters (3.9k for GunPoint,
    5k for OSULeaf's 427 samples and 6 classes) and some invariance to where a pattern occurs.

    >>> net = cnn1d(length=150, classes=2)
    >>> net.input_shape, net.output_shape, net.num_parameters()
    ((1, 150), (2,), 3890)
    """
    if loss not in ("cross_entropy", "squared_error"):
        raise ValueError(f"cnn1d: loss must be 'cross_entropy' or 'squared_error', got {loss!r}")
    act = "lecun_tanh"
    layers = []
    for maps, size in ((8, 9), (16, 7), (32, 5)):
        layers += [
            Convolution(maps, size, padding="same", activation=act, init="lecun"),
            Subsampling(4, "sum", activation=act, remainder="pad"),
        ]
    layers += [
        Flatten(),
        FullyConnected(
            classes, activation="identity" if loss == "cross_entropy" else act, init="lecun"
        ),
    ]
    return Network(
        layers,
        (channels, length),
        loss=loss,
        dtype=dtype,
        backend=backend,
        seed=seed,
        name="cnn1d",
    )


#: cnn1d_global's maps in its three stages, the UCR recipe's (issue 18: twice as many, 35.5-36k
#: parameters, did no better on GunPoint and ArrowHead; the README's "Variants tried")
CNN1D_GLOBAL_MAPS = (16, 32, 64)


def cnn1d_global(
    *,
    length: int = 150,
    classes: int = 2,
    channels: int = 1,
    maps: Sequence[int] = CNN1D_GLOBAL_MAPS,
    loss: str = "cross_entropy",
    backend: Any = None,
    dtype: str = "float32",
    seed: int = 0,
) -> Network:
    """:func:`cnn1d` with a global subsampling: the last stage's maps are averaged over the
    whole signal, so the fully connected output sees one number per map, wherever along the
    signal a pattern occurs (section 3.2's ``down`` over one block as long as the map). With its
    training defaults (``anycnn.training.loop.TRAINING_DEFAULTS["cnn1d_global"]``: 8,000 updates
    of 8 series, rate 0.03, momentum 0.9, every series shifted by up to 10 % of its length each
    pass) it is the UCR recipe of issue 18, ``anycnn train``'s default for a time-series data set.

    Input ``(channels, length)``, normalised. C1 16@7, C3 32@5, C5 64@3 (``maps``: other numbers
    of maps for the three stages), all ``"same"``, ReLU units with Glorot's uniform weights; S2
    and S4 2x means (``remainder="pad"``), S6 the mean over all positions; ``classes`` linear
    outputs (Glorot's uniform weights: LeCun's smaller ones left the outputs of the means so
    close to equal that the first few hundred updates hardly moved them) with a softmax
    cross-entropy (section 4.3), or scaled tanh outputs for ``loss="squared_error"``. 9.3k
    parameters for OSULeaf's 427 samples and 6 classes, whatever the length (bench/ucr.py: its
    test error, and :func:`cnn1d`'s, on the three UCR problems; the README's "Variants tried":
    other maps and training choices).

    >>> net = cnn1d_global(length=427, classes=6)
    >>> net.input_shape, net.output_shape, net.num_parameters()
    ((1, 427), (6,), 9318)
    """
    if loss not in ("cross_entropy", "squared_error"):
        raise ValueError(
            f"cnn1d_global: loss must be 'cross_entropy' or 'squared_error', got {loss!r}"
        )
    widths = tuple(maps)
    if len(widths) != 3 or any(
        isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in widths
    ):
        raise ValueError(f"cnn1d_global: maps must be three positive ints, got {maps!r}")
    layers = []
    for width, size in zip(widths, (7, 5, 3), strict=True):
        layers += [
            Convolution(width, size, padding="same", activation="relu", init="glorot"),
            Subsampling(2, "mean", trainable=False, remainder="pad"),
        ]
    # the last stage: one block as long as the signal (a remainder block: the mean of what is
    # there, Subsampling's padded mean)
    layers[-1] = Subsampling(length, "mean", trainable=False, remainder="pad")
    layers += [
        Flatten(),
        FullyConnected(
            classes,
            activation="identity" if loss == "cross_entropy" else "lecun_tanh",
            init="glorot",
        ),
    ]
    return Network(
        layers,
        (channels, length),
        loss=loss,
        dtype=dtype,
        backend=backend,
        seed=seed,
        name="cnn1d_global",
    )


MODELS = {"dlt": dlt, "lenet5": lenet5, "cnn1d": cnn1d, "cnn1d_global": cnn1d_global}


def build_for(dataset: Any, name: str, **options: Any) -> Network:
    """A zoo model by name, sized for ``dataset`` (an :class:`anycnn.data.Dataset`): cnn1d and
    cnn1d_global take its series' length and channels and its number of classes; the others are
    built as :func:`build` builds them (their inputs are fixed).

    >>> from anycnn import data
    >>> net = build_for(data.load("arrowhead"), "cnn1d")
    >>> net.input_shape, net.output_shape
    ((1, 251), (3,))
    """
    if name in ("cnn1d", "cnn1d_global"):
        shape = tuple(dataset.train_images.shape[1:])
        channels, length = (1, shape[0]) if len(shape) == 1 else shape[-2:]
        options = {
            "length": length,
            "channels": channels,
            "classes": dataset.num_classes,
            **options,
        }
    return build(name, **options)


def build(name: str, **options: Any) -> Network:
    """A zoo model by name (``"dlt"``, ``"lenet5"``, ``"cnn1d"``, ``"cnn1d_global"``).

    >>> build("dlt", dtype="float64").dtype_name
    'float64'
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}") from None
    return factory(**options)
