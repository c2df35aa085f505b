"""Augmentation of training batches on the host: random shifts along the last axis.

A time series classified by a convolutional network should keep its class when it starts a few
samples earlier or later; with training sets of a few dozen series (the UCR archive's ArrowHead:
36), showing each series at a new offset every pass is the cheapest guard against a network that
learns where a pattern is instead of what it is. :class:`Shift` moves every example by a whole
number of samples drawn uniformly in ``[-s, s]`` (``s = round(fraction * length)``), filling the
samples it vacates with the first or last value (the series continues as it began or ended).

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
    """Random shifts of every example by up to ``fraction`` of its length along the last axis.

    >>> import numpy as np
    >>> shift = Shift(0.25)
    >>> shift.apply(np.arange(8.0).reshape(1, 8), np.array([2]))     # 2 later, edge-filled
    array([[0., 0., 0., 1., 2., 3., 4., 5.]])
    >>> shift.apply(np.arange(8.0).reshape(1, 8), np.array([-1]))
    array([[1., 2., 3., 4., 5., 6., 7., 7.]])
    >>> shift.offsets(5, 8, seed=0, epoch=0).tolist() == shift.offsets(5, 8, 0, 0).tolist()
    True
    """

    fraction: float

    def __post_init__(self) -> None:
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ValueError(f"Shift: fraction must be a number in [0, 1), got {fraction!r}")
        if not 0 <= float(fraction) < 1:
            raise ValueError(f"Shift: fraction must be in [0, 1), got {fraction!r}")

    def largest(self, length: int) -> int:
        """The largest shift for examples ``length`` samples long."""
        return int(round(float(self.fraction) * length))

    def offsets(self, n: int, length: int, seed: int, epoch: int) -> np.ndarray:
        """The offsets of pass ``epoch`` for a training set of ``n`` examples, one per example
        (``int64``), from a generator seeded with ``(seed, epoch)``."""
        s = self.largest(length)
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x5817, int(epoch)])
        return rng.integers(-s, s + 1, size=n, dtype=np.int64)

    def apply(self, images: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Each example of ``images`` (``(N, ..., L)``) moved by its offset along the last axis
        (positive: later), the vacated samples filled with the nearest kept one. A new array;
        ``images`` is left as it is."""
        images = np.asarray(images)
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.shape != (images.shape[0],):
            raise ValueError(
                f"Shift: {offsets.shape[0] if offsets.ndim else 'no'} offsets for "
                f"{images.shape[0]} examples; expected one per example"
            )
        length = images.shape[-1]
        source = np.clip(np.arange(length)[None, :] - offsets[:, None], 0, length - 1)
        flat = images.reshape(images.shape[0], -1, length)
        moved = np.take_along_axis(flat, source[:, None, :], axis=2)
        return moved.reshape(images.shape)

    def config(self) -> dict[str, Any]:
        return {"kind": "shift", "fraction": float(self.fraction)}


def augmentation_from_config(config: Any) -> Shift | None:
    """A :class:`Shift` from its :meth:`Shift.config` (None or a fraction of 0: none)."""
    if config is None:
        return None
    if isinstance(config, Shift):
        return config if config.fraction else None
    if not isinstance(config, dict) or config.get("kind") != "shift":
        raise ValueError(
            f"augmentation: expected {{'kind': 'shift', 'fraction': f}}, got {config!r}"
        )
    shift = Shift(config.get("fraction", 0.0))
    return shift if shift.fraction else None
