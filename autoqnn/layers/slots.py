"""Where a composite layer keeps its sublayers, and how a twin names its base class.

`sublayer_slots(layer)` maps slot keys to the sublayers a layer holds in
attributes ("_query_dense") or in lists, tuples and dicts assigned to an
attribute ("blocks[0]", "heads[q]"); `get_slot` reads one back. A twin's config
names its base class with `class_reference` and `resolve_class` finds it again
when loading; `serialize_sublayer` stores a replacement without build state.

Example:
    >>> import keras
    >>> from autoqnn.layers.slots import get_slot, sublayer_slots
    >>> mha = keras.layers.MultiHeadAttention(2, 4)
    >>> _ = mha(keras.ops.ones((1, 3, 8)), keras.ops.ones((1, 3, 8)))
    >>> sorted(sublayer_slots(mha))[:2], type(get_slot(mha, "_query_dense")).__name__
    (['_dropout_layer', '_key_dense'], 'EinsumDense')
"""

from __future__ import annotations

import importlib

import keras

_TRACKING_ATTRIBUTES = {"_layers", "_tracker", "_trainable_variables", "_non_trainable_variables",
                        "_metrics", "_seed_generators", "_inbound_nodes", "_outbound_nodes"}


def serialize_sublayer(layer) -> dict:
    """`keras.saving.serialize_keras_object(layer)` without its build state (a twin builds
    its sublayers as the layer's own code does)."""
    config = keras.saving.serialize_keras_object(layer)
    config.pop("build_config", None)
    config.pop("compile_config", None)
    return config


def class_reference(cls) -> dict:
    """How a twin's config names its base class."""
    return {"module": cls.__module__, "class_name": cls.__name__,
            "registered_name": keras.saving.get_registered_name(cls)}


def resolve_class(reference: dict):
    """The layer class a `class_reference` names: a registered (or `custom_objects`)
    class, else a class of the keras / keras_hub / autoqnn packages.

    Raises:
        TypeError: the class cannot be found.
    """
    registered = reference.get("registered_name")
    if registered:
        found = keras.saving.get_registered_object(registered)
        if isinstance(found, type) and issubclass(found, keras.layers.Layer):
            return found
    module, name = reference.get("module", ""), reference.get("class_name", "")
    if module.split(".")[0] in ("keras", "keras_hub", "autoqnn"):
        try:
            found = getattr(importlib.import_module(module), name, None)
        except ImportError:
            found = None
        if isinstance(found, type) and issubclass(found, keras.layers.Layer):
            return found
    raise TypeError(
        f"cannot find the layer class {module}.{name} of a quantized composite layer; "
        "register it with @keras.saving.register_keras_serializable() (or pass it in "
        "custom_objects=) before loading")


def sublayer_slots(layer) -> dict:
    """`{slot key: sublayer}` of the sublayers `layer` holds in attributes (key: the
    attribute name) or in lists, tuples and dicts of them ("blocks[0]", "heads[q]").
    Keras' own tracking lists are skipped; a sublayer held twice keeps its first key."""
    slots, seen = {}, set()

    def add(key, value):
        if isinstance(value, keras.layers.Layer) and id(value) not in seen:
            seen.add(id(value))
            slots[key] = value

    for name, value in vars(layer).items():
        if name in _TRACKING_ATTRIBUTES or name.startswith(("_autoqnn", "_self_unconditional")):
            continue
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                add(f"{name}[{i}]", item)
        elif isinstance(value, dict):
            for k, item in value.items():
                if isinstance(k, str):
                    add(f"{name}[{k}]", item)
        else:
            add(name, value)
    return slots


def get_slot(layer, key):
    """The sublayer at a slot key of `sublayer_slots`."""
    if key.endswith("]") and "[" in key:
        name, index = key[:-1].split("[", 1)
        container = getattr(layer, name)
        return container[int(index)] if isinstance(container, (list, tuple)) else \
            container[index]
    return getattr(layer, key)
