"""Interop with other libraries: moving a network between backends and devices
(:meth:`anycnn.Network.to`) and exporting it as a PyTorch module (:func:`to_torch`).

Arrays themselves cross libraries through DLPack (``Note [Array interop]`` in
:mod:`anycnn.backend`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from anycnn.backend import Backend, lookup

if TYPE_CHECKING:
    from anycnn.network import Network

__all__ = ["move", "to_torch"]


def move(network: Network, target: str | Backend, *, optimizer: Any = None) -> Network:
    """Move ``network`` (in place) to another backend or device; see :meth:`Network.to`.

    ``optimizer`` (one not attached to the network) moves with it, its state included.

    Examples
    --------
    From the current backend to the other of NumPy and array-api-strict, values unchanged:

    >>> import numpy as np, anycnn
    >>> from anycnn.interop import move
    >>> net = anycnn.Network([anycnn.Flatten(), anycnn.FullyConnected(2)], input_shape=(1, 2, 2),
    ...                      dtype="float64")
    >>> other = "array_api_strict" if net.backend.name == "numpy" else "numpy"
    >>> before = net.state_dict()
    >>> move(net, other) is net, net.backend.name == other
    (True, True)
    >>> all(np.array_equal(net.state_dict()[name], value) for name, value in before.items())
    True
    """
    from anycnn.network import Network

    record = lookup(target).require()
    optimizers = [o for o in (network.optimizer, optimizer) if o is not None]
    optimizers = [o for i, o in enumerate(optimizers) if o not in optimizers[:i]]
    for opt in optimizers:
        if opt.network is not network:
            raise ValueError("Network.to: the optimizer updates another network")
    if record is network.backend:
        return network
    states = [opt.state_dict() for opt in optimizers]  # host copies, taken before the move
    # The layers hold their backend's namespace, ops and arrays (input-map tables): build the
    # same layers on the target, then bring every parameter over (DLPack where it can share).
    moved = Network.from_config(
        network.config(),
        extra_state=network.extra_state(),
        backend=record,
        dtype=network.dtype_name,
    )
    for name, value in network.parameters().items():
        moved.set_parameter(name, record.asarray(value, copy=True), check=False)
    keep = {"preprocessing": network.preprocessing, "optimizer": network.optimizer}
    network.__dict__.update(moved.__dict__)
    network.__dict__.update(keep)
    for opt, state in zip(optimizers, states, strict=True):
        # An optimizer looks its namespace up once (optim.Optimizer.__init__): refresh that, then
        # restore its state on the new backend (load_state_dict also recomputes SDLM's steps).
        opt._xp = record.xp
        opt._in_place = record.writable
        opt._fused = record.ops.updates if opt._in_place else {}  # Note [Fused updates]
        opt.load_state_dict(state)
    return network


# --------------------------------------------------------------------------------------------
# PyTorch export
# --------------------------------------------------------------------------------------------
# Note [PyTorch export]
# ~~~~~~~~~~~~~~~~~~~~~
# Each layer becomes a torch.nn.Module computing the same function in PyTorch's conventions, for
# 1-D signals, 2-D maps and 3-D volumes alike (the layer's input shape picks Conv1d/2d/3d and
# avg_pool1d/2d/3d):
# * Convolution -> nn.Conv1d/2d/3d with every kernel axis flipped (PyTorch cross-correlates, the
#   notes convolve as MATLAB's conv2) and multiplied by the input-map selection M_j, so the
#   left-out pairs are zero weights (they stay trainable in PyTorch: mask their gradient, or
#   re-apply the mask, to keep the selection while fine-tuning); the layer's zero padding is the
#   module's ``padding``;
# * Subsampling -> a remainder first (``"drop"`` crops, ``"pad"`` zero-pads the maps to whole
#   blocks, as the layer does), then block sum (average pooling times n^d), block mean (a padded
#   block divided by the samples it has, the layer's own table of 1 / counts) or decimation,
#   then beta and b per map as trainable parameters, then f;
# * LearnedCombination -> a module with the parameters c, k and b that forms alpha = softmax(c)
#   and the effective kernel alpha_ij k_ij in every forward pass (3.3), so alpha keeps training;
#   the sparsity penalty of 3.3.1 is not part of the module (add it to the PyTorch loss);
# * FullyConnected -> nn.Linear; Flatten -> nn.Flatten; activations -> modules of the same
#   formulas (sigmoid with its gain, a tanh(b u), ReLU).
# The loss is not part of the module: with cross-entropy its outputs are the logits
# (torch.nn.CrossEntropyLoss applies the softmax as anycnn's loss does).
def to_torch(network: Network) -> Any:
    """An equivalent ``torch.nn.Module`` (a ``torch.nn.Sequential``) with the network's current
    weights, in its dtype, on the CPU, for deployment with PyTorch or ONNX. Networks on 1-D
    signals, 2-D maps and 3-D volumes export alike (``Conv1d``, ``Conv2d``, ``Conv3d``).

    Its outputs equal :meth:`anycnn.Network.predict`'s within float rounding (block sums are
    computed as PyTorch's average pooling times n^d, so the last bits may differ). See
    ``Note [PyTorch export]`` for how each layer maps, and what is not exported: the loss, and
    the sparsity penalty of a learned combination.

    Raises
    ------
    ImportError
        PyTorch is not installed (``pip install torch``).
    TypeError
        A layer type with no PyTorch counterpart.

    Examples
    --------
    >>> import numpy as np, torch, anycnn
    >>> net = anycnn.models.dlt(backend="cpu", dtype="float64")
    >>> module = anycnn.to_torch(net)
    >>> x = np.random.default_rng(0).random((2, 1, 28, 28))
    >>> y = module(torch.from_numpy(x)).detach().numpy()
    >>> bool(np.allclose(y, net.predict(x), rtol=1e-12, atol=1e-14))
    True
    """
    import torch

    from anycnn.layers import (
        Convolution,
        Flatten,
        FullyConnected,
        LearnedCombination,
        Subsampling,
    )

    dtype = {"float32": torch.float32, "float64": torch.float64}[network.dtype_name]

    def tensor(value: Any) -> Any:
        host = np.array(network.backend.to_host(value), copy=True)
        return torch.from_numpy(host).to(dtype)

    modules: list[Any] = []
    for layer in network.layers:
        d = len(layer.input_shape or ()) - 1  # spatial axes: 1, 2 or 3 (Flatten, FC: unused)
        axes = tuple(range(-d, 0)) if d > 0 else ()
        if isinstance(layer, LearnedCombination):
            modules.append(
                _TorchLearnedCombination(
                    tensor(layer.params["c"]),
                    torch.flip(tensor(layer.params["kernel"]), dims=axes),
                    tensor(layer.params["bias"]),
                    layer.kernels,
                )
            )
        elif isinstance(layer, Convolution):
            kernel = tensor(layer.params["kernel"])
            c_out, c_in, *sizes = kernel.shape
            conv_class: Any = {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[d]
            conv = conv_class(c_in, c_out, tuple(sizes), padding=tuple(layer.pad), dtype=dtype)
            mask = torch.from_numpy(np.asarray(layer.table, dtype=bool)).to(dtype)
            with torch.no_grad():
                conv.weight.copy_(torch.flip(kernel, dims=axes) * mask[(...,) + (None,) * d])
                conv.bias.copy_(  # type: ignore[union-attr]
                    tensor(layer.params["bias"])
                )
            modules.append(conv)
        elif isinstance(layer, Subsampling):
            beta = tensor(layer.params["beta"]) if layer.trainable else None
            bias = tensor(layer.params["bias"]) if layer.trainable else None
            counts = None if layer._inv_counts is None else tensor(layer._inv_counts)
            modules.append(
                _TorchSubsampling(layer.n, layer.mode, beta, bias, d, layer._fit, counts)
            )
        elif isinstance(layer, FullyConnected):
            weight = tensor(layer.params["weight"])
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], dtype=dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
                linear.bias.copy_(tensor(layer.params["bias"]))
            modules.append(linear)
        elif isinstance(layer, Flatten):
            modules.append(torch.nn.Flatten())
            continue
        else:
            raise TypeError(f"to_torch: no PyTorch counterpart for {layer.describe()}")
        activation = _torch_activation(layer.activation)
        if activation is not None:
            modules.append(activation)
    return torch.nn.Sequential(*modules)


def _torch_activation(activation: Any) -> Any:
    import torch

    config = activation.config()
    name = config["name"]
    if name == "identity":
        return None
    if name == "relu":
        return torch.nn.ReLU()
    if name == "sigmoid":
        gain = float(config.get("gain", 1.0))
        return torch.nn.Sigmoid() if gain == 1.0 else _TorchScaled(torch.sigmoid, 1.0, gain)
    if name in ("tanh", "lecun_tanh"):
        return _TorchScaled(torch.tanh, float(activation.a), float(activation.b))
    raise TypeError(f"to_torch: no PyTorch counterpart for the activation {name!r}")


def _torch_classes() -> dict[str, type]:
    """The small modules of the export, defined on first use (importing anycnn never imports
    torch)."""
    import torch
    import torch.nn.functional as functional

    class Scaled(torch.nn.Module):
        """``a f(b u)``: a scaled tanh, or a sigmoid with a gain."""

        def __init__(self, f: Any, a: float, b: float):
            super().__init__()
            self.f, self.a, self.b = f, a, b

        def forward(self, u: Any) -> Any:
            v = self.f(u * self.b if self.b != 1.0 else u)
            return v * self.a if self.a != 1.0 else v

        def extra_repr(self) -> str:
            return f"{self.f.__name__}, a={self.a}, b={self.b}"

    class Subsampling(torch.nn.Module):
        """``f(beta down(x) + b)`` per map (3.2) in ``dims`` spatial axes; f is the next module.
        ``fit``: the sizes the maps are cropped or zero-padded to first (a remainder);
        ``inv_counts``: 1 / the samples of each block of a padded mean."""

        def __init__(
            self,
            n: int,
            mode: str,
            beta: Any,
            bias: Any,
            dims: int = 2,
            fit: tuple[int, ...] | None = None,
            inv_counts: Any = None,
        ):
            super().__init__()
            self.n, self.mode, self.dims = n, mode, dims
            self.fit = None if fit is None else tuple(int(s) for s in fit)
            self.beta = None if beta is None else torch.nn.Parameter(beta)
            self.bias = None if bias is None else torch.nn.Parameter(bias)
            self.register_buffer("inv_counts", inv_counts)
            self.pool = {1: functional.avg_pool1d, 2: functional.avg_pool2d}.get(
                dims, functional.avg_pool3d
            )

        def forward(self, x: Any) -> Any:
            n, dims = self.n, self.dims
            if self.fit is not None:  # crop (negative) or zero-pad (positive) the far ends
                amounts = [0] * (2 * dims)
                for axis, size in enumerate(self.fit):  # F.pad lists the last axis first
                    amounts[2 * (dims - 1 - axis) + 1] = size - x.shape[2 + axis]
                x = functional.pad(x, amounts)
            if self.mode == "decimate":
                d = x[(slice(None), slice(None)) + (slice(None, None, n),) * dims]
            else:
                d = self.pool(x, n)
                counts: Any = self.inv_counts
                if counts is not None:  # the sum of each block over its samples
                    d = d * float(n**dims) * counts
                elif self.mode == "sum":
                    d = d * float(n**dims)
            if self.beta is None or self.bias is None:
                return d
            per_map = (slice(None),) + (None,) * dims
            return d * self.beta[per_map] + self.bias[per_map]

        def extra_repr(self) -> str:
            fit = "" if self.fit is None else f", fit={self.fit}"
            return (
                f"n={self.n}, mode={self.mode!r}, dims={self.dims}{fit}, "
                f"trainable={self.beta is not None}"
            )

    class LearnedCombination(torch.nn.Module):
        """``sum_i alpha_ij (x_i * k_ij) + b_j`` with ``alpha_:j = softmax(c_:j)`` (3.3); the
        kernels are stored in PyTorch's cross-correlation layout."""

        def __init__(self, c: Any, weight: Any, bias: Any, kernels: str):
            super().__init__()
            self.c = torch.nn.Parameter(c)
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(bias)
            self.kernels = kernels

        def forward(self, x: Any) -> Any:
            dims = x.dim() - 2
            alpha = torch.softmax(self.c, dim=1)[(...,) + (None,) * dims]
            weight = self.weight[None] if self.kernels == "per_input" else self.weight
            conv = {1: functional.conv1d, 2: functional.conv2d}.get(dims, functional.conv3d)
            return conv(x, alpha * weight, self.bias)

        def extra_repr(self) -> str:
            return f"maps={self.c.shape[0]}, inputs={self.c.shape[1]}, kernels={self.kernels!r}"

    return {"Scaled": Scaled, "Subsampling": Subsampling, "LearnedCombination": LearnedCombination}


_CLASSES: dict[str, type] = {}


def _make(kind: str, *args: Any) -> Any:
    if not _CLASSES:
        _CLASSES.update(_torch_classes())
    return _CLASSES[kind](*args)


def _TorchScaled(f: Any, a: float, b: float) -> Any:  # noqa: N802 - a constructor
    return _make("Scaled", f, a, b)


def _TorchSubsampling(  # noqa: N802 - a constructor
    n: int,
    mode: str,
    beta: Any,
    bias: Any,
    dims: int = 2,
    fit: tuple[int, ...] | None = None,
    inv_counts: Any = None,
) -> Any:
    return _make("Subsampling", n, mode, beta, bias, dims, fit, inv_counts)


def _TorchLearnedCombination(c: Any, weight: Any, bias: Any, kernels: str) -> Any:  # noqa: N802
    return _make("LearnedCombination", c, weight, bias, kernels)
