import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.schemes import ESBScheme
from autoqnn.schemes.esb import ESB_LAMBDAS, esb_grid, esb_quantize

from .scheme_strategies import on_grid, weight_arrays


def _magnitudes(n, m):
    """All ESB magnitudes, enumerated by hand: step 2^-m on [0, 2), then binades."""
    values = [j * 2.0**-m for j in range(2 ** (m + 1))]
    for k in range(1, 2**n - 1):
        values += [2.0**k * (1 + j * 2.0**-m) for j in range(2**m)]
    return np.array(values)


@pytest.mark.parametrize(
    "n, m, y, expected",
    [
        (2, 0, [0.4, 0.6, 1.7, 2.9, 3.1, 9.0], [0.0, 1.0, 2.0, 2.0, 4.0, 4.0]),
        (1, 1, [0.2, 0.3, 1.6, -0.9], [0.0, 0.5, 1.5, -1.0]),
        (2, 1, [2.4, 2.6, 5.0, 5.5, 100.0], [2.0, 3.0, 4.0, 6.0, 6.0]),
    ],
)
def test_grid_golden(n, m, y, expected):
    np.testing.assert_array_equal(np.asarray(esb_grid(np.float32(y), 1.0, n, m)), expected)


@pytest.mark.parametrize("bits, m", sorted(ESB_LAMBDAS))
def test_level_count(bits, m):
    n = bits - 1 - m
    mags = _magnitudes(n, m)
    assert len(mags) == 2 ** (n + m) and len(np.unique(mags)) == len(mags)
    y = np.concatenate([-mags, mags]).astype("float32")
    np.testing.assert_array_equal(np.asarray(esb_grid(y, 1.0, n, m)), y)


def test_quantize_golden():
    w = np.array([-2.0, -1.0, 1.0, 2.0], "float32")  # std sqrt(2.5), mean 0
    alpha = ESB_LAMBDAS[(3, 0)] * np.sqrt(2.5)  # |w| / alpha = 2.44, 1.22
    expected = np.array([-2.0, -1.0, 1.0, 2.0]) * alpha
    np.testing.assert_allclose(
        np.asarray(esb_quantize(w, 3, 2, mean_shift=False)), expected, atol=1e-6
    )
    shifted = np.asarray(esb_quantize(w + 10.0, 3, 2, mean_shift=True))
    np.testing.assert_allclose(shifted, expected + 10.0, atol=1e-5)


@given(w=weight_arrays(), data=st.data())
def test_on_grid_and_idempotent_at_fixed_scale(w, data):
    bits, m = data.draw(st.sampled_from(sorted(ESB_LAMBDAS)))
    n = bits - 1 - m
    alpha = data.draw(st.floats(0.05, 2.0))
    once = np.asarray(esb_grid(w, alpha, n, m))
    mags = _magnitudes(n, m) * np.float32(alpha)
    assert on_grid(once, np.concatenate([-mags, mags]))
    # The scheme's alpha = lambda * std(w) moves after quantization; at a fixed
    # alpha the rounding is a projection.
    np.testing.assert_array_equal(np.asarray(esb_grid(once, alpha, n, m)), once)


def test_options():
    assert ESBScheme(bits=2).exponent_bits == 1 and ESBScheme(bits=5).exponent_bits == 2
    with pytest.raises(ValueError, match=r"exponent_bits must be in \[1, 2\], got 3"):
        ESBScheme(bits=3, exponent_bits=3)
    with pytest.raises(TypeError, match=r"mean_shift must be a bool, got 'yes'"):
        ESBScheme(mean_shift="yes")
    with pytest.raises(ValueError, match=r"bits must be in \[2, 9\] for scheme 'esb', got 10"):
        ESBScheme(bits=10)
    assert ESBScheme(bits=4).num_levels() == 15
