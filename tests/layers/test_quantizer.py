"""The per-tensor `Quantizer`: trainable bits, learned ranges, mixtures, SQNR term.

Gradients are checked against central finite differences of the same forward
(the reparameterisations are piecewise linear in the trained parameter, so
the differences are exact away from the kinks; the points are chosen there).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from autoqnn import ops as qops
from autoqnn.layers import ActivationQuantizer, QuantDense, Quantizer
from autoqnn.schemes import get_scheme

RNG = np.random.default_rng(0)
W = RNG.normal(size=(6, 4)).astype("float32")


def _dense(spec, kernel=W):
    layer = QuantDense(kernel.shape[1], use_bias=False, weight_quantizers={"kernel": spec})
    layer.build((None, kernel.shape[0]))
    layer.kernel.assign(kernel)
    layer.initialize_quantizers()
    return layer


def _finite_difference(fn, variable, eps):
    value = float(np.asarray(variable))
    variable.assign(value + eps)
    up = float(fn())
    variable.assign(value - eps)
    down = float(fn())
    variable.assign(value)
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("scheme", [{"name": "uniform", "bits": 4},
                                    {"name": "pot", "bits": 3},
                                    {"name": "lsq", "bits": 3},
                                    {"name": "acd", "bits": 3}])
def test_trainable_bits_interpolate_and_gradient_matches_finite_difference(scheme):
    layer = _dense({"scheme": scheme, "trainable_bits": True, "bits_range": [2, 6]})
    q = layer.weight_quantizers["kernel"]
    target = RNG.normal(size=W.shape).astype("float32")

    def loss():
        return tf.reduce_sum((layer.quantized_weight("kernel") - target) ** 2)

    # At integer bits the forward is the fixed-bits quantization: exactly through the
    # switch, up to float rounding with tensor bits (uniform's fake-quant math path).
    fixed = get_scheme(scheme).with_bits(2)
    q.bits_variable.assign(2.0)
    exact = fixed.quantize(layer.kernel, q.state, channel_axis=-1)
    np.testing.assert_allclose(np.asarray(layer.quantized_weight("kernel")), np.asarray(exact),
                               rtol=0, atol=0 if not fixed.tensor_bits else 1e-6)
    # Between integers: the linear interpolation, and its gradient reaches the bits.
    q.bits_variable.assign(2.3)
    q3 = np.asarray(fixed.quantize(layer.kernel, q.state, channel_axis=-1))
    q4 = np.asarray(fixed.with_bits(3).quantize(layer.kernel, q.state, channel_axis=-1))
    np.testing.assert_allclose(np.asarray(layer.quantized_weight("kernel")),
                               0.7 * q3 + 0.3 * q4, rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        value = loss()
    grad = float(tape.gradient(value, q.bits_variable))
    assert grad != 0.0
    np.testing.assert_allclose(grad, _finite_difference(loss, q.bits_variable, 1e-2), rtol=1e-3)
    # At an integer the gradient is the slope towards the next bitwidth (not zero).
    q.bits_variable.assign(2.0)
    with tf.GradientTape() as tape:
        value = loss()
    expected = float(np.sum(2 * (q3 - target) * (q4 - q3)))
    np.testing.assert_allclose(float(tape.gradient(value, q.bits_variable)), expected,
                               rtol=1e-4)


def test_trainable_bits_are_clipped_to_their_range():
    layer = _dense({"scheme": {"name": "uniform", "bits": 4}, "trainable_bits": True,
                    "bits_range": [2, 5]})
    q = layer.weight_quantizers["kernel"]
    q.bits_variable.assign(9.0)
    five = get_scheme("uniform", bits=5).quantize(layer.kernel, q.state, channel_axis=-1)
    # uniform takes tensor bits: TensorFlow's fake-quant math, equal up to float rounding.
    np.testing.assert_allclose(np.asarray(layer.quantized_weight("kernel")), np.asarray(five),
                               rtol=1e-6, atol=1e-6)
    assert q.scheme.bits == 5
    np.testing.assert_allclose(float(q.expected_bits()), 5.0)


def test_learned_range_gradients_match_finite_differences():
    x = tf.constant(RNG.normal(size=(200,)).astype("float32"))
    lo, hi = tf.Variable(-1.3), tf.Variable(1.7)

    def noise():  # the 1/SQNR term: zero gradient to an in-range clip under a plain STE
        q = qops.learned_uniform_quantize(x, lo, hi, bits=3)
        return tf.reduce_sum((x - q) ** 2) / tf.reduce_sum(x ** 2)

    with tf.GradientTape() as tape:
        value = noise()
    g_lo, g_hi = tape.gradient(value, [lo, hi])
    assert float(g_lo) != 0.0 and float(g_hi) != 0.0
    # With the STE, round(v) = v + c (c held at its current value), so the autodiff
    # gradient is the exact derivative of the expression with those offsets fixed:
    # compare with finite differences of that expression.
    xs, n = x.numpy().astype("float64"), 7.0
    lo0, hi0 = float(lo.numpy()), float(hi.numpy())
    s0 = (hi0 - lo0) / n
    c_z = np.round(-lo0 / s0) - (-lo0 / s0)
    z0 = np.clip(-lo0 / s0 + c_z, 0, n)
    v0 = np.clip(xs / s0 + z0, 0, n)
    c_v = np.round(v0) - v0

    def held(lo_v, hi_v):
        s = (hi_v - lo_v) / n
        z = np.clip(-lo_v / s + c_z, 0, n)
        v = np.clip(xs / s + z, 0, n)
        q = (v + c_v - z) * s
        return np.sum((xs - q) ** 2) / np.sum(xs ** 2)

    eps = 1e-4
    fd_hi = (held(lo0, hi0 + eps) - held(lo0, hi0 - eps)) / (2 * eps)
    fd_lo = (held(lo0 + eps, hi0) - held(lo0 - eps, hi0)) / (2 * eps)
    np.testing.assert_allclose(float(g_hi), fd_hi, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(float(g_lo), fd_lo, rtol=1e-3, atol=1e-5)
    # Zero is a level and values lie on the grid.
    q = np.asarray(qops.learned_uniform_quantize(x, lo, hi, bits=3))
    step = (1.7 + 1.3) / 7
    assert np.allclose(np.round(q / step) * step, q, atol=1e-5)


def test_learned_weight_range_initialised_from_weights_and_trained():
    layer = _dense({"scheme": {"name": "uniform", "bits": 3, "granularity": "per_channel",
                               "symmetric": False, "learn_range": True}})
    q = layer.weight_quantizers["kernel"]
    np.testing.assert_allclose(np.asarray(q.state["min"]), np.minimum(W.min(axis=0), 0))
    np.testing.assert_allclose(np.asarray(q.state["max"]), np.maximum(W.max(axis=0), 0))
    assert q.state["max"].trainable
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer.quantized_weight("kernel", training=True) ** 2)
    grads = tape.gradient(loss, [q.state["min"], q.state["max"]])
    assert all(np.abs(np.asarray(g)).sum() > 0 for g in grads)


def test_mixture_forward_and_logit_gradients():
    candidates = [{"name": "uniform", "bits": 2}, {"name": "pot", "bits": 3},
                  {"name": "ternary"}]
    layer = _dense({"candidates": candidates, "temperature": 2.0})
    q = layer.weight_quantizers["kernel"]
    q.logits.assign([0.5, -0.2, 0.1])
    outs = [np.asarray(get_scheme(c).quantize(layer.kernel, q.states[i], channel_axis=-1))
            for i, c in enumerate(candidates)]
    weights = np.exp(np.array([0.5, -0.2, 0.1]) / 2.0)
    weights /= weights.sum()
    expected = sum(w * o for w, o in zip(weights, outs))
    np.testing.assert_allclose(np.asarray(layer.quantized_weight("kernel")), expected,
                               rtol=1e-5, atol=1e-6)
    target = RNG.normal(size=W.shape).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum((layer.quantized_weight("kernel") - target) ** 2)
    grad = np.asarray(tape.gradient(loss, q.logits))
    for i in range(3):
        def loss_i():
            return tf.reduce_sum((layer.quantized_weight("kernel") - target) ** 2)
        logits = np.asarray(q.logits).copy()
        eps = 1e-3
        up, down = logits.copy(), logits.copy()
        up[i] += eps
        down[i] -= eps
        q.logits.assign(up)
        f_up = float(loss_i())
        q.logits.assign(down)
        f_down = float(loss_i())
        q.logits.assign(logits)
        np.testing.assert_allclose(grad[i], (f_up - f_down) / (2 * eps), rtol=1e-2, atol=1e-3)
    # The expected bits are the softmax average of the candidates' storage bits.
    np.testing.assert_allclose(float(q.expected_bits()),
                               float(np.dot(weights, [2.0, 3.0, 2.0])), rtol=1e-5)
    assert q.chosen_index() == 0 and q.scheme.name == "uniform"


def test_sqnr_loss_is_added_in_training_only():
    layer = _dense({"scheme": {"name": "uniform", "bits": 2}, "sqnr_weight": 0.5})
    x = np.ones((2, 6), "float32")
    layer(x)
    assert not layer.losses
    layer(x, training=True)
    q = np.asarray(layer.quantized_weight("kernel"))
    expected = 0.5 * 10 * np.log10(np.sum((W - q) ** 2) / np.sum(W ** 2))
    assert len(layer.losses) == 1
    np.testing.assert_allclose(float(layer.losses[0]), expected, rtol=1e-5)


def test_sqnr_loss_golden_value():
    # x = [3, 4]: signal 25; q = [3, 3.5]: noise 0.25; SQNR = 100 = 20 dB.
    q = Quantizer("uniform", sqnr_weight=0.1)
    loss = q.noise_loss(np.array([3.0, 4.0], "float32"), np.array([3.0, 3.5], "float32"))
    np.testing.assert_allclose(float(loss), -0.1 * 20.0, rtol=1e-5)


def test_activation_quantizer_per_channel_range_and_learned_range():
    aq = ActivationQuantizer("uniform", bits=2, range_axis=-1)
    aq.build((None, 3))
    aq.set_range([0.0, -1.0, 0.0], [3.0, 1.0, 6.0])
    x = np.array([[1.2, -0.4, 5.1]], "float32")
    out = np.asarray(aq(x))
    # Channel 0: step 1 on [0, 3]; channel 1: step 2/3, [-1, 1] nudged to [-4/3, 2/3]
    # so that 0 is a level; channel 2: step 2.
    np.testing.assert_allclose(out, [[1.0, -2 / 3, 6.0]], rtol=1e-5, atol=1e-6)
    learned = ActivationQuantizer("uniform", bits=3, learn_range=True)
    learned.build((None, 3))
    assert learned.range_max.trainable and not learned.is_calibrated
    with tf.GradientTape() as tape:
        y = learned(tf.constant([[0.3, 2.0, -0.5]]), training=True)  # initialises from batch
        loss = tf.reduce_sum((y - 1.0) ** 2)
    assert learned.is_calibrated
    grads = tape.gradient(loss, [learned.range_min, learned.range_max])
    assert all(g is not None and float(tf.abs(g)) > 0 for g in grads)


def test_quantizer_config_round_trip_and_errors():
    q = Quantizer(candidates=["uniform", {"name": "pot", "bits": 4}], trainable_bits=True,
                  bits_range=(2, 6), temperature=0.5, sqnr_weight=0.1)
    again = Quantizer.from_config(q.get_config())
    assert again.get_config() == q.get_config()
    with pytest.raises(ValueError, match="exactly one of scheme= or candidates="):
        Quantizer()
    with pytest.raises(ValueError, match=r"candidates must be a list of at least 2"):
        Quantizer(candidates=["uniform"])
    with pytest.raises(ValueError, match=r"bits_range must be \(min, max\)"):
        Quantizer("uniform", trainable_bits=True, bits_range=(5, 2))
    with pytest.raises(ValueError, match=r"does not meet the range \[1, 1\] of scheme 'binary'"):
        Quantizer("binary", trainable_bits=True, bits_range=(2, 4))
    with pytest.raises(ValueError, match=r"sqnr_weight must be a number >= 0, got -1"):
        Quantizer("uniform", sqnr_weight=-1)


def test_model_mid_training_saves_and_resumes(tmp_path):
    inputs = keras.Input((6,))
    layer = QuantDense(3, weight_quantizers={"kernel": {
        "candidates": [{"name": "uniform", "bits": 4}, {"name": "pot", "bits": 3}],
        "trainable_bits": True, "bits_range": [2, 6]}}, name="fc")
    aq = ActivationQuantizer(quantizer={"scheme": {"name": "uniform", "bits": 4,
                                                   "symmetric": False, "learn_range": True},
                                        "trainable_bits": True}, name="aq")
    model = keras.Model(inputs, aq(layer(inputs)))
    x = RNG.normal(size=(32, 6)).astype("float32")
    y = RNG.normal(size=(32, 3)).astype("float32")
    model.compile(keras.optimizers.Adam(0.05), "mse")
    model.fit(x, y, epochs=2, verbose=0)
    bits_after = layer.weight_quantizers["kernel"].bits
    assert bits_after != 4.0  # the bits moved
    path = tmp_path / "mid.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    fc = loaded.get_layer("fc").weight_quantizers["kernel"]
    assert fc.is_mixture and fc.trainable_bits and fc.bits == pytest.approx(bits_after)
    loaded.compile(keras.optimizers.Adam(0.05), "mse")
    loaded.fit(x, y, epochs=1, verbose=0)  # resumes training
