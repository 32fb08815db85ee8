"""Golden values and gradients of the pure quantization math."""

import numpy as np
import pytest
import tensorflow as tf

from autoqnn import ops


def test_uniform_quantize_golden_symmetric_narrow():
    x = np.array([-1.2, -0.5, -0.2, 0.0, 0.16, 0.5, 0.99, 3.0], "float32")
    q = np.asarray(ops.uniform_quantize(x, -1.0, 1.0, bits=3, narrow_range=True))
    # narrow 3-bit: integers -3..3, step 1/3; ties round up (TF's floor(v + 0.5))
    expected = np.array([-3, -1, -1, 0, 0, 2, 3, 3], "float32") / 3
    np.testing.assert_allclose(q, expected, atol=1e-6)


def test_uniform_quantize_golden_asymmetric_nudges_zero():
    x = np.array([-0.3, 0.0, 0.4, 1.0, 2.0], "float32")
    # range [-0.25, 1.25] with 2 bits -> step 0.5, zero nudged onto the grid: [-0.5, 1.0]
    q = np.asarray(ops.uniform_quantize(x, -0.25, 1.25, bits=2))
    np.testing.assert_allclose(q, [-0.5, 0.0, 0.5, 1.0, 1.0], atol=1e-6)


@pytest.mark.parametrize("bits,narrow", [(2, False), (4, True), (8, False), (8, True)])
def test_math_path_matches_tensorflow_fake_quant(bits, narrow):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(64, 5)).astype("float32")
    lo, hi = -1.3, 0.9
    expected = tf.quantization.fake_quant_with_min_max_vars(x, lo, hi, num_bits=bits,
                                                            narrow_range=narrow).numpy()
    got = np.asarray(ops.uniform_quantize(x, lo, hi, bits, narrow))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ops.fake_quant(x, lo, hi, bits, narrow)), expected,
                               atol=1e-6)


def test_fake_quant_per_channel_on_a_middle_axis_matches_math_path():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5)).astype("float32")
    amax = np.abs(x).max(axis=(0, 2), keepdims=True)
    got = np.asarray(ops.fake_quant(x, -amax, amax, 4, True, channel_axis=1))
    ref = np.asarray(ops.uniform_quantize(x, -amax, amax, 4, True))
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_learnable_bits_tensor_path():
    x = np.linspace(-1, 1, 11).astype("float32")
    q = np.asarray(ops.uniform_quantize(x, -1.0, 1.0, tf.constant(2.0), narrow_range=True))
    np.testing.assert_allclose(q, np.round(x), atol=1e-6)


def test_round_and_sign_ste_have_identity_gradients():
    x = tf.Variable([0.3, -1.7, 2.5, 0.0])
    with tf.GradientTape(persistent=True) as tape:
        r = ops.round_ste(x)
        s = ops.sign_ste(x)
    np.testing.assert_array_equal(r.numpy(), [0.0, -2.0, 2.0, 0.0])
    np.testing.assert_array_equal(s.numpy(), [1.0, -1.0, 1.0, 1.0])
    np.testing.assert_array_equal(tape.gradient(r, x).numpy(), [1, 1, 1, 1])
    np.testing.assert_array_equal(tape.gradient(s, x).numpy(), [1, 0, 0, 1])


def test_uniform_quantize_gradient_is_zero_outside_range():
    x = tf.Variable([-2.0, 0.1, 0.5, 2.0])
    with tf.GradientTape() as tape:
        y = tf.reduce_sum(ops.uniform_quantize(x, -1.0, 1.0, 8))
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [0, 1, 1, 0])


def test_nearest_level():
    q = np.asarray(ops.nearest_level(np.array([-3.0, -0.4, 0.26, 0.9, 5.0]), [-1, 0, 0.5, 1]))
    np.testing.assert_array_equal(q, [-1.0, 0.0, 0.5, 1.0, 1.0])
    with pytest.raises(ValueError, match="levels"):
        ops.nearest_level(np.zeros(3), [])


def test_reduce_axes():
    assert ops.reduce_axes(4, None) == (0, 1, 2, 3)
    assert ops.reduce_axes(4, -1) == (0, 1, 2)
    assert ops.reduce_axes(4, (2, 3)) == (0, 1)
