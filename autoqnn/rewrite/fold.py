"""BatchNormalization folding into the preceding weighted layer.

Folding computes, per output channel c, `k'_c = k_c * g_c` and
`b'_c = (b_c - mean_c) * g_c + beta_c` with `g_c = gamma_c / sqrt(var_c + eps)`:
the conv/dense followed by inference-mode BN equals the folded layer. TFLite
folds the same way, so quantizing the folded weights is what runs on device.

Example:
    >>> import numpy as np, keras
    >>> from autoqnn.rewrite.fold import fold_batchnorm_weights
    >>> conv = keras.layers.Conv2D(2, 1, use_bias=False); bn = keras.layers.BatchNormalization()
    >>> x = np.random.rand(1, 3, 3, 1).astype("float32"); _ = bn(conv(x))
    >>> kernel, bias = fold_batchnorm_weights(conv, bn)
    >>> kernel.shape, bias.shape
    ((1, 1, 1, 2), (2,))
"""

from __future__ import annotations

import keras
import numpy as np

# Layer class -> (name of the weight whose output channels BN scales, its channel axes).
_FOLDABLE = {
    keras.layers.Dense: ("kernel", (-1,)),
    keras.layers.Conv1D: ("kernel", (-1,)),
    keras.layers.Conv2D: ("kernel", (-1,)),
    keras.layers.Conv3D: ("kernel", (-1,)),
    keras.layers.DepthwiseConv2D: ("kernel", (2, 3)),
    keras.layers.SeparableConv2D: ("pointwise_kernel", (-1,)),
    keras.layers.Conv2DTranspose: ("kernel", (-2,)),
}


def _entry(layer):
    """`_FOLDABLE`'s entry for the layer's class or the Keras class it quantizes."""
    for cls in type(layer).__mro__:
        if cls in _FOLDABLE:
            return _FOLDABLE[cls]
    return None


def can_fold(layer, bn) -> str | None:
    """None if `bn` can fold into `layer`, else the reason it can't."""
    if _entry(layer) is None:
        return f"{type(layer).__name__} is not foldable"
    if not isinstance(bn, keras.layers.BatchNormalization):
        return "not a BatchNormalization"
    if getattr(layer, "activation", None) not in (None, keras.activations.linear):
        return f"{layer.name} applies an activation before the BatchNormalization"
    data_format = getattr(layer, "data_format", "channels_last")
    rank = len(layer.output.shape)
    channel_axis = 1 if data_format == "channels_first" else rank - 1
    bn_axes = [a % rank for a in (bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis])]
    if bn_axes != [channel_axis]:
        return f"BatchNormalization axis {bn.axis} is not the channel axis of {layer.name}"
    if getattr(bn, "renorm", False):
        return "batch renormalization"
    return None


def plan_folds(graph, accept) -> dict:
    """`{id(bn): layer, id(layer): bn}` for each BatchNormalization of `graph` (a
    `ModelGraph`) that directly and only follows a layer it can fold into, that layer
    accepted by `accept(layer)`. Shared layers and model outputs keep their BN."""
    folds = {}
    for bn in graph.layers:
        if not isinstance(bn, keras.layers.BatchNormalization):
            continue
        producers = graph.producers(bn)
        if len(producers) != 1:
            continue
        layer = producers[0]
        if graph.consumers(layer) != [bn] or graph.is_output(layer):
            continue
        if len(layer._inbound_nodes) != 1 or len(bn._inbound_nodes) != 1:
            continue
        if accept(layer) and can_fold(layer, bn) is None:
            folds[id(bn)] = layer
            folds[id(layer)] = bn
    return folds


def fold_batchnorm_weights(layer, bn):
    """Folded `(weight, bias)` as numpy arrays for `layer` followed by `bn`.

    Args:
        layer: a built foldable layer (Dense, Conv*, DepthwiseConv2D, ...).
        bn: the built BatchNormalization that consumes its output.

    Returns:
        (folded weight, folded bias); the weight is the one named in
        `_FOLDABLE` (e.g. the pointwise kernel of SeparableConv2D).
    """
    weight_name, axes = _entry(layer)
    weight = np.asarray(keras.ops.convert_to_numpy(getattr(layer, weight_name)), "float64")
    mean = np.asarray(keras.ops.convert_to_numpy(bn.moving_mean), "float64")
    var = np.asarray(keras.ops.convert_to_numpy(bn.moving_variance), "float64")
    gamma = np.asarray(keras.ops.convert_to_numpy(bn.gamma), "float64") if bn.scale else 1.0
    beta = np.asarray(keras.ops.convert_to_numpy(bn.beta), "float64") if bn.center else 0.0
    factor = gamma / np.sqrt(var + bn.epsilon)
    shape = [1] * weight.ndim
    channel_axes = [a % weight.ndim for a in axes]
    for a in channel_axes:
        shape[a] = weight.shape[a]
    folded_weight = weight * np.reshape(factor, shape)
    bias = (
        np.asarray(keras.ops.convert_to_numpy(layer.bias), "float64")
        if getattr(layer, "bias", None) is not None
        else 0.0
    )
    folded_bias = (bias - mean) * factor + beta
    return folded_weight.astype("float32"), np.broadcast_to(folded_bias, mean.shape).astype(
        "float32"
    )


def batchnorm_factor(bn) -> np.ndarray:
    """`gamma / sqrt(var + eps)` per channel: the scale folding puts on each output channel."""
    var = np.asarray(keras.ops.convert_to_numpy(bn.moving_variance), "float64")
    gamma = np.asarray(keras.ops.convert_to_numpy(bn.gamma), "float64") if bn.scale else 1.0
    return np.broadcast_to(gamma / np.sqrt(var + bn.epsilon), var.shape).astype("float32")


def folded_weight_name(layer) -> str:
    """Name of the weight that absorbs the BN scale."""
    return _entry(layer)[0]
