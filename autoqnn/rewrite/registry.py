"""The QAG handler registry: Keras layer class -> how to quantize it.

A handler takes the original layer and its resolved `LayerConfig` and returns
the quantized twin (an unbuilt layer), or raises `Unsupported` with the reason
the layer stays float. Register handlers for custom layers with
`register_handler`.

Layers are also sorted into graph roles that decide where activation
quantizers go (`layer_role`): "compute" (has a handler), "fusable"
(BatchNormalization and the ReLU family, fused into the preceding op by
TFLite where `fuses_into` says so), "passthrough" (reshape-like ops that keep the integer grid),
"model" (a nested model) and "op" (everything else whose output changes the
range: Add, Concatenate, average pooling, unknown layers...).
"""

from __future__ import annotations

import keras

from autoqnn.layers.quantized import QUANTIZED_LAYERS
from autoqnn.rewrite.fold import can_fold


class Unsupported(Exception):
    """Raised by a handler: the layer stays float; the message says why."""


_HANDLERS: dict[type, object] = {}

PASSTHROUGH_LAYERS = (
    keras.layers.InputLayer,
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.AlphaDropout,
    keras.layers.ActivityRegularization,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.Permute,
    keras.layers.RepeatVector,
    keras.layers.Identity,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)

_FUSABLE_ACTIVATIONS = ("relu", "relu6", "linear")


def register_handler(layer_class: type, handler=None):
    """Registers how QAG quantizes `layer_class` (usable as a decorator).

    Args:
        layer_class: a Keras layer class (subclasses match too).
        handler: `handler(layer, layer_config) -> keras.layers.Layer`; raise
            `Unsupported("reason")` to keep the layer float.

    Returns:
        The handler (so it can decorate a function).
    """

    def decorator(fn):
        if not (isinstance(layer_class, type) and issubclass(layer_class, keras.layers.Layer)):
            raise TypeError(f"layer_class must be a Keras layer class, got {layer_class!r}")
        _HANDLERS[layer_class] = fn
        return fn

    return decorator(handler) if handler is not None else decorator


def find_handler(layer):
    """The handler of the most specific registered class of `layer`, or None."""
    for cls in type(layer).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls]
    return None


def layer_role(layer) -> str:
    """The graph role of a layer: compute, fusable, passthrough, model or op."""
    if isinstance(layer, keras.Model):
        return "model"
    if type(layer) in QUANTIZED_LAYERS.values():
        return "compute"
    if find_handler(layer) is not None:
        return "compute"
    if is_fusable(layer):
        return "fusable"
    if isinstance(layer, PASSTHROUGH_LAYERS):
        return "passthrough"
    return "op"


def is_fusable(layer) -> bool:
    """BatchNormalization and the activations TFLite fuses into the previous op."""
    if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.ReLU)):
        return True
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", "")
        return name in _FUSABLE_ACTIVATIONS
    return False


def fuses_into(layer, producer) -> bool:
    """Whether TFLite runs fusable `layer` inside `producer`'s op, so the tensor between
    them needs no int8 range: an activation after any op, a BatchNormalization only
    after a weighted layer it folds into (after a GELU it runs as MUL and ADD)."""
    if not is_fusable(layer):
        return False
    if isinstance(layer, keras.layers.BatchNormalization):
        return layer_role(producer) == "compute" and can_fold(producer, layer) is None
    return True


def has_unfusable_activation(layer) -> bool:
    """A weighted layer whose own `activation` TFLite cannot fuse (softmax, sigmoid,
    GELU, swish...): its pre-activation tensor needs a range of its own."""
    activation = getattr(layer, "activation", None)
    if activation is None or not callable(activation):
        return False
    return getattr(activation, "__name__", "") not in _FUSABLE_ACTIVATIONS


def quantize_builtin_layer(layer, layer_config):
    """Handler of the built-in weighted layers: the matching `Quant*` class."""
    if getattr(layer, "quantization_mode", None):
        raise Unsupported(
            f"already quantized by Keras (quantization_mode={layer.quantization_mode!r})"
        )
    if getattr(layer, "lora_enabled", False):
        raise Unsupported("LoRA is enabled on this layer; merge or disable it first")
    quantized_cls = QUANTIZED_LAYERS.get(type(layer))
    if quantized_cls is None:
        raise Unsupported(
            f"{type(layer).__name__} subclasses {type(layer).__mro__[1].__name__} with code of "
            "its own; register a handler with autoqnn.register_handler"
        )
    config = layer.get_config()
    # The quantizers the config validated, as they are (no dict round trip): built once.
    config["weight_quantizers"] = {name: layer_config.take_weight_quantizer()
                                   for name in quantized_cls.weight_channel_axes}
    return quantized_cls.from_config(config)


for _keras_cls in QUANTIZED_LAYERS:
    register_handler(_keras_cls, quantize_builtin_layer)
