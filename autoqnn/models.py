"""Reference models of the benchmark and the demo (Fashion-MNIST sized).

Example:
    >>> from autoqnn.models import build_model
    >>> build_model("cnn").count_params() > 0
    True
"""

from __future__ import annotations

import keras

MODELS = ("cnn", "mobilenet")


def build_cnn(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """The reference `cnn`.

    2x[Conv3x3(32)+BN+ReLU], MaxPool, 2x[Conv3x3(64)+BN+ReLU], MaxPool, Flatten,
    Dense(128, relu), Dense(num_classes) logits.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for block, filters in enumerate((32, 64)):
        for i in range(2):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"conv{block + 1}_{i + 1}"
            )(x)
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{block + 1}_{i + 1}")(x)
            x = keras.layers.ReLU(name=f"relu{block + 1}_{i + 1}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{block + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn")


def build_mobilenet(input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """The reference `mobilenet`.

    Conv3x3(16, stride 2)+BN+ReLU6, depthwise-separable blocks (32,1), (64,2), (64,1),
    (128,1) of DW3x3+BN+ReLU6 and PW1x1+BN+ReLU6, global average pooling, Dense logits.
    """
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    for i, (filters, stride) in enumerate(((32, 1), (64, 2), (64, 1), (128, 1))):
        x = keras.layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=False, name=f"dw{i + 1}"
        )(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"dw{i + 1}_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"dw{i + 1}_relu")(x)
        x = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i + 1}")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"pw{i + 1}_bn")(x)
        x = keras.layers.ReLU(6.0, name=f"pw{i + 1}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet")


def build_model(name: str, input_shape=(28, 28, 1), num_classes=10) -> keras.Model:
    """Builds a reference model by name ("cnn" or "mobilenet")."""
    builders = {"cnn": build_cnn, "mobilenet": build_mobilenet}
    if name not in builders:
        raise ValueError(f"model must be one of {list(MODELS)}, got {name!r}")
    return builders[name](input_shape, num_classes)


def first_and_last_layers(model) -> tuple[str, str]:
    """Names of the first and last weighted layers (kept at 8 bits in low-bit runs)."""
    weighted = [
        layer.name
        for layer in model.layers
        if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    return weighted[0], weighted[-1]
