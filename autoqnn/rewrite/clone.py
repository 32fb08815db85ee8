"""Cloning a quantized model with changed layer configs, carrying every weight across.

`clone_quantized(model, change)` rebuilds the model layer by layer with
`keras.models.clone_model` (nested models recursively). `change(path, layer)`
returns None (copy the layer as it is) or `(config, renames)`: the layer is
rebuilt from `config` and its variables are filled from the original's by
name, `renames` mapping original variable names to new ones (state that has
no new name is dropped, e.g. the candidates of a collapsed mixture). The
original model is not modified. `finalize` and the TFLite export use it.
"""

from __future__ import annotations

import keras
from keras import tree

from autoqnn.layers.activation import ActivationQuantizer


def clone_quantized(model, change=None, prefix: str = ""):
    """Returns the clone of `model` (see the module docstring)."""
    pairs = []  # (original, clone, renames or None)

    def clone_function(layer):
        if isinstance(layer, keras.Model):
            clone = clone_quantized(layer, change, prefix + layer.name + "/")
            pairs.append((layer, clone, "model"))
            return clone
        if not isinstance(layer, keras.layers.Layer):  # a bare keras.ops operation
            try:
                return type(layer).from_config(layer.get_config())
            except Exception:  # stateless ops without a usable config can be shared
                return layer
        changed = change(prefix + layer.name, layer) if change is not None else None
        if changed is None:
            clone = layer.__class__.from_config(layer.get_config())
            pairs.append((layer, clone, None))
        else:
            config, renames = changed
            clone = layer.__class__.from_config(config)
            pairs.append((layer, clone, renames))
        return clone

    if isinstance(model, keras.Sequential):
        new_model = keras.models.clone_model(model, clone_function=clone_function)
    else:
        inputs = tree.map_structure(
            lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype,
                                  name=t._keras_history.operation.name),
            model.input,
        )
        new_model = keras.models.clone_model(model, input_tensors=inputs,
                                             clone_function=clone_function)
    for original, clone, renames in pairs:
        if renames == "model":
            continue
        _copy_variables(original, clone, renames or {}, strict=renames is None)
        if isinstance(clone, ActivationQuantizer):
            _ = clone.is_calibrated  # syncs the layer's flag with its variables
    return new_model


def _copy_variables(original, clone, renames, strict):
    targets = {v.name: v for v in clone.weights}
    for variable in original.weights:
        name = renames.get(variable.name, variable.name)
        if name is None:
            continue
        if name in targets:
            targets[name].assign(keras.ops.convert_to_numpy(variable))
        elif strict:
            raise RuntimeError(f"internal error: variable {variable.name!r} of "
                               f"{original.name!r} has no twin in the clone "
                               f"({sorted(targets)})")
