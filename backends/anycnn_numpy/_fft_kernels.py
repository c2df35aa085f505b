"""The compiled products of spectra of the FFT path (Note [Convolutions by the FFT] in ``_fft``).

Imported by ``_jit`` only when Numba is there. Spectra are complex arrays read as interleaved
(real, imaginary) float pairs, ``(rows, maps, 2 F)``; the loops run over blocks of
:data:`BLOCK` frequencies with the block's accumulators in L1, so every spectrum is read once
per block and every output written once.
"""

from __future__ import annotations

import numba
import numpy as np

#: Frequencies per block: two accumulators of BLOCK numbers, and a block of each operand, in L1.
BLOCK = 512


@numba.njit(nogil=True, fastmath=True, cache=True)
def spectral_mac(a, b, active, out):  # pragma: no cover - compiled
    """``out[e, t] = sum_s a[e, s] b[t, s]`` (complex, per frequency) for the pairs (t, s) in
    ``active``; ``a`` (M, S, 2F), ``b`` (T, S, 2F), ``out`` (M, T, 2F) interleaved pairs."""
    m, s_count = a.shape[0], a.shape[1]
    t_count = b.shape[0]
    f = a.shape[2] // 2
    zero = a.dtype.type(0)
    re = np.empty(BLOCK, a.dtype)
    im = np.empty(BLOCK, a.dtype)
    for e in range(m):
        for f0 in range(0, f, BLOCK):
            size = min(BLOCK, f - f0)
            for t in range(t_count):
                for q in range(size):
                    re[q] = zero
                    im[q] = zero
                for s in range(s_count):
                    if not active[t, s]:
                        continue
                    x = a[e, s, 2 * f0 : 2 * (f0 + size)]
                    y = b[t, s, 2 * f0 : 2 * (f0 + size)]
                    for q in range(size):
                        xr, xi = x[2 * q], x[2 * q + 1]
                        yr, yi = y[2 * q], y[2 * q + 1]
                        re[q] += xr * yr - xi * yi
                        im[q] += xr * yi + xi * yr
                target = out[e, t, 2 * f0 : 2 * (f0 + size)]
                for q in range(size):
                    target[2 * q] = re[q]
                    target[2 * q + 1] = im[q]


@numba.njit(nogil=True, fastmath=True, cache=True)
def spectral_corr(d, x, active, out):  # pragma: no cover - compiled
    """``out[t, s] += sum_e conj(d[e, t]) x[e, s]`` (complex, per frequency) for the pairs
    (t, s) in ``active``; ``d`` (M, T, 2F), ``x`` (M, S, 2F), ``out`` (T, S, 2F)."""
    m, t_count = d.shape[0], d.shape[1]
    s_count = x.shape[1]
    f = x.shape[2] // 2
    re = np.empty(BLOCK, x.dtype)
    im = np.empty(BLOCK, x.dtype)
    for f0 in range(0, f, BLOCK):
        size = min(BLOCK, f - f0)
        for t in range(t_count):
            for s in range(s_count):
                if not active[t, s]:
                    continue
                target = out[t, s, 2 * f0 : 2 * (f0 + size)]
                for q in range(size):
                    re[q] = target[2 * q]
                    im[q] = target[2 * q + 1]
                for e in range(m):
                    u = d[e, t, 2 * f0 : 2 * (f0 + size)]
                    v = x[e, s, 2 * f0 : 2 * (f0 + size)]
                    for q in range(size):
                        dr, di = u[2 * q], u[2 * q + 1]
                        xr, xi = v[2 * q], v[2 * q + 1]
                        re[q] += dr * xr + di * xi
                        im[q] += dr * xi - di * xr
                for q in range(size):
                    target[2 * q] = re[q]
                    target[2 * q + 1] = im[q]
