import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.schemes import ZoomQScheme
from autoqnn.schemes.zoomq import zoomq_grid, zoomq_quantize

from .scheme_strategies import on_grid, weight_arrays


def test_grid_golden():
    x = np.array([0.0, 0.9, 1.0, 2.6, 4.0, -3.0, 7.0], "float32")
    expected = [0.5, 0.5, 1.5, 2.5, 3.5, 0.5, 3.5]
    np.testing.assert_array_equal(np.asarray(zoomq_grid(x, 0.0, 4.0, 2)), expected)


def test_quantize_golden():
    w = np.array([0.0, 1.0, 2.0, 3.0, 4.0], "float32")
    np.testing.assert_array_equal(np.asarray(zoomq_quantize(w, 2)), [0.5, 1.5, 2.5, 3.5, 3.5])
    np.testing.assert_array_equal(np.asarray(zoomq_quantize(w, 1)), [1.0, 1.0, 3.0, 3.0, 3.0])
    w = np.array([[-1.0, 0.0], [1.0, 8.0]], "float32")
    q = ZoomQScheme(bits=1, granularity="per_channel")(w, channel_axis=-1)
    np.testing.assert_array_equal(np.asarray(q), [[-0.5, 2.0], [0.5, 6.0]])


@given(w=weight_arrays(), bits=st.integers(1, 8))
def test_on_bin_centres(w, bits):
    q = np.asarray(zoomq_quantize(w, bits), np.float64)
    lo, hi = float(w.min()), float(w.max())
    assert lo <= q.min() and q.max() <= hi
    if hi == lo:  # empty range: everything maps to the constant
        np.testing.assert_array_equal(q, w)
    else:
        assert on_grid(q, lo + (np.arange(2**bits) + 0.5) * (hi - lo) / 2**bits, rtol=1e-5)


@given(w=weight_arrays(), bits=st.integers(1, 8))
def test_idempotent_at_fixed_range(w, bits):
    # Not idempotent with the data range: q's range is [min + s/2, max - s/2],
    # a smaller zoom. With the range held fixed, rounding to bin centres is.
    lo, hi = float(w.min()) - 1.0, float(w.max()) + 1.0
    once = np.asarray(zoomq_grid(w, lo, hi, bits))
    np.testing.assert_allclose(np.asarray(zoomq_grid(once, lo, hi, bits)), once, atol=1e-5)


def test_bits_range():
    with pytest.raises(ValueError, match=r"bits must be in \[1, 16\] for scheme 'zoomq', got 0"):
        ZoomQScheme(bits=0)
