"""The CuPy backend, with and without a GPU.

Three layers of checks, so that most of the backend is verified on machines without CUDA:

1. **No GPU, no CuPy needed.** ``import anycnn_cupy`` leaves CuPy unimported; the modules that
   need CuPy fail with a message saying what to install; the NumPy *twins* of the fused kernels
   (written here, from :mod:`anycnn.ops` and the activations of :mod:`anycnn.layers`) compute
   what the layers compute.
2. **No GPU, a C++ compiler.** The kernel bodies of :mod:`anycnn_cupy._sources` are compiled
   with the host compiler and run on the CPU by :class:`HostElementwiseKernel`, a stand-in for
   ``cupy.ElementwiseKernel`` (same call convention: inputs then outputs, non-raw arguments
   broadcast, ``raw`` ones indexed by hand, ``i`` the output's linear index). The backend's own
   modules (``_kernels``, ``_ops``, ``_fused``) are imported with NumPy standing in for CuPy, so
   their index arithmetic, layouts and GEMM strides run for real, against the reference ops,
   SciPy and the twins. What this does not cover: nvcc/NVRTC (bench/gpu/compile_check.py),
   CuPy's own argument handling, and anything about the device.
3. **A usable CUDA device.** The same comparisons on CuPy (the ``impl`` fixture's ``cuda``
   column); the rest of the GPU proof (agreement with the CPU, no host-device transfer in a
   training step, CUDA-graph capture) is tests/test_cuda_proof.py. Skipped
   here with the registry's reason; ``pytest --backend cupy`` makes them FAIL when CuPy is
   unusable, like every other backend test.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import array_api_compat
import numpy as np
import oracles
import pytest
from anycnn_cupy import _sources

import anycnn
from anycnn import ops as reference
from anycnn.backend import registry
from anycnn.layers import (
    Convolution,
    Flatten,
    FullyConnected,
    Sigmoid,
    Subsampling,
    Tanh,
    get_activation,
)

ACTIVATIONS = [
    "identity",
    {"name": "sigmoid", "gain": 2.0},
    "sigmoid",
    {"name": "tanh", "a": 1.7159, "b": 2.0 / 3.0},
    "lecun_tanh",
    "relu",
]
ACT_IDS = ["identity", "sigmoid2", "sigmoid", "tanh", "lecun", "relu"]
MODES = ["sum", "mean", "decimate"]
TOL = {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


def _requested(config) -> set[str]:
    names = set(config.getoption("--backend"))
    return names | {n.strip() for n in os.environ.get("ANYCNN_TEST_BACKENDS", "").split(",") if n}


def require_cuda(request):
    """The CuPy record when a CUDA device is usable; else skip with the registry's reason, or
    fail when the run asked for cupy (``--backend cupy``), as the ``backend`` fixture does."""
    record = registry.lookup("cupy")
    if not record.available:
        if "cupy" in _requested(request.config):
            pytest.fail(
                f"backend 'cupy' was requested but is unavailable: {record.unavailable_reason}"
            )
        pytest.skip(f"cupy unavailable: {record.unavailable_reason}")
    return record


# =============================================================================================
# 1. Imports and the import guard
# =============================================================================================
def _source_roots() -> str:
    import anycnn_cupy

    roots = [str(Path(m.__file__).resolve().parents[1]) for m in (anycnn, anycnn_cupy)]
    return os.pathsep.join(dict.fromkeys(roots))


def run_python(code: str, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ANYCNN_BACKEND"}
    env["PYTHONPATH"] = _source_roots()
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"child failed:\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_plugin_imports_no_cupy(tmp_path):
    seen = run_python(
        """
        import json, sys
        import anycnn_cupy
        from anycnn_cupy import _sources
        record = anycnn_cupy.backend
        ok = anycnn_cupy.supports_activation(("tanh", 1.7159, 2 / 3))
        print(json.dumps({"cupy": "cupy" in sys.modules, "name": record.name,
                          "kernels": len(_sources.KERNELS), "ok": ok}))
        """,
        tmp_path,
    )
    assert seen == {"cupy": False, "name": "cupy", "kernels": len(_sources.KERNELS), "ok": True}


def test_gpu_modules_say_what_to_install_without_cupy(tmp_path):
    # sys.modules["cupy"] = None makes `import cupy` fail even where CuPy is installed.
    seen = run_python(
        """
        import json, sys
        sys.modules["cupy"] = None
        import importlib, anycnn_cupy
        messages = {}
        for name in ["_kernels", "_ops", "_fused"]:
            try:
                importlib.import_module("anycnn_cupy." + name)
                messages[name] = None
            except ImportError as error:
                messages[name] = str(error)
        try:
            anycnn_cupy.sgd_update_
            messages["attribute"] = None
        except ImportError as error:
            messages["attribute"] = str(error)
        import anycnn.backend.registry as registry
        print(json.dumps({"messages": messages,
                          "reason": registry.lookup("cupy").unavailable_reason}))
        """,
        tmp_path,
    )
    for name, message in seen["messages"].items():
        assert message is not None, f"anycnn_cupy {name} imported without CuPy"
        assert "needs CuPy" in message and 'pip install "anycnn[cuda12]"' in message, message
    assert seen["reason"].startswith("cupy is not installed: pip install")


def test_cupy_without_a_driver_says_why():
    """Where CuPy is installed but no CUDA driver or device is usable, the reason says so
    (CuPy 14 without a driver: cudaErrorInsufficientDriver)."""
    if importlib.util.find_spec("cupy") is None:
        pytest.skip("cupy is not installed here")
    record = registry.lookup("cupy")
    if record.available:
        pytest.skip("cupy is usable here")
    reason = record.unavailable_reason
    assert reason.startswith("cupy is installed but not usable: ")
    assert "CUDA" in reason or "cuda" in reason


def test_every_kernel_source_is_well_formed():
    for name, source in _sources.KERNELS.items():
        assert name == source.name and name.startswith("anycnn_")
        params = _parse_params(source.in_params) + _parse_params(source.out_params)
        names = [p[2] for p in params]
        assert len(set(names)) == len(names), f"{name}: duplicate parameter names"
        assert "i" not in names and not any(n.startswith("_") for n in names)
        for _raw, ctype, pname in params:
            assert ctype in ("T", "int32", "int64"), f"{name}: {pname} has type {ctype}"
        assert source.operation.count("{") == source.operation.count("}")
        assert "anycnn_index" in source.full_preamble(False)


def test_activation_codes():
    class Softsign(Sigmoid):  # a user subclass that redefines f: the fused kernels must not guess
        def forward(self, u):
            return u / (1 + abs(u))

    class Hotter(Sigmoid):  # one that changes nothing computes the logistic: fused
        pass

    assert _sources.activation_code(None) == (_sources.ACT_IDENTITY, 0.0, 0.0)
    assert _sources.activation_code(get_activation({"name": "sigmoid", "gain": 2.0})) == (
        _sources.ACT_SIGMOID,
        2.0,
        0.0,
    )
    assert _sources.activation_code(Tanh(1.5, 0.5)) == (_sources.ACT_TANH, 1.5, 0.5)
    assert _sources.activation_code(("tanh", 1.7159, 2.0 / 3.0)) == (2, 1.7159, 2.0 / 3.0)
    assert _sources.activation_code(get_activation("relu"))[0] == _sources.ACT_RELU
    assert _sources.activation_code(Softsign()) is None
    assert not _sources.supports_activation(Softsign())
    assert _sources.activation_code(Hotter(3.0)) == (_sources.ACT_SIGMOID, 3.0, 0.0)
    with pytest.raises(ValueError, match="unknown activation description"):
        _sources.activation_code(("softsign",))


# =============================================================================================
# 2. NumPy twins of the fused kernels, and proof that they compute what the layers compute
# =============================================================================================
def twin_upsampled_sensitivity(delta, y, n, beta=None, activation="identity", mode="sum"):
    """``beta (f'(u) o up(delta))`` of section 3.1.1, from the reference ops."""
    act = get_activation(activation)
    if mode == "decimate":
        up = np.asarray(reference.decimate_transpose(delta, n))
    else:
        up = np.asarray(reference.kron_upsample(delta, n))
        if mode == "mean":
            up = up * (1.0 / (n * n))
    if beta is not None:
        up = up * beta.reshape(1, -1, 1, 1)
    return np.asarray(act.derivative(y) * up, dtype=y.dtype)


def twin_subsample_forward(x, n, beta=None, bias=None, activation="identity", mode="sum"):
    """``(d, f(beta d + b))`` with ``d = down(x)`` (section 3.2)."""
    down = {
        "sum": reference.block_sum,
        "mean": reference.block_mean,
        "decimate": reference.decimate,
    }[mode]
    d = np.asarray(down(x, n))
    u = d if beta is None else d * beta.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)
    return d, np.asarray(get_activation(activation).forward(u), dtype=x.dtype)


def _per_map(bias, u):
    return bias.reshape((1, -1) + (1,) * (u.ndim - 2))


def twin_bias_activation(u, bias=None, activation="sigmoid"):
    v = u if bias is None else u + _per_map(bias, u)
    return np.asarray(get_activation(activation).forward(v), dtype=u.dtype)


def twin_activation_and_derivative(u, bias=None, activation="sigmoid"):
    y = twin_bias_activation(u, bias, activation)
    d = get_activation(activation).derivative(y)
    return y, np.asarray(np.broadcast_to(d, y.shape), dtype=u.dtype)


def twin_sensitivity(dy, y, activation="sigmoid"):
    return np.asarray(dy * get_activation(activation).derivative(y), dtype=y.dtype)


def twin_sgd(p, g, lr):
    return p - lr * g


def twin_momentum(p, g, v, lr, momentum):
    v = momentum * v + lr * g  # anycnn.optim.Momentum's velocity
    return p - v, v


def _cpu_layers(layers, input_shape, seed=0):
    anycnn.Network(layers, input_shape, backend="numpy", dtype="float64", seed=seed)
    return layers


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
@pytest.mark.parametrize("trainable", [True, False], ids=["beta", "fixed"])
def test_upsampled_sensitivity_twin_is_the_layers_chain(rng, mode, activation, trainable):
    """3.1.1 as the layers compute it: Subsampling.backward up-samples beta delta, then the
    convolution multiplies by its f'; the twin must give that delta (its sum is dE/db)."""
    conv, sub = _cpu_layers(
        [
            Convolution(3, 3, activation=activation),
            Subsampling(2, mode, trainable=trainable, activation="sigmoid"),
        ],
        (2, 10, 10),
    )
    if trainable:
        sub.params["beta"] = rng.uniform(0.5, 2.0, 3)
    x = rng.standard_normal((4, 2, 10, 10))
    y = conv.forward(x)
    y_sub = sub.forward(y)
    dy_sub = rng.standard_normal(y_sub.shape)
    conv.backward(sub.backward(dy_sub))
    delta_sub = dy_sub * sub.activation.derivative(y_sub)
    delta = twin_upsampled_sensitivity(delta_sub, y, 2, sub.params.get("beta"), activation, mode)
    np.testing.assert_allclose(delta.sum(axis=(0, 2, 3)), conv.grads["bias"], rtol=1e-12)
    np.testing.assert_allclose(
        np.asarray(reference.conv_kernel_grad(x, delta)), conv.grads["kernel"], rtol=1e-11
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
def test_subsample_forward_twin_is_the_layer(rng, mode, activation):
    (sub,) = _cpu_layers([Subsampling(2, mode, activation=activation)], (3, 8, 6))
    sub.params["beta"] = rng.uniform(0.5, 2.0, 3)
    sub.params["bias"] = rng.standard_normal(3)
    x = rng.standard_normal((2, 3, 8, 6))
    d, y = twin_subsample_forward(x, 2, sub.params["beta"], sub.params["bias"], activation, mode)
    np.testing.assert_allclose(y, sub.forward(x), rtol=1e-13)
    dy = rng.standard_normal(y.shape)
    sub.backward(dy)
    delta = dy * get_activation(activation).derivative(y)
    np.testing.assert_allclose((delta * d).sum(axis=(0, 2, 3)), sub.grads["beta"], rtol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
def test_activation_twins_are_the_layers(rng, activation):
    conv, _, fc = _cpu_layers(
        [Convolution(3, 3, activation=activation), Flatten(), FullyConnected(4, activation)],
        (2, 6, 6),
    )
    conv.params["bias"] = rng.standard_normal(3)
    fc.params["bias"] = rng.standard_normal(4)
    x = rng.standard_normal((5, 2, 6, 6))
    u = np.asarray(reference.conv_valid(x, conv.params["kernel"]))
    y = conv.forward(x)
    np.testing.assert_allclose(
        twin_bias_activation(u, conv.params["bias"], activation), y, rtol=1e-13
    )
    h = y.reshape(5, -1)
    y_fc = fc.forward(h)
    u_fc = h @ fc.params["weight"].T
    np.testing.assert_allclose(
        twin_bias_activation(u_fc, fc.params["bias"], activation), y_fc, rtol=1e-13
    )
    dy = rng.standard_normal(y_fc.shape)
    fc.backward(dy)
    np.testing.assert_allclose(
        twin_sensitivity(dy, y_fc, activation).sum(axis=0), fc.grads["bias"], rtol=1e-12
    )
    out, derivative = twin_activation_and_derivative(u_fc, fc.params["bias"], activation)
    np.testing.assert_allclose(out, y_fc, rtol=1e-13)
    np.testing.assert_allclose(dy * derivative, twin_sensitivity(dy, y_fc, activation))


# =============================================================================================
# 3. The kernel bodies on the CPU: a host stand-in for cupy.ElementwiseKernel
# =============================================================================================
def _parse_params(text: str) -> list[tuple[bool, str, str]]:
    """CuPy's parameter list ``"raw T x, int32 n"`` as (raw, type, name) triples."""
    params = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        words = item.split()
        raw = words[0] == "raw"
        ctype, name = words[-2], words[-1]
        assert len(words) == 2 + raw, f"cannot parse parameter {item!r}"
        params.append((raw, ctype, name))
    return params


_C_TYPES = {"int32": ("int", np.int32), "int64": ("long long", np.int64)}
_HOST_BUILD_DIR: list[str] = []


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")


class HostElementwiseKernel:
    """``cupy.ElementwiseKernel`` on the CPU: the operation runs in a C++ loop over ``i``.

    Non-raw parameters are read as ``name_ptr[i]`` after NumPy broadcasting to the output
    shape, outputs are references into C-contiguous output arrays, raw parameters are plain
    pointers (CuPy's raw CArray of a C-contiguous array indexes the same way), scalars are
    passed by value. ``T`` is the dtype of the first array bound to a ``T`` parameter.
    """

    _libraries: dict[str, ctypes.CDLL] = {}

    def __init__(
        self, in_params, out_params, operation, name, reduce_dims=True, preamble="", **kwargs
    ):
        self.ins, self.outs = _parse_params(in_params), _parse_params(out_params)
        self.operation, self.name, self.preamble = operation, name, preamble

    def source(self) -> str:
        lines, per_item = [], []
        for index, (raw, ctype, name) in enumerate(self.ins + self.outs):
            output = index >= len(self.ins)
            if ctype in _C_TYPES:
                c = _C_TYPES[ctype][0]
                lines.append(f"  const {c} {name} = *(const {c}*)_a[{index}];")
            elif raw:
                lines.append(f"  const T* {name} = (const T*)_a[{index}];")
            elif output:
                lines.append(f"  T* _p_{name} = (T*)_a[{index}];")
                per_item.append(f"    T& {name} = _p_{name}[i];")
            else:
                lines.append(f"  const T* _p_{name} = (const T*)_a[{index}];")
                per_item.append(f"    const T {name} = _p_{name}[i];")
        body = "\n".join(lines)
        items = "\n".join(per_item)
        return f"""
#include <cmath>
#include <cstddef>
using std::exp; using std::fabs; using std::tanh;
#define __device__
#define __forceinline__ inline
{self.preamble}
template <typename T>
static void kernel_body(std::ptrdiff_t _n, void** _a) {{
{body}
  for (std::ptrdiff_t i = 0; i < _n; ++i) {{
{items}
    {self.operation}
  }}
}}
extern "C" void run_float(std::ptrdiff_t n, void** a) {{ kernel_body<float>(n, a); }}
extern "C" void run_double(std::ptrdiff_t n, void** a) {{ kernel_body<double>(n, a); }}
"""

    def _library(self) -> ctypes.CDLL:
        source = self.source()
        key = hashlib.sha256(source.encode()).hexdigest()[:20]
        library = self._libraries.get(key)
        if library is None:
            if not _HOST_BUILD_DIR:
                _HOST_BUILD_DIR.append(tempfile.mkdtemp(prefix="anycnn-host-kernels-"))
                atexit.register(shutil.rmtree, _HOST_BUILD_DIR[0], ignore_errors=True)
            folder = Path(_HOST_BUILD_DIR[0])
            cpp, so = folder / f"{self.name}_{key}.cpp", folder / f"{self.name}_{key}.so"
            cpp.write_text(source)
            done = subprocess.run(
                [
                    _compiler(),
                    "-O1",
                    "-std=c++17",
                    "-Wall",
                    "-Werror",
                    "-Wno-unused-variable",
                    "-shared",
                    "-fPIC",
                    "-o",
                    str(so),
                    str(cpp),
                ],
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, f"{self.name} does not compile:\n{done.stderr}"
            library = ctypes.CDLL(str(so))
            self._libraries[key] = library
        return library

    def __call__(self, *args, size=None, **kwargs):
        params = self.ins + self.outs
        if len(args) != len(params):
            raise TypeError(f"{self.name}: the launchers pass every output; got {len(args)} args")
        dtype = next(
            a.dtype
            for (_, c, _), a in zip(params, args, strict=True)
            if c == "T" and isinstance(a, np.ndarray)
        )
        assert dtype in (np.float32, np.float64), dtype
        outs = args[len(self.ins) :]
        shape = outs[0].shape
        keep, pointers = [], (ctypes.c_void_p * len(params))()
        for index, ((raw, ctype, name), a) in enumerate(zip(params, args, strict=True)):
            if ctype in _C_TYPES:
                value = np.array(a, dtype=_C_TYPES[ctype][1])
            elif raw:
                assert isinstance(a, np.ndarray) and a.dtype == dtype, f"{self.name}: {name}"
                assert a.flags.c_contiguous, f"{self.name}: raw {name} is not C-contiguous"
                value = a
            elif index >= len(self.ins):
                assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous, name
                value = a
            else:
                value = np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=dtype), shape))
            keep.append(value)
            pointers[index] = value.ctypes.data
        run = getattr(self._library(), "run_float" if dtype == np.float32 else "run_double")
        run.argtypes = [ctypes.c_ssize_t, ctypes.c_void_p]
        run(int(np.prod(shape)), pointers)
        return outs[0] if len(outs) == 1 else tuple(outs)


class _HostStream:
    ptr = 0

    def is_capturing(self):
        return False


def fake_cupy() -> types.ModuleType:
    """NumPy dressed as the parts of CuPy the backend's modules use."""
    fake = types.ModuleType("cupy")
    fake.__getattr__ = lambda name: getattr(np, name)  # PEP 562
    fake.ndarray = np.ndarray
    fake.ElementwiseKernel = HostElementwiseKernel
    fake.lib = types.SimpleNamespace(stride_tricks=np.lib.stride_tricks)
    fake.cuda = types.SimpleNamespace(get_current_stream=_HostStream)
    return fake


_GPU_MODULES = (
    "anycnn_cupy._kernels",
    "anycnn_cupy._ops",
    "anycnn_cupy._fused",
    "anycnn_cupy._nd",
)


def import_with_cupy(cupy_module) -> dict[str, types.ModuleType]:
    """Import the backend's GPU modules with ``cupy_module`` as CuPy, then put sys.modules and
    the package's attributes back as they were (the modules keep their own references)."""
    import anycnn_cupy

    names = ("cupy", *_GPU_MODULES)
    saved = {n: sys.modules.get(n) for n in names}
    attributes = {
        n.rsplit(".", 1)[1]: vars(anycnn_cupy).get(n.rsplit(".", 1)[1]) for n in _GPU_MODULES
    }
    try:
        sys.modules["cupy"] = cupy_module
        for n in _GPU_MODULES:
            sys.modules.pop(n, None)
        return {n.rsplit(".", 1)[1]: importlib.import_module(n) for n in _GPU_MODULES}
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module
        for attribute, module in attributes.items():
            if module is None:
                vars(anycnn_cupy).pop(attribute, None)
            else:
                setattr(anycnn_cupy, attribute, module)


@pytest.fixture(scope="module")
def host_modules():
    if _compiler() is None:
        pytest.skip("no C++ compiler (c++ or g++) to run the kernel bodies on the CPU")
    return import_with_cupy(fake_cupy())


class Impl(types.SimpleNamespace):
    """One way of running the backend: its modules and how arrays go in and out."""


@pytest.fixture(params=["host", pytest.param("cuda", marks=pytest.mark.cuda)])
def impl(request):
    if request.param == "host":
        modules = request.getfixturevalue("host_modules")
        return Impl(name="host", put=np.array, get=np.asarray, **modules)  # put copies
    require_cuda(request)
    import cupy
    from anycnn_cupy import _fused, _kernels, _nd, _ops

    return Impl(
        name="cuda",
        put=cupy.asarray,
        get=cupy.asnumpy,
        _kernels=_kernels,
        _ops=_ops,
        _fused=_fused,
        _nd=_nd,
    )


def _close(actual, desired, dtype, **overrides):
    np.testing.assert_allclose(actual, desired, **{**TOL[dtype], **overrides})


CONV_CASES = [
    # n, c_in, c_out, kh, kw, h, w, with_selection
    (2, 1, 6, 5, 5, 12, 12, False),
    (3, 4, 5, 3, 4, 12, 10, True),
    (1, 2, 3, 1, 1, 4, 5, False),
    (2, 3, 2, 4, 2, 4, 6, True),  # kernel as tall as the input: one output row
    (4, 6, 16, 5, 5, 14, 14, True),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("padding", [(1, 1), (2, 0), (3, 2)], ids=str)
@pytest.mark.parametrize("case", CONV_CASES[1:3], ids=lambda c: "x".join(map(str, c[:7])))
def test_padded_convolutions_match_scipy(impl, dtype, padding, case, rng):
    """Note [Zero padding] in anycnn.ops: im2col pads (and, for the 'full' convolution, crops
    by a smaller or negative padding) in its index arithmetic; SciPy on np.pad-ded maps."""
    n, c_in, c_out, kh, kw, h, w, with_selection = case
    ph, pw = padding
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    k = rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype)
    d = rng.standard_normal((n, c_out, h + 2 * ph - kh + 1, w + 2 * pw - kw + 1)).astype(dtype)
    sel = rng.random((c_out, c_in)) < 0.6 if with_selection else None
    bx, bk, bd = (impl.put(a) for a in (x, k, d))
    bsel = None if sel is None else impl.put(sel)
    x64, k64, d64 = (a.astype(np.float64) for a in (x, k, d))
    padded = np.pad(x64, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    full = oracles.conv_full(d64, k64, sel)
    expected = {
        "conv_valid": oracles.conv_valid(padded, k64, sel),
        "conv_full": full[:, :, ph : full.shape[2] - ph, pw : full.shape[3] - pw],
        "conv_kernel_grad": oracles.conv_kernel_grad(padded, d64, sel),
    }
    got = {
        "conv_valid": impl._ops.conv_valid(bx, bk, bsel, padding),
        "conv_full": impl._ops.conv_full(bd, bk, bsel, padding),
        "conv_kernel_grad": impl._ops.conv_kernel_grad(bx, bd, bsel, padding),
    }
    for name, out in got.items():
        assert out.dtype == np.dtype(dtype), name
        scale = float(np.abs(expected[name]).max())
        _close(
            impl.get(out),
            expected[name],
            dtype,
            atol=TOL[dtype]["atol"] * max(1.0, scale),
            err_msg=f"{name} ({impl.name}, padding={padding})",
        )


ND_CASES = [
    # n, c_in, c_out, kernel, sizes, padding, with_selection
    (3, 2, 4, (5,), (23,), (0,), True),
    (2, 3, 2, (3,), (9,), (2,), False),
    (2, 2, 3, (3, 2, 3), (6, 5, 7), (0, 0, 0), True),
    (1, 3, 2, (2, 3, 1), (4, 5, 3), (1, 0, 2), False),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "case", ND_CASES, ids=lambda c: f"{len(c[3])}d-" + "x".join(map(str, c[4]))
)
def test_nd_ops_match_scipy(impl, dtype, case, rng):
    """The CuPy backend's 1-D and 3-D path (issue 18): its 2-D im2col + GEMM ops through
    anycnn.backend.planar's mappings (_nd.dimension_generic on _ops.OPS, as _fast_ops builds
    the table), against SciPy map by map, padding and selections included; the resampling ops
    against NumPy; a whole conv_backward with deferred up-sampling against the reference."""
    n, c_in, c_out, ks, sizes, pads, with_selection = case
    table = impl._nd.dimension_generic(impl._ops.OPS)
    outs = tuple(s + 2 * p - k + 1 for s, p, k in zip(sizes, pads, ks, strict=True))
    x = rng.standard_normal((n, c_in, *sizes)).astype(dtype)
    k = rng.standard_normal((c_out, c_in, *ks)).astype(dtype)
    d = rng.standard_normal((n, c_out, *outs)).astype(dtype)
    sel = rng.random((c_out, c_in)) < 0.6 if with_selection else None
    if sel is not None:
        sel[:, 0] = True
    bx, bk, bd = impl.put(x), impl.put(k), impl.put(d)
    bsel = None if sel is None else impl.put(sel)
    h64 = [a.astype(np.float64) for a in (x, k, d)]
    expected = {
        "conv_valid": oracles.conv_valid_nd(h64[0], h64[1], sel, pads),
        "conv_full": oracles.conv_full_nd(h64[2], h64[1], sel, pads),
        "conv_kernel_grad": oracles.conv_kernel_grad_nd(h64[0], h64[2], sel, pads),
    }
    got = {
        "conv_valid": table["conv_valid"](bx, bk, bsel, pads),
        "conv_full": table["conv_full"](bd, bk, bsel, pads),
        "conv_kernel_grad": table["conv_kernel_grad"](bx, bd, bsel, pads),
    }
    for name, out in got.items():
        assert out.dtype == np.dtype(dtype) and out.shape == expected[name].shape, name
        scale = float(np.abs(expected[name]).max())
        _close(impl.get(out), expected[name], dtype, atol=TOL[dtype]["atol"] * max(1.0, scale),
               err_msg=f"{name} ({impl.name})")  # fmt: skip
    whole = x[(..., *(slice(0, s - s % 2) for s in sizes))]  # whole 2^d blocks
    for name, arg, n_ in [
        ("kron_upsample", d, 2),
        ("decimate_transpose", d, 3),
        ("block_sum", whole, 2),
        ("block_mean", whole, 2),
        ("decimate", whole, 2),
    ]:
        want = getattr(oracles, name + "_nd")(arg.astype(np.float64), n_)
        out = table[name](impl.put(np.ascontiguousarray(arg)), n_)
        _close(impl.get(out), want, dtype, err_msg=f"{name} ({impl.name})")
    # the fused forward: f(conv + b) by the 2-D op's bias_activation kernel
    act = get_activation("lecun_tanh")
    b = rng.standard_normal(c_out).astype(dtype)
    y_fused = table["conv_valid_activate"](bx, bk, impl.put(b), act, bsel, pads)
    u = expected["conv_valid"] + b.reshape((-1,) + (1,) * len(sizes))
    _close(impl.get(y_fused), act.forward(u), dtype, err_msg="conv_valid_activate")
    # a trainable subsampling's gradients, per map whatever the maps' shape
    beta = rng.standard_normal(c_out).astype(dtype)
    dy_s, y_s, d_s = (rng.standard_normal(d.shape).astype(dtype) for _ in range(3))
    got_s = table["subsample_backward"](*(impl.put(a) for a in (dy_s, y_s, d_s, beta)), act)
    want_s = reference.subsample_backward(dy_s, y_s, d_s, beta, act)
    for what, a, w in zip(("beta", "bias", "input"), got_s, want_s, strict=True):
        _close(impl.get(a), w, dtype, atol=TOL[dtype]["atol"] * 100, err_msg=what)
    # conv_backward of a layer below a 2x subsampling: up(dy) along every axis, f', eq. (7)
    y = np.tanh(rng.standard_normal((n, c_out, *outs))).astype(dtype)
    dy = rng.standard_normal((n, c_out, *(o // 2 for o in outs))).astype(dtype)
    args = (x, dy, y)
    want = reference.conv_backward(*args, act, sel, 2, True, pads)
    got_back = table["conv_backward"](*(impl.put(a) for a in args), act, bsel, 2, True, pads)
    for what, a, b in zip(("grad", "bias", "delta"), got_back, want, strict=True):
        scale = float(np.abs(b).max())
        _close(impl.get(a), b, dtype, atol=TOL[dtype]["atol"] * max(1.0, scale), err_msg=what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("gemm", ["cublas", "kernel"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_convolutions_match_scipy(impl, dtype, gemm, case, rng):
    n, c_in, c_out, kh, kw, h, w, with_selection = case
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    k = rng.standard_normal((c_out, c_in, kh, kw)).astype(dtype)
    d = rng.standard_normal((n, c_out, h - kh + 1, w - kw + 1)).astype(dtype)
    sel = rng.random((c_out, c_in)) < 0.6 if with_selection else None
    dev = [None if a is None else impl.put(a) for a in (x, k, d, sel)]
    bx, bk, bd, bsel = dev
    with impl._kernels.gemm_mode(gemm):  # "cublas" is NumPy's matmul on the host
        for name, args, host in [
            ("conv_valid", (bx, bk, bsel), (x, k, sel)),
            ("conv_full", (bd, bk, bsel), (d, k, sel)),
            ("conv_kernel_grad", (bx, bd, bsel), (x, d, sel)),
        ]:
            out = getattr(impl._ops, name)(*args)
            assert out.dtype == np.dtype(dtype), name
            f64 = [
                None if a is None else a.astype(np.float64) if a.dtype != bool else a for a in host
            ]
            expected = getattr(oracles, name)(*f64)
            scale = float(np.abs(expected).max())
            _close(
                impl.get(out),
                expected,
                dtype,
                atol=TOL[dtype]["atol"] * max(1.0, scale),
                err_msg=f"{name} ({impl.name}, gemm={gemm})",
            )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["sigmoid", {"name": "sigmoid", "gain": 2.0}, "lecun_tanh"])
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_fused_conv_forward_is_the_chain(impl, dtype, activation, case, rng):
    """conv_valid_activate (Note [Fused ops]): the GEMM, then the bias_activation kernel, gives
    f(conv_valid + b) of the layers' activations: bit for bit on the GPU (same exp, same order
    of operations), to rounding on the host (the C++ library's exp is not NumPy's); a user
    activation without a fused kernel takes the chain."""
    n, c_in, c_out, kh, kw, h, w, with_selection = case
    act = get_activation(activation)
    x = rng.standard_normal((n, c_in, h, w)).astype(dtype)
    k = (rng.standard_normal((c_out, c_in, kh, kw)) * 0.3).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    sel = rng.random((c_out, c_in)) < 0.6 if with_selection else None
    bx, bk, bb = impl.put(x), impl.put(k), impl.put(b)
    bsel = None if sel is None else impl.put(sel)
    u = impl._ops.conv_valid(bx, bk, bsel)
    u += bb[:, None, None]
    chain = impl.get(act.apply(u, array_api_compat.array_namespace(u)))
    fused = impl.get(impl._ops.conv_valid_activate(bx, bk, bb, act, bsel))
    if impl.name == "cuda":
        np.testing.assert_array_equal(fused, chain)
    else:
        _close(fused, chain, dtype)
    # a subclass that redefines f has no description, hence no fused kernel: the chain itself
    odd = type("Odd", (Sigmoid,), {"forward": lambda self, u: 1.0 / (1.0 + abs(u))})()
    u = impl._ops.conv_valid(bx, bk, bsel)
    u += bb[:, None, None]
    np.testing.assert_array_equal(
        impl.get(impl._ops.conv_valid_activate(bx, bk, bb, odd, bsel)),
        impl.get(odd.apply(u, array_api_compat.array_namespace(u))),
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ["sigmoid", {"name": "sigmoid", "gain": 2.0}, "lecun_tanh"])
@pytest.mark.parametrize("shape", [(3, 6, 8, 8), (5, 84)])
def test_fused_sensitivity_op_is_the_chain(impl, dtype, activation, shape, rng):
    """The op table's ``sensitivity`` (Note [Fused ops]) runs the sensitivity kernel: the
    activation's ``sensitivity`` to rounding (CUDA contracts multiply-adds), dy and y left alone;
    a user activation without a fused kernel takes its own method."""
    act = get_activation(activation)
    y = act.forward(rng.standard_normal(shape) * 2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    by, bdy = impl.put(y), impl.put(dy)
    chain = act.sensitivity(dy, y, np)
    _close(impl.get(impl._ops.sensitivity(bdy, by, act)), chain, dtype)
    np.testing.assert_array_equal(impl.get(by), y)
    np.testing.assert_array_equal(impl.get(bdy), dy)
    odd = type("Odd", (Sigmoid,), {"sensitivity": lambda self, dy, y, xp: dy * 3})()
    np.testing.assert_array_equal(impl.get(impl._ops.sensitivity(bdy, by, odd)), dy * 3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("shape", "n"), [((2, 3, 8, 6), 2), ((1, 2, 9, 9), 3), ((3, 1, 4, 4), 1), ((2, 2, 7, 5), 2)]
)
def test_resampling_matches_the_reference(impl, dtype, shape, n, rng):
    x = rng.standard_normal(shape).astype(dtype)
    small = rng.standard_normal((shape[0], shape[1], 3, 2)).astype(dtype)
    cases = [("kron_upsample", small), ("decimate", x), ("decimate_transpose", small)]
    if shape[2] % n == 0 and shape[3] % n == 0:
        cases += [("block_sum", x), ("block_mean", x)]
    for name, arg in cases:
        out = getattr(impl._ops, name)(impl.put(arg), n)
        expected = np.asarray(getattr(reference, name)(arg.astype(np.float64), n))
        _close(impl.get(out), expected, dtype, err_msg=f"{name} ({impl.name})")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
def test_fused_layer_ops_match_the_reference(impl, dtype, activation, rng):
    """The CuPy table's own fused ops (issue 19: the NumPy backend's set) against the chains of
    anycnn.ops: conv_backward without and with up-sampling (the upsampled_sensitivity kernel),
    with a subsampling remainder and with padding (the chain on the backend's ops),
    subsample_backward (one kernel for delta and beta delta), activate, the FC ops and the
    fused updates."""
    act = get_activation(activation)
    ops = impl._ops

    def check(name, got, want, scale=1.0):
        got = (got,) if not isinstance(got, tuple) else got
        want = (want,) if not isinstance(want, tuple) else want
        assert len(got) == len(want), name
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            if w is None:
                assert g is None, f"{name}[{index}]"
                continue
            w = np.asarray(w)
            assert g.dtype == np.dtype(dtype), f"{name}[{index}]"
            size = max(1.0, float(np.abs(w).max()) * scale)
            _close(impl.get(g), w, dtype, atol=TOL[dtype]["atol"] * size * 10, err_msg=name)

    def host(*arrays):
        return [a.astype(dtype) for a in arrays]

    sel = rng.random((4, 2)) < 0.7
    sel[:, 0] = True
    x, k = host(rng.standard_normal((3, 2, 10, 9)), rng.standard_normal((4, 2, 3, 2)))
    y = host(np.asarray(act.forward(rng.standard_normal((3, 4, 8, 8)))))[0]
    cases = [
        (1, rng.standard_normal((3, 4, 8, 8)), (0, 0)),
        (2, rng.standard_normal((3, 4, 4, 4)), (0, 0)),
        (3, rng.standard_normal((3, 4, 3, 3)), (0, 0)),  # a remainder: 8 = 3 * 3 - 1
    ]
    for up, dy, padding in cases:
        (dy,) = host(dy)
        for selection in (None, sel):
            for need in (True, False):
                got = ops.conv_backward(
                    impl.put(x),
                    impl.put(dy),
                    impl.put(y),
                    act,
                    None if selection is None else impl.put(selection),
                    up,
                    need,
                    padding,
                )
                want = reference.conv_backward(
                    *(a.astype(np.float64) for a in (x, dy, y)), act, selection, up, need
                )
                check(f"conv_backward up={up} need={need}", got, want)
    xp_, y_pad, dy_pad = host(
        rng.standard_normal((2, 2, 6, 5)),
        np.asarray(act.forward(rng.standard_normal((2, 4, 6, 4)))),
        rng.standard_normal((2, 4, 6, 4)),
    )
    got = ops.conv_backward(
        impl.put(xp_), impl.put(dy_pad), impl.put(y_pad), act, None, 1, True, (1, 0)
    )
    want = reference.conv_backward(
        *(a.astype(np.float64) for a in (xp_, dy_pad, y_pad)), act, None, 1, True, (1, 0)
    )
    check("conv_backward padding", got, want)
    dy, y, d = host(
        rng.standard_normal((3, 4, 5, 6)),
        np.asarray(act.forward(rng.standard_normal((3, 4, 5, 6)))),
        rng.standard_normal((3, 4, 5, 6)),
    )
    (beta,) = host(rng.uniform(0.5, 2.0, 4))
    for need in (True, False):
        got = ops.subsample_backward(*(impl.put(a) for a in (dy, y, d, beta)), act, need)
        want = reference.subsample_backward(
            *(a.astype(np.float64) for a in (dy, y, d, beta)), act, need
        )
        check(f"subsample_backward need={need}", got, want)
    for shape in [(3, 4, 5, 6), (7, 9)]:
        (u,) = host(rng.standard_normal(shape) * 3)
        want = np.asarray(act.forward(u.astype(np.float64)))
        check(f"activate {shape}", ops.activate(impl.put(u), act), want)
    h, w, delta = host(
        rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal((5, 3))
    )
    h64, w64, d64 = (a.astype(np.float64) for a in (h, w, delta))
    check("fully_connected", ops.fully_connected(impl.put(h), impl.put(w)), h64 @ w64.T)
    check(
        "fully_connected_weight_grad",
        ops.fully_connected_weight_grad(impl.put(h), impl.put(delta)),
        d64.T @ h64,
    )
    check(
        "fully_connected_input_grad",
        ops.fully_connected_input_grad(impl.put(delta), impl.put(w)),
        d64 @ w64,
    )
    p, g, v = host(*(rng.standard_normal((4, 3)) for _ in range(3)))
    dp = impl.put(p)
    assert ops.sgd_update_(dp, impl.put(g), 0.1) is dp
    check("sgd_update_", dp, reference.sgd_update_(p.astype(np.float64), g, 0.1))
    dp, dv = impl.put(p), impl.put(v)
    assert ops.momentum_update_(dp, impl.put(g), dv, 0.1, 0.9) is dp
    p64, v64 = p.astype(np.float64), v.astype(np.float64)
    reference.momentum_update_(p64, g.astype(np.float64), v64, 0.1, 0.9)
    check("momentum_update_ param", dp, p64)
    check("momentum_update_ velocity", dv, v64)


def test_check_backend_passes_on_the_cupy_ops_on_the_host(host_modules):
    """The public conformance check (every plain and fused op with every kind of activation and
    a user's, and both fused updates) on the CuPy backend's table run through the stand-in."""
    import array_api_compat.numpy

    from anycnn.backend import Backend
    from anycnn.testing import check_backend

    emulated = Backend(
        name="cupy_ops_on_host",
        array_module="numpy",
        namespace=lambda: array_api_compat.numpy,
        device=lambda: "cpu",
        fast_ops=lambda: host_modules["_ops"].OPS,
    )
    assert emulated.ops.fused_own == set(registry.FUSED_OP_NAMES)
    checked = check_backend(emulated)
    assert checked[-2:] == ["momentum_update_", "sgd_update_"]


def test_non_float_arrays_go_to_the_reference(host_modules):
    ops = host_modules["_ops"]
    x = np.arange(2 * 1 * 4 * 4).reshape(2, 1, 4, 4)
    np.testing.assert_array_equal(ops.block_sum(x, 2), np.asarray(reference.block_sum(x, 2)))
    np.testing.assert_array_equal(
        ops.kron_upsample(x, 2), np.asarray(reference.kron_upsample(x, 2))
    )
    with pytest.raises(ValueError):  # the reference's own error for sizes not divisible by n
        ops.block_sum(np.zeros((1, 1, 5, 4)), 2)


def _gemm_cases(rng, dtype):
    def m(*shape):
        return rng.standard_normal(shape).astype(dtype)

    big = m(3, 4000)
    yield "2d@2d", m(5, 7), m(7, 3)
    yield "2d@3d broadcast", m(6, 25), m(4, 25, 30)
    yield "3d@3d", m(4, 3, 9), m(4, 9, 2)
    yield "3d(1)@3d", m(1, 3, 9), m(5, 9, 2)
    yield "transposed a", m(7, 5).T, m(7, 3)
    yield "transposed b", m(5, 7), m(3, 7).T
    yield "batched transposed", m(4, 9, 3).transpose(0, 2, 1), m(4, 2, 9).transpose(0, 2, 1)
    yield "split-K", big[:, ::2], m(2000, 2)  # strided rows, long inner dimension
    yield "k = 0", m(3, 0), m(0, 4)
    yield "empty", m(0, 3), m(3, 4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise_gemm_matches_matmul(impl, dtype, rng):
    for label, a, b in _gemm_cases(rng, dtype):
        out = impl._kernels.gemm(impl.put(a), impl.put(b))
        expected = np.matmul(a.astype(np.float64), b.astype(np.float64))
        assert out.shape == expected.shape, label
        _close(
            impl.get(out),
            expected,
            dtype,
            atol=1e-4 if dtype == "float32" else 1e-11,
            err_msg=f"gemm {label} ({impl.name})",
        )


@pytest.mark.parametrize("gemm", ["cublas", "kernel"])
@pytest.mark.parametrize("model", ["lenet5", "dlt"])
def test_zoo_models_get_the_same_gradients_through_the_cupy_ops(host_modules, model, gemm, rng):
    """The CuPy backend's ops, run on the host, inside the real layers: LeNet-5's C3 table, C5's
    1x1 outputs, the sum and mean subsampling, at the shapes training uses."""
    import array_api_compat.numpy

    from anycnn import models
    from anycnn.backend import Backend

    emulated = Backend(
        name="cupy_ops_on_host",
        array_module="numpy",
        namespace=lambda: array_api_compat.numpy,
        device=lambda: "cpu",
        fast_ops=lambda: host_modules["_ops"].OPS,
    )
    cpu = models.build(model, backend="numpy", dtype="float64")
    emu = models.build(model, backend=emulated, dtype="float64")
    x, t = _batch(cpu, 8, rng, "float64")
    with host_modules["_kernels"].gemm_mode(gemm):
        emu.compute_gradients(x, t, check=False)
    cpu.compute_gradients(x, t)
    want, got = cpu.gradients(), emu.gradients()
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-11, atol=1e-14, err_msg=name)


def test_any_size_network_gets_the_same_gradients_through_the_cupy_ops(host_modules, rng):
    """Issue 23's network through the CuPy backend's ops on the host: 3x64x64 inputs, a 'valid'
    and a 'same' 3x3 convolution, subsampling layers that drop a remainder (31 -> 15)."""
    import array_api_compat.numpy

    from anycnn.backend import Backend
    from anycnn.layers import Convolution, Flatten, FullyConnected, Subsampling
    from anycnn.network import Network

    emulated = Backend(
        name="cupy_ops_on_host",
        array_module="numpy",
        namespace=lambda: array_api_compat.numpy,
        device=lambda: "cpu",
        fast_ops=lambda: host_modules["_ops"].OPS,
    )

    def build(backend):
        return Network(
            [
                Convolution(4, 3, padding="valid", activation="tanh"),
                Subsampling(2, "mean", remainder="drop"),
                Convolution(6, (3, 3), padding="same", selection="pairs", activation="sigmoid"),
                Subsampling(2, "sum", activation="tanh", remainder="drop"),
                Flatten(),
                FullyConnected(3, activation="sigmoid"),
            ],
            (3, 64, 64),
            dtype="float64",
            backend=backend,
        )

    cpu, emu = build("numpy"), build(emulated)
    x = rng.standard_normal((3, 3, 64, 64))
    t = np.eye(3)[[0, 2, 1]]
    emu.compute_gradients(x, t, check=False)
    cpu.compute_gradients(x, t)
    want, got = cpu.gradients(), emu.gradients()
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-11, atol=1e-14, err_msg=name)


def test_gemm_mode_and_matmul_dispatch(host_modules):
    kernels = host_modules["_kernels"]
    assert not kernels.uses_kernel_gemm()  # auto, and the (host) stream is not capturing
    with kernels.gemm_mode("kernel"):
        assert kernels.uses_kernel_gemm()
        with kernels.gemm_mode("cublas"):
            assert not kernels.uses_kernel_gemm()
        assert kernels.uses_kernel_gemm()
    assert not kernels.uses_kernel_gemm()
    previous = kernels.set_gemm("kernel")
    try:
        assert previous == "auto" and kernels.uses_kernel_gemm()
    finally:
        kernels.set_gemm(previous)
    with pytest.raises(ValueError, match="mode must be one of"):
        kernels.set_gemm("tensor-cores")
    # cases the GEMM kernel does not take go to matmul (1-D, integers, two batch axes)
    with kernels.gemm_mode("kernel"):
        np.testing.assert_array_equal(kernels.matmul(np.arange(3), np.arange(3)), 5)
        a = np.ones((2, 2, 3, 4))
        assert kernels.matmul(a, np.ones((2, 2, 4, 5))).shape == (2, 2, 3, 5)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
def test_fused_down_and_up_sampling_match_the_twins(impl, dtype, mode, activation, rng):
    fused = impl._fused
    x = rng.standard_normal((3, 4, 8, 10)).astype(dtype)
    beta = rng.uniform(0.5, 2.0, 4).astype(dtype)
    bias = rng.standard_normal(4).astype(dtype)
    for b, c in [(beta, bias), (None, None)]:
        d, y = fused.subsample_forward(
            impl.put(x),
            2,
            None if b is None else impl.put(b),
            None if c is None else impl.put(c),
            activation=get_activation(activation),
            mode=mode,
        )
        d_twin, y_twin = twin_subsample_forward(x.astype(np.float64), 2, b, c, activation, mode)
        _close(impl.get(d), d_twin, dtype, err_msg=f"subsample_forward d ({mode})")
        _close(impl.get(y), y_twin, dtype, err_msg=f"subsample_forward y ({mode})")
    conv_y = get_activation(activation).forward(rng.standard_normal((3, 4, 8, 10))).astype(dtype)
    delta = rng.standard_normal((3, 4, 4, 5)).astype(dtype)
    for b in (beta, None):
        out = fused.upsampled_sensitivity(
            impl.put(delta),
            impl.put(conv_y),
            2,
            None if b is None else impl.put(b),
            activation=get_activation(activation),
            mode=mode,
        )
        twin = twin_upsampled_sensitivity(
            delta.astype(np.float64), conv_y.astype(np.float64), 2, b, activation, mode
        )
        _close(impl.get(out), twin, dtype, err_msg=f"upsampled_sensitivity ({mode})")


def test_fused_decimation_keeps_the_remainder_rule(impl, rng):
    x = rng.standard_normal((2, 3, 7, 5))
    d, y = impl._fused.subsample_forward(
        impl.put(x), 2, activation=get_activation("tanh"), mode="decimate"
    )
    d_twin, y_twin = twin_subsample_forward(x, 2, activation="tanh", mode="decimate")
    _close(impl.get(d), d_twin, "float64")
    _close(impl.get(y), y_twin, "float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=ACT_IDS)
def test_fused_activations_match_the_twins(impl, dtype, activation, rng):
    fused = impl._fused
    for shape in [(3, 4, 5, 6), (7, 9)]:
        # wide range: f must not overflow at |u| = 1e4, as the layers' activations do not
        u = (rng.standard_normal(shape) * rng.choice([0.1, 3.0, 1e4], size=shape)).astype(dtype)
        bias = rng.standard_normal(shape[1]).astype(dtype)
        for b in (bias, None):
            pb = None if b is None else impl.put(b)
            y = fused.bias_activation(impl.put(u), pb, activation=get_activation(activation))
            _close(impl.get(y), twin_bias_activation(u.astype(np.float64), b, activation), dtype)
            y2, dy2 = fused.activation_and_derivative(
                impl.put(u), pb, activation=get_activation(activation)
            )
            ty, tdy = twin_activation_and_derivative(u.astype(np.float64), b, activation)
            _close(impl.get(y2), ty, dtype)
            _close(impl.get(dy2), tdy, dtype, atol=TOL[dtype]["atol"] * 4)
        y_host = twin_bias_activation(u.astype(np.float64), None, activation).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        out = fused.sensitivity(
            impl.put(dy), impl.put(y_host), activation=get_activation(activation)
        )
        _close(
            impl.get(out),
            twin_sensitivity(dy.astype(np.float64), y_host.astype(np.float64), activation),
            dtype,
        )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_updates_match_the_twins(impl, dtype, rng):
    fused = impl._fused
    p, g, v = (rng.standard_normal((6, 5, 3)).astype(dtype) for _ in range(3))
    for lr in (0.1, np.asarray(0.25, dtype=dtype)):
        rate = impl.put(lr) if isinstance(lr, np.ndarray) else lr
        dp = impl.put(p)
        assert fused.sgd_update_(dp, impl.put(g), rate) is dp
        _close(impl.get(dp), twin_sgd(p.astype(np.float64), g, float(lr)), dtype)
    dp, dv = impl.put(p), impl.put(v)
    fused.momentum_update_(dp, impl.put(g), dv, 0.05, 0.9)
    tp, tv = twin_momentum(p.astype(np.float64), g, v, 0.05, 0.9)
    _close(impl.get(dp), tp, dtype)
    _close(impl.get(dv), tv, dtype)


def test_fused_errors_name_the_argument(host_modules, rng):
    fused = host_modules["_fused"]
    delta, y = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 8, 9))
    with pytest.raises(ValueError, match=r"y must have shape \(N, C, h n, w n\)"):
        fused.upsampled_sensitivity(delta, y, 2)
    with pytest.raises(ValueError, match=r"beta must have shape \(3,\)"):
        fused.upsampled_sensitivity(delta, y[..., :8], 2, np.ones(4))
    with pytest.raises(TypeError, match="no fused kernel for the activation"):
        fused.sensitivity(y, y, activation=type("Odd", (Sigmoid,), {"forward": abs})())
    with pytest.raises(TypeError, match="float32 or float64"):
        fused.sensitivity(y.astype(np.int64), y.astype(np.int64))
    with pytest.raises(TypeError, match="is float32 but the other arrays are float64"):
        fused.sensitivity(y, y.astype(np.float32))
    with pytest.raises(ValueError, match="give both beta and bias"):
        fused.subsample_forward(y[..., :8], 2, np.ones(3))
    with pytest.raises(ValueError, match="not divisible"):
        fused.subsample_forward(y, 2)
    with pytest.raises(ValueError, match="lr must be a scalar or a 0-d array"):
        fused.sgd_update_(y, y, np.ones(2))


def test_the_fused_table_lists_every_function(host_modules):
    fused = host_modules["_fused"]
    assert set(fused.FUSED) == {
        n for n in fused.__all__ if n not in ("FUSED", "supports_activation")
    }
    for name, function in fused.FUSED.items():
        assert function.__name__ == name


def test_cupy_op_signatures_match_the_reference_annotations_included(host_modules):
    """anycnn.testing.check_backend compares inspect.signature with annotations."""
    import inspect

    for name, function in host_modules["_ops"].OPS.items():
        assert inspect.signature(function) == inspect.signature(getattr(reference, name)), name


# =============================================================================================
# 4. Helpers of the tests above
# =============================================================================================
def _batch(net, n, rng, dtype):
    x = rng.standard_normal((n, *net.input_shape)).astype(dtype)
    t = np.zeros((n, *net.output_shape), dtype=dtype)
    t[np.arange(n), rng.integers(0, net.output_shape[0], n)] = 1.0
    return x, t
