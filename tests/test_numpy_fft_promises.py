"""What the NumPy plugin's FFT path promises beyond its values (Note [Convolutions by the FFT] in
anycnn_numpy._fft; issue 22: survivors of the mutation campaigns in backends/anycnn_numpy/_fft.py,
tests/MUTATION.md).

* **The smallest transforms that give the result**: the cost model (``_plan``) and the memory
  budget price a layer by its transform sizes, which are the smallest 2, 3, 5, 7-smooth lengths
  (pocketfft's fast ones) past which the circular convolution no longer wraps onto the rows and
  columns the op returns: ``h + p`` for the 'valid' convolution of h maps padded by p, ``h + k -
  1 - p`` for the 'full' one cropped by p, ``h`` for eq. (7) on padded maps.
* **Input spectra transformed as often as the model counts** (``_fft_budget.input_transforms``):
  once per example when the budget keeps them for every group of output maps, else once per
  group."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("anycnn_numpy")
from anycnn_numpy import _fft, _fft_budget  # noqa: E402

from anycnn import ops as reference  # noqa: E402

pytestmark = pytest.mark.skipif(not _fft.available(), reason="no SciPy: no FFT path")


def _smooth(n: int) -> bool:
    for f in (2, 3, 5, 7):
        while n % f == 0:
            n //= f
    return n == 1


def test_fast_lengths_are_the_smallest_smooth_ones():
    for n in range(1, 400):
        got = _fft.fast_length(n)
        assert got >= n and _smooth(got), n
        assert not any(_smooth(m) for m in range(n, got)), n


@pytest.mark.parametrize("pad", [0, 1, 2])
def test_transform_sizes_are_the_smallest_that_do_not_wrap_onto_the_result(pad):
    for h in range(3, 30):
        for k in range(pad + 1, min(h, 8)):
            w, kw = h + 3, k + 1
            assert _fft.sizes_valid(h, w, (pad, pad + 1)) == (
                _fft.fast_length(h + pad),
                _fft.fast_length(w + pad + 1),
            )
            assert _fft.sizes_full(h, w, k, kw, (pad, pad + 1)) == (
                _fft.fast_length(h + k - 1 - pad),
                _fft.fast_length(w + kw - 1 - pad - 1),
            )
            assert _fft.sizes_grad(h, w) == (_fft.fast_length(h), _fft.fast_length(w))


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "forgotten"])
def test_input_spectra_are_transformed_as_often_as_the_model_counts(monkeypatch, kept):
    n, c, o, h, w, kh, kw = 2, 3, 4, 10, 13, 3, 4
    p, q = _fft.sizes_valid(h, w)
    f = p * (q // 2 + 1)
    # room for the batch's input spectra (kept) or not, and for one output map a group
    budget = n * c * f * 8 if kept else 8
    monkeypatch.setattr(_fft_budget, "GROUP_BYTES", budget)
    group = _fft_budget.valid_group(o, c, p, q)
    assert -(-o // group) > 1
    assert _fft_budget.keeps_spectra(n, c, p, q) is kept
    transformed = []
    forward = _fft._forward

    def counted(a, p_, q_):
        if a.shape[2:] == (h, w):  # the input maps (not the kernels, nor eq. (7)'s deltas)
            transformed.append(a.shape[0] * a.shape[1])
        return forward(a, p_, q_)

    monkeypatch.setattr(_fft, "_forward", counted)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w))
    k = rng.standard_normal((o, c, kh, kw))
    active = np.ones((o, c), bool)
    got = _fft.conv_valid(x, k, active)
    np.testing.assert_allclose(got, reference.conv_valid(x, k), rtol=1e-10, atol=1e-10)
    groups = -(-o // group)
    assert sum(transformed) == _fft_budget.input_transforms(n, c, groups, 1, p, q)
    assert sum(transformed) == (n * c if kept else n * c * groups)
