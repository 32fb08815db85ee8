"""A BatchNormalization that folds into nothing becomes a quantized 1x1 depthwise conv."""

import keras
import numpy as np

import autoqnn


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    x = keras.layers.Activation("gelu")(inputs)
    bn = keras.layers.BatchNormalization(name="bn")
    x = keras.layers.Conv2D(3, 1, name="conv")(bn(x))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    # Non-trivial statistics, as after training.
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4),
                    rng.uniform(0.1, 3, 4)])
    return model


def test_batchnorm_after_an_activation_is_an_exact_quantized_depthwise_conv():
    model = _model()
    x = np.random.default_rng(1).normal(size=(8, 6, 6, 4)).astype("float32")
    # Two-bit weights, float activations, the conv kept float: one value per channel is
    # exact at any width, so the model computes the float BatchNorm.
    q = autoqnn.quantize(model, weight_bits=2, activation_bits=None, config={"conv": None})
    row = q.autoqnn_report.get("bn")
    assert (row.class_name, row.status, row.weight_bits) == ("QuantDepthwiseConv2D",
                                                             "quantized", 2)
    np.testing.assert_allclose(q.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    assert model.get_layer("bn").__class__ is keras.layers.BatchNormalization  # untouched


def test_batchnorm_stays_float_without_folding():
    q = autoqnn.quantize(_model(), fold_batchnorm=False, activation_bits=None)
    row = q.autoqnn_report.get("bn")
    assert row.status == "float" and "fold_batchnorm=False" in row.reason
