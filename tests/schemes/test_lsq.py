import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.layers import ActivationQuantizer, QuantDense
from autoqnn.schemes import LSQScheme
from autoqnn.schemes.lsq import lsq_bounds, lsq_quantize

from .scheme_strategies import on_grid, weight_arrays


def test_forward_golden():
    x = np.array([-9.0, -0.7, 0.2, 0.8, 9.0], "float32")
    q = lsq_quantize(x, 0.5, q_neg=4, q_pos=3, grad_factor=1.0)
    np.testing.assert_array_equal(np.asarray(q), [-2.0, -0.5, 0.0, 1.0, 1.5])
    q = lsq_quantize(np.float32([-1.0, 0.6, 9.0]), 0.5, q_neg=0, q_pos=3, grad_factor=1.0)
    np.testing.assert_array_equal(np.asarray(q), [0.0, 0.5, 1.5])


def test_gradients_golden():
    x = tf.Variable([0.3, 9.0])
    step = tf.Variable(0.5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(lsq_quantize(x, step, q_neg=4, q_pos=3, grad_factor=0.5))
    dx, ds = tape.gradient(loss, [x, step])
    np.testing.assert_array_equal(dx, [1.0, 0.0])
    # d/ds: (-x/s + round(x/s)) = -0.6 + 1 inside, Q_P = 3 outside; times 0.5
    np.testing.assert_allclose(ds, 0.5 * (0.4 + 3.0), atol=1e-6)


def test_bounds_and_levels():
    assert lsq_bounds(4, True) == (8, 7) and lsq_bounds(4, False) == (0, 15)
    assert LSQScheme(bits=3).num_levels() == 8 == LSQScheme(bits=3, signed=False).num_levels()


def test_step_initialised_from_statistics_never_in_inference():
    holder = keras.layers.Layer()
    scheme = LSQScheme(bits=3)
    w = np.array([[1.0, -3.0], [0.5, 1.5]], "float32")
    state = scheme.build(holder, "kernel", w.shape, -1)
    assert state["elements_per_step"] == 4.0
    # Uninitialised weights at inference: the data rule, nothing assigned.
    rule = 2 * np.mean(np.abs(w)) / np.sqrt(3)
    np.testing.assert_allclose(np.asarray(scheme(w, state, channel_axis=-1)),
                               np.clip(np.round(w / rule), -4, 3) * rule, rtol=1e-6)
    assert float(np.asarray(state["initialized"])) == 0.0 and not scheme.is_initialized(state)
    np.testing.assert_array_equal(np.asarray(state["step"]), 1.0)
    scheme.initialize(state, {"min": w.min(), "max": w.max(), "mean_abs": np.abs(w).mean()})
    expected = 2 * np.mean(np.abs(w)) / np.sqrt(3)
    np.testing.assert_allclose(np.asarray(state["step"]), expected, rtol=1e-6)
    assert float(np.asarray(state["initialized"])) == 1.0
    scheme(10 * w, state, channel_axis=-1)  # inference: no re-initialisation
    np.testing.assert_allclose(np.asarray(state["step"]), expected, rtol=1e-6)


def test_signedness_from_calibration():
    holder = keras.layers.Layer()
    scheme = LSQScheme(bits=2)  # signed=None: from the data
    state = scheme.build(holder, "activation", (4,), None, role="activation")
    x = np.array([[0.0, 0.5, 1.0, 4.0]], "float32")
    scheme.initialize(state, {"min": 0.0, "max": 4.0, "mean_abs": float(np.mean(x))})
    assert float(np.asarray(state["signed"])) == 0.0
    step = float(np.asarray(state["step"]))
    np.testing.assert_allclose(step, 2 * np.mean(x) / np.sqrt(3), rtol=1e-6)  # Q_P = 3
    out = np.asarray(scheme(x, state))
    assert on_grid(out, step * np.arange(4)) and out.max() == np.float32(3 * step)
    signed = LSQScheme(bits=2)
    state = signed.build(holder, "act2", (4,), None, role="activation")
    signed.initialize(state, {"min": -1.0, "max": 4.0, "mean_abs": 1.0})
    assert float(np.asarray(state["signed"])) == 1.0
    fixed = LSQScheme(bits=2, signed=True)
    state = fixed.build(holder, "act3", (4,), None, role="activation")
    fixed.initialize(state, {"min": 0.0, "max": 4.0, "mean_abs": 1.0})
    assert float(np.asarray(state["signed"])) == 1.0  # explicit signedness is kept


def test_step_initialised_inside_fit_per_channel():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.normal(size=(8, 2)).astype("float32")
    scheme = {"name": "lsq", "bits": 4, "granularity": "per_channel"}
    layer = QuantDense(2, weight_quantizers={"kernel": scheme})
    model = keras.Sequential([keras.Input((5,)), layer])
    kernel0 = np.asarray(layer.kernel)
    model.compile(keras.optimizers.SGD(0.0), "mse")  # lr 0: the step keeps its init
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    state = layer.quantizer_state["kernel"]
    assert state["elements_per_step"] == 5.0
    expected = 2 * np.mean(np.abs(kernel0), axis=0) / np.sqrt(7)
    np.testing.assert_allclose(np.asarray(state["step"]), expected, rtol=1e-6)
    assert float(np.asarray(state["initialized"])) == 1.0


def test_unsigned_activations():
    aq = ActivationQuantizer("lsq", bits=2, signed=False)
    x = np.array([[0.0, 0.5, 1.0, 4.0]], "float32")
    np.testing.assert_array_equal(np.asarray(aq(x)), x)  # not calibrated: passes through
    assert not aq.is_calibrated
    out = np.asarray(aq(x, training=True))  # the first training step initialises it
    step = float(np.asarray(aq.quantizer.state["step"]))
    np.testing.assert_allclose(step, 2 * np.mean(x) / np.sqrt(3), rtol=1e-6)
    assert aq.quantizer.state["elements_per_step"] == 4.0
    assert on_grid(out, step * np.arange(4)) and out.min() == 0.0
    assert aq.is_calibrated


@given(w=weight_arrays(), bits=st.integers(2, 8), step=st.floats(0.01, 2.0), signed=st.booleans())
def test_on_grid_and_idempotent_at_fixed_step(w, bits, step, signed):
    # The learned step is a fixed parameter of the forward pass: idempotent.
    q_neg, q_pos = lsq_bounds(bits, signed)
    once = np.asarray(lsq_quantize(w, step, q_neg, q_pos, 1.0))
    assert on_grid(once, np.float32(step) * np.arange(-q_neg, q_pos + 1))
    np.testing.assert_array_equal(np.asarray(lsq_quantize(once, step, q_neg, q_pos, 1.0)), once)


def test_bad_options():
    with pytest.raises(TypeError, match=r"signed must be a bool or None, got 1"):
        LSQScheme(signed=1)
    with pytest.raises(ValueError, match=r"bits must be in \[2, 16\] for scheme 'lsq', got 1"):
        LSQScheme(bits=1)
    with pytest.raises(ValueError, match=r"needs the state created by its build"):
        LSQScheme()(np.ones(3, "float32"))
