import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.schemes import ClipQScheme
from autoqnn.schemes.clipq import clipq_grid, clipq_quantize
from autoqnn.schemes.vecq import VECQ_LAMBDAS

from .scheme_strategies import on_grid, weight_arrays


def test_grid_golden():
    x = np.array([-9.0, -0.3, 0.6, 1.2, 9.0], "float32")
    np.testing.assert_array_equal(np.asarray(clipq_grid(x, 1.0, 2)), [-1.5, -0.5, 0.5, 1.5, 1.5])


def test_quantize_golden():
    w = np.array([-2.0, -1.0, 1.0, 2.0], "float32")
    alpha = VECQ_LAMBDAS[1] * np.sqrt(2.5)
    expected = np.array([-1.5, -0.5, 0.5, 1.5]) * alpha
    np.testing.assert_allclose(np.asarray(clipq_quantize(w, 2)), expected, atol=1e-6)


def test_clipped_gradient():
    x = tf.Variable([-9.0, 0.3, 1.49, 9.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(clipq_grid(x, 1.0, 2))
    np.testing.assert_array_equal(tape.gradient(loss, x), [0.0, 1.0, 1.0, 0.0])
    w = tf.Variable([[-2.0, -1.0, 1.0, 20.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(ClipQScheme(bits=2)(w))
    assert np.asarray(tape.gradient(loss, w))[0, -1] == 0.0


@given(w=weight_arrays(), bits=st.integers(1, 8), alpha=st.floats(0.01, 4.0))
def test_grid_and_idempotence_at_fixed_step(w, bits, alpha):
    # The scheme's step follows std(w), which changes after quantization; with
    # the step fixed the clipped rounding is a projection onto the grid.
    once = np.asarray(clipq_grid(w, alpha, bits))
    levels = (np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)) + 0.5) * np.float32(alpha)
    assert on_grid(once, levels)
    np.testing.assert_array_equal(np.asarray(clipq_grid(once, alpha, bits)), once)


def test_bits_range():
    with pytest.raises(ValueError, match=r"bits must be in \[1, 16\] for scheme 'clipq', got 20"):
        ClipQScheme(bits=20)
