"""Shared fixtures: tiny models and data so the suite stays fast on 2 cores."""

import keras
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    yield


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.random((32, 12, 12, 1), dtype=np.float32)


@pytest.fixture
def small_cnn():
    """Conv+BN+ReLU, a residual Add, pooling and Dense: the patterns QAG handles."""
    inputs = keras.Input((12, 12, 1), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    y = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    y = keras.layers.ReLU(6.0, name="relu2")(y)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="small_cnn")
    # Non-trivial BN statistics, so folding is actually exercised.
    bn = model.get_layer("bn1")
    rng = np.random.default_rng(1)
    bn.moving_mean.assign(rng.normal(size=8).astype("float32") * 0.1)
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=8).astype("float32"))
    bn.gamma.assign(rng.uniform(0.5, 1.5, size=8).astype("float32"))
    bn.beta.assign(rng.normal(size=8).astype("float32") * 0.1)
    return model
