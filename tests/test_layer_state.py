"""An unbuilt layer has no shapes: ``input_shape`` and ``output_shape`` are ``None`` until
:meth:`Layer.build` (issue 22: the quarter campaign of main 15fdaa2 found this unheld)."""

from __future__ import annotations

import pytest

from anycnn import Convolution, Flatten, FullyConnected, Subsampling


@pytest.mark.parametrize("layer", [Convolution(2, 3), Subsampling(2), Flatten(), FullyConnected(3)])
def test_an_unbuilt_layer_has_no_shapes(layer):
    assert layer.input_shape is None
    assert layer.output_shape is None
