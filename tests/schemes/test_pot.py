import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from autoqnn import ops as qops
from autoqnn.schemes import PowerOfTwoScheme, get_scheme
from autoqnn.schemes.pot import pot_exponents, pot_grid, pot_lambda, pot_quantize

from .scheme_strategies import on_grid, weight_arrays


def test_lambda_table():
    assert [pot_lambda(b) for b in (1, 2, 3, 4)] == [1.0, 0.9, 0.4, 0.03]
    assert pot_lambda(5) == 4.0 / 2.0**15
    assert pot_lambda(8) == 4.0 / 2.0**63 and pot_exponents(8) == 64 == pot_exponents(7)


@pytest.mark.parametrize(
    "bits, x, expected",
    [
        (3, [-3.0, 0.1, 1.4, 5.0, 100.0, 0.0], [-4.0, 1.0, 1.0, 4.0, 8.0, 1.0]),
        (2, [-3.0, 0.5, 2.9, -1.0], [-2.0, 1.0, 2.0, -1.0]),
        (1, [-0.3, 2.0, 9.0], [-1.0, 1.0, 1.0]),
    ],
)
def test_grid_golden(bits, x, expected):
    np.testing.assert_array_equal(np.asarray(pot_grid(np.float32(x), 1.0, bits)), expected)


def test_quantize_golden_per_tensor_and_per_channel():
    w = np.array([-1.0, 1.0, -1.0, 1.0], "float32")  # std 1 -> alpha 0.9
    np.testing.assert_allclose(np.asarray(pot_quantize(w, 2)), 0.9 * w, atol=1e-6)
    w = np.array([[1.0, 2.0], [-1.0, -2.0]], "float32")  # std per channel 1, 2
    q = PowerOfTwoScheme(bits=2, granularity="per_channel")(w, channel_axis=-1)
    np.testing.assert_allclose(np.asarray(q), [[0.9, 1.8], [-0.9, -1.8]], atol=1e-6)


def test_ste_gradient_is_identity():
    w = tf.Variable([[-0.7, 0.2], [1.5, -3.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(get_scheme("pot", bits=3)(w) * [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(tape.gradient(loss, w), [[1.0, 2.0], [3.0, 4.0]])


@given(w=weight_arrays(), bits=st.integers(1, 8))
def test_values_on_power_of_two_grid(w, bits):
    q = np.asarray(pot_quantize(w, bits, channel_axis=None))
    alpha = float(np.asarray(qops.safe_scale(pot_lambda(bits) * qops.std(w))).ravel()[0])
    powers = alpha * 2.0 ** np.arange(pot_exponents(bits))
    assert on_grid(q, np.concatenate([-powers, powers]), rtol=1e-5)


@given(w=weight_arrays(), bits=st.integers(1, 8), alpha=st.floats(0.01, 4.0))
def test_grid_is_idempotent_at_fixed_scale(w, bits, alpha):
    # The scheme itself is not idempotent: alpha = lambda * std(w) changes once
    # w is quantized. With alpha held fixed the rounding is a projection.
    once = np.asarray(pot_grid(w, alpha, bits))
    np.testing.assert_array_equal(np.asarray(pot_grid(once, alpha, bits)), once)


def test_bits_range():
    with pytest.raises(ValueError, match=r"bits must be in \[1, 8\] for scheme 'pot', got 9"):
        PowerOfTwoScheme(bits=9)
    assert PowerOfTwoScheme(bits=3).num_levels() == 8
    assert PowerOfTwoScheme(bits=8).num_levels() == 128  # capped: 64 exponents
