"""`FoldedBatchNorm`: the identity that stands where a folded BatchNormalization was."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="autoqnn")
class FoldedBatchNorm(keras.layers.Layer):
    """Identity placeholder for a BatchNormalization folded into `folded_into`.

    Keeping a layer (with the BN's name) keeps per-layer configs and the
    report readable: the report lists it as "folded".

    Args:
        folded_into: name of the layer whose weights absorbed the BN.
    """

    def __init__(self, folded_into: str = "", **kwargs):
        super().__init__(**kwargs)
        self.folded_into = folded_into
        self.supports_masking = True

    def call(self, inputs, training=None, mask=None):
        del training, mask
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "folded_into": self.folded_into}
