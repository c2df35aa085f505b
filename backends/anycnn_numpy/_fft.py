"""Convolutions by the FFT: the NumPy backend's path for large maps and large kernels.

The three convolutions of the notes (3.1's 'valid' forward pass, 3.2.1's 'full' one, eq. (7)'s
kernel gradient) as products of spectra, by ``scipy.fft`` (SciPy's pocketfft, float32 kept in
single precision; the reason SciPy is a dependency of anycnn: ``numpy.fft`` transforms one row
at a time, 2-10x slower on these batches of maps: bench/paths.py's comparison, README
"Growth"). :mod:`anycnn_numpy._plan` decides, shape by shape, when this path is taken (Note
[Choosing a path] there).

Note [Convolutions by the FFT]
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A 'valid' convolution of an ``H x W`` map with a ``kh x kw`` kernel costs ``kh kw`` multiply-adds
per output pixel directly; through the FFT it costs a transform of each input map, of each output
map back, and one complex multiply-add per frequency and map pair, whatever the kernel's size.
With ``P x Q`` transforms (``F = P (Q/2 + 1)`` frequencies of a real map):

* **Forward** (3.1): ``U[n, j] = sum_i X[n, i] K[j, i]`` with ``X = rfft2(x, (P, Q))`` and ``K``
  the kernels' spectra; ``irfft2(U)`` is the circular convolution, which equals the linear
  ('full') one wherever no wrapped-around term reaches: the 'valid' outputs of a map padded by
  ``ph`` are the 'full' ones from row ``kh - 1 - ph``, untouched by the wrap when ``P >= H + ph``
  (``ph <= kh - 1``: larger paddings add whole rows of zeros, done on a padded copy).
* **Full** (3.2.1): ``conv2(delta, rot180(k), 'full')`` is the 'full' convolution with the flipped
  kernels' spectra, ``G[n, i] = sum_j D[n, j] Kr[j, i]``, cropped by ``(ph, pw)`` (Note [Zero
  padding] in anycnn.ops): ``P >= h + kh - 1 - ph``.
* **Kernel gradient** (eq. 7): ``sum_n conj(D[n, j]) X[n, i]`` is the circular correlation of x
  with delta, exact at the ``kh x kw`` lags wanted when ``P >= H`` (x already padded); rot180 of
  it is the gradient in the notes' orientation.

``P`` and ``Q`` are the next 2, 3, 5, 7-smooth sizes (pocketfft's fast ones). Memory stays
bounded: examples are taken a few at a time, and output maps in groups, so that a group's
spectra and its inverse transforms take about :data:`GROUP_BYTES`; a 256 x 256 map with 64
output maps never holds the batch's spectra at once. The products of spectra are compiled loops
(``_fft_kernels``) over blocks of frequencies that stay in L1 when
Numba is there, else NumPy broadcasts.

Results agree with the direct and BLAS paths to rounding, not bit for bit: the FFT rounds
differently (errors relative to the maps' norm rather than each output's). The kernel gradient is
summed over the batch per slice of the pool (:func:`anycnn_numpy._threads.run_direct`, whose
slicing depends on the batch only) and the slices' sums added in order, so the bits do not depend
on the thread count.
"""

from __future__ import annotations

import functools

import numpy as np

from anycnn_numpy import _fft_budget as budget
from anycnn_numpy import _jit, _threads
from anycnn_numpy._threads import run_direct, sum_in_order

_COMPLEX = {
    np.dtype(np.float32): np.dtype(np.complex64),
    np.dtype(np.float64): np.dtype(np.complex128),
}


@functools.lru_cache(maxsize=1024)
def fast_length(n: int) -> int:
    """The smallest 2, 3, 5, 7-smooth integer >= n (pocketfft's fast sizes)."""
    best = 1 << max(0, (n - 1).bit_length())
    p7 = 1
    while p7 < best:
        p5 = p7
        while p5 < best:
            p3 = p5
            while p3 < best:
                p2 = p3
                while p2 < n:
                    p2 *= 2
                best = min(best, p2)
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


def sizes_valid(h: int, w: int, padding=(0, 0)) -> tuple[int, int]:
    """The transform size of a forward convolution of h x w maps padded by ``padding`` (the
    kernel's size does not enter: Note [Convolutions by the FFT])."""
    ph, pw = padding
    return fast_length(h + ph), fast_length(w + pw)


def sizes_full(h: int, w: int, kh: int, kw: int, padding=(0, 0)) -> tuple[int, int]:
    """The transform size of a 'full' convolution of h x w deltas, cropped by ``padding``."""
    ph, pw = padding
    return fast_length(h + kh - 1 - ph), fast_length(w + kw - 1 - pw)


def sizes_grad(h: int, w: int) -> tuple[int, int]:
    """The transform size of eq. (7) on h x w (padded) input maps."""
    return fast_length(h), fast_length(w)


def _pairs(z: np.ndarray) -> np.ndarray:
    """A C-contiguous complex (A, B, P, Qc) array as its (A, B, 2 P Qc) float pairs (a view)."""
    z = np.ascontiguousarray(z)
    return z.reshape(z.shape[0], z.shape[1], z.shape[2] * z.shape[3]).view(z.real.dtype)


def _mac(a, b, active, out):
    """``out[e, t] = sum_s a[e, s] b[t, s]`` over the pairs in ``active`` (t, s)."""
    if _jit.spectral_mac is not None:
        _jit.spectral_mac(_pairs(a), _pairs(b), active, _pairs(out))
        return
    out[...] = 0
    for t in range(b.shape[0]):
        for s in range(b.shape[1]):
            if active[t, s]:
                out[:, t] += a[:, s] * b[t, s]


def _corr(d, x, active, out):
    """``out[t, s] += sum_e conj(d[e, t]) x[e, s]`` over the pairs in ``active`` (t, s)."""
    if _jit.spectral_corr is not None:
        _jit.spectral_corr(_pairs(d), _pairs(x), active, _pairs(out))
        return
    for t in range(d.shape[1]):
        for s in range(x.shape[1]):
            if active[t, s]:
                out[t, s] += np.sum(np.conj(d[:, t]) * x[:, s], axis=0)


@functools.cache
def _library():
    """``scipy.fft``, or None where SciPy is missing (then the FFT path is not available)."""
    try:
        import scipy.fft
    except ImportError:
        return None
    return scipy.fft


def available() -> bool:
    """Whether the FFT path can run: SciPy's pocketfft is there (Note [Convolutions by the FFT])."""
    return _library() is not None


def _forward(a: np.ndarray, p: int, q: int) -> np.ndarray:
    """The (P, Q) real spectra of the last two axes of the 4-d ``a`` (zero-padded): the rows
    there are along the last axis (scipy's default), then the columns (axis 2), so the zero rows
    of the padding cost one column transform."""
    fft = _library()
    # one worker (the pool's threads run the slices) and overwriting a temporary: how fast, not
    # what (each keyword on a line of its own: pyproject's do_not_mutate_patterns)
    rows = fft.rfft(
        a,
        n=q,
        workers=1,
    )
    return fft.fft(
        rows,
        n=p,
        axis=2,
        workers=1,
        overwrite_x=True,
    )


def _inverse(z: np.ndarray, q: int, r0: int, r1: int) -> np.ndarray:
    """Rows ``r0:r1`` of the (P, Q) real maps whose 4-d spectra are ``z``: the columns (axis 2,
    P long) transformed back, then only the rows wanted (Q real columns)."""
    fft = _library()
    columns = fft.ifft(
        z,
        axis=2,
        workers=1,
    )
    return fft.irfft(
        columns[..., r0:r1, :],
        n=q,
        workers=1,
        overwrite_x=True,
    )


def _input_spectra(a, e0: int, e1: int, p: int, q: int, kept: dict) -> np.ndarray:
    """rfft2 of examples ``e0:e1`` of ``a``, from ``kept`` when transformed before (for another
    group), stored there (a cache that forgets when the budget says so: Note [Convolutions by
    the FFT])."""
    if (e0, e1) in kept:
        return kept[e0, e1]
    spectra = _forward(a[e0:e1], p, q)
    kept[e0, e1] = spectra
    return spectra


def _spectra(kernel: np.ndarray, p: int, q: int, flip: bool = False) -> np.ndarray:
    """The kernels' spectra (O, C, F), of rot180(k) when ``flip``."""
    k = kernel[:, :, ::-1, ::-1] if flip else kernel
    return np.ascontiguousarray(_forward(k, p, q))


def _ranges(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    """``start:stop`` cut into consecutive ranges of ``size`` (the last one shorter)."""
    return [(i, min(stop, i + size)) for i in range(start, stop, size)]


def conv_valid(x, kernel, active, epilogue=None, padding=(0, 0)):
    """Forward 'valid' convolution by the FFT (Note [Convolutions by the FFT]); ``kernel`` is
    already masked by the selection, ``active`` its (C_out, C_in) table; ``epilogue(slice)`` runs
    in place on every batch slice of the finished output (a layer's bias and f)."""
    ph, pw = padding
    n, c, h, w = x.shape
    o, _, kh, kw = kernel.shape
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    p, q = sizes_valid(h, w, padding)
    cdtype = _COMPLEX[x.dtype]
    out = np.empty((n, o, oh, ow), dtype=x.dtype)
    r0, c0 = kh - 1 - ph, kw - 1 - pw
    group = budget.valid_group(o, c, p, q)
    chunk = budget.valid_chunk(n, c, group, p, q, x.itemsize)
    kept = budget.spectra_cache(n, c, p, q)
    for j0, j1 in _ranges(0, o, group):
        spectra = _spectra(kernel[j0:j1], p, q)

        def work(index, start, stop, j0=j0, j1=j1, spectra=spectra):
            for e0, e1 in _ranges(start, stop, chunk):
                xs = _input_spectra(x, e0, e1, p, q, kept)
                u = np.empty((e1 - e0, j1 - j0, p, q // 2 + 1), cdtype)
                _mac(xs, spectra, active[j0:j1], u)
                back = _inverse(u, q, r0, r0 + oh)
                out[e0:e1, j0:j1] = back[:, :, :, c0 : c0 + ow]

        run_direct(work, n, budget.valid_macs(c, group, p, q))  # one slicing for all groups
    if epilogue is not None:

        def finish(index, start, stop):
            epilogue(out[start:stop])

        run_direct(finish, n, o * oh * ow)
    return out


def conv_full(delta, kernel, active_t, padding=(0, 0)):
    """'Full' convolution (3.2.1) by the FFT, cropped by ``padding``; ``kernel`` is masked and
    ``active_t`` is the (C_in, C_out) table of the pairs."""
    ph, pw = padding
    n, o, h, w = delta.shape
    _, c, kh, kw = kernel.shape
    gh, gw = h + kh - 1 - 2 * ph, w + kw - 1 - 2 * pw
    p, q = sizes_full(h, w, kh, kw, padding)
    cdtype = _COMPLEX[delta.dtype]
    out = np.empty((n, c, gh, gw), dtype=delta.dtype)
    group = budget.valid_group(c, o, p, q)
    chunk = budget.valid_chunk(n, o, group, p, q, delta.itemsize)
    kept = budget.spectra_cache(n, o, p, q)
    for i0, i1 in _ranges(0, c, group):
        # g[n, i] = sum_j D[n, j] Kr[j, i]: the group's kernels' spectra as (group, C_out, F)
        spectra = _spectra(kernel[:, i0:i1], p, q, flip=True).transpose(1, 0, 2, 3)
        spectra = np.ascontiguousarray(spectra)

        def work(index, start, stop, i0=i0, i1=i1, spectra=spectra):
            for e0, e1 in _ranges(start, stop, chunk):
                ds = _input_spectra(delta, e0, e1, p, q, kept)
                g = np.empty((e1 - e0, i1 - i0, p, q // 2 + 1), cdtype)
                _mac(ds, spectra, active_t[i0:i1], g)
                back = _inverse(g, q, ph, ph + gh)
                out[e0:e1, i0:i1] = back[:, :, :, pw : pw + gw]

        run_direct(work, n, budget.valid_macs(o, group, p, q))  # one slicing for all groups
    return out


def conv_kernel_grad(x, delta, active):
    """Eq. (7) by the FFT on maps ``x`` already padded: ``(C_out, C_in, kh, kw)``, zero outside
    ``active`` (C_out, C_in)."""
    n, c, h, w = x.shape
    _, o, dh, dw = delta.shape
    kh, kw = h - dh + 1, w - dw + 1
    p, q = sizes_grad(h, w)
    cdtype = _COMPLEX[x.dtype]
    group = budget.grad_group(o, c, p, q)  # a group holds its (group, C_in, F) sums of products
    chunk = budget.grad_chunk(n, c, group, p, q, x.itemsize)
    partial = {}

    count = budget.grad_slices(n)

    def work(index, start, stop):
        grad = np.zeros((o, c, kh, kw), dtype=x.dtype)
        kept = budget.spectra_cache(stop - start, c, p, q)
        for j0, j1 in _ranges(0, o, group):
            sums = np.zeros((j1 - j0, c, p, q // 2 + 1), cdtype)
            for e0, e1 in _ranges(start, stop, chunk):
                xs = _input_spectra(x, e0, e1, p, q, kept)
                ds = _forward(delta[e0:e1, j0:j1], p, q)
                _corr(ds, xs, active[j0:j1], sums)
            lags = _inverse(sums, q, 0, kh)[:, :, :, :kw]
            grad[j0:j1] = lags[:, :, ::-1, ::-1]  # correlation lags -> conv2 orientation
        partial[index] = grad

    # Few slices: each ends with the inverse transforms of its (C_out, C_in) sums.
    parts = [(n * i // count, n * (i + 1) // count) for i in range(count)]
    _threads._pool.run(work, parts)
    grad = sum_in_order(partial)
    grad *= active[:, :, None, None]
    return grad
