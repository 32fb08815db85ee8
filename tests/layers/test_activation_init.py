"""Uncalibrated activation ranges initialise themselves from the first training batches.

A Keras user trains a quantized model with plain `fit`, not only `autoqnn.finetune`
(which calibrates first): an `ActivationQuantizer` that never saw data sets its range
from its first training batch, then averages the batches' min/max until its moving
average takes over. A range set by calibration follows the moving average as before.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import autoqnn
from autoqnn.layers import ActivationQuantizer

MSE = keras.losses.MeanSquaredError()


def _regression(n=512):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 16)).astype("float32")
    w = rng.normal(size=(16, 1)) / 4
    y = (np.sin(2 * x @ w) + 0.1 * x[:, :1] ** 2).astype("float32")
    return x, y


def _mlp(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16,))
    h = keras.layers.Dense(64, activation="relu")(inputs)
    h = keras.layers.Dense(64, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def _fit(model, x, y):
    model.compile(keras.optimizers.Adam(1e-2), MSE)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return float(MSE(y, model(x)))


@pytest.mark.filterwarnings("ignore:.*not calibrated")
def test_plain_fit_of_an_uncalibrated_w4a4_model_converges_on_every_seed_where_float_does():
    # A loose end-to-end threshold (training): the final loss must be under 0.7x the
    # initial one. Before ranges warmed up, the output quantizer kept the range of the
    # untrained model's first batch (a moving average with momentum 0.99 barely moves in
    # 48 steps), clipped the outputs and the loss stayed at ~0.95x on two seeds of four.
    x, y = _regression()
    results = {}
    for seed in range(4):
        model = _mlp(seed)
        start = float(MSE(y, model(x)))
        reference = keras.models.clone_model(model)
        reference.set_weights(model.get_weights())
        float_ratio = _fit(reference, x, y) / start
        qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=4)  # no data
        results[seed] = (round(float_ratio, 3), round(_fit(qmodel, x, y) / start, 3))
        assert all(q.is_calibrated for q in autoqnn.activation_quantizers(qmodel))
    failures = {s: r for s, r in results.items() if r[0] < 0.7 and r[1] >= 0.7}
    assert not failures, f"seed: (float, quantized) final / initial loss: {results}"


def _fresh(**kwargs):
    aq = ActivationQuantizer("uniform", bits=4, **kwargs)
    aq.build((None, 2))
    return aq


def test_first_batches_set_then_average_the_range_until_the_moving_average_takes_over():
    aq = _fresh(momentum=0.75)
    assert not aq.is_calibrated
    aq(np.array([[-1.0, 2.0]], "float32"), training=True)
    assert aq.is_calibrated and aq.get_range() == (-1.0, 2.0)  # the first batch
    aq(np.array([[0.5, 4.0]], "float32"), training=True)
    np.testing.assert_allclose(aq.get_range(), (-0.5, 3.0))  # mean of 2 batches (m = 1/2)
    aq(np.array([[-3.0, 6.0]], "float32"), training=True)
    np.testing.assert_allclose(aq.get_range(), (-4 / 3, 4.0))  # mean of 3 (m = 2/3)
    aq(np.array([[0.0, 8.0]], "float32"), training=True)
    np.testing.assert_allclose(aq.get_range(), (-1.0, 5.0))  # the EMA: m = 0.75 = 3/4
    aq(np.array([[0.0, 9.0]], "float32"), training=True)
    np.testing.assert_allclose(aq.get_range(), (-0.75, 6.0))  # EMA, momentum 0.75


def test_a_calibrated_range_follows_the_moving_average_from_its_first_training_batch():
    aq = _fresh()  # momentum 0.99
    aq.set_range(-1.0, 1.0)
    aq(np.array([[-1.0, 3.0]], "float32"), training=True)
    np.testing.assert_allclose(aq.get_range(), (-1.0, 0.99 + 0.01 * 3.0), rtol=1e-6)
    assert float(aq.range_observed) == 1.0


def test_a_learned_range_is_initialised_by_its_first_batch_only():
    aq = _fresh(learn_range=True)
    aq(np.array([[-1.0, 2.0]], "float32"), training=True)
    aq(np.array([[-5.0, 7.0]], "float32"), training=True)
    assert aq.get_range() == (-1.0, 2.0)  # then only its gradients move it


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_warm_up_runs_in_compiled_fit_survives_keras_saving_and_refreshes_inference(tmp_path):
    inputs = keras.Input((2,))
    aq = ActivationQuantizer("uniform", bits=4, momentum=0.9, name="aq")
    model = keras.Model(inputs, aq(inputs))
    x = np.array([[-1.0, 2.0], [0.33, 1.07]], "float32")
    model.compile("sgd", "mse")
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)  # uncalibrated: float
    model.fit(x, x, batch_size=2, epochs=2, verbose=0)  # two batches: their mean
    assert aq.get_range() == (-1.0, 2.0)
    # The predict function traced before training now quantizes with the trained range.
    np.testing.assert_allclose(model.predict(x, verbose=0), [[-1.0, 2.0], [0.4, 1.0]],
                               atol=1e-6)  # steps of 3 / 15 on [-1, 2]
    path = str(tmp_path / "warm.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    loaded_aq = loaded.get_layer("aq")
    assert float(loaded_aq.range_observed) == float(aq.range_observed) > 1.0  # warming up
    batch = tf.constant([[-3.0, 5.0]])
    aq(batch, training=True)
    loaded_aq(batch, training=True)
    assert loaded_aq.get_range() == aq.get_range() == pytest.approx((-5 / 3, 3.0))
