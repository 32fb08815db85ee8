import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoqnn import ops as qops
from autoqnn.schemes import ML2QScheme
from autoqnn.schemes.ml2q import ML2Q_LAMBDAS, ml2q_grid, ml2q_quantize

from .scheme_strategies import on_grid, weight_arrays


def test_grid_golden():
    w = np.array([0.0, 1.0, 2.0, 3.0], "float32")
    np.testing.assert_array_equal(np.asarray(ml2q_grid(w, 1.5, 1.0, 2)), w)
    np.testing.assert_array_equal(np.asarray(ml2q_grid(w, 1.5, 1.0, 1)), [1.0, 1.0, 2.0, 2.0])


def test_quantize_golden():
    w = np.array([0.0, 1.0, 2.0, 3.0], "float32")  # mean 1.5, std sqrt(1.25)
    alpha = ML2Q_LAMBDAS[1] * np.sqrt(1.25)
    expected = 1.5 + np.array([-1.5, -0.5, 0.5, 1.5]) * alpha
    np.testing.assert_allclose(np.asarray(ml2q_quantize(w, 2)), expected, atol=1e-6)
    # 1 bit: mean ± 0.5 * 1.595 * std
    expected = 1.5 + np.array([-0.5, -0.5, 0.5, 0.5]) * ML2Q_LAMBDAS[0] * np.sqrt(1.25)
    np.testing.assert_allclose(np.asarray(ml2q_quantize(w, 1)), expected, atol=1e-6)


def test_per_channel_mean_shift():
    w = np.array([[10.0, -1.0], [12.0, 1.0]], "float32")
    q = np.asarray(ML2QScheme(bits=1, granularity="per_channel")(w, channel_axis=-1))
    half = 0.5 * ML2Q_LAMBDAS[0]  # std 1 in both channels
    np.testing.assert_allclose(q, [[11 - half, -half], [11 + half, half]], atol=1e-6)


@given(w=weight_arrays(), bits=st.integers(1, 8))
def test_on_shifted_half_integer_grid(w, bits):
    q = np.asarray(ml2q_quantize(w, bits, channel_axis=-1), np.float64)
    mean = np.asarray(np.mean(w, axis=0, keepdims=True), np.float64)
    alpha = np.asarray(qops.safe_scale(ML2Q_LAMBDAS[bits - 1] * qops.std(w, -1)), np.float64)
    levels = np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)) + 0.5
    spread = np.ptp(w, axis=0) > 0
    # A constant channel (std 0, alpha = the 1e-12 floor) collapses onto its mean.
    np.testing.assert_allclose(
        q[:, ~spread], np.broadcast_to(mean, q.shape)[:, ~spread], rtol=1e-6, atol=1e-12
    )
    assert on_grid(((q - mean) / alpha)[:, spread], levels, rtol=1e-4)


@given(w=weight_arrays(), bits=st.integers(1, 8), mean=st.floats(-2, 2), alpha=st.floats(0.1, 2))
def test_idempotent_at_fixed_mean_and_step(w, bits, mean, alpha):
    # mean and std of q differ from those of w, so only the fixed-parameter
    # rounding is a projection.
    once = np.asarray(ml2q_grid(w, mean, alpha, bits))
    np.testing.assert_allclose(np.asarray(ml2q_grid(once, mean, alpha, bits)), once, atol=1e-6)


def test_bits_range():
    with pytest.raises(ValueError, match=r"bits must be in \[1, 16\] for scheme 'ml2q', got 0"):
        ML2QScheme(bits=0)
