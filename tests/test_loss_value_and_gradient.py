"""A training step's loss: ``Loss.value_and_gradient`` (one log-softmax for the cross-entropy,
``Network.compute_gradients`` and the training loop's step) gives the bits of ``value`` and
``gradient``, and never bypasses a replaced ``gradient``."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
def test_value_and_gradient_give_the_bits_of_value_and_gradient(loss):
    from anycnn.layers.losses import get_loss

    rng = np.random.default_rng(2)
    y, t = rng.standard_normal((7, 10)), np.eye(10)[rng.integers(0, 10, 7)]
    fn = get_loss(loss)
    value, gradient = fn.value_and_gradient(y, t)
    assert value.tobytes() == fn.value(y, t).tobytes()
    assert gradient.tobytes() == fn.gradient(y, t).tobytes()


def test_a_replaced_gradient_is_still_called():
    """A subclass's or an instance's own gradient is what a step back-propagates."""
    from anycnn.layers.losses import CrossEntropy

    class Doubled(CrossEntropy):
        def gradient(self, y, t):
            return super().gradient(y, t) * 2.0

    rng = np.random.default_rng(3)
    y, t = rng.standard_normal((4, 10)), np.eye(10)[rng.integers(0, 10, 4)]
    plain = CrossEntropy()
    np.testing.assert_array_equal(Doubled().value_and_gradient(y, t)[1], plain.gradient(y, t) * 2)
    patched = CrossEntropy()
    patched.gradient = lambda y, t: plain.gradient(y, t) * 3.0
    np.testing.assert_array_equal(patched.value_and_gradient(y, t)[1], plain.gradient(y, t) * 3)
