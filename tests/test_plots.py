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


def test_signals_are_drawn_as_curves(drawn, tmp_path):
    """A 1-D network (issue 18): the input and every map of the convolution and subsampling
    stages are curves, one per cell, each the map's values; a layer of one-sample maps and the
    output are rows of cells."""
    from anycnn import Convolution, Flatten, FullyConnected, Network, Subsampling

    net = Network(
        [
            Convolution(8, 9, padding="same", activation="tanh"),
            Subsampling(4, "sum", activation="tanh"),
            Convolution(6, 5, activation="tanh"),
            Subsampling(11, "mean", trainable=False),
            Flatten(),
            FullyConnected(3, activation="identity"),
        ],
        (1, 60),
        dtype="float64",
    )
    example = np.sin(np.linspace(0, 6, 60))[None, None]
    plots.feature_maps(net, example, tmp_path / "f.png", max_maps=4)
    figure = drawn[-1]
    cells = {a.get_ylabel().split("\n")[0]: a for a in figure.axes if a.get_ylabel()}
    assert list(cells) == ["input", "conv1", "sub2", "conv3", "sub4", "fc5"]
    np.testing.assert_allclose(cells["input"].get_lines()[0].get_ydata(), example[0, 0])
    x = net.backend.asarray(example, dtype="float64")
    first = net.backend.to_host(net.layers[0].forward(x))[0, 0]
    np.testing.assert_allclose(cells["conv1"].get_lines()[0].get_ydata(), first)
    assert not cells["conv1"].get_images()
    assert len([a for a in figure.axes if a.get_lines()]) == 1 + 4 * 3  # input, 4 maps x 3
    assert cells["sub4"].get_images()[0].get_array().shape == (1, 6)  # (6, 1): one cell a map
    assert cells["fc5"].get_images()[0].get_array().shape == (1, 3)

    plots.kernels(net, tmp_path / "k.png")
    kernel = net.backend.to_host(net.parameters()["conv1.kernel"])
    tiles = [a for a in drawn[-1].axes if a.get_lines()]
    assert len(tiles) == 8
    np.testing.assert_allclose(tiles[3].get_lines()[-1].get_ydata(), kernel[3, 0])
    assert "(9)" in drawn[-1]._suptitle.get_text()


def test_volumes_are_drawn_as_their_middle_slice(drawn, tmp_path):
    from anycnn import Convolution, Flatten, FullyConnected, Network

    net = Network(
        [Convolution(2, (3, 2, 2)), Flatten(), FullyConnected(2)], (1, 5, 4, 4), dtype="float64"
    )
    example = np.random.default_rng(0).standard_normal((1, 1, 5, 4, 4))
    plots.feature_maps(net, example, tmp_path / "f.png")
    shown = [a.get_images()[0].get_array() for a in drawn[-1].axes if a.get_ylabel()]
    np.testing.assert_allclose(shown[0], example[0, 0, 2])
    assert shown[1].shape == (3, 3)
    plots.kernels(net, tmp_path / "k.png")
    kernel = net.backend.to_host(net.parameters()["conv1.kernel"])
    np.testing.assert_allclose(drawn[-1].axes[1].get_images()[0].get_array(), kernel[1, 0, 1])
    assert "middle of 3 depth slices" in drawn[-1]._suptitle.get_text()
