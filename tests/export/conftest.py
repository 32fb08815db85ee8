"""Tiny quantized models shared by the export tests (module scope: conversions are slow)."""

import keras
import numpy as np
import pytest

import autoqnn


def build_cnn():
    """Conv+BN+ReLU, depthwise+ReLU6, a residual Add, pooling, Flatten, Dense."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.ReLU(6.0, name="relu2")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(6, name="logits")(x)
    model = keras.Model(inputs, outputs, name="tiny_cnn")
    rng = np.random.default_rng(1)
    bn = model.get_layer("bn1")
    bn.moving_mean.assign(rng.normal(size=8).astype("float32") * 0.1)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=8).astype("float32"))
    return model


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(0).random((48, 8, 8, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def float_cnn():
    keras.utils.set_random_seed(0)
    return build_cnn()


@pytest.fixture(scope="module")
def cnn_w8(float_cnn, data):
    return autoqnn.quantize(float_cnn, weight_bits=8, calibration_data=data)


@pytest.fixture(scope="module")
def cnn_w4(float_cnn, data):
    return autoqnn.quantize(float_cnn, weight_bits=4, calibration_data=data)


def output_step(info):
    return info.output_quantization[0][0]
