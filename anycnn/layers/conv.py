"""Convolution layers with input-map selections M_j (section 3.1 of the notes)."""

from __future__ import annotations

import itertools
import math
from typing import Any

import array_api_compat
import numpy as np

from anycnn.layers.activations import get_activation
from anycnn.layers.base import Array, BuildContext, Layer, Shape, Upsampled

# LeCun et al. 1998, Table I: which S2 maps (rows) each C3 map (columns) combines.
_LENET5_C3 = [
    "X...XXX..XXXX.XX",
    "XX...XXX..XXXX.X",
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
]

SELECTIONS = ("full", "lenet5", "pairs", "triplets", "random")


def lenet5_table() -> np.ndarray:
    """The C3 connection table of LeNet-5 as a boolean ``(16, 6)`` (C_out, C_in) array.

    Examples
    --------
    >>> from anycnn.layers import lenet5_table
    >>> table = lenet5_table()
    >>> table.shape, table.sum(axis=1).tolist()          # C3's maps take 3, 4 or 6 S2 maps
    ((16, 6), [3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4, 4, 4, 4, 4, 6])
    """
    return np.array([[c == "X" for c in row] for row in _LENET5_C3]).T.copy()  # bools


def selection_table(
    spec: Any,
    c_out: int,
    c_in: int,
    *,
    inputs_per_map: int = 3,
    seed: int | None = None,
    where: str = "Convolution",
) -> np.ndarray:
    """The boolean ``(C_out, C_in)`` input-map table ``M_j`` of a selection spec (section 3.1).

    ``spec`` is ``"full"`` (every input map), ``"lenet5"`` (LeCun's C3 table, 6 -> 16 maps),
    ``"pairs"`` / ``"triplets"`` (output map ``j`` takes the ``j``-th pair / triplet of input maps
    in lexicographic order, cycling when there are more output maps than combinations),
    ``"random"`` (``inputs_per_map`` distinct input maps per output map, drawn with ``seed``), or
    an explicit boolean table. Every output map must use at least one input map.

    Raises
    ------
    ValueError
        An unknown name, a table of the wrong shape, or an output map with no input.

    Examples
    --------
    >>> from anycnn.layers import selection_table
    >>> selection_table("pairs", 3, 3).astype(int).tolist()
    [[1, 1, 0], [1, 0, 1], [0, 1, 1]]
    """
    if isinstance(spec, str):
        if spec == "full":
            table = np.ones((c_out, c_in), dtype=bool)
        elif spec == "lenet5":
            if (c_out, c_in) != (16, 6):
                raise ValueError(
                    f"{where}: the 'lenet5' table connects 6 input maps to 16 output maps, "
                    f"got {c_in} -> {c_out}"
                )
            table = lenet5_table()
        elif spec in ("pairs", "triplets"):
            size = 2 if spec == "pairs" else 3
            combos = list(itertools.combinations(range(c_in), size))
            if not combos:
                raise ValueError(f"{where}: '{spec}' needs at least {size} input maps, got {c_in}")
            table = np.zeros((c_out, c_in), dtype=bool)
            for j in range(c_out):
                table[j, list(combos[j % len(combos)])] = True
        elif spec == "random":
            if not 1 <= inputs_per_map <= c_in:
                raise ValueError(
                    f"{where}: inputs_per_map must be in [1, {c_in}], got {inputs_per_map}"
                )
            rng = np.random.default_rng(seed)
            table = np.zeros((c_out, c_in), dtype=bool)
            for j in range(c_out):
                table[j, rng.choice(c_in, size=inputs_per_map, replace=False)] = True
        else:
            raise ValueError(
                f"{where}: unknown selection {spec!r}; use one of {', '.join(SELECTIONS)} "
                "or a boolean (C_out, C_in) table"
            )
        return table
    table = np.asarray(spec)
    if table.shape != (c_out, c_in):
        raise ValueError(
            f"{where}: the input-map table must have shape (C_out, C_in) = ({c_out}, {c_in}), "
            f"got {table.shape}"
        )
    if table.dtype != bool:
        if not np.isin(table, (0, 1)).all():
            raise ValueError(f"{where}: the input-map table must be boolean (or 0/1)")
        table = table.astype(bool)
    empty = np.flatnonzero(~table.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{where}: output map(s) {empty.tolist()} use no input map; every row of the "
            "input-map table needs at least one True"
        )
    return table.copy()


def to_cross_correlation(kernel: Array, dims: int = 2) -> Array:
    """Convert anycnn kernels (MATLAB ``conv2``, flipped) to cross-correlation weights.

    PyTorch's ``conv2d`` and most frameworks cross-correlate; the same layer in their layout has
    every kernel rotated by 180 degrees. Works on ``(..., kh, kw)`` arrays of any namespace.
    ``dims`` is the number of kernel axes, flipped all (the last ``dims`` axes): 1 for
    ``conv1d``'s ``(C_out, C_in, k)``, 3 for ``conv3d``'s ``(C_out, C_in, kd, kh, kw)``.

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import to_cross_correlation
    >>> k = anycnn.get_backend().asarray(np.arange(4.0).reshape(1, 1, 2, 2), "float64")
    >>> anycnn.get_backend().to_host(to_cross_correlation(k))[0, 0].tolist()   # rot180
    [[3.0, 2.0], [1.0, 0.0]]
    """
    xp = array_api_compat.array_namespace(kernel)
    return xp.flip(kernel, axis=tuple(range(-dims, 0)))


def from_cross_correlation(weight: Array, dims: int = 2) -> Array:
    """Convert cross-correlation weights (PyTorch layout) to anycnn kernels (rot180; every one of
    the last ``dims`` axes flipped).

    Examples
    --------
    >>> import numpy as np, anycnn
    >>> from anycnn.layers import from_cross_correlation, to_cross_correlation
    >>> k = anycnn.get_backend().asarray(np.arange(4.0).reshape(1, 1, 2, 2), "float64")
    >>> bool(anycnn.get_backend().xp.all(from_cross_correlation(to_cross_correlation(k)) == k))
    True
    """
    return to_cross_correlation(weight, dims)


PADDINGS = ("valid", "same")

#: What a layer's input is called, by number of spatial axes (Note [N dimensions] in anycnn.ops).
LAYOUTS = {1: "(C, L) signals", 2: "(C, H, W) maps", 3: "(C, D, H, W) volumes"}


def spatial_dims(layer: Layer, input_shape: Shape, pinned: int | None) -> int:
    """The number of spatial axes of a map layer's input ``(C, *spatial)``: 1, 2 or 3, or
    exactly ``pinned`` (``Convolution1D`` and friends). Raises the layer's error otherwise."""
    d = len(input_shape) - 1
    if pinned is not None and d != pinned:
        raise layer.error(f"expects {LAYOUTS[pinned]}, got input shape {tuple(input_shape)}")
    if d not in LAYOUTS:
        raise layer.error(
            f"expects (C, H, W) maps, got input shape {tuple(input_shape)} (1-D (C, L) signals "
            "and 3-D (C, D, H, W) volumes work too)"
        )
    return d


def check_dims(dims: Any, where: str) -> int | None:
    """``dims`` of a map layer: None (from the input shape) or 1, 2, 3."""
    if dims is None:
        return None
    if isinstance(dims, bool) or not isinstance(dims, int) or dims not in LAYOUTS:
        raise ValueError(f"{where}: dims must be 1, 2, 3 or None (from the input), got {dims!r}")
    return int(dims)


def kernel_sizes(kernel_size: Any, dims: int | None, where: str) -> tuple[int, ...]:
    """A kernel size spec as one int per spatial axis: an int is the same size along every axis
    (``dims`` of them, 2 until the input says otherwise), a tuple is taken as given."""
    if isinstance(kernel_size, int) and not isinstance(kernel_size, bool):
        sizes: tuple[Any, ...] = (kernel_size,) * (dims or 2)
    else:
        try:
            sizes = tuple(kernel_size)
        except TypeError:
            sizes = ()
    if (
        not 1 <= len(sizes) <= 3
        or (dims is not None and len(sizes) != dims)
        or any(isinstance(k, bool) or not isinstance(k, int | np.integer) for k in sizes)
    ):
        axes = f"{dims}" if dims else "1 to 3"
        raise ValueError(f"{where}: kernel_size must be an int or {axes} ints, got {kernel_size!r}")
    if min(sizes) < 1:
        raise ValueError(f"{where}: kernel_size must be positive, got {kernel_size!r}")
    return tuple(int(k) for k in sizes)


def sizes_str(sizes: Any) -> str:
    return "x".join(str(int(s)) for s in sizes)


def resolve_padding(padding: Any, kernel_size: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The zero rows / columns added on each side, one int per spatial axis, of a ``padding``
    spec: ``"valid"`` (none: the notes' convolution), ``"same"`` (``(k - 1) / 2`` along an axis
    of odd kernel size k, so the output has the input's size), an int (every axis) or one int
    per axis. Written for any number of spatial axes (the N-D layers take the same spec).

    Raises
    ------
    ValueError
        An unknown name, a negative or non-int amount, the wrong number of axes, or ``"same"``
        with an even kernel size (it would need more zeros on one side than on the other).
    """
    axes = len(kernel_size)
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * axes
        if padding == "same":
            even = [k for k in kernel_size if k % 2 == 0]
            if even:
                size = "x".join(map(str, kernel_size))
                raise ValueError(
                    f"{where}: padding='same' needs odd kernel sizes (the zeros go evenly on both "
                    f"sides), got a {size} kernel; give the padding as ints instead"
                )
            return tuple((k - 1) // 2 for k in kernel_size)
        raise ValueError(
            f"{where}: padding must be 'valid', 'same', an int or {axes} ints, got {padding!r}"
        )
    if isinstance(padding, int):
        amounts = (padding,) * axes
    elif isinstance(padding, tuple | list):
        amounts = tuple(padding)
    else:  # a float, None...: refused below (tuple() would raise a bare TypeError)
        amounts = ()
    if len(amounts) != axes or any(
        isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in amounts
    ):
        raise ValueError(
            f"{where}: padding must be 'valid', 'same', a non-negative int or {axes} of them, "
            f"got {padding!r}"
        )
    return tuple(int(p) for p in amounts)


class Convolution(Layer):
    """``x_j = f(sum_{i in M_j} x_i * k_ij + b_j)`` with 'valid' convolutions (section 3.1), of
    the maps zero-padded when asked.

    Parameters
    ----------
    maps : int
        Number of output maps ``C_out``.
    kernel_size : int or (int, int)
        ``(kh, kw)``; rectangular kernels (and maps) are fine. In 1-D and 3-D, one int per
        spatial axis (``k`` or ``(kd, kh, kw)``); an int is the same size along every axis.
    padding : "valid", "same", int or (int, int)
        Zero rows and columns added on each side of every input map before the convolution
        (PyTorch's ``conv2d(padding=...)``): ``"valid"`` (none, the notes' layer, the default),
        ``"same"`` (output maps of the input's size; odd kernel sizes only), ``p`` or
        ``(ph, pw)``. The output maps are ``(H + 2 ph - kh + 1, W + 2 pw - kw + 1)``.
    dims : {None, 1, 2, 3}
        The number of spatial axes. None (the default) takes it from the input shape when the
        network is built: ``(C, L)`` signals, ``(C, H, W)`` maps or ``(C, D, H, W)`` volumes,
        so the same layer list runs on any of them. :func:`Convolution1D` /
        :func:`Convolution2D` / :func:`Convolution3D` pin it, as PyTorch's ``Conv1d`` and
        Keras's ``Conv1D`` do, and refuse another input when the network is built.
    selection : str or bool array
        The input maps ``M_j`` of each output map; see :func:`selection_table`. Kernels outside
        the selection are not parameters: they stay zero and their gradient is zero.
    activation : str or Activation
    init : {"glorot", "lecun"}
        Uniform in ``+-sqrt(6 / (fan_in + fan_out))`` with ``fan_in = C_in kh kw`` and
        ``fan_out = C_out kh kw`` (DeepLearnToolbox), or in ``+-2.4 / F`` with ``F`` the number of
        inputs of a unit, ``|M_j| kh kw`` (LeCun et al. 1998). Biases start at zero.
    inputs_per_map, seed :
        For ``selection="random"``.

    Parameters of the layer: ``kernel`` ``(C_out, C_in, kh, kw)`` (``(C_out, C_in, *k)`` in N-D,
    every axis flipped as conv2 flips two), ``bias`` ``(C_out,)``.
    Back-propagation: ``delta = f'(u) o dE/dy``; the kernel gradient by eq. (7) in its rot180 /
    'valid' form (:func:`anycnn.ops.conv_kernel_grad`); the bias gradient is the sum of ``delta``
    over the batch and positions; ``dE/dx = sum_j conv2(delta_j, rot180(k_ij), 'full')`` (3.2.1).
    With padding, eq. (7) runs on the padded maps and ``dE/dx`` is that 'full' convolution
    cropped by ``(ph, pw)`` on each side (``Note [Zero padding]`` in :mod:`anycnn.ops`).
    Kernels follow MATLAB's ``conv2`` (flipped), as everywhere in anycnn: padding does not
    change that; :func:`to_cross_correlation` converts them for PyTorch.

    Examples
    --------
    >>> import numpy as np
    >>> from anycnn import Convolution, Network
    >>> net = Network([Convolution(4, 3, padding="same", selection="pairs", activation="tanh")],
    ...               input_shape=(3, 5, 5), dtype="float64")
    >>> layer = net.layers[0]
    >>> layer.output_shape, tuple(layer.params["kernel"].shape)
    ((4, 5, 5), (4, 3, 3, 3))
    >>> y = net.forward(net.backend.asarray(np.ones((2, 3, 5, 5)), dtype="float64"))
    >>> tuple(y.shape)
    (2, 4, 5, 5)
    """

    kind = "conv"

    def __init__(
        self,
        maps: int,
        kernel_size: int | tuple[int, ...],
        *,
        padding: str | int | tuple[int, ...] = "valid",
        selection: Any = "full",
        activation: Any = "sigmoid",
        init: str = "glorot",
        inputs_per_map: int = 3,
        seed: int | None = None,
        dims: int | None = None,
        name: str | None = None,
    ):
        super().__init__(name)
        if isinstance(maps, bool) or not isinstance(maps, int) or maps < 1:
            raise ValueError(f"Convolution: maps must be a positive int, got {maps!r}")
        self.dims = check_dims(dims, "Convolution")
        self._kernel_spec = kernel_size
        if init not in ("glorot", "lecun"):
            raise ValueError(f"Convolution: init must be 'glorot' or 'lecun', got {init!r}")
        self.maps = maps
        self.kernel_size = kernel_sizes(kernel_size, self.dims, "Convolution")
        self._padding_spec = padding
        self.pad = resolve_padding(padding, self.kernel_size, "Convolution")
        self.padding = padding if isinstance(padding, str) else self.pad
        # Passed to the ops only when there is padding, so that the unpadded calls stay those of
        # the notes' layer (and third-party backends without padding keep working for it).
        self._padding_args: tuple[tuple[int, ...], ...] = (self.pad,) if any(self.pad) else ()
        self.selection_spec = selection if isinstance(selection, str) else np.asarray(selection)
        self.activation = get_activation(activation)
        self.init, self.inputs_per_map, self.seed = init, inputs_per_map, seed
        self.table: np.ndarray | None = None
        self._selection: Array | None = None

    def _build(self, input_shape: Shape, context: BuildContext) -> Shape:
        d = spatial_dims(self, input_shape, self.dims)
        c_in, *sizes = input_shape
        if len(self.kernel_size) != d:  # an int kernel size: one per axis of this input
            try:
                self.kernel_size = kernel_sizes(self._kernel_spec, d, "Convolution")
                self.pad = resolve_padding(self._padding_spec, self.kernel_size, "Convolution")
            except ValueError as error:
                raise self.error(str(error).split(": ", 1)[-1]) from None
            self._padding_args = (self.pad,) if any(self.pad) else ()
        ks, pads = self.kernel_size, self.pad
        volume = math.prod(ks)
        if any(k > s + 2 * p for k, s, p in zip(ks, sizes, pads, strict=True)):
            padded = f" padded by ({', '.join(map(str, pads))})" if any(pads) else ""
            raise self.error(
                f"kernel {sizes_str(ks)} is larger than the {sizes_str(sizes)} input maps{padded}"
            )
        # Draw even when the seed is given, so that a network rebuilt from its config (where
        # every seed is explicit) consumes the generator alike and gets the same parameters.
        drawn = int(context.rng.integers(2**31))
        seed = self.seed if self.seed is not None else drawn
        try:
            self.table = selection_table(
                self.selection_spec,
                self.maps,
                c_in,
                inputs_per_map=self.inputs_per_map,
                seed=seed,
                where=self.describe(),
            )
        except ValueError as error:
            raise self.error(str(error).split(": ", 1)[-1]) from None
        self.seed = seed
        full = bool(self.table.all())
        self._selection = None if full else context.backend.asarray(self.table)
        ones = (1,) * d
        if self.init == "glorot":
            bound = math.sqrt(6.0 / ((c_in + self.maps) * volume))
            bounds = np.full((self.maps, 1, *ones), bound)
        else:
            bounds = (2.4 / (self.table.sum(axis=1) * volume)).reshape(-1, 1, *ones)
        kernel = context.rng.uniform(-1.0, 1.0, (self.maps, c_in, *ks)) * bounds
        kernel *= self.table.reshape(*self.table.shape, *ones)
        self.params["kernel"] = self._host_param(context, kernel)
        self.params["bias"] = self._host_param(context, np.zeros(self.maps))
        return (self.maps, *(s + 2 * p - k + 1 for s, p, k in zip(sizes, pads, ks, strict=True)))

    def forward(self, x: Array) -> Array:
        self._x = x
        # f(conv(x, k) + b) in one op (Note [Fused ops] in anycnn.ops)
        self._y = self._ops.conv_valid_activate(
            x,
            self.params["kernel"],
            self.params["bias"],
            self.activation,
            self._selection,
            *self._padding_args,
        )
        return self._y

    #: Note [Deferred up-sampling]: ``conv_backward`` forms ``up(dy)`` itself.
    takes_upsampled = True

    def backward(self, dy: Array | Upsampled, need_input_grad: bool = True) -> Array | None:
        ops = self._ops
        up = 1
        if isinstance(dy, Upsampled):  # Note [Deferred up-sampling]: dE/dy = up(dy.delta)
            dy, up = dy.delta, dy.n
        # delta = f'(u) o up(dy), eq. (7), the bias sums: one op (Note [Fused ops] in anycnn.ops)
        kernel_grad, bias_grad, delta = ops.conv_backward(
            self._x,
            dy,
            self._y,
            self.activation,
            self._selection,
            up,
            need_input_grad,
            *self._padding_args,
        )
        self.grads["kernel"], self.grads["bias"] = kernel_grad, bias_grad
        if not need_input_grad:
            return None
        # 3.2.1; with padding, cropped back (Note [Zero padding] in anycnn.ops)
        return ops.conv_full(delta, self.params["kernel"], self._selection, *self._padding_args)

    def curvature(self, d2y: Array, need_input_grad: bool = True) -> tuple[Array | None, dict]:
        """Section 3.1 with squares (:meth:`Layer.curvature`): ``h_k = conv_kernel_grad(x o x,
        d2u)`` (eq. 7 with squared inputs), ``h_b = sum_{u,v} d2u``, ``d2x = conv_full(d2u,
        k o k)`` (3.2.1 with squared kernels); padded zeros have no curvature (``Note [Zero
        padding]`` in :mod:`anycnn.ops`)."""
        xp = array_api_compat.array_namespace(d2y)
        assert self._backend is not None, f"{self.name}: curvature before build"
        ops = self._backend.ops
        d2u = self._squared_slope(d2y)
        x, k, selection = self._x, self.params["kernel"], self._selection
        pad = self._padding_args
        h = {
            "kernel": ops.conv_kernel_grad(x * x, d2u, selection, *pad),
            "bias": xp.sum(d2u, axis=(0, *range(2, d2u.ndim))),  # every spatial axis (issue 18)
        }
        return (ops.conv_full(d2u, k * k, selection, *pad) if need_input_grad else None), h

    def config(self) -> dict[str, Any]:
        config = {
            "maps": self.maps,
            "kernel_size": list(self.kernel_size),
            "padding": self.padding if isinstance(self.padding, str) else list(self.pad),
            "selection": "table",  # the table itself travels in extra_state()
            "activation": self.activation.config(),
            "init": self.init,
            "inputs_per_map": self.inputs_per_map,
            "seed": self.seed,
        }
        if self.dims is not None:  # pinned (Convolution1D, ...): kept through checkpoints
            config["dims"] = self.dims
        return config

    def parameter_count(self) -> int:
        """Kernels outside the selection are not parameters: ``|M| kh kw`` weights plus biases."""
        if self.table is None:
            return super().parameter_count()
        return int(self.table.sum()) * math.prod(self.kernel_size) + self.maps

    def extra_state(self) -> dict[str, np.ndarray]:
        return {} if self.table is None else {"table": self.table}

    def __repr__(self) -> str:
        sel = self.selection_spec if isinstance(self.selection_spec, str) else "table"
        pad = ""
        if self.padding != "valid":
            pad = f", padding={self.padding if isinstance(self.padding, str) else self.pad}"
        size = sizes_str(self.kernel_size)
        return f"Convolution({self.maps}@{size}, {sel}, {self.activation.name}{pad})"


def Convolution1D(maps: int, kernel_size: int | tuple[int], **options: Any) -> Convolution:  # noqa: N802
    """A :class:`Convolution` over ``(C, L)`` signals only (PyTorch's ``Conv1d``, Keras's
    ``Conv1D``): ``Convolution(maps, kernel_size, dims=1, ...)``.

    Examples
    --------
    >>> from anycnn import Network
    >>> net = Network([Convolution1D(4, 5, padding="same")], input_shape=(2, 30))
    >>> net.output_shape, tuple(net.layers[0].params["kernel"].shape)
    ((4, 30), (4, 2, 5))
    """
    return Convolution(maps, kernel_size, dims=1, **options)


def Convolution2D(maps: int, kernel_size: int | tuple[int, int], **options: Any) -> Convolution:  # noqa: N802
    """A :class:`Convolution` over ``(C, H, W)`` maps only: ``Convolution(..., dims=2)``.

    Examples
    --------
    >>> Convolution2D(6, 5)
    Convolution(6@5x5, full, sigmoid)
    """
    return Convolution(maps, kernel_size, dims=2, **options)


def Convolution3D(
    maps: int, kernel_size: int | tuple[int, int, int], **options: Any
) -> Convolution:  # noqa: N802
    """A :class:`Convolution` over ``(C, D, H, W)`` volumes only: ``Convolution(..., dims=3)``.

    Examples
    --------
    >>> from anycnn import Network
    >>> net = Network([Convolution3D(2, 3)], input_shape=(1, 8, 8, 8))
    >>> net.output_shape
    (2, 6, 6, 6)
    """
    return Convolution(maps, kernel_size, dims=3, **options)
