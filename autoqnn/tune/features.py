"""Model descriptors for the PTQ cost model (Quantune's model features).

Counts of layer kinds plus size, so one XGBoost model can learn from trials
of several networks and transfer to a new one.

Example:
    >>> import keras
    >>> from autoqnn.tune.features import model_descriptors
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    >>> y = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    >>> x = keras.layers.Add()([x, keras.layers.Conv2D(4, 1)(y)])
    >>> d = model_descriptors(keras.Model(inputs, keras.layers.Dense(2)(x)))
    >>> d["conv"], d["depthwise"], d["pointwise"], d["dense"], d["skip"], d["activation"]
    (2, 1, 1, 1, 1, 1)
"""

from __future__ import annotations

import hashlib

import keras
import numpy as np

from autoqnn.walk import is_conv, is_depthwise, is_pointwise, iter_layers

DESCRIPTOR_NAMES = ("nodes", "conv", "dense", "bn", "activation", "skip", "depthwise",
                    "pointwise", "log10_params", "size_mb")

_MERGES = (keras.layers.Add, keras.layers.Concatenate, keras.layers.Multiply,
           keras.layers.Subtract, keras.layers.Average, keras.layers.Maximum)
_ACTIVATIONS = (keras.layers.ReLU, keras.layers.Activation, keras.layers.LeakyReLU,
                keras.layers.PReLU, keras.layers.ELU, keras.layers.Softmax)


def model_descriptors(model) -> dict:
    """Layer-kind counts, parameter count and size of a float Keras model.

    Returns:
        `{name: value}` for the names in `DESCRIPTOR_NAMES`: nodes (layers),
        conv (non-depthwise convolutions), dense, bn, activation (activation
        layers and fused activations other than linear), skip (merge layers),
        depthwise, pointwise (1x1 convolutions, included in conv),
        log10_params, size_mb (float32 weights).
    """
    counts = dict.fromkeys(DESCRIPTOR_NAMES, 0)
    for _, layer in iter_layers(model):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        counts["nodes"] += 1
        if is_depthwise(layer):
            counts["depthwise"] += 1
        elif is_conv(layer):
            counts["conv"] += 1
            counts["pointwise"] += int(is_pointwise(layer))
        elif isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
            counts["dense"] += 1
        elif isinstance(layer, keras.layers.BatchNormalization):
            counts["bn"] += 1
        elif isinstance(layer, _MERGES):
            counts["skip"] += 1
        if isinstance(layer, _ACTIVATIONS):
            counts["activation"] += 1
        elif getattr(layer, "activation", None) not in (None, keras.activations.linear):
            counts["activation"] += 1
    params = int(model.count_params())
    counts["log10_params"] = float(np.log10(max(params, 1)))
    counts["size_mb"] = params * 4 / 2**20
    return counts


def descriptor_vector(descriptors: dict) -> np.ndarray:
    """The descriptors as a float vector in `DESCRIPTOR_NAMES` order."""
    return np.array([float(descriptors.get(n, 0.0)) for n in DESCRIPTOR_NAMES], "float32")


def model_fingerprint(model) -> str:
    """A short hash of a model's name, architecture and weights (the history key)."""
    digest = hashlib.sha1(model.name.encode())
    for _, layer in iter_layers(model):
        digest.update(f"{type(layer).__name__}:{layer.name}".encode())
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(value.tobytes()[:4096])
        digest.update(np.float64(value.sum(dtype="float64")).tobytes())
    return f"{model.name}-{digest.hexdigest()[:10]}"
