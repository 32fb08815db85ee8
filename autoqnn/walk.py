"""Walking a model's layers (nested models and composite layers flattened) and naming
layer kinds.

`iter_layers` yields every layer of a model with its path: a nested model's
layers as "outer/inner", and after a layer that owns sublayers (a
MultiHeadAttention, a keras-hub block, a user's composite layer, a quantized
layer's input quantizer) its sublayers as "layer/sublayer", recursively.
`own_weights(layer)` are a layer's weights less those of its sublayers.

Example:
    >>> import keras
    >>> from autoqnn.walk import is_pointwise, iter_layers
    >>> inner_in = keras.Input((4, 4, 2), name="input_layer")
    >>> inner = keras.Model(inner_in, keras.layers.Conv2D(3, 1, name="pw")(inner_in), name="inner")
    >>> outer_in = keras.Input((4, 4, 2))
    >>> model = keras.Model(outer_in, inner(outer_in))
    >>> [(path, is_pointwise(layer)) for path, layer in iter_layers(model)][1:]
    [('inner/input_layer', False), ('inner/pw', True)]
"""

from __future__ import annotations

import keras

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
          keras.layers.Conv2DTranspose)
_DEPTHWISE = (keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D)


def iter_layers(model, prefix: str = ""):
    """Yields `(path, layer)` for every layer, nested models flattened ("outer/inner"),
    each layer followed by its sublayers ("mha/query")."""
    for layer in model.layers:
        yield from _walk(layer, prefix)


def sublayers(layer) -> list:
    """The layers a (non-model) layer tracks directly, in tracking order."""
    if isinstance(layer, keras.Model) or not isinstance(layer, keras.layers.Layer):
        return []
    return list(layer._flatten_layers(include_self=False, recursive=False))


def iter_sublayers(layer, prefix: str):
    """Yields `(path, sublayer)` for the sublayers of `layer`, recursively."""
    for sub in sublayers(layer):
        yield from _walk(sub, prefix)


def _walk(layer, prefix):
    """A nested model's layers, or the layer itself followed by its sublayers."""
    if isinstance(layer, keras.Model):
        yield from iter_layers(layer, prefix + layer.name + "/")
    else:
        yield prefix + layer.name, layer
        yield from iter_sublayers(layer, prefix + layer.name + "/")


def own_weights(layer) -> list:
    """`layer.weights` less the weights of its sublayers."""
    inner = {id(v) for sub in sublayers(layer) for v in sub.weights}
    return [v for v in layer.weights if id(v) not in inner]


def iter_models(model):
    """Yields `model` and every model nested in it, outer first."""
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iter_models(layer)


def is_depthwise(layer) -> bool:
    """DepthwiseConv2D or SeparableConv2D."""
    return isinstance(layer, _DEPTHWISE)


def is_conv(layer) -> bool:
    """A convolution that is not depthwise (Conv1D/2D/3D, Conv2DTranspose)."""
    return isinstance(layer, _CONVS) and not is_depthwise(layer)


def is_pointwise(layer) -> bool:
    """A 1x1 (non-depthwise) convolution."""
    return is_conv(layer) and all(k == 1 for k in layer.kernel_size)


def find_layer(model, key: str, argument: str = "layer"):
    """`(path, layer)` for `key`: a path ("inner/conv") or an unambiguous bare name.

    Raises:
        KeyError: no layer has that path or name.
        ValueError: a bare name shared by layers of several nested models.
    """
    if not isinstance(key, str):
        raise TypeError(f"{argument} must be a layer path or name (str), got {key!r}")
    layers = list(iter_layers(model))
    for path, layer in layers:
        if path == key:
            return path, layer
    matches = [(path, layer) for path, layer in layers if layer.name == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"{argument} {key!r} is ambiguous: it names {[p for p, _ in matches]}; "
                         "use the path")
    raise KeyError(f"{argument} {key!r} is not a layer of model {model.name!r}; layers: "
                   f"{[p for p, _ in layers][:50]}")
