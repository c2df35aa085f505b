"""What the learned combination of section 3.3 promises beyond its gradients (issue 22): the
softmax never overflows nor mixes rows, ``effective_kernel`` uses the alpha it is given,
``selection`` and ``to_selection`` keep the documented rules (threshold in [0, 1), strictly
above it; top_k an int in [1, C_in], ties to the lower index; any backend's array; the message
naming the emptied maps), and ``config()`` keeps a pinned ``dims``."""

from __future__ import annotations

import array_api_strict
import numpy as np
import pytest

from anycnn import LearnedCombination, Network
from anycnn.layers.combine import softmax_alpha, to_selection


def _softmax_rows(c):
    out = []
    for row in c:
        e = [np.exp(v - max(row)) for v in row]
        out.append([v / sum(e) for v in e])
    return np.array(out)


def test_softmax_alpha_is_shift_invariant_per_row_and_never_overflows(backend):
    c_host = np.array([[1000.0, 999.0, 998.0], [0.0, -1.0, -2.0], [-800.0, -800.0, -801.0]])
    alpha = np.asarray(backend.to_host(softmax_alpha(backend.asarray(c_host, dtype="float64"))))
    assert np.isfinite(alpha).all()
    np.testing.assert_allclose(alpha, _softmax_rows(c_host), rtol=1e-14)
    np.testing.assert_allclose(alpha[0], alpha[1], rtol=1e-14)  # the same up to a shift


def test_the_layer_log_alpha_and_penalty_of_far_apart_rows(backend):
    layer = LearnedCombination(2, 1, lam=0.5, sparsity="entropy")
    net = Network([layer], input_shape=(3, 4, 4), dtype="float64", backend=backend)
    c_host = np.array([[700.0, 699.0, 698.0], [0.0, -1.0, -2.0]])
    net.set_parameter(f"{layer.name}.c", backend.asarray(c_host, dtype="float64"))
    alpha = _softmax_rows(c_host)
    expected = -0.5 * np.sum(alpha * np.log(alpha))
    assert float(backend.to_host(layer.penalty())) == pytest.approx(expected, rel=1e-13)
    log_alpha = np.asarray(backend.to_host(layer._log_alpha()))
    np.testing.assert_allclose(log_alpha, np.log(alpha), rtol=1e-13)


def test_effective_kernel_uses_the_alpha_it_is_given(backend, rng):
    for kernels in ("per_input", "per_pair"):
        layer = LearnedCombination(2, 2, kernels=kernels)
        Network([layer], input_shape=(3, 5, 5), dtype="float64", backend=backend)
        given_host = rng.uniform(0.1, 1.0, (2, 3))
        given = backend.asarray(given_host, dtype="float64")
        kernel = np.asarray(backend.to_host(layer.params["kernel"]))
        if kernels == "per_input":
            kernel = np.broadcast_to(kernel[None], (2, 3, 2, 2))
        np.testing.assert_allclose(
            np.asarray(backend.to_host(layer.effective_kernel(given))),
            given_host[:, :, None, None] * kernel,
            rtol=1e-15,
        )
        default = np.asarray(backend.to_host(layer.effective_kernel()))
        np.testing.assert_allclose(default, kernel / 3.0, rtol=1e-15)  # c = 0: alpha = 1/3


def test_config_keeps_a_pinned_dims():
    assert LearnedCombination(2, 3, dims=1).config()["dims"] == 1
    assert "dims" not in LearnedCombination(2, 3).config()


def test_selection_passes_threshold_and_top_k_on(backend):
    layer = LearnedCombination(2, 1)
    net = Network([layer], input_shape=(3, 4, 4), dtype="float64", backend=backend)
    c = backend.asarray(np.log([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]), dtype="float64")
    net.set_parameter(f"{layer.name}.c", c)
    np.testing.assert_array_equal(
        layer.selection(threshold=0.25), [[True, True, False], [False, True, True]]
    )
    np.testing.assert_array_equal(
        layer.selection(top_k=1), [[True, False, False], [False, True, False]]
    )
    with pytest.raises(ValueError, match=r"LearnedCombination.*threshold 0.7 leaves"):
        layer.selection(threshold=0.7)


def test_to_selection_threshold_is_strict_and_takes_zero():
    alphas = [[0.5, 0.3, 0.2], [0.0, 0.4, 0.6]]
    np.testing.assert_array_equal(
        to_selection(alphas, threshold=0.3), [[True, False, False], [False, True, True]]
    )  # 0.3 itself is not above 0.3
    np.testing.assert_array_equal(
        to_selection(alphas, threshold=0.0), [[True, True, True], [False, True, True]]
    )
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"^to_selection: threshold must be in \[0, 1\)"):
            to_selection(alphas, threshold=bad)
    with pytest.raises(ValueError, match=r"^to_selection: give a threshold, a top_k, or both"):
        to_selection(alphas)


def test_to_selection_top_k_bounds_and_ties_to_the_lower_index():
    rng = np.random.default_rng(3)
    table = rng.integers(1, 4, (4, 200)) / 10.0  # many ties
    keep = to_selection(table, top_k=50)
    for row, kept in zip(table, keep, strict=True):
        chosen = sorted(range(200), key=lambda i: (-row[i], i))[:50]
        assert np.flatnonzero(kept).tolist() == sorted(chosen)
    small = [[0.2, 0.5, 0.3]]
    np.testing.assert_array_equal(to_selection(small, top_k=3), [[True, True, True]])
    np.testing.assert_array_equal(to_selection(small, top_k=np.int64(1)), [[False, True, False]])
    for bad in (0, 4, True, 1.0, "1"):
        with pytest.raises(ValueError, match=r"top_k must be an int in \[1, 3\]"):
            to_selection(small, top_k=bad)
    both = to_selection([[0.5, 0.3, 0.2]], threshold=0.25, top_k=1)
    np.testing.assert_array_equal(both, [[True, False, False]])


def test_to_selection_takes_any_backends_array():
    device = array_api_strict.Device("device1")  # NumPy cannot read it directly
    alphas = array_api_strict.asarray([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45]], device=device)
    with pytest.raises(RuntimeError):
        np.asarray(alphas)
    np.testing.assert_array_equal(
        to_selection(alphas, threshold=0.3), [[True, False, False], [False, True, True]]
    )
    np.testing.assert_array_equal(
        to_selection(np.array([[0.7, 0.2, 0.1]]), threshold=0.3), [[True, False, False]]
    )


def test_an_emptying_threshold_names_at_most_eight_maps_and_their_largest_alpha():
    table = np.full((10, 4), 0.25)
    table[3] = [0.4, 0.3, 0.2, 0.1]
    with pytest.raises(ValueError) as caught:
        to_selection(table, threshold=0.5)
    message = str(caught.value)
    assert "leaves output map(s) [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] with no input map" in message
    assert "(their largest alpha: 0: 0.25, 1: 0.25, 2: 0.25, 3: 0.4, 4: 0.25, 5: 0.25, " in message
    assert "7: 0.25); lower the threshold" in message and "8: 0.25" not in message
