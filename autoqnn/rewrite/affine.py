"""A BatchNormalization that folds into nothing, quantized as a 1x1 depthwise convolution.

In inference a BatchNormalization computes `x * scale + offset` per channel,
`scale = gamma / sqrt(var + eps)`, `offset = beta - mean * scale`. Where it
directly follows a weighted layer QAG folds it into that layer's weights; where
it does not (ConvMixer's GELU then BatchNorm, a BatchNorm after an Add) TFLite
runs it as a 1x1 DEPTHWISE_CONV_2D anyway. QAG builds exactly that layer, a
`QuantDepthwiseConv2D` with a 1x1 kernel holding the scales and a bias holding
the offsets, with the BatchNorm's name and resolved config: its weights are
quantized like any other layer's (one value per channel: per-channel
quantization keeps it exact at any width), counted in the report and searched;
fine-tuning trains the scale and offset directly (the statistics are frozen, as
in a folded BatchNorm).

Example:
    >>> import numpy as np, keras
    >>> from autoqnn.rewrite.affine import batchnorm_affine_weights
    >>> bn = keras.layers.BatchNormalization(epsilon=0.0)
    >>> _ = bn(np.zeros((1, 2, 2, 3), "float32"))
    >>> kernel, bias = batchnorm_affine_weights(bn)
    >>> kernel.shape, bias.tolist()
    ((1, 1, 3, 1), [0.0, 0.0, 0.0])
"""

from __future__ import annotations

import keras
import numpy as np


def as_depthwise_reason(bn) -> str | None:
    """None when `bn` can become a 1x1 depthwise convolution, else why not."""
    if not isinstance(bn, keras.layers.BatchNormalization):
        return "not a BatchNormalization"
    if getattr(bn, "renorm", False):
        return "batch renormalization"
    try:
        shape = bn.input.shape
    except (AttributeError, ValueError):
        return "never called in a graph"
    rank = len(shape)
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    if rank != 4 or [a % rank for a in axes] != [3]:
        return (f"it normalizes axis {bn.axis} of a rank-{rank} tensor (a 1x1 depthwise "
                "convolution needs the channels-last axis of an image)")
    return None


def depthwise_for(bn):
    """The unbuilt float `DepthwiseConv2D` (1x1, with bias, the BN's name) that computes
    `bn` in inference."""
    return keras.layers.DepthwiseConv2D(1, use_bias=True, name=bn.name,
                                        dtype=bn.dtype_policy)


def batchnorm_affine_weights(bn):
    """`(kernel (1, 1, C, 1), bias (C,))` of the 1x1 depthwise convolution equal to `bn`."""
    def array(variable):
        return np.asarray(keras.ops.convert_to_numpy(variable), "float64")

    variance = array(bn.moving_variance)
    gamma = array(bn.gamma) if bn.scale else np.ones_like(variance)
    beta = array(bn.beta) if bn.center else np.zeros_like(variance)
    scale = gamma / np.sqrt(variance + bn.epsilon)
    offset = beta - array(bn.moving_mean) * scale
    return (scale.reshape(1, 1, -1, 1).astype("float32"), offset.astype("float32"))
