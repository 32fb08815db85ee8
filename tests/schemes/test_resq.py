import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.schemes import ResQScheme
from autoqnn.schemes.binary import binary_quantize
from autoqnn.schemes.resq import resq_quantize

from .scheme_strategies import weight_arrays


def _reference(w, bits):
    """numpy float64 version of the ResQ recursion, per tensor."""
    residual, total = w.astype(np.float64), np.zeros(w.shape)
    alphas = []
    for _ in range(bits):
        alpha = np.mean(np.abs(residual))
        term = alpha * np.where(residual >= 0, 1.0, -1.0)
        total, residual = total + term, residual - term
        alphas.append(alpha)
    return total, alphas


@pytest.mark.parametrize(
    "bits, w, expected",
    [
        (2, [-3.0, -1.0, 1.0, 3.0], [-3.0, -1.0, 1.0, 3.0]),  # alphas 2, 1
        (3, [-3.0, -1.0, 1.0, 3.0], [-3.0, -1.0, 1.0, 3.0]),  # third alpha is 0
        (2, [0.0, 1.0, 2.0, 5.0], [0.5, 0.5, 3.5, 3.5]),  # alphas 2, 1.5; sign(0) = +1
    ],
)
def test_golden(bits, w, expected):
    np.testing.assert_allclose(np.asarray(resq_quantize(np.float32(w), bits)), expected, atol=1e-6)


@given(w=weight_arrays())
def test_one_bit_is_binary(w):
    np.testing.assert_array_equal(
        np.asarray(resq_quantize(w, 1, -1)), np.asarray(binary_quantize(w, -1))
    )


@given(w=weight_arrays(), bits=st.integers(1, 6))
def test_matches_reference_and_sums_of_alphas(w, bits):
    # ResQ is not idempotent for b >= 2 (the alphas of q differ from those of
    # w); what holds is that q is a signed sum of the greedy alphas.
    q = np.asarray(resq_quantize(w, bits), np.float64)
    expected, alphas = _reference(w, bits)
    np.testing.assert_allclose(q, expected, rtol=1e-4, atol=1e-5 * max(alphas[0], 1e-6))


def test_sign_symmetry_on_generic_data():
    # With residuals that are never exactly 0, q(-w) = -q(w).
    w = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    scheme = ResQScheme(bits=4, granularity="per_channel")
    np.testing.assert_array_equal(
        np.asarray(scheme(-w, channel_axis=-1)), -np.asarray(scheme(w, channel_axis=-1))
    )


def test_bits_range():
    with pytest.raises(ValueError, match=r"bits must be in \[1, 8\] for scheme 'resq', got 9"):
        ResQScheme(bits=9)
