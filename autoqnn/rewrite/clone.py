"""Cloning a quantized model with changed layer configs, carrying every weight across.

`clone_quantized(model, change)` rebuilds the model layer by layer with
`keras.models.clone_model` (nested models recursively). `change(path, layer)`
returns None (copy the layer as it is) or a `Change`: the new (unbuilt)
layer, `renames` mapping original variable names to new ones (state that has
no new name is dropped, e.g. the candidates of a collapsed mixture), and
`values` that replace variables by their new name (folded weights). The
original model is not modified. `finalize` and the TFLite export use it.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import tree

from autoqnn.layers.activation import ActivationQuantizer


@dataclasses.dataclass
class Change:
    """How `clone_quantized` rebuilds one layer (see the module docstring)."""

    layer: object
    renames: dict = dataclasses.field(default_factory=dict)
    values: dict = dataclasses.field(default_factory=dict)
    after: object = None  # called with the built clone once its variables are set


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
            clone = changed.layer
            pairs.append((layer, clone, changed))
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
    for original, clone, changed in pairs:
        if changed == "model":
            continue
        if changed is None:
            _copy_variables(original, clone, {}, strict=True)
        else:
            _copy_variables(original, clone, changed.renames, strict=False)
            targets = {v.name: v for v in clone.weights}
            for name, value in changed.values.items():
                targets[name].assign(value)
            if changed.after is not None:
                changed.after(clone)
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
