"""CUDA sources of the CuPy backend's kernels, as plain strings: importing this never imports CuPy.

Every kernel here is a ``cupy.ElementwiseKernel`` body (one thread per output element, ``i`` its
linear index in C order) templated on ``T``, which CuPy instantiates for ``float`` and ``double``
the first time a kernel is called with that dtype (:mod:`anycnn_cupy._kernels` builds them
lazily and CuPy caches the compiled code). Keeping the sources free of CuPy lets the test suite
compile and run the very same bodies on the CPU (tests/test_cupy_backend.py compiles them with a
host C++ compiler and compares them with :mod:`anycnn.ops` and NumPy twins), and lets
``bench/gpu/compile_check.py`` compile them with nvcc on a machine without a GPU.

Conventions (those of :mod:`anycnn.ops`): maps are ``(N, C, H, W)`` in C order, kernels
``(C_out, C_in, kh, kw)``, and "convolution" is MATLAB's ``conv2`` (the kernel is flipped).

# Note [Activation codes]
# ~~~~~~~~~~~~~~~~~~~~~~~~
# The fused kernels take the activation as a run-time code ``act`` plus two constants ``p1, p2``
# rather than one compiled kernel per activation: the code is the same for every thread of a
# launch, so the branch costs nothing, and a model compiles each kernel once per dtype instead of
# once per (dtype, activation). The codes, the constants and the C++ of f and of f' (from the
# saved output ``y = f(u)``, section 3.4) all come from the one table of activations,
# anycnn.backend.activations (Note [Activation descriptions] there): this module holds no
# formula of its own and never imports anycnn.layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anycnn.backend import activations as _activations

__all__ = [
    "INDEX_LIMIT",
    "ACT_IDENTITY",
    "ACT_RELU",
    "ACT_SIGMOID",
    "ACT_TANH",
    "KERNELS",
    "KernelSource",
    "activation_code",
    "index_preamble",
    "supports_activation",
]

# Note [Activation codes]
ACT_IDENTITY, ACT_SIGMOID, ACT_TANH, ACT_RELU = (
    _activations.KINDS[name].code for name in ("identity", "logistic", "tanh", "relu")
)


# Note [Index width]
# ~~~~~~~~~~~~~~~~~~
# Decoding a linear index into (n, c, row, col) takes divisions, and 64-bit integer division is
# many times slower than 32-bit on a GPU (CuPy's CIndexer avoids it the same way). Every kernel is
# therefore written with the type `anycnn_index`, which is `int` unless an array involved has
# 2**31 elements or more; _kernels.py then builds the same source with `long long`.
INDEX_LIMIT = 2**31 - 1


def index_preamble(wide: bool) -> str:
    """The typedef of Note [Index width]."""
    return f"typedef {'long long' if wide else 'int'} anycnn_index;\n"


@dataclass(frozen=True)
class KernelSource:
    """The four strings of a ``cupy.ElementwiseKernel`` (same meaning as CuPy's arguments)."""

    name: str
    in_params: str
    out_params: str
    operation: str
    preamble: str = ""
    doc: str = ""

    def full_preamble(self, wide: bool = False) -> str:
        """The preamble with the index type of Note [Index width]."""
        return index_preamble(wide) + self.preamble


#: ``anycnn_f(act, u, p0, p1)`` and ``anycnn_df(act, y, p0, p1)``, generated from the table of
#: activations (Note [Activation codes]).
ACTIVATIONS_PREAMBLE = _activations.c_source()

# --- the hot ops of anycnn.ops -----------------------------------------------------------------

IM2COL = KernelSource(
    name="anycnn_im2col",
    in_params=(
        "raw T x, int32 C, int32 H, int32 W, int32 kh, int32 kw, int32 oh, int32 ow, "
        "int32 ph, int32 pw, int32 flip, int32 npk"
    ),
    out_params="T cols",
    operation=r"""
    // Column (k, p) of example n: tap k = (c, a, b) of output pixel p = (oi, oj), read from the
    // input zero-padded by (ph, pw). With flip, the taps run backwards, so that a GEMM with the
    // kernel as stored computes MATLAB's conv2 (and the kernel gradient comes out unflipped).
    const anycnn_index idx = (anycnn_index)i;
    const anycnn_index P = (anycnn_index)oh * ow;
    const anycnn_index K = (anycnn_index)C * kh * kw;
    anycnn_index p, k, n;
    if (npk) {  // (N * P, K): rows are output pixels; for the kernel gradient
      k = idx % K;
      const anycnn_index t = idx / K;
      p = t % P;
      n = t / P;
    } else {    // (N, K, P): for the forward and the 'full' convolutions
      p = idx % P;
      const anycnn_index t = idx / P;
      k = t % K;
      n = t / K;
    }
    const int b = (int)(k % kw);
    const int a = (int)((k / kw) % kh);
    const anycnn_index c = k / ((anycnn_index)kh * kw);
    const int row = (int)(p / ow) + (flip ? kh - 1 - a : a) - ph;
    const int col = (int)(p % ow) + (flip ? kw - 1 - b : b) - pw;
    cols = (row >= 0 && row < H && col >= 0 && col < W)
        ? x[((n * C + c) * H + row) * W + col] : T(0);
    """,
    doc="im2col of (N, C, H, W) maps for kh x kw taps and an oh x ow output, with zero padding.",
)

KRON_UPSAMPLE = KernelSource(
    name="anycnn_kron_upsample",
    in_params="raw T x, int32 n, int32 h, int32 w",
    out_params="T y",
    operation=r"""
    // up(x) = x (kron) 1_{n x n} (section 3.1.1): each output pixel reads its block's value.
    const anycnn_index idx = (anycnn_index)i;
    const anycnn_index Wd = (anycnn_index)w * n, Hd = (anycnn_index)h * n;
    const anycnn_index col = idx % Wd;
    const anycnn_index t = idx / Wd;
    const anycnn_index row = t % Hd;
    const anycnn_index map = t / Hd;
    y = x[(map * h + row / n) * w + col / n];
    """,
    doc="kron up-sampling of (N, C, h, w) to (N, C, h n, w n).",
)

BLOCK_SUM = KernelSource(
    name="anycnn_block_sum",
    in_params="raw T x, int32 n, int32 h, int32 w, T scale",
    out_params="T y",
    operation=r"""
    // down(x): the sum of each distinct n x n block (section 3.2), times scale (1, or 1/n^2 for
    // the mean); one thread per output pixel, no atomics.
    const anycnn_index idx = (anycnn_index)i;
    const anycnn_index col = idx % w;
    const anycnn_index t = idx / w;
    const anycnn_index row = t % h;
    const anycnn_index map = t / h;
    const anycnn_index Wd = (anycnn_index)w * n;
    const anycnn_index base = (map * h * n + row * n) * Wd + col * n;
    T s = T(0);
    for (int a = 0; a < n; ++a)
      for (int b = 0; b < n; ++b)
        s += x[base + a * Wd + b];
    y = s * scale;
    """,
    doc="block sum (scale 1) or block mean (scale 1/n^2) of (N, C, h n, w n) to (N, C, h, w).",
)

DECIMATE = KernelSource(
    name="anycnn_decimate",
    in_params="raw T x, int32 n, int32 H, int32 W, int32 h, int32 w",
    out_params="T y",
    operation=r"""
    // Keep the top-left sample of each n x n block (section 3.2); H, W need not divide by n.
    const anycnn_index idx = (anycnn_index)i;
    const anycnn_index col = idx % w;
    const anycnn_index t = idx / w;
    const anycnn_index row = t % h;
    const anycnn_index map = t / h;
    y = x[(map * H + row * n) * W + col * n];
    """,
    doc="decimation of (N, C, H, W) to (N, C, H // n, W // n).",
)

DECIMATE_TRANSPOSE = KernelSource(
    name="anycnn_decimate_transpose",
    in_params="raw T d, int32 n, int32 h, int32 w",
    out_params="T y",
    operation=r"""
    // The adjoint of decimation: each value to the top-left of an n x n block of zeros.
    const anycnn_index idx = (anycnn_index)i;
    const anycnn_index Wd = (anycnn_index)w * n, Hd = (anycnn_index)h * n;
    const anycnn_index col = idx % Wd;
    const anycnn_index t = idx / Wd;
    const anycnn_index row = t % Hd;
    const anycnn_index map = t / Hd;
    y = (row % n == 0 && col % n == 0) ? d[(map * h + row / n) * w + col / n] : T(0);
    """,
    doc="adjoint of decimation, (N, C, h, w) to (N, C, h n, w n).",
)

GEMM = KernelSource(
    name="anycnn_gemm",
    in_params=(
        "raw T A, raw T B, int32 M, int32 N, int64 K, int64 chunk, int32 split, "
        "int64 sab, int64 sam, int64 sak, int64 sbb, int64 sbk, int64 sbn"
    ),
    out_params="T C",
    operation=r"""
    // C[b, s] = A[b] @ B[b] over the k of chunk s: a plain batched matrix product with
    // arbitrary element strides (transposed operands need no copy) and split-K for a long inner
    // dimension. It exists because CuPy refuses cuBLAS calls while a stream is captured into a
    // CUDA graph (cupy#6290); see Note [GEMM inside a graph] in anycnn_cupy/_kernels.py.
    const anycnn_index idx = (anycnn_index)i;
    const anycnn_index col = idx % N;
    anycnn_index t = idx / N;
    const anycnn_index row = t % M;
    t /= M;
    const anycnn_index s = t % split;
    const anycnn_index b = t / split;
    const anycnn_index kc = (anycnn_index)chunk, kn = (anycnn_index)K;
    const anycnn_index k0 = s * kc;
    const anycnn_index k1 = k0 + kc < kn ? k0 + kc : kn;
    const anycnn_index ak = (anycnn_index)sak, bk = (anycnn_index)sbk;
    anycnn_index ia = b * (anycnn_index)sab + row * (anycnn_index)sam + k0 * ak;
    anycnn_index ib = b * (anycnn_index)sbb + col * (anycnn_index)sbn + k0 * bk;
    T acc = T(0);
    for (anycnn_index k = k0; k < k1; ++k, ia += ak, ib += bk)
      acc += A[ia] * B[ib];
    C = acc;
    """,
    doc="batched, strided, split-K matrix product; C is (batch * split, M, N), C order.",
)

# --- fused chains of the notes (section 3.4: fewer passes over the maps) -------------------------

UPSAMPLED_SENSITIVITY = KernelSource(
    name="anycnn_upsampled_sensitivity",
    in_params=(
        "raw T delta, T y, raw T beta, T scale, int32 n, int32 C, int32 h, int32 w, "
        "int32 has_beta, int32 decimated, int32 act, T p1, T p2"
    ),
    out_params="T out",
    operation=r"""
    // delta^l = beta^{l+1} (f'(u^l) o up(delta^{l+1})) of section 3.1.1, in one pass: kron
    // up-sampling (or the adjoint of decimation), the per-map beta, the mean's 1/n^2 (scale)
    // and f' from the convolution layer's saved output y.
    const anycnn_index idx = (anycnn_index)i;
    const anycnn_index Wd = (anycnn_index)w * n, Hd = (anycnn_index)h * n;
    const anycnn_index col = idx % Wd;
    const anycnn_index t = idx / Wd;
    const anycnn_index row = t % Hd;
    const anycnn_index map = t / Hd;
    T s = scale;
    if (has_beta) s = s * beta[map % C];
    T d = delta[(map * h + row / n) * w + col / n];
    if (decimated && (row % n != 0 || col % n != 0)) d = T(0);
    out = anycnn_df(act, y, p1, p2) * (s * d);
    """,
    preamble=ACTIVATIONS_PREAMBLE,
    doc="beta f'(y) o up(delta) for a convolution layer under a subsampling layer.",
)

SUBSAMPLE_FORWARD = KernelSource(
    name="anycnn_subsample_forward",
    in_params=(
        "raw T x, raw T beta, raw T bias, int32 n, int32 C, int32 h, int32 w, int32 H, int32 W, "
        "int32 decimated, T scale, int32 affine, int32 act, T p1, T p2"
    ),
    out_params="T d, T y",
    operation=r"""
    // x_j = f(beta_j down(x_j) + b_j) of section 3.2 in one pass; d = down(x) is written too,
    // since dE/dbeta needs it (section 3.2.1).
    const anycnn_index idx = (anycnn_index)i;
    const anycnn_index col = idx % w;
    const anycnn_index t = idx / w;
    const anycnn_index row = t % h;
    const anycnn_index map = t / h;
    const anycnn_index base = (map * H + row * n) * W + col * n;
    T s;
    if (decimated) {
      s = x[base];
    } else {
      s = T(0);
      for (int a = 0; a < n; ++a)
        for (int b = 0; b < n; ++b)
          s += x[base + a * W + b];
      s = s * scale;
    }
    d = s;
    const T u = affine ? beta[map % C] * s + bias[map % C] : s;
    y = anycnn_f(act, u, p1, p2);
    """,
    preamble=ACTIVATIONS_PREAMBLE,
    doc="down-sampling, beta, bias and f of a subsampling layer; returns (d, y).",
)

BIAS_ACTIVATION = KernelSource(
    name="anycnn_bias_activation",
    in_params="T u, raw T bias, int32 C, int64 inner, int32 has_bias, int32 act, T p1, T p2",
    out_params="T y",
    operation=r"""
    // x = f(u + b) (sections 2.1 and 3.1) with b per map (inner = H W) or per unit (inner = 1).
    T v = u;
    if (has_bias) v = v + bias[((anycnn_index)i / (anycnn_index)inner) % C];
    y = anycnn_f(act, v, p1, p2);
    """,
    preamble=ACTIVATIONS_PREAMBLE,
    doc="y = f(u + b) with a per-map (or per-unit) bias.",
)

ACTIVATION_AND_DERIVATIVE = KernelSource(
    name="anycnn_activation_and_derivative",
    in_params="T u, raw T bias, int32 C, int64 inner, int32 has_bias, int32 act, T p1, T p2",
    out_params="T y, T dy",
    operation=r"""
    // y = f(u + b) and f'(u + b) in one pass, f' computed from y (section 3.4).
    T v = u;
    if (has_bias) v = v + bias[((anycnn_index)i / (anycnn_index)inner) % C];
    const T out = anycnn_f(act, v, p1, p2);
    y = out;
    dy = anycnn_df(act, out, p1, p2);
    """,
    preamble=ACTIVATIONS_PREAMBLE,
    doc="(f(u + b), f'(u + b)).",
)

SENSITIVITY = KernelSource(
    name="anycnn_sensitivity",
    in_params="T dy, T y, int32 act, T p1, T p2",
    out_params="T delta",
    operation=r"""
    // delta = dE/dx o f'(u), eq. (4) of the notes, with f' from the saved output y.
    delta = dy * anycnn_df(act, y, p1, p2);
    """,
    preamble=ACTIVATIONS_PREAMBLE,
    doc="delta = dy o f'(y).",
)

SUBSAMPLE_SENSITIVITY = KernelSource(
    name="anycnn_subsample_sensitivity",
    in_params="T dy, T y, raw T beta, int32 C, int64 inner, int32 act, T p1, T p2",
    out_params="T delta, T scaled",
    operation=r"""
    // A trainable subsampling layer's delta = dE/dx o f'(u) (eq. 4, f' from its saved output)
    // and beta_j delta_j, what it up-samples into dE/dx (section 3.2.1), in one pass.
    const T d = dy * anycnn_df(act, y, p1, p2);
    delta = d;
    scaled = beta[((anycnn_index)i / (anycnn_index)inner) % C] * d;
    """,
    preamble=ACTIVATIONS_PREAMBLE,
    doc="(delta, beta delta) = (dy o f'(y), beta_j dy o f'(y)) for a subsampling layer.",
)

SGD = KernelSource(
    name="anycnn_sgd",
    in_params="T g, T lr",
    out_params="T p",
    operation="p = p - lr * g;",
    doc="p -= lr g, in place; lr a scalar or a 0-d device array.",
)

MOMENTUM = KernelSource(
    name="anycnn_momentum",
    in_params="T g, T lr, T momentum",
    out_params="T p, T v",
    operation=r"""
    // heavy-ball momentum as anycnn.optim.Momentum keeps it (its velocity is checkpointed)
    v = momentum * v + lr * g;
    p = p - v;
    """,
    doc="v = m v + lr g; p -= v, in place.",
)

#: Every kernel by name.
KERNELS: dict[str, KernelSource] = {
    k.name: k
    for k in (
        IM2COL,
        KRON_UPSAMPLE,
        BLOCK_SUM,
        DECIMATE,
        DECIMATE_TRANSPOSE,
        GEMM,
        UPSAMPLED_SENSITIVITY,
        SUBSAMPLE_FORWARD,
        BIAS_ACTIVATION,
        ACTIVATION_AND_DERIVATIVE,
        SENSITIVITY,
        SUBSAMPLE_SENSITIVITY,
        SGD,
        MOMENTUM,
    )
}


def activation_code(activation: Any) -> tuple[int, float, float] | None:
    """The kernels' ``(act, p1, p2)`` for an activation: anything with ``describe()`` (an
    :class:`anycnn.layers.Activation`), a description such as ``("tanh", 1.7159, 2 / 3)``, or
    ``None`` for the identity (Note [Activation codes]). Returns ``None`` for an activation
    without a description (a user's own): the caller then keeps the unfused path.
    """
    return _activations.compiled(activation)


def supports_activation(activation: Any) -> bool:
    """Whether the fused kernels implement this activation (see :func:`activation_code`)."""
    return activation_code(activation) is not None
