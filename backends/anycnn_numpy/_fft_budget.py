"""How the FFT path (``_fft``) cuts its work to bound its memory: output maps in groups, examples
in chunks, the kernel gradient's batch in slices, and whether input spectra are kept for every
group (Note [Convolutions by the FFT] in ``_fft``). Every choice here gives the same convolution
(to rounding, and the same bits on any number of threads): they decide how much memory and time
it takes, not what it computes, and so are outside the mutation campaigns' scope, like the thread
pool (``_threads``) and the path chooser (``_plan``, which prices the FFT path with them).
"""

from __future__ import annotations

from anycnn_numpy import _threads

#: About how many bytes of spectra and inverse transforms one group of output maps holds (per
#: thread): see Note [Convolutions by the FFT] in _fft.
GROUP_BYTES = 8 << 20


def _spectrum(p: int, q: int) -> int:
    """Frequencies of a real (P, Q) map's spectrum."""
    return p * (q // 2 + 1)


def _group(maps: int, per_map: int) -> int:
    """How many maps of ``per_map`` bytes a group takes (at least one)."""
    return max(1, min(maps, GROUP_BYTES // max(per_map, 1)))


def grad_group(o: int, c: int, p: int, q: int) -> int:
    """Output maps per group of eq. (7) by the FFT: their (group, C_in) sums of spectra and the
    inverse transforms of one of them take about GROUP_BYTES."""
    return _group(o, c * (_spectrum(p, q) * 8 + p * q * 4))


def grad_slices(n: int) -> int:
    """Batch slices of eq. (7) by the FFT: as many as the pool runs side by side on two cores,
    a function of the batch only (their sums are added in order: the same bits on any number
    of threads)."""
    return min(n, _threads._PARALLEL_SLICES)


def _chunk(n: int, per_example: int) -> int:
    return max(1, min(n, GROUP_BYTES // max(per_example, 1)))


def valid_chunk(n: int, c: int, group: int, p: int, q: int, itemsize: int) -> int:
    """Examples a forward (or 'full') convolution's group takes at once: their ``c`` input and
    ``group`` output spectra (complex: twice ``itemsize``) and inverse transforms."""
    return _chunk(n, (c + group) * _spectrum(p, q) * 2 * itemsize + group * p * q * itemsize)


def grad_chunk(n: int, c: int, group: int, p: int, q: int, itemsize: int) -> int:
    """Examples eq. (7)'s group takes at once: their ``c + group`` spectra."""
    return _chunk(n, (c + group) * _spectrum(p, q) * 2 * itemsize)


def valid_macs(c: int, group: int, p: int, q: int) -> int:
    """About the multiply-adds of one example of a group (the pool's slicing of the batch)."""
    f = _spectrum(p, q)
    return (c + group) * f * 8 + group * c * f


def valid_group(o: int, c: int, p: int, q: int) -> int:
    """Output maps per group of a forward convolution (or input maps of a 'full' one, ``o`` and
    ``c`` swapped): their kernels' spectra, and per example their spectra and inverse
    transforms, take about GROUP_BYTES."""
    f = _spectrum(p, q)
    return _group(o, c * f * 8 + f * 8 + p * q * 4)


def keeps_spectra(rows: int, c: int, p: int, q: int) -> bool:
    """Whether the input spectra of ``rows`` examples of ``c`` maps are kept for every group
    (they take at most GROUP_BYTES) rather than transformed again for each."""
    return rows * c * _spectrum(p, q) * 8 <= GROUP_BYTES


class _Forget(dict):
    """A cache of spectra that keeps nothing (the budget has no room for them)."""

    def __setitem__(self, key, value) -> None:
        pass


def spectra_cache(rows: int, c: int, p: int, q: int) -> dict:
    """Where the FFT path keeps the input spectra of ``rows`` examples of ``c`` maps for every
    group: a dict when :func:`keeps_spectra`, else one that forgets them."""
    return {} if keeps_spectra(rows, c, p, q) else _Forget()


def input_transforms(n: int, c: int, groups: int, slices: int, p: int, q: int) -> int:
    """How many input maps the FFT path transforms: once each when their spectra are kept
    (:func:`keeps_spectra`, per slice of ``n / slices`` examples), else once per group."""
    rows = -(-n // slices)
    return n * c * (1 if keeps_spectra(rows, c, p, q) else groups)
