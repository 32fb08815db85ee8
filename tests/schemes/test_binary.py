import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given

from autoqnn.schemes import BinaryScheme
from autoqnn.schemes.binary import binary_quantize

from .scheme_strategies import weight_arrays


@pytest.mark.parametrize(
    "w, expected",
    [
        ([-0.5, 0.25, 1.0, -0.25], [-0.5, 0.5, 0.5, -0.5]),
        ([0.0, 2.0], [1.0, 1.0]),  # sign(0) = +1
        ([-3.0, -1.0], [-2.0, -2.0]),
    ],
)
def test_golden(w, expected):
    np.testing.assert_array_equal(np.asarray(binary_quantize(np.float32(w))), expected)


def test_per_channel_golden():
    w = np.array([[1.0, -3.0], [-1.0, 1.0]], "float32")
    q = BinaryScheme(granularity="per_channel")(w, channel_axis=-1)
    np.testing.assert_array_equal(np.asarray(q), [[1.0, -2.0], [-1.0, 2.0]])


def test_ste_gradient():
    w = tf.Variable([0.3, -2.0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(BinaryScheme()(w) * [2.0, 3.0])
    np.testing.assert_array_equal(tape.gradient(loss, w), [2.0, 3.0])


@given(w=weight_arrays())
def test_two_levels_and_idempotent(w):
    q = np.asarray(binary_quantize(w, channel_axis=-1))
    alpha = np.mean(np.abs(w), axis=0, dtype=np.float64)
    np.testing.assert_allclose(np.abs(q), np.broadcast_to(alpha, q.shape), rtol=1e-6)
    # mean(|q|) recomputes the same alpha (up to float summation order).
    np.testing.assert_allclose(np.asarray(binary_quantize(q, channel_axis=-1)), q, rtol=1e-6)


def test_only_one_bit():
    with pytest.raises(ValueError, match=r"bits must be in \[1, 1\] for scheme 'binary', got 2"):
        BinaryScheme(bits=2)
    with pytest.raises(ValueError, match=r"got 2"):
        BinaryScheme()(np.ones(2, "float32"), bits=2)
