"""Quantized Keras layers, the activation quantizer and quantized composite layers."""

from autoqnn.layers.activation import ActivationQuantizer, reset_compiled_functions
from autoqnn.layers.composite import QuantizedComposite, composite_class, quantized_composite
from autoqnn.layers.folded import FoldedBatchNorm
from autoqnn.layers.normalization import IntegerLayerNormalization
from autoqnn.layers.quantized import (
    QUANTIZED_LAYERS,
    QuantConv1D,
    QuantConv2D,
    QuantConv2DTranspose,
    QuantConv3D,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantEinsumDense,
    QuantEmbedding,
    QuantizedWeightsMixin,
    QuantSeparableConv2D,
    quantized_weight_names,
)
from autoqnn.layers.quantizer import Quantizer

__all__ = [
    "QUANTIZED_LAYERS",
    "ActivationQuantizer",
    "FoldedBatchNorm",
    "IntegerLayerNormalization",
    "QuantConv1D",
    "QuantConv2D",
    "QuantConv2DTranspose",
    "QuantConv3D",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantEinsumDense",
    "QuantEmbedding",
    "QuantSeparableConv2D",
    "QuantizedComposite",
    "Quantizer",
    "QuantizedWeightsMixin",
    "composite_class",
    "quantized_composite",
    "quantized_weight_names",
    "reset_compiled_functions",
]
