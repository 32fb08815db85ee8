"""Cloning a quantized model with changed layer configs, carrying every weight across.

`clone_quantized(model, change)` rebuilds the model layer by layer with
`keras.models.clone_model` (nested models recursively, models held by custom layers
too). Layers it copies as they are keep their state: variables are matched in
creation order, not by name (`autoqnn.rewrite.replica`). `change(path, layer)`
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
from autoqnn.layers.composite import QuantizedComposite, quantized_composite
from autoqnn.layers.slots import get_slot
from autoqnn.rewrite.composite import sync_quantizer_flags
from autoqnn.rewrite.replica import copy_in_order, copy_state, replicate


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
        if changed is None and isinstance(layer, QuantizedComposite):
            clone, copy = clone_composite(layer, change, prefix + layer.name)
            pairs.append((layer, clone, copy))
            return clone
        if changed is None:
            clone, _note = replicate(layer)
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
        if callable(changed):  # a composite's copier
            changed(original, clone)
            continue
        _apply(original, clone, changed)
        if isinstance(clone, ActivationQuantizer):
            _ = clone.is_calibrated  # syncs the layer's flag with its variables
    return new_model


def clone_composite(layer, change, path):
    """`(unbuilt clone of a quantized composite layer, copier(original, built clone))`:
    each replaced sublayer and own activation quantizer rebuilt as `change` says."""
    plans = {}  # slot key -> (original sublayer, new sublayer, Change | copier | None)
    for key, sub in layer.replaced_sublayers.items():
        sub_path = f"{path}/{sub.name}"
        changed = change(sub_path, sub) if change is not None else None
        if isinstance(sub, keras.Model):  # rewritten by QAG inside a custom layer
            plans[key] = (sub, clone_quantized(sub, change, sub_path + "/"), "live")
        elif changed is None and isinstance(sub, QuantizedComposite):
            new, copier = clone_composite(sub, change, sub_path)
            plans[key] = (sub, new, copier)
        elif changed is None and any(getattr(sub, slot, None) is not None
                                     for slot in _QUANTIZER_SLOTS):
            plans[key] = _with_quantizers_changed(sub, change, sub_path)
        elif changed is None:
            plans[key] = (sub, replicate(sub)[0], None)
        else:
            plans[key] = (sub, changed.layer, changed)
    own = {}  # quantizer name -> (original, new config, Change | None)
    for aq in layer.autoqnn_quantizers:
        changed = change(f"{path}/{aq.name}", aq) if change is not None else None
        new = aq if changed is None else changed.layer
        own[aq.name] = (aq, new.get_config(), changed)
    attention = {name: own[q.name][1] for name, q in getattr(layer, "attention_aq", {}).items()}
    output = own[layer.output_aq.name][1] if layer.output_aq is not None else None
    clone = quantized_composite(layer, {key: plan[1] for key, plan in plans.items()},
                                output_quantizer=output, attention_quantizers=attention or None,
                                live=True)

    def copy(original, built):
        done_original, done_clone = set(), set()
        for key, (src, _new, how) in plans.items():
            dst = get_slot(built, key)
            if how == "live":
                pass  # a model cloned with its weights
            elif callable(how):
                how(src, dst)
            else:
                _apply(src, dst, how)
            done_original.update(id(v) for v in src.weights)
            done_clone.update(id(v) for v in dst.weights)
        new_quantizers = {q.name: q for q in built.autoqnn_quantizers}
        for name, (src, _config, how) in own.items():
            _apply(src, new_quantizers[name], how)
            done_original.update(id(v) for v in src.weights)
            done_clone.update(id(v) for v in new_quantizers[name].weights)
        copy_in_order([v for v in original.weights if id(v) not in done_original],
                      [v for v in built.weights if id(v) not in done_clone], original)
        sync_quantizer_flags(built)

    return clone, copy


def _with_quantizers_changed(layer, change, path):
    """The plan of a quantized sublayer whose input / output quantizers `change` may
    rebuild (a per-tensor conversion, a finalize): `(layer, new layer, copier or None)`."""
    slots = [slot for slot in _QUANTIZER_SLOTS if getattr(layer, slot, None) is not None]
    changes = {}
    for slot in slots:
        aq = getattr(layer, slot)
        changes[slot] = change(f"{path}/{aq.name}", aq) if change is not None else None
    config = layer.get_config()
    for slot, changed in changes.items():
        if changed is not None:
            config[slot] = {k: v for k, v in changed.layer.get_config().items() if k != "name"}
    if all(changed is None for changed in changes.values()):
        return layer, layer.__class__.from_config(config), None

    def copy(original, clone):
        inner = {id(v) for slot in slots for v in getattr(original, slot).weights}
        clone_inner = {id(v) for slot in slots for v in getattr(clone, slot).weights}
        targets = {v.name: v for v in clone.weights if id(v) not in clone_inner}
        for variable in original.weights:
            if id(variable) not in inner:
                targets[variable.name].assign(keras.ops.convert_to_numpy(variable))
        for slot in slots:
            _apply(getattr(original, slot), getattr(clone, slot), changes[slot])

    return layer, layer.__class__.from_config(config), copy


_QUANTIZER_SLOTS = ("input_quantizer", "output_quantizer")


def _apply(original, clone, changed):
    """Copies one rebuilt layer's variables as `changed` (a `Change` or None) says."""
    if changed is None:
        copy_state(original, clone)
        return
    _copy_variables(original, clone, changed.renames)
    targets = {v.name: v for v in clone.weights}
    for name, value in changed.values.items():
        targets[name].assign(value)
    if changed.after is not None:
        changed.after(clone)


def _copy_variables(original, clone, renames):
    """Copies by (renamed) variable name: a rebuilt quantized layer, whose own variable
    names are unique, with state renamed or dropped (no new name, or None). Its input
    and output quantizers (whose variables share names) are copied quantizer by
    quantizer."""
    inner, clone_inner = set(), set()
    for slot in _QUANTIZER_SLOTS:
        source, target = getattr(original, slot, None), getattr(clone, slot, None)
        if source is not None and target is not None:
            copy_state(source, target)
            inner.update(id(v) for v in source.weights)
            clone_inner.update(id(v) for v in target.weights)
    targets = {v.name: v for v in clone.weights if id(v) not in clone_inner}
    for variable in original.weights:
        if id(variable) in inner:
            continue
        name = renames.get(variable.name, variable.name)
        if name is not None and name in targets:
            targets[name].assign(keras.ops.convert_to_numpy(variable))
