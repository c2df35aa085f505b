"""PNG figures: learning curves, first-layer kernels, and the feature maps of one example.

matplotlib is optional (``pip install "anycnn[plot]"``) and imported only when a figure is
drawn. Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``),
without pyplot: no window, no global backend switch, safe in threads and on headless machines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "MatplotlibMissingError",
    "feature_maps",
    "kernels",
    "learning_curves",
    "require_matplotlib",
    "save_plots",
]


class MatplotlibMissingError(ImportError):
    """matplotlib is not installed; the message says how to install it.

    Examples
    --------
    An :class:`ImportError`, so code that makes figures optional catches either:

    >>> from anycnn.training.plots import MatplotlibMissingError
    >>> issubclass(MatplotlibMissingError, ImportError)
    True
    """


def require_matplotlib() -> None:
    """Raise :class:`MatplotlibMissingError` (saying how to install it) unless matplotlib can
    draw here: callers check before a long run, not after it.

    Examples
    --------
    >>> from anycnn.training.plots import require_matplotlib
    >>> require_matplotlib()          # matplotlib is installed: nothing happens
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as error:
        raise MatplotlibMissingError(
            f'plots need matplotlib ({error}); install it with: pip install "anycnn[plot]"'
        ) from None


def _figure(width: float, height: float, layout: str | None = None) -> Any:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout=layout)  # type: ignore[arg-type]
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Write the figure the way checkpoints are written (a temporary file, then a rename:
    :func:`anycnn.training.checkpoint.atomic_write`): a symlink at ``path`` is replaced, never
    followed, so ``plots/kernels.png -> ../victim.txt`` cannot overwrite ``victim.txt``."""
    from anycnn.training.checkpoint import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda stream: figure.savefig(stream, format="png"), what="plot")


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def learning_curves(history: Sequence[Any], path: str | os.PathLike[str]) -> Path:
    """Train and test error (%) and mean loss per epoch, side by side.

    ``history`` holds :class:`anycnn.training.loop.EpochRecord` objects or their dicts (the metrics
    JSON's ``history``). Errors are drawn on a log scale when they span a decade or more, on a
    linear one otherwise (a log axis inside one decade has no labelled tick); the epoch axis has
    whole epochs only, with half an epoch of room each side.

    Examples
    --------
    >>> import tempfile
    >>> from anycnn.training.plots import learning_curves
    >>> history = [{"epoch": 1, "train_error": 0.2, "test_error": 0.15, "train_loss": 0.6},
    ...            {"epoch": 2, "train_error": 0.1, "test_error": 0.09, "train_loss": 0.3}]
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = learning_curves(history, f"{tmp}/curves.png")
    ...     print(path.name, path.read_bytes()[1:4])
    curves.png b'PNG'
    """
    if not history:
        raise ValueError("learning_curves: the history is empty")
    epochs = [_field(r, "epoch") for r in history]
    figure = _figure(10, 4)
    errors, losses = figure.subplots(1, 2)
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator, NullFormatter

    shown: list[float] = []
    for name, label in (("train_error", "train (running)"), ("test_error", "test")):
        values = [_field(r, name) for r in history]
        if all(v is not None for v in values):
            errors.plot(epochs, [100 * v for v in values], marker="o", label=label)
            shown += [100 * v for v in values]
    errors.set_xlabel("epoch")
    errors.set_ylabel("error (%)")
    positive = [v for v in shown if v > 0]
    if positive and len(positive) == len(shown) and max(positive) >= 10 * min(positive):
        errors.set_yscale("log")
        errors.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        errors.yaxis.set_minor_formatter(NullFormatter())
    errors.grid(True, which="both", alpha=0.3)
    errors.legend()
    for name, label in (("train_loss", "train"), ("test_loss", "test")):
        values = [_field(r, name) for r in history]
        if all(v is not None for v in values):
            losses.plot(epochs, values, marker="o", label=label)
    losses.set_xlabel("epoch")
    losses.set_ylabel("mean loss")
    losses.grid(True, alpha=0.3)
    losses.legend()
    for axis in (errors, losses):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axis.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        axis.margins(y=0.15)
    figure.tight_layout()
    return _save(figure, path)


def _grid(count: int) -> tuple[int, int]:
    columns = min(count, max(1, math.ceil(math.sqrt(count))))
    return math.ceil(count / columns), columns


def kernels(network: Any, path: str | os.PathLike[str], layer: str | None = None) -> Path:
    """The kernels of a convolution layer (the first one by default), one tile per
    (output map, input map) pair, each scaled symmetrically around 0. A layer with one input
    map has its kernels laid out in a near-square grid instead of one tall column. 1-D kernels
    are drawn as curves (weight against tap, on a common scale), 3-D ones as their middle slice
    along the depth (said in the title).

    Kernels are shown as stored, in the notes' MATLAB ``conv2`` orientation (flipped relative to
    cross-correlation).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from anycnn import Convolution, Flatten, FullyConnected, Network
    >>> net = Network([Convolution(2, 2), Flatten(), FullyConnected(2)], input_shape=(1, 4, 4),
    ...               dtype="float64")
    >>> from anycnn.training.plots import kernels
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(kernels(net, f"{tmp}/kernels.png").stat().st_size > 0)
    True
    """
    chosen = None
    for candidate in network.layers:
        if "kernel" in candidate.params and (layer is None or candidate.name == layer):
            chosen = candidate
            break
    if chosen is None:
        raise ValueError(f"kernels: no convolution layer {layer or ''} in {network.name}".strip())
    k = np.asarray(network.backend.to_host(chosen.params["kernel"]), dtype=np.float64)
    if getattr(chosen, "kernels", None) == "per_input":  # a learned combination: (C_in, *k)
        k = k[:, None]
    c_out, c_in = k.shape[:2]
    tiles = [(j, i) for j in range(c_out) for i in range(c_in)]
    rows, columns = _grid(c_out) if c_in == 1 else (c_out, c_in)
    # Room for the two-line title: at least 3.2 inches wide whatever the grid, 0.6 tall.
    height = 1.2 * rows + 0.9
    figure = _figure(max(1.2 * columns + 0.6, 3.2), height, layout="constrained")
    axes = np.atleast_2d(figure.subplots(rows, columns, squeeze=False)).reshape(-1)
    bound = float(np.abs(k).max()) or 1.0
    dims = k.ndim - 2
    for ax, (j, i) in zip(axes, tiles, strict=False):
        if dims == 1:  # a signal's kernel: weight against tap
            ax.axhline(0.0, color="0.8", linewidth=0.8)
            ax.plot(np.arange(k.shape[-1]), k[j, i], marker=".", color="C0")
            ax.set_ylim(-1.1 * bound, 1.1 * bound)
        else:
            tile = k[j, i] if dims == 2 else k[j, i, k.shape[2] // 2]
            ax.imshow(tile, cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(tiles) :]:
        ax.axis("off")
    shape = " x ".join(str(s) for s in k.shape[2:])
    slice_note = f", middle of {k.shape[2]} depth slices" if dims == 3 else ""
    figure.suptitle(
        f"{chosen.name} kernels ({shape}{slice_note})\n{c_out} x {c_in}, max |k| = {bound:.3g}",
        fontsize=10,
    )
    return _save(figure, path)


def feature_maps(
    network: Any, example: Any, path: str | os.PathLike[str], max_maps: int = 16
) -> Path:
    """One example through every layer: the input, then each layer's output maps, at most
    ``max_maps`` per layer. Vectors -- and layers of 1 x 1 maps, such as LeNet-5's C5 -- are
    drawn as one row of cells across the figure; each map is scaled to its own range (a constant
    map is mid grey, not black). Signals (1-D maps ``(C, L)``, a time series and the maps of a
    1-D network) are drawn as curves, one map per cell; volumes (3-D) as their middle slice
    along the depth.

    ``example`` is one preprocessed input, ``(1, *input_shape)`` or ``input_shape``, an array of
    the network's backend or NumPy.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from anycnn import Convolution, Flatten, FullyConnected, Network
    >>> net = Network([Convolution(2, 2), Flatten(), FullyConnected(2)], input_shape=(1, 4, 4),
    ...               dtype="float64")
    >>> from anycnn.training.plots import feature_maps
    >>> example = net.backend.asarray(np.ones((1, 1, 4, 4)), dtype="float64")
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(feature_maps(net, example, f"{tmp}/maps.png").name)
    maps.png
    """
    backend = network.backend
    x = example
    if isinstance(x, np.ndarray):
        x = backend.asarray(x, dtype=network.dtype_name)
    if tuple(x.shape) == tuple(network.input_shape):
        x = backend.xp.reshape(x, (1, *network.input_shape))
    network.check_input(x, "feature_maps")
    stages = [("input", np.asarray(backend.to_host(x), dtype=np.float64)[0])]
    for layer in network.layers:
        x = layer.forward(x)
        if type(layer).__name__ == "Flatten":
            continue
        stages.append((layer.name, np.asarray(backend.to_host(x), dtype=np.float64)[0]))

    def is_vector(value: np.ndarray) -> bool:
        return value.ndim == 1 or math.prod(value.shape[1:]) == 1

    def tile(value: np.ndarray) -> np.ndarray:  # (C, *spatial) -> what one cell shows per map
        return value[:, value.shape[1] // 2] if value.ndim == 4 else value

    columns = min(max_maps, max([s.shape[0] for _, s in stages if not is_vector(s)] or [1]))
    figure = _figure(1.1 * columns + 1.5, 1.2 * len(stages) + 0.5)
    grid = figure.add_gridspec(len(stages), columns)
    for row, (name, value) in enumerate(stages):
        label = f"{name}\n{tuple(value.shape)}"
        if is_vector(value):
            ax = figure.add_subplot(grid[row, :])
            cells = value.reshape(1, -1)
            ax.imshow(cells, cmap="gray", interpolation="nearest", aspect="auto", **_range(cells))
            _bare(ax, label)
            continue
        maps = tile(value)
        for col in range(columns):
            ax = figure.add_subplot(grid[row, col])
            if col >= min(maps.shape[0], max_maps):
                ax.axis("off")
                continue
            if maps.ndim == 2:  # a signal: a curve, scaled to its own range
                ax.plot(maps[col], color="C0", linewidth=0.8)
                low, high = _range(maps[col]).values()
                margin = 0.05 * (high - low)
                ax.set_ylim(low - margin, high + margin)
                ax.set_xlim(0, max(maps.shape[1] - 1, 1))
            else:
                ax.imshow(maps[col], cmap="gray", interpolation="nearest", **_range(maps[col]))
            _bare(ax, label if col == 0 else None)
    figure.suptitle(f"{network.name}: one example through every layer")
    return _save(figure, path)


def _range(image: np.ndarray) -> dict[str, float]:
    """imshow limits: the image's own range, or one around a constant image (mid grey)."""
    low, high = float(np.min(image)), float(np.max(image))
    if not low < high:
        low, high = low - 1.0, high + 1.0
    return {"vmin": low, "vmax": high}


def _bare(ax: Any, label: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if label is not None:
        ax.set_ylabel(label, fontsize=7)


def save_plots(
    directory: str | os.PathLike[str],
    *,
    network: Any = None,
    history: Sequence[Any] | None = None,
    example: Any = None,
) -> list[Path]:
    """Write what the arguments allow: ``learning_curves.png`` (history), ``kernels.png``
    (network) and ``feature_maps.png`` (network and example). Returns the files written.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from anycnn import Convolution, Flatten, FullyConnected, Network
    >>> net = Network([Convolution(2, 2), Flatten(), FullyConnected(2)], input_shape=(1, 4, 4),
    ...               dtype="float64")
    >>> from anycnn.training.plots import save_plots
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print([p.name for p in save_plots(tmp, network=net, example=np.zeros((1, 4, 4)))])
    ['kernels.png', 'feature_maps.png']
    """
    folder = Path(directory)
    written = []
    if history:
        written.append(learning_curves(history, folder / "learning_curves.png"))
    if network is not None:
        written.append(kernels(network, folder / "kernels.png"))
        if example is not None:
            written.append(feature_maps(network, example, folder / "feature_maps.png"))
    return written
