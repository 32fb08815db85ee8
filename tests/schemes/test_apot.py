import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.schemes import APoTScheme
from autoqnn.schemes.apot import apot_grid, apot_levels, apot_quantize

from .scheme_strategies import on_grid, weight_arrays


def test_levels_golden():
    assert apot_levels(1) == (0.0, 1.0)
    assert apot_levels(2) == (0.0, 0.25, 0.5, 1.0)
    # 4 magnitude bits, k = 2: the paper's p0 in {0, 1, 1/4, 1/16}, p1 in {0, 1/2, 1/8, 1/32}
    paper = sorted({a + b for a in (0, 1, 1 / 4, 1 / 16) for b in (0, 1 / 2, 1 / 8, 1 / 32)})
    np.testing.assert_allclose(apot_levels(4), np.array(paper) / 1.5, atol=1e-12)
    assert apot_levels(3, base_bits=1) == tuple(np.arange(8) / 7)  # 1-bit terms: uniform


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("base_bits", [1, 2, 3, 4])
def test_level_count(bits, base_bits):
    levels = apot_levels(bits, base_bits)
    assert len(levels) == 2**bits and levels[0] == 0.0 and levels[-1] == 1.0


def test_quantize_golden():
    w = np.array([-1.0, 0.3, 0.6, 0.1, 0.0], "float32")
    np.testing.assert_array_equal(np.asarray(apot_quantize(w, 3)), [-1.0, 0.25, 0.5, 0.0, 0.0])
    w = np.array([[2.0, -4.0], [0.9, 1.1]], "float32")
    q = APoTScheme(bits=3, granularity="per_channel")(w, channel_axis=-1)
    np.testing.assert_array_equal(np.asarray(q), [[2.0, -4.0], [1.0, 1.0]])


@given(w=weight_arrays(), bits=st.integers(2, 9), base_bits=st.integers(1, 4))
def test_on_grid_and_idempotent(w, bits, base_bits):
    q = np.asarray(apot_quantize(w, bits, -1, base_bits))
    alpha = np.maximum(np.abs(w).max(axis=0), 1e-12)
    levels = np.asarray(apot_levels(bits - 1, base_bits))
    assert on_grid(q / alpha, np.concatenate([-levels, levels]), rtol=1e-6)
    # alpha = max|w| is kept by quantization (the largest level is 1), so the
    # scheme itself is idempotent.
    np.testing.assert_array_equal(np.asarray(apot_quantize(q, bits, -1, base_bits)), q)


def test_grid_is_clipped_at_alpha():
    np.testing.assert_array_equal(np.asarray(apot_grid(np.float32([3.0, -3.0]), 1.0, 4)), [1, -1])


def test_bad_options():
    with pytest.raises(ValueError, match=r"base_bits must be in \[1, 4\], got 5"):
        APoTScheme(base_bits=5)
    with pytest.raises(TypeError, match=r"base_bits must be an integer, got 2.0"):
        APoTScheme(base_bits=2.0)
    with pytest.raises(ValueError, match=r"bits must be in \[2, 9\] for scheme 'apot', got 1"):
        APoTScheme(bits=1)
    assert APoTScheme(bits=4).num_levels() == 15
