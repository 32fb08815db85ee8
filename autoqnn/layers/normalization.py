"""`IntegerLayerNormalization`: a LayerNormalization whose inner tensors have int8 ranges.

TFLite runs a LayerNormalization as a chain of ops (MEAN, SUB, MUL, MEAN, ADD,
RSQRT, MUL, then the per-channel scale and offset); a full-integer graph needs
an int8 range on every tensor of that chain. QAG replaces a plain
`keras.layers.LayerNormalization` (last axis, not RMS) by this subclass when
activations are quantized: it computes the same chain with an
`ActivationQuantizer` on each inner tensor (calibrated from the user's data like
every other quantizer), so the Keras model computes what the integer file
computes. The scale (gamma) and offset (beta) stay float variables; the export
runs them as a 1x1 depthwise convolution whose per-channel int8 weights hold
each gamma exactly (`autoqnn.export.calls.integer_layer_norm_call`).

Limit (8-bit variance): the variance is quantized on one range per layer, so a
token whose variance is far below the calibrated maximum gets few variance
steps and a coarse rsqrt (measured on the keras.io-style CCT: Keras and LiteRT
agree on 98.2 % of predictions, against 99.6 % on the ViT). A chain through
TFLite's int8 L2_NORMALIZATION (32-bit sums, no 8-bit variance) was tried and
agreed less (97.6 %) on the same model.

Example:
    >>> import numpy as np
    >>> from autoqnn.layers.normalization import IntegerLayerNormalization
    >>> norm = IntegerLayerNormalization(internal_quantizer={"scheme": "uniform", "bits": 8})
    >>> x = np.random.default_rng(0).normal(size=(4, 3, 8)).astype("float32")
    >>> y = norm(x)  # uncalibrated quantizers pass values through: a plain LayerNorm
    >>> bool(np.allclose(np.asarray(y).mean(-1), 0.0, atol=1e-5))
    True
"""

from __future__ import annotations

import keras
from keras import ops

from autoqnn.layers.activation import ActivationQuantizer

INNER_TENSORS = ("mean", "centered", "squared", "variance", "inv_std", "normalized")
"""The quantized inner tensors, in the order the chain computes them."""


def can_integerize(layer) -> bool:
    """Whether `layer` is a plain LayerNormalization over its last axis (no RMS scaling),
    the form `IntegerLayerNormalization` reproduces."""
    if type(layer) is not keras.layers.LayerNormalization or layer.rms_scaling:
        return False
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    try:
        rank = len(layer.input.shape)
    except (AttributeError, ValueError):
        return False
    return len(axes) == 1 and axes[0] % rank == rank - 1


@keras.saving.register_keras_serializable(package="autoqnn")
class IntegerLayerNormalization(keras.layers.LayerNormalization):
    """LayerNormalization over the last axis with quantized inner tensors.

    Args:
        internal_quantizer: `ActivationQuantizer` arguments of the inner
            tensors' quantizers (one per name in `INNER_TENSORS`, sublayers
            "<name>_aq").
        **kwargs: `keras.layers.LayerNormalization` arguments.
    """

    def __init__(self, internal_quantizer=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(internal_quantizer, dict):
            raise TypeError("internal_quantizer must be a dict of ActivationQuantizer "
                            f"arguments, got {internal_quantizer!r}")
        if self.rms_scaling:
            raise ValueError("IntegerLayerNormalization does not support rms_scaling=True")
        self.internal_quantizer = {k: v for k, v in internal_quantizer.items() if k != "name"}
        self.inner_aq = {name: ActivationQuantizer(name=f"{name}_aq", **self.internal_quantizer)
                         for name in INNER_TENSORS}

    def build(self, input_shape):
        super().build(input_shape)
        reduced = tuple(input_shape[:-1]) + (1,)
        for name, aq in self.inner_aq.items():
            if not aq.built:
                aq.build(reduced if name in ("mean", "variance", "inv_std") else
                         tuple(input_shape))

    def normalize(self, inputs):
        """The quantized chain up to the normalized tensor (before gamma and beta)."""
        aq = self.inner_aq
        x = ops.cast(inputs, self.compute_dtype)
        mean = aq["mean"](ops.mean(x, axis=-1, keepdims=True))
        centered = aq["centered"](ops.subtract(x, mean))
        squared = aq["squared"](ops.multiply(centered, centered))
        variance = aq["variance"](ops.mean(squared, axis=-1, keepdims=True))
        # The epsilon's ADD is one more int8 tensor: it keeps the variance's range.
        shifted = aq["variance"](ops.add(variance, ops.cast(self.epsilon, variance.dtype)))
        inv_std = aq["inv_std"](ops.rsqrt(shifted))
        return aq["normalized"](ops.multiply(centered, inv_std))

    def call(self, inputs):
        outputs = self.normalize(inputs)
        if self.gamma is not None:
            outputs = ops.multiply(outputs, ops.cast(self.gamma, outputs.dtype))
        if self.beta is not None:
            outputs = ops.add(outputs, ops.cast(self.beta, outputs.dtype))
        return outputs

    def get_config(self):
        return {**super().get_config(), "internal_quantizer": dict(self.internal_quantizer)}
