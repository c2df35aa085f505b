"""What the PNG figures show (issue 13, bug 7): checked on the drawn matplotlib figure, caught
just before it is saved -- the title inside the canvas, labelled ticks on every axis, whole
epochs, and no map drawn as a constant square."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")  # the test extra installs it; [plot] for users

from anycnn import models, plots  # noqa: E402


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, drawn, in order."""
    figures = []
    real = plots._save

    def keep(figure, path):
        figure.canvas.draw()
        figures.append(figure)
        return real(figure, path)

    monkeypatch.setattr(plots, "_save", keep)
    return figures


def _inside(figure, artist):
    box = artist.get_window_extent(figure.canvas.get_renderer())
    width, height = figure.canvas.get_width_height()
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height


def _labelled_ticks(axis):
    low, high = sorted(axis.get_view_interval())
    return [
        t
        for t in axis.get_major_ticks()
        if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high
    ]


@pytest.mark.parametrize("layer", ["conv1", "conv3"])
def test_kernels_title_fits(drawn, tmp_path, layer):
    net = models.lenet5(backend="cpu")
    plots.kernels(net, tmp_path / "k.png", layer=layer)
    figure = drawn[-1]
    assert _inside(figure, figure._suptitle), figure._suptitle.get_text()


@pytest.mark.parametrize("epochs", [1, 2, 8])
def test_learning_curves_have_labelled_ticks_and_whole_epochs(drawn, tmp_path, epochs):
    history = [
        {
            "epoch": e,
            "train_error": 0.45 / e,
            "test_error": 0.40 / e,
            "train_loss": 2.3 / e,
            "test_loss": 2.29 / e,
        }
        for e in range(1, epochs + 1)
    ]
    plots.learning_curves(history, tmp_path / "c.png")
    for axes in drawn[-1].axes:
        assert len(_labelled_ticks(axes.yaxis)) >= 2, axes.get_ylabel()
        ticks = _labelled_ticks(axes.xaxis)
        assert ticks and all(float(t.get_loc()).is_integer() for t in ticks)
        assert {int(t.get_loc()) for t in ticks} <= set(range(1, epochs + 1))


def test_feature_maps_show_every_layer_without_constant_squares(drawn, tmp_path):
    """LeNet-5's C5 maps are 1 x 1: drawn as one row of cells, not 120 black squares."""
    net = models.lenet5(backend="cpu")
    example = np.random.default_rng(0).uniform(0, 1, (1, 1, 32, 32)).astype(np.float32)
    plots.feature_maps(net, example, tmp_path / "f.png")
    images = [image for axes in drawn[-1].axes for image in axes.get_images()]
    assert images
    for image in images:
        assert image.norm.vmin < image.norm.vmax
    labels = [axes.get_ylabel() for axes in drawn[-1].axes if axes.get_ylabel()]
    assert any(label.startswith("conv5\n(120, 1, 1)") for label in labels)
    conv5 = [a for a in drawn[-1].axes if a.get_ylabel().startswith("conv5")]
    assert len(conv5) == 1 and conv5[0].get_images()[0].get_array().shape == (1, 120)
