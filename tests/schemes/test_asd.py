import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.schemes import ASDScheme
from autoqnn.schemes.asd import asd_levels, asd_quantize, naf_weight

from .scheme_strategies import weight_arrays


@pytest.mark.parametrize(
    "n, weight", [(0, 0), (1, 1), (3, 2), (7, 2), (11, 3), (13, 3), (15, 2), (23, 3), (-7, 2)]
)
def test_naf_weight_golden(n, weight):
    assert naf_weight(n) == weight


def test_naf_weight_is_minimal():
    # brute force over all signed-digit strings of 8 digits
    best = {}
    for digits in itertools.product((-1, 0, 1), repeat=8):
        value = sum(d * 2**i for i, d in enumerate(digits))
        nonzero = sum(d != 0 for d in digits)
        if 0 <= value < 128:
            best[value] = min(best.get(value, 9), nonzero)
    assert all(naf_weight(n) == best[n] for n in range(128))


def test_levels_golden():
    assert asd_levels(4) == tuple(range(8))
    assert asd_levels(5) == (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15)
    assert asd_levels(5, digits=1) == (0, 1, 2, 4, 8)
    assert ASDScheme(bits=5).num_levels() == 27
    assert ASDScheme(bits=3, digits=1).num_levels() == 5


def test_quantize_golden():
    w = np.array([-15.0, 11.2, 12.9, 2.4, 0.2], "float32")  # alpha = 1
    np.testing.assert_array_equal(np.asarray(asd_quantize(w, 5)), [-15, 12, 12, 2, 0])
    w = np.array([[3.0, -0.5], [-1.1, 0.24]], "float32")  # alpha = 1, 0.5/3 (bits 3)
    q = np.asarray(ASDScheme(bits=3, granularity="per_channel")(w, channel_axis=-1))
    np.testing.assert_allclose(q, [[3.0, -0.5], [-1.0, 0.5 / 3]], atol=1e-6)


@given(w=weight_arrays(), bits=st.integers(2, 10), digits=st.integers(1, 3))
def test_levels_have_few_signed_digits(w, bits, digits):
    q = np.asarray(asd_quantize(w, bits, -1, digits), np.float64)
    top = asd_levels(bits, digits)[-1]
    alpha = np.maximum(np.abs(w).max(axis=0), 1e-12 * top) / top
    n = np.round(q / alpha)
    np.testing.assert_allclose(q / alpha, n, atol=1e-4)
    assert all(naf_weight(int(v)) <= digits for v in np.unique(n))
    # max|q| = alpha * top, so alpha is recomputed up to one rounding: idempotent
    # within float precision.
    np.testing.assert_allclose(
        np.asarray(asd_quantize(q.astype("float32"), bits, -1, digits)), q, rtol=1e-6
    )


def test_bad_options():
    with pytest.raises(ValueError, match=r"digits must be in \[1, 8\], got 0"):
        ASDScheme(digits=0)
    with pytest.raises(TypeError, match=r"digits must be an integer, got 1.5"):
        ASDScheme(digits=1.5)
    with pytest.raises(ValueError, match=r"bits must be in \[2, 16\] for scheme 'asd', got 1"):
        ASDScheme(bits=1)
