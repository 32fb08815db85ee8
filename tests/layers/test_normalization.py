"""IntegerLayerNormalization: LayerNorm with quantized inner tensors, int8 in TFLite."""

import os

import keras
import numpy as np

import autoqnn
from autoqnn.export import run_tflite
from autoqnn.layers import IntegerLayerNormalization


def _tokens(n=64):
    rng = np.random.default_rng(0)
    # Token scales within 2x of each other: an 8-bit variance resolves them (a token far
    # quieter than the loudest gets few variance steps; see the layer's docstring).
    return (rng.normal(size=(n, 5, 16)) * rng.uniform(0.7, 1.4, size=(n, 5, 1))).astype("float32")


def test_uncalibrated_equals_layer_norm_and_config_round_trips():
    x = _tokens(4)
    norm = keras.layers.LayerNormalization(epsilon=1e-3)
    integer = IntegerLayerNormalization(internal_quantizer={"scheme": "uniform", "bits": 8},
                                        epsilon=1e-3)
    expected, got = norm(x), integer(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)
    clone = IntegerLayerNormalization.from_config(integer.get_config())
    assert sorted(clone.inner_aq) == sorted(integer.inner_aq) and clone.epsilon == 1e-3


def test_quantized_layer_norm_exports_int8_and_matches(tmp_path):
    x = _tokens()
    inputs = keras.Input((5, 16))
    y = keras.layers.LayerNormalization(name="ln")(keras.layers.Dense(16, name="fc")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(y))
    model.get_layer("ln").set_weights([np.linspace(0.5, 2, 16), np.linspace(-1, 1, 16)])
    q = autoqnn.quantize(model, calibration_data=x)
    assert type(q.get_layer("ln")).__name__ == "IntegerLayerNormalization"
    assert all(aq.is_calibrated for aq in q.get_layer("ln").inner_aq.values())
    keras_out, float_out = q.predict(x, verbose=0), model.predict(x, verbose=0)
    scale = np.abs(float_out).max()
    assert np.abs(keras_out - float_out).max() / scale < 0.1  # 8-bit chain vs float
    path = os.path.join(tmp_path, "ln.tflite")
    autoqnn.export_tflite(q, path)  # full-integer without representative data
    lite = run_tflite(path, x)
    # Integer kernels round like the fake-quant graph but for rare ties: a few steps.
    assert np.abs(lite - keras_out).max() / scale < 0.05
    q.save(os.path.join(tmp_path, "ln.keras"))
    loaded = keras.models.load_model(os.path.join(tmp_path, "ln.keras"))
    np.testing.assert_allclose(loaded.predict(x, verbose=0), keras_out, atol=1e-5)
