import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.layers import ActivationQuantizer
from autoqnn.schemes import PACTScheme
from autoqnn.schemes.pact import pact_quantize

from .scheme_strategies import on_grid, weight_arrays


@pytest.mark.parametrize(
    "bits, x, expected",
    [
        (2, [-1.0, 0.4, 1.1, 2.9, 7.0], [0.0, 0.0, 1.0, 3.0, 3.0]),
        (1, [-1.0, 1.4, 1.6, 7.0], [0.0, 0.0, 3.0, 3.0]),
        (3, [0.2, 0.3, 2.99], [0.0, 3 / 7, 3.0]),  # step 3/7: 0.2 -> 0.47 steps -> 0
    ],
)
def test_forward_golden(bits, x, expected):
    q = np.asarray(pact_quantize(np.float32(x), 3.0, bits))
    np.testing.assert_allclose(q, expected, atol=1e-6)


def test_pact_gradients():
    x = tf.Variable([-1.0, 0.4, 2.9, 7.0, 8.0])
    alpha = tf.Variable(3.0)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(pact_quantize(x, alpha, 2))
    dx, dalpha = tape.gradient(loss, [x, alpha])
    np.testing.assert_array_equal(dx, [0.0, 1.0, 1.0, 0.0, 0.0])
    assert float(dalpha) == 2.0  # one per input above alpha


def test_alpha_is_learned():
    aq = ActivationQuantizer("pact", bits=2, initial_alpha=1.0)
    model = keras.Sequential([keras.Input((4,)), aq])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    x = np.array([[0.5, 2.0, 3.0, 4.0]], "float32")
    model.fit(x, 2 * x, epochs=1, verbose=0)
    assert float(np.asarray(aq.state["alpha"])) > 1.0


@given(x=weight_arrays(), bits=st.integers(1, 8), alpha=st.floats(0.1, 8.0))
def test_on_grid_and_idempotent(x, bits, alpha):
    # alpha is a parameter (not recomputed from x): quantizing twice = once.
    once = np.asarray(pact_quantize(x, alpha, bits))
    step = np.float32(alpha) / np.float32(2**bits - 1)
    assert on_grid(once, step * np.arange(2**bits)) and once.min() >= 0
    np.testing.assert_array_equal(np.asarray(pact_quantize(once, alpha, bits)), once)


def test_bad_options():
    with pytest.raises(ValueError, match=r"granularity must be 'per_tensor' .*got 'per_channel'"):
        PACTScheme(granularity="per_channel")
    with pytest.raises(ValueError, match=r"initial_alpha must be a finite number > 0, got 0"):
        PACTScheme(initial_alpha=0)
    with pytest.raises(ValueError, match=r"needs the state created by its build"):
        PACTScheme()(np.ones(3, "float32"))
