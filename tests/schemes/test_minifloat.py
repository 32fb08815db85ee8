import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.layers import ActivationQuantizer
from autoqnn.schemes import MiniFloatScheme
from autoqnn.schemes.minifloat import float_grid, minifloat_grid, minifloat_quantize

from .scheme_strategies import on_grid, weight_arrays

FP4_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _finite_values(dtype):
    codes = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float64)
    return np.unique(codes[np.isfinite(codes)])


def test_float_grid_golden():
    y = np.array([0.3, 1.3, 2.6, 5.0, 9.0, -2.6, 0.0], "float32")
    expected = [0.25, 1.5, 3.0, 4.0, 6.0, -3.0, 0.0]  # 5.0 is a tie: half to even
    np.testing.assert_array_equal(np.asarray(float_grid(y, -2, 2, 1)), expected)


def test_e2m1_is_the_fp4_grid():
    x = np.linspace(-7, 7, 281, dtype="float32")
    q = np.asarray(minifloat_grid(x, 6.0, 2, 1))
    np.testing.assert_array_equal(np.unique(np.abs(q)), FP4_E2M1)
    np.testing.assert_array_equal(
        np.asarray(minifloat_grid(np.float32(FP4_E2M1), 6.0, 2, 1)), FP4_E2M1
    )


@pytest.mark.parametrize(
    "dtype, e, m, amax",
    [
        (ml_dtypes.float8_e4m3fn, 4, 3, 1.875 * 2**8),  # all codes finite: tops at 480
        (ml_dtypes.float8_e5m2, 5, 2, 1.75 * 2**16),  # no inf binade: one binade more
    ],
)
def test_fp8_values_are_on_the_grid(dtype, e, m, amax):
    values = _finite_values(dtype).astype("float32")
    np.testing.assert_array_equal(np.asarray(minifloat_grid(values, amax, e, m)), values)


@given(w=weight_arrays(), fmt=st.sampled_from([(2, 1), (3, 2), (4, 3), (5, 2), (1, 3)]))
def test_on_grid_count_and_idempotent(w, fmt):
    e, m = fmt
    q = np.asarray(minifloat_quantize(w, e, m, channel_axis=None))
    assert len(np.unique(q)) <= 2 ** (1 + e + m) - 1
    amax = float(np.abs(w).max())
    if amax > 0:
        scale = amax / (2 - 2.0**-m)
        assert np.all(np.abs(q) <= amax * (1 + 1e-6))
        mags = np.unique(np.abs(np.asarray(float_grid(q / np.float32(scale), -(2**e - 2), 0, m))))
        assert on_grid(np.abs(q) / scale, mags)
    # With the scale held fixed (amax from the data) rounding is a projection.
    once = np.asarray(minifloat_grid(w, max(amax, 1e-3), e, m))
    np.testing.assert_array_equal(np.asarray(minifloat_grid(once, max(amax, 1e-3), e, m)), once)


def test_range_state_and_gradient():
    scheme = MiniFloatScheme(bits=4)  # E2M1
    state = {"min": tf.constant(-3.0), "max": tf.constant(6.0)}
    x = tf.Variable([-7.0, -2.6, 0.2, 5.2, 9.0])
    with tf.GradientTape() as tape:
        q = scheme(x, state)
        loss = tf.reduce_sum(q)
    np.testing.assert_array_equal(np.asarray(q), [-6.0, -3.0, 0.0, 6.0, 6.0])
    np.testing.assert_array_equal(tape.gradient(loss, x), [0.0, 1.0, 1.0, 1.0, 0.0])


def test_per_channel():
    w = np.array([[6.0, 0.6], [2.6, -0.26]], "float32")
    q = MiniFloatScheme(bits=4, granularity="per_channel")(w, channel_axis=-1)
    np.testing.assert_allclose(np.asarray(q), [[6.0, 0.6], [3.0, -0.3]], atol=1e-6)


def test_activation_quantizer_uses_observed_range():
    aq = ActivationQuantizer("minifloat", bits=4)
    aq(np.zeros((1, 3), "float32"))
    aq.set_range(-1.0, 6.0)
    out = np.asarray(aq(np.array([[0.7, 2.6, 50.0]], "float32")))
    np.testing.assert_array_equal(out, [[0.5, 3.0, 6.0]])


def test_format_options():
    s = MiniFloatScheme()
    assert (s.bits, s.exponent_bits, s.mantissa_bits) == (8, 4, 3)
    s = MiniFloatScheme(exponent_bits=5, mantissa_bits=2)
    assert (s.bits, s.num_levels()) == (8, 255)
    assert MiniFloatScheme(bits=6, mantissa_bits=1).exponent_bits == 4
    assert MiniFloatScheme(bits=16).mantissa_bits == 10
    with pytest.raises(ValueError, match=r"bits must equal 1 \+ exponent_bits \+ mantissa_bits"):
        MiniFloatScheme(bits=8, exponent_bits=4, mantissa_bits=2)
    with pytest.raises(ValueError, match=r"exponent_bits must be in \[1, 5\], got 6"):
        MiniFloatScheme(bits=9, exponent_bits=6)
    with pytest.raises(ValueError, match=r"mantissa_bits must be in \[0, 14\], got -1"):
        MiniFloatScheme(bits=4, exponent_bits=4)
    with pytest.raises(TypeError, match=r"exponent_bits must be an integer, got '4'"):
        MiniFloatScheme(exponent_bits="4")
