"""Preprocessing on the host: statistics, normalisation, padding, one-of-c targets, batches.

The helpers do not make hidden copies: :func:`normalize` and :func:`scale01` convert integer
images to float once and then work in place on that float array (``copy=False`` lets
:func:`normalize` work in place on float input); :func:`pad` allocates the padded array once,
in the requested dtype; :func:`mean_std` accumulates in float64 over blocks of examples, never
over a full-size temporary.

To pad for LeNet-5 with one float copy only, pad the ``uint8`` images first (one byte per pixel)
and normalise the padded array with the statistics of the unpadded training set::

    mean, std = mean_std(ds.train_images)
    x_train, _, _ = normalize(pad(ds.train_images, 32), mean=mean, std=std)

The padding is 0 before normalisation, so it becomes the normalised background value
``-mean / std``, as LeCun pads.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from anycnn.data.datasets import _labels_check
from anycnn.data.idx import DatasetError

__all__ = ["mean_std", "normalize", "scale01", "one_hot", "pad", "batches"]


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------

_BLOCK_ELEMS = 1 << 22  # elements per block when accumulating statistics (~32 MiB in float64)


def _float_dtype(dtype: npt.DTypeLike, where: str) -> np.dtype[Any]:
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise DatasetError(f"{where}: dtype must be a float dtype, got {dtype!r}") from exc
    if not np.issubdtype(dt, np.floating):
        raise DatasetError(f"{where}: dtype must be a float dtype (float32, float64), got {dt}")
    return dt


def _numeric(images: Any, where: str) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype == np.bool_ or not (
        np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
        raise DatasetError(f"{where}: expected integer or float images, got dtype {x.dtype}")
    if x.size == 0:
        raise DatasetError(f"{where}: expected at least one pixel, got shape {x.shape}")
    return x


def mean_std(images: npt.ArrayLike) -> tuple[float, float]:
    """Compute the scalar mean and standard deviation over all pixels of a set of images.

    These are the statistics :func:`normalize` uses (notes section 2.1): one mean and one
    standard deviation for the whole training set, later reused for the test set.

    Parameters
    ----------
    images : array_like
        Integer or float images of any shape, e.g. ``(N, 28, 28)`` ``uint8``.

    Returns
    -------
    mean, std : float
        The mean and the population standard deviation, accumulated in float64.

    Notes
    -----
    Computed in two passes over blocks of examples, so that no full-size float temporary is
    made: the memory rule allows one float copy of the data set at most.

    Examples
    --------
    >>> import numpy as np
    >>> mean_std(np.array([[0, 2], [4, 6]], dtype=np.uint8))
    (3.0, 2.23606797749979)
    """
    x = _numeric(images, "mean_std")
    flat = x.reshape(-1) if x.flags.c_contiguous else x.ravel()
    n = flat.size
    total = 0.0
    for i in range(0, n, _BLOCK_ELEMS):
        total += float(np.sum(flat[i : i + _BLOCK_ELEMS], dtype=np.float64))
    mean = total / n
    sq = 0.0
    for i in range(0, n, _BLOCK_ELEMS):
        block = flat[i : i + _BLOCK_ELEMS].astype(np.float64)
        block -= mean
        sq += float(np.dot(block, block))
    return mean, math.sqrt(sq / n)


def normalize(
    images: npt.ArrayLike,
    *,
    mean: float | None = None,
    std: float | None = None,
    dtype: npt.DTypeLike = "float32",
    copy: bool = True,
) -> tuple[np.ndarray, float, float]:
    """Shift and scale images to zero mean and unit variance: ``(x - mean) / std``.

    Notes section 2.1 (after LeCun et al., "Efficient BackProp"): inputs with zero mean and unit
    variance speed up learning. The statistics are scalars over all pixels of the *training* set;
    pass the returned ``mean`` and ``std`` back in to normalise the test set with the same
    transformation::

        x_train, mean, std = normalize(ds.train_images)
        x_test, _, _ = normalize(ds.test_images, mean=mean, std=std)

    Parameters
    ----------
    images : array_like
        Integer (e.g. ``uint8``) or float images of any shape.
    mean, std : float, optional
        Statistics to use; both computed from ``images`` by :func:`mean_std` when not given
        (give both or neither).
    dtype : dtype, default "float32"
        Float dtype of the result.
    copy : bool, default True
        With ``False``, an ``images`` array that already has ``dtype`` is normalised in place
        and returned (no second float copy). Integer images are always converted, once.

    Returns
    -------
    x : numpy.ndarray
        Normalised images, ``dtype``, same shape.
    mean, std : float
        The statistics used.

    Raises
    ------
    DatasetError
        If only one of ``mean`` and ``std`` is given, ``std`` is not positive and finite (e.g.
        all pixels equal), or ``dtype`` is not a float dtype.

    Notes
    -----
    Memory: one float array of the data set's size is allocated (the result) at most; the
    arithmetic is done in place on it.

    Examples
    --------
    >>> import numpy as np
    >>> x, mean, std = normalize(np.array([[[0, 2], [4, 6]]], dtype=np.uint8))
    >>> x.dtype.name, mean, float(x.mean())
    ('float32', 3.0, 0.0)
    """
    dt = _float_dtype(dtype, "normalize")
    x = _numeric(images, "normalize")
    if (mean is None) != (std is None):
        raise DatasetError(
            "normalize: give both mean and std (the training set's statistics) or neither, "
            f"got mean={mean!r}, std={std!r}"
        )
    if mean is None or std is None:
        mean, std = mean_std(x)
    mean, std = float(mean), float(std)
    if not math.isfinite(mean):
        raise DatasetError(f"normalize: mean must be finite, got {mean}")
    if not (math.isfinite(std) and std > 0):
        raise DatasetError(
            f"normalize: std must be finite and > 0, got {std}"
            + (" (all pixels are equal)" if std == 0 else "")
        )
    out = x.astype(dt, copy=copy)
    out -= dt.type(mean)
    out /= dt.type(std)
    return out, mean, std


def scale01(images: npt.ArrayLike, dtype: npt.DTypeLike = "float32") -> np.ndarray:
    """Map ``uint8`` grey levels 0..255 to floats in [0, 1]: ``x / 255``.

    This is DeepLearnToolbox's preprocessing (``double(x) / 255``), an alternative to
    :func:`normalize` (notes section 2.1).

    Parameters
    ----------
    images : array_like
        ``uint8`` images of any shape.
    dtype : dtype, default "float32"
        Float dtype of the result.

    Returns
    -------
    numpy.ndarray
        The scaled images; one new float array, divided in place.

    Raises
    ------
    DatasetError
        If ``images`` is not ``uint8`` (floats have presumably been scaled already) or
        ``dtype`` is not a float dtype.

    Examples
    --------
    >>> import numpy as np
    >>> scale01(np.array([0, 51, 255], dtype=np.uint8)).tolist()
    [0.0, 0.20000000298023224, 1.0]
    """
    dt = _float_dtype(dtype, "scale01")
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise DatasetError(f"scale01: expected uint8 grey levels 0..255, got dtype {x.dtype}")
    out = x.astype(dt)
    out /= dt.type(255)
    return out


def one_hot(
    labels: npt.ArrayLike,
    num_classes: int,
    *,
    low: float = 0.0,
    high: float = 1.0,
    dtype: npt.DTypeLike = "float32",
) -> np.ndarray:
    """Encode class labels as one-of-c target vectors, ``(N, num_classes)``.

    Row ``n`` is ``low`` everywhere except ``high`` in column ``labels[n]``. The default 0/1
    coding suits sigmoid or softmax outputs; ``low=-1`` gives the +-1 coding for tanh outputs
    (notes section 2.1).

    Parameters
    ----------
    labels : array_like
        ``(N,)`` integer labels in ``[0, num_classes)``.
    num_classes : int
        Number of classes c >= 1.
    low, high : float, default 0.0 and 1.0
        Target values for the other classes and for the labelled class.
    dtype : dtype, default "float32"
        Float dtype of the result.

    Returns
    -------
    numpy.ndarray
        ``(N, num_classes)`` targets.

    Raises
    ------
    DatasetError
        If ``labels`` is not a 1-d integer array, ``num_classes`` is not a positive int, or a
        label is out of range (the message names the first bad value, its index and the range).

    Examples
    --------
    >>> one_hot([2, 0], 3).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    >>> one_hot([1], 3, low=-1.0).tolist()      # the +-1 coding for tanh outputs
    [[-1.0, 1.0, -1.0]]
    """
    dt = _float_dtype(dtype, "one_hot")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise DatasetError(f"one_hot: num_classes must be an int, got {num_classes!r}")
    if num_classes < 1:
        raise DatasetError(f"one_hot: num_classes must be >= 1, got {num_classes}")
    y = np.asarray(labels)
    if y.ndim != 1:
        raise DatasetError(f"one_hot: expected labels of shape (N,), got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DatasetError(f"one_hot: expected integer labels, got dtype {y.dtype}")
    _labels_check(y, int(num_classes), "one_hot", what="label")
    out = np.full((y.shape[0], int(num_classes)), low, dtype=dt)
    out[np.arange(y.shape[0]), y] = high
    return out


def pad(
    images: npt.ArrayLike,
    to: int | tuple[int, int] = 32,
    *,
    value: float = 0.0,
    dtype: npt.DTypeLike | None = None,
) -> np.ndarray:
    """Pad images with a constant border, centred, to ``to`` x ``to`` (28x28 -> 32x32 for LeNet-5).

    LeCun et al. (1998) pad MNIST's 28x28 digits to 32x32 so that stroke ends reach the centre
    of the top feature detectors' receptive fields; the border is the background value, which
    after :func:`normalize` is ``-mean / std`` (pass it as ``value``), or 0 before it.

    Parameters
    ----------
    images : array_like
        ``(N, H, W)`` or ``(N, C, H, W)`` images with ``H, W <= to``.
    to : int or (int, int), default 32
        Output height and width. When ``to - H`` is odd the extra row goes at the bottom (and
        the extra column at the right).
    value : float, default 0.0
        The border value.
    dtype : dtype, optional
        Dtype of the result; default that of ``images``. Padding ``uint8`` images first and
        normalising afterwards keeps one float copy only (see the module docstring).

    Returns
    -------
    numpy.ndarray
        ``(N, to, to)`` or ``(N, C, to, to)``; allocated once and filled.

    Raises
    ------
    DatasetError
        If the images are not 3-d or 4-d, larger than ``to``, or ``value`` cannot be stored in
        the result's integer dtype.

    Examples
    --------
    >>> import numpy as np
    >>> pad(np.ones((1, 28, 28), dtype=np.uint8)).shape    # LeCun's 32x32 MNIST
    (1, 32, 32)
    """
    x = np.asarray(images)
    if x.ndim not in (3, 4):
        raise DatasetError(
            f"pad: expected images of shape (N, H, W) or (N, C, H, W), got shape {x.shape}"
        )
    if isinstance(to, int | np.integer) and not isinstance(to, bool):
        th, tw = int(to), int(to)
    elif (
        isinstance(to, tuple)
        and len(to) == 2
        and all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in to)
    ):
        th, tw = int(to[0]), int(to[1])
    else:
        raise DatasetError(f"pad: to must be an int or a pair of ints, got {to!r}")
    h, w = x.shape[-2], x.shape[-1]
    if h > th or w > tw:
        raise DatasetError(f"pad: images are {h}x{w}, larger than the target {th}x{tw}")
    dt = x.dtype if dtype is None else np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        if not (float(value).is_integer() and info.min <= value <= info.max):
            raise DatasetError(
                f"pad: value {value!r} cannot be stored in {dt} images (expected an integer in "
                f"[{info.min}, {info.max}]); normalise first or pass dtype='float32'"
            )
    out = np.full((*x.shape[:-2], th, tw), value, dtype=dt)
    top, left = (th - h) // 2, (tw - w) // 2
    out[..., top : top + h, left : left + w] = x
    return out


def batches(
    n: int,
    batch_size: int,
    *,
    rng: np.random.Generator | int | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> Iterator[np.ndarray]:
    """Yield the example indices of each mini-batch of one epoch over ``n`` examples.

    Index the host arrays with each batch and move only that batch to the device::

        for idx in batches(len(y), 50, rng=rng):
            xb, yb = backend.asarray(x[idx]), backend.asarray(y[idx])

    Parameters
    ----------
    n : int
        Number of examples (>= 0).
    batch_size : int
        Examples per batch (>= 1); the last batch may be smaller unless ``drop_last``.
    rng : numpy.random.Generator or int, optional
        Source of the permutation when ``shuffle``; an int seeds a new generator, None uses a
        fresh unseeded one.
    shuffle : bool, default True
        Visit the examples in a random permutation (otherwise in order).
    drop_last : bool, default False
        Skip a final batch smaller than ``batch_size``.

    Yields
    ------
    numpy.ndarray
        ``int64`` indices of one batch; over the epoch every index in ``range(n)`` appears
        exactly once (except the dropped remainder).

    Raises
    ------
    DatasetError
        If ``n`` is negative or ``batch_size`` < 1 (raised at the call, not at the first
        iteration).

    Examples
    --------
    >>> [b.tolist() for b in batches(5, 2, shuffle=False)]
    [[0, 1], [2, 3], [4]]
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise DatasetError(f"batches: n must be an int >= 0, got {n!r}")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        raise DatasetError(f"batches: batch_size must be an int >= 1, got {batch_size!r}")
    if rng is not None and not isinstance(rng, np.random.Generator | int | np.integer):
        raise DatasetError(
            f"batches: rng must be a numpy.random.Generator, an int or None, got {rng!r}"
        )
    n, batch_size = int(n), int(batch_size)
    if shuffle:
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        order = gen.permutation(n).astype(np.int64, copy=False)
    else:
        order = np.arange(n, dtype=np.int64)
    return _batch_iter(order, batch_size, drop_last)


def _batch_iter(order: np.ndarray, batch_size: int, drop_last: bool) -> Iterator[np.ndarray]:
    n = order.shape[0]
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
