import numpy as np
import pytest
from hypothesis import given

from autoqnn.schemes import TernaryScheme
from autoqnn.schemes.ternary import ternary_quantize

from .scheme_strategies import weight_arrays

A = 1.6 / 3.0


@pytest.mark.parametrize(
    "w, expected",
    [
        ([-1.0, 0.1, 0.5, -0.2], [-0.75, 0.0, 0.75, 0.0]),  # delta 0.315
        ([1.0, 0.3, -0.3, 0.0], [A, A, -A, 0.0]),  # delta 0.28
        ([0.0, 0.0], [0.0, 0.0]),
    ],
)
def test_golden(w, expected):
    q = np.asarray(ternary_quantize(np.float32(w)))
    np.testing.assert_allclose(q, expected, atol=1e-6)


def test_per_channel_and_threshold_option():
    w = np.array([[1.0, 4.0], [0.2, -1.0], [-0.6, 0.5]], "float32")
    q = TernaryScheme(granularity="per_channel")(w, channel_axis=-1)
    # channel 0: delta 0.7*0.6 = 0.42 -> keep 1, -0.6; channel 1: delta 1.283 -> keep 4
    np.testing.assert_allclose(np.asarray(q), [[0.8, 4.0], [0.0, 0.0], [-0.8, 0.0]], atol=1e-6)
    q = TernaryScheme(threshold_ratio=0.1)(np.float32([1.0, 0.2, -0.2]))
    np.testing.assert_allclose(np.asarray(q), [1.4 / 3, 1.4 / 3, -1.4 / 3], atol=1e-6)


@given(w=weight_arrays())
def test_three_levels_and_idempotent(w):
    q = np.asarray(ternary_quantize(w, channel_axis=-1))
    for c in range(w.shape[1]):
        mags = np.unique(np.abs(q[:, c]))
        assert len(mags[mags > 0]) <= 1
    # Quantizing {-a, 0, a} again keeps every non-zero (0.7 mean|q| < a) with
    # the same alpha (up to float summation order).
    np.testing.assert_allclose(np.asarray(ternary_quantize(q, channel_axis=-1)), q, rtol=1e-6)


def test_bad_options():
    with pytest.raises(ValueError, match=r"threshold_ratio must be a finite number > 0, got -1"):
        TernaryScheme(threshold_ratio=-1)
    with pytest.raises(TypeError, match=r"threshold_ratio must be a number, got 'big'"):
        TernaryScheme(threshold_ratio="big")
    with pytest.raises(ValueError, match=r"bits must be in \[2, 2\] for scheme 'ternary', got 3"):
        TernaryScheme(bits=3)
