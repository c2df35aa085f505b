"""Augmentation of training batches on the host: random shifts along the last axis, and random
time reversals.

A time series classified by a convolutional network should keep its class when it starts a few
samples earlier or later; with training sets of a few dozen series (the UCR archive's ArrowHead:
36), showing each series at a new offset every pass is the cheapest guard against a network that
learns where a pattern is instead of what it is. :class:`Shift` moves every example by a whole
number of samples drawn uniformly in ``[-s, s]`` (``s = round(fraction * length)``), filling the
samples it vacates with the first or last value (the series continues as it began or ended).

With ``reverse=p`` each example is also read backwards (``x[..., ::-1]``) with probability
``p``, before its shift: for series that trace an outline (the UCR archive's ArrowHead and
OSULeaf are the distance from a shape's centre along its contour), the reversed series is the
outline of the mirrored shape, an example of the same class.

The offsets of a pass are drawn once for the whole training set from a generator seeded with
``(seed, epoch)``, and each batch takes those of its examples: the same offsets whatever the
batch size, the order of the batches, the number of processes (each takes its slice of a global
batch) or a resume in the middle of a run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Shift", "augmentation_from_config"]


@dataclass(frozen=True)
class Shift:
    """Random shifts of every example by up to ``fraction`` of its length along the last axis,
    after a time reversal with probability ``reverse``.

    >>> import numpy as np
    >>> shift = Shift(0.25)
    >>> shift.apply(np.arange(8.0).reshape(1, 8), np.array([2]))     # 2 later, edge-filled
    array([[0., 0., 0., 1., 2., 3., 4., 5.]])
    >>> shift.apply(np.arange(8.0).reshape(1, 8), np.array([-1]))
    array([[1., 2., 3., 4., 5., 6., 7., 7.]])
    >>> Shift(0.25, reverse=0.5).apply(np.arange(8.0).reshape(1, 8), np.array([[1, 1]]))
    array([[7., 7., 6., 5., 4., 3., 2., 1.]])
    >>> shift.offsets(5, 8, seed=0, epoch=0).tolist() == shift.offsets(5, 8, 0, 0).tolist()
    True
    """

    fraction: float
    reverse: float = 0.0

    def __post_init__(self) -> None:
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ValueError(f"Shift: fraction must be a number in [0, 1), got {fraction!r}")
        if not 0 <= float(fraction) < 1:
            raise ValueError(f"Shift: fraction must be in [0, 1), got {fraction!r}")
        reverse = self.reverse
        if isinstance(reverse, bool) or not isinstance(reverse, int | float):
            raise ValueError(f"Shift: reverse must be a number in [0, 1], got {reverse!r}")
        if not 0 <= float(reverse) <= 1:
            raise ValueError(f"Shift: reverse must be in [0, 1], got {reverse!r}")

    def largest(self, length: int) -> int:
        """The largest shift for examples ``length`` samples long."""
        return int(round(float(self.fraction) * length))

    def offsets(self, n: int, length: int, seed: int, epoch: int) -> np.ndarray:
        """The offsets of pass ``epoch`` for a training set of ``n`` examples, one per example
        (``int64``), from a generator seeded with ``(seed, epoch)``. With ``reverse`` > 0, an
        ``(n, 2)`` array: the same shifts, and 1 where the example is reversed (drawn from a
        second generator, so the shifts do not depend on ``reverse``)."""
        s = self.largest(length)
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5817, int(epoch)])
        shifts = rng.integers(-s, s + 1, size=n, dtype=np.int64)
        if not self.reverse:
            return shifts
        flips = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5818, int(epoch)]).random(n)
        return np.stack([shifts, (flips < float(self.reverse)).astype(np.int64)], axis=1)

    def apply(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Each example of ``images`` (``(N, ..., L)``) moved by its offset along the last axis
        (positive: later), the vacated samples filled with the nearest kept one; with
        ``(N, 2)`` offsets (:meth:`offsets` with ``reverse``), the examples whose second column
        is 1 reversed along the last axis first. A new array; ``images`` is left as it is."""
        images = np.asarray(images)
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.shape not in ((images.shape[0],), (images.shape[0], 2)):
            raise ValueError(
                f"Shift: {offsets.shape[0] if offsets.ndim else 'no'} offsets for "
                f"{images.shape[0]} examples; expected one per example, shape "
                f"({images.shape[0]},) or ({images.shape[0]}, 2) with reversals, got "
                f"{offsets.shape}"
            )
        if offsets.ndim == 2:
            flipped = (offsets[:, 1] == 1).reshape((-1,) + (1,) * (images.ndim - 1))
            images = np.where(flipped, images[..., ::-1], images)
            offsets = offsets[:, 0]
        length = images.shape[-1]
        source = np.clip(np.arange(length)[None, :] - offsets[:, None], 0, length - 1)
        flat = images.reshape(images.shape[0], -1, length)
        moved = np.take_along_axis(flat, source[:, None, :], axis=2)
        return moved.reshape(images.shape)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"kind": "shift", "fraction": float(self.fraction)}
        if self.reverse:
            config["reverse"] = float(self.reverse)
        return config


def augmentation_from_config(config: Any) -> Shift | None:
    """A :class:`Shift` from its :meth:`Shift.config` (None, or a fraction and a reversal
    probability of 0: none)."""
    if config is None:
        return None
    if isinstance(config, Shift):
        return config if config.fraction or config.reverse else None
    if not isinstance(config, dict) or config.get("kind") != "shift":
        raise ValueError(
            f"augmentation: expected {{'kind': 'shift', 'fraction': f}}, got {config!r}"
        )
    shift = Shift(config.get("fraction", 0.0), config.get("reverse", 0.0))
    return shift if shift.fraction or shift.reverse else None
