"""An unbuilt layer has no shapes: ``input_shape`` and ``output_shape`` are ``None`` until
:meth:`Layer.build` (issue 22: the quarter campaign of main 15fdaa2 found this unheld)."""

from __future__ import annotations

import pytest

from anycnn import Convolution, Flatten, FullyConnected, Subsampling


# The layers are made inside the test, not at collection: mutmut collects once and then runs each
# mutant's tests in a fork, so a layer made at collection ran the unmutated __init__.
@pytest.mark.parametrize(
    "make",
    [lambda: Convolution(2, 3), lambda: Subsampling(2), Flatten, lambda: FullyConnected(3)],
    ids=["conv", "subsample", "flatten", "dense"],
)
def test_an_unbuilt_layer_has_no_shapes(make):
    layer = make()
    assert layer.input_shape is None
    assert layer.output_shape is None
