"""Quantized twins of composite layers: layers that own weighted sublayers.

A `keras.layers.MultiHeadAttention` owns four `EinsumDense` projections; a
keras-hub `TransformerEncoder` owns an attention layer, two LayerNorms and two
Dense layers; a user's residual block owns its Dense/Conv layers. QAG
(`autoqnn.rewrite.composite`) quantizes such a layer by building its twin: an
instance of `Quantized<Base>`, a subclass of the layer's own class (so its
`call`, masking, `get_config` and `isinstance` checks are those of the
original) that swaps chosen sublayers for replacements (`QuantEinsumDense`,
`QuantDense`, a nested twin...) *as the layer's own code assigns them*,
whether in `__init__` (user layers) or in `build` (MultiHeadAttention,
keras-hub blocks). The replacements are stored in the layer config as
serialized layers, so a `.keras` file reloads with plain
`keras.models.load_model` into the same quantized layer: every twin class
serializes under one registered name, `autoqnn>QuantizedComposite`, and names
its base class in its config.

A twin can also own activation quantizers of its own:

* an output quantizer (`output_quantizer`, the sublayer "output_aq"), for a
  float sublayer whose output an override asks to quantize (a LayerNorm);
* attention quantizers (`attention_quantizers`, MultiHeadAttention and its
  subclasses; `ATTENTION_TENSORS`): the projected query, key and value, the
  scaled query, the scores, the attention probabilities and their combination
  with the values ("query_aq", ..., "context_aq"), so both attention matmuls
  multiply quantized operands and every tensor of the core has an int8 range.
  Twins saved with the first four only load and run as they were.

Supported: sublayers held in attributes, or in lists, tuples or dicts
assigned to an attribute at once. Sublayers created another way (appended
to a list later) cannot be swapped; QAG checks the swap and reports them.

Example:
    >>> import numpy as np, keras
    >>> from autoqnn.layers import QuantEinsumDense
    >>> from autoqnn.layers.composite import quantized_composite
    >>> mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
    >>> x = np.ones((1, 3, 8), "float32"); _ = mha(x, x)
    >>> twin = quantized_composite(mha, {"_query_dense": QuantEinsumDense.from_config(
    ...     {**mha.query_dense.get_config(),
    ...      "weight_quantizers": {"kernel": {"name": "uniform", "bits": 4}}})})
    >>> _ = twin(x, x)
    >>> type(twin).__name__, type(twin.query_dense).__name__, isinstance(twin, type(mha))
    ('QuantizedMultiHeadAttention', 'QuantEinsumDense', True)
"""

from __future__ import annotations

import inspect
import threading

import keras
from keras import ops

from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.slots import (
    class_reference,
    get_slot,
    resolve_class,
    serialize_sublayer,
)

REGISTERED_NAME = "autoqnn>QuantizedComposite"
ATTENTION_TENSORS = ("query", "key", "value", "probabilities", "scaled_query", "scores",
                     "context")

_PENDING = threading.local()
_CLASSES: dict = {}


def _pending_stack() -> list:
    if not hasattr(_PENDING, "stack"):
        _PENDING.stack = []
    return _PENDING.stack


@keras.saving.register_keras_serializable(package="autoqnn", name="QuantizedComposite")
class QuantizedComposite:
    """The mixin of every `Quantized<Base>` twin class (see the module docstring).

    Build twins with `quantized_composite`; `from_config` rebuilds one from
    its config (the base layer's config plus an "autoqnn" entry).
    """

    _autoqnn_base = None

    # --- construction -----------------------------------------------------------------

    def _autoqnn_start(self):
        stack = _pending_stack()
        info = stack.pop()[1] if stack and stack[-1][0] is type(self) else {}
        info = {"sublayers": dict(info.get("sublayers") or {}),
                "output_quantizer": info.get("output_quantizer"),
                "attention_quantizers": dict(info.get("attention_quantizers") or {}),
                "live": dict(info.get("live") or {})}
        object.__setattr__(self, "_autoqnn", info)
        object.__setattr__(self, "_autoqnn_swapped", {})

    def _autoqnn_finish(self):
        info = self._autoqnn
        # A layer without a build() of its own is built (and locked) by __init__.
        locked = self._tracker.locked
        self._tracker.unlock()
        try:
            self.output_aq = None
            if info["output_quantizer"]:
                self.output_aq = ActivationQuantizer.from_config(info["output_quantizer"])
            self.attention_aq = {}
            if info["attention_quantizers"]:
                self.attention_aq = {
                    name: ActivationQuantizer.from_config(cfg)
                    for name, cfg in info["attention_quantizers"].items()}
        finally:
            if locked:
                self._tracker.lock()

    def _post_build(self):
        super()._post_build()
        self._autoqnn_build_quantizers()

    def _autoqnn_build_quantizers(self):
        """Builds the own quantizers from the build shapes (a layer whose symbolic call
        skips `call`, like MultiHeadAttention, would otherwise load unbuilt ones)."""
        aq = getattr(self, "output_aq", None)
        shapes = getattr(self, "_build_shapes_dict", None)
        if aq is not None and not aq.built and shapes:
            try:
                shape = self.compute_output_shape(*shapes.values())
            except Exception:  # noqa: BLE001 - built on the first call instead
                shape = None
            if isinstance(shape, (list, tuple)) and shape and isinstance(shape[0],
                                                                         (list, tuple)):
                shape = shape[0]
            if shape is not None:
                aq.build(tuple(shape))

    def __setattr__(self, name, value):
        pending = self.__dict__.get("_autoqnn", {}).get("sublayers")
        if pending:
            value = self._autoqnn_swap(name, value, pending)
        super().__setattr__(name, value)

    def _autoqnn_swap(self, name, value, pending):
        if isinstance(value, keras.layers.Layer):
            return self._autoqnn_replacement(name, value, pending)
        if isinstance(value, (list, tuple)) and any(f"{name}[{i}]" in pending
                                                    for i in range(len(value))):
            items = [self._autoqnn_replacement(f"{name}[{i}]", v, pending)
                     for i, v in enumerate(value)]
            return type(value)(items) if isinstance(value, list) else tuple(items)
        if isinstance(value, dict) and any(f"{name}[{k}]" in pending for k in value):
            return {k: self._autoqnn_replacement(f"{name}[{k}]", v, pending)
                    for k, v in value.items()}
        return value

    def _autoqnn_replacement(self, key, value, pending):
        entry = pending.get(key)
        if entry is None or not isinstance(value, keras.layers.Layer):
            return value
        live = self._autoqnn.get("live") or {}
        replacement = live.pop(key) if key in live else keras.saving.deserialize_keras_object(
            entry)
        models = isinstance(value, keras.Model) and isinstance(replacement, keras.Model)
        if not models and not isinstance(replacement, type(value)):
            raise TypeError(
                f"{type(self).__name__} {self.name!r}: sublayer {key!r} is a "
                f"{type(value).__name__} here, but the quantized layer stored for it is a "
                f"{type(replacement).__name__}; the layer's code no longer builds what was "
                "quantized")
        self._autoqnn_swapped[key] = True
        return replacement

    # --- what it holds ----------------------------------------------------------------

    @property
    def replaced_sublayers(self) -> dict:
        """`{slot key: sublayer}` of the swapped sublayers present now (after build)."""
        return {key: get_slot(self, key) for key in self._autoqnn["sublayers"]
                if self._autoqnn_swapped.get(key)}

    @property
    def missing_replacements(self) -> list:
        """Slot keys whose replacement was never assigned (the layer did not create them)."""
        return [key for key in self._autoqnn["sublayers"] if not self._autoqnn_swapped.get(key)]

    @property
    def autoqnn_quantizers(self) -> list:
        """The twin's own activation quantizers (output, attention)."""
        out = [self.output_aq] if getattr(self, "output_aq", None) is not None else []
        return out + list(getattr(self, "attention_aq", {}).values())

    # --- call -------------------------------------------------------------------------

    def __call__(self, *args, **kwargs):
        outputs = super().__call__(*args, **kwargs)
        aq = getattr(self, "output_aq", None)
        if aq is None:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)([aq(outputs[0]), *outputs[1:]])
        return aq(outputs)

    # --- serialization ----------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        sublayers = {}
        for key, entry in self._autoqnn["sublayers"].items():
            if self._autoqnn_swapped.get(key):
                entry = serialize_sublayer(get_slot(self, key))
            sublayers[key] = entry
        info = {"base": class_reference(self._autoqnn_base), "sublayers": sublayers}
        if getattr(self, "output_aq", None) is not None:
            info["output_quantizer"] = self.output_aq.get_config()
        if getattr(self, "attention_aq", None):
            info["attention_quantizers"] = {k: q.get_config() for k, q in self.attention_aq.items()}
        return {**config, "autoqnn": info}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        info = config.pop("autoqnn", None)
        if not isinstance(info, dict) or "base" not in info:
            raise ValueError(f"not the config of a quantized composite layer (no 'autoqnn' "
                             f"entry): {sorted(config)}")
        base = cls._autoqnn_base
        if base is None or class_reference(base) != info["base"]:
            base = resolve_class(info["base"])
        twin_cls = composite_class(base, attention=bool(info.get("attention_quantizers")))
        entry = (twin_cls, info)
        stack = _pending_stack()
        stack.append(entry)
        try:
            return super(QuantizedComposite, twin_cls).from_config(config)
        finally:
            if stack and stack[-1] is entry:  # not consumed: construction failed
                stack.pop()


class _QuantizedAttention:
    """MultiHeadAttention whose attention matmuls see quantized operands."""

    def _autoqnn_build_quantizers(self):
        super()._autoqnn_build_quantizers()
        shapes = dict(getattr(self, "_build_shapes_dict", None) or {})
        if not shapes or not self.attention_aq:
            return
        query_shape, value_shape = shapes["query_shape"], shapes["value_shape"]
        key_shape = shapes.get("key_shape") or value_shape
        projected = {"query": self._query_dense.compute_output_shape(query_shape),
                     "key": self._key_dense.compute_output_shape(key_shape),
                     "value": self._value_dense.compute_output_shape(value_shape)}
        scores = ops.einsum(self._dot_product_equation,
                            keras.KerasTensor(projected["key"]),
                            keras.KerasTensor(projected["query"]))
        projected["probabilities"] = projected["scores"] = scores.shape
        projected["scaled_query"] = projected["query"]
        projected["context"] = ops.einsum(self._combine_equation, scores,
                                          keras.KerasTensor(projected["value"])).shape
        for name, aq in self.attention_aq.items():
            if not aq.built:
                aq.build(tuple(projected[name]))

    def _compute_attention(self, query, key, value, attention_mask=None, training=None,
                           return_attention_scores=False, use_causal_mask=False):
        del return_attention_scores
        aq = self.attention_aq

        def quantize(name, tensor):  # twins saved before a tensor was added lack it
            return aq[name](tensor) if name in aq else tensor

        query, key, value = aq["query"](query), aq["key"](key), aq["value"](value)
        if use_causal_mask:
            causal = self._compute_causal_mask(query, value)
            attention_mask = causal if attention_mask is None else ops.logical_and(
                ops.cast(attention_mask, "bool"), causal)
        query = quantize("scaled_query", ops.multiply(
            query, ops.cast(self._inverse_sqrt_key_dim, query.dtype)))
        scores = quantize("scores", ops.einsum(self._dot_product_equation, key, query))
        probabilities = aq["probabilities"](self._masked_softmax(scores, attention_mask))
        dropped = (self._dropout_layer(probabilities, training=training)
                   if self._dropout > 0.0 else probabilities)
        context = ops.einsum(self._combine_equation, dropped, value)
        return quantize("context", context), probabilities


_BASE_KWARGS = ("name", "trainable", "dtype")


def unaccepted_base_kwargs(cls, kwargs) -> dict:
    """The Keras base-layer arguments (name, trainable, dtype) in `kwargs` that
    `cls.__init__` does not accept: a layer written without `**kwargs`, as keras.io
    examples write them, whose `from_config(get_config())` would fail on them."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return {}
    return {k: kwargs[k] for k in _BASE_KWARGS if k in kwargs and k not in parameters}


def apply_base_kwargs(layer, values: dict):
    """Sets the base-layer arguments an `__init__` without `**kwargs` did not take."""
    if "name" in values and values["name"]:
        layer.name = values["name"]
    if "trainable" in values:
        layer.trainable = bool(values["trainable"])
    if values.get("dtype") is not None:
        layer.dtype_policy = values["dtype"]


def _twin_init(base):
    def __init__(self, *args, **kwargs):
        self._autoqnn_start()
        extra = unaccepted_base_kwargs(base, kwargs)
        for key in extra:
            del kwargs[key]
        super(QuantizedComposite, self).__init__(*args, **kwargs)
        apply_base_kwargs(self, extra)
        self._autoqnn_finish()

    # Keras reads the constructor signature for auto-configs: keep the base's.
    __init__.__signature__ = inspect.signature(base.__init__)
    __init__.__doc__ = base.__init__.__doc__
    return __init__


def composite_class(base, attention: bool = False):
    """The `Quantized<Base>` twin class of a Keras layer class (created once, cached).

    Args:
        base: the layer class.
        attention: add the attention quantizers (`base` must subclass
            `keras.layers.MultiHeadAttention`).
    """
    if isinstance(base, type) and issubclass(base, QuantizedComposite):
        base = base._autoqnn_base
    if not (isinstance(base, type) and issubclass(base, keras.layers.Layer)):
        raise TypeError(f"base must be a Keras layer class, got {base!r}")
    if attention and not issubclass(base, keras.layers.MultiHeadAttention):
        raise TypeError(f"attention quantizers need a MultiHeadAttention, got {base.__name__}")
    key = (base, bool(attention))
    if key not in _CLASSES:
        mixins = (_QuantizedAttention, QuantizedComposite) if attention else (QuantizedComposite,)
        name = f"Quantized{base.__name__}"
        cls = type(name, mixins + (base,), {
            "__module__": __name__, "__qualname__": name, "_autoqnn_base": base,
            "__init__": _twin_init(base),
            "__doc__": f"`{base.__name__}` with quantized sublayers (autoqnn.layers.composite)."})
        # Every twin serializes under one registered name; loading resolves the base.
        keras.saving.register_keras_serializable(package="autoqnn", name="QuantizedComposite")(cls)
        keras.saving.get_custom_objects()[REGISTERED_NAME] = QuantizedComposite
        _CLASSES[key] = cls
    return _CLASSES[key]


def quantized_composite(layer, sublayers: dict, *, output_quantizer: dict | None = None,
                        attention_quantizers: dict | None = None, live: bool = False):
    """The (unbuilt) twin of `layer` with `sublayers` swapped in.

    Args:
        layer: the composite layer (float, or a twin: its base is used).
        sublayers: `{slot key: replacement layer}`; slot keys as in
            `sublayer_slots` ("_query_dense", "blocks[0]").
        output_quantizer: `ActivationQuantizer` config of an output quantizer.
        attention_quantizers: `{tensor: ActivationQuantizer config}` for the
            tensors of `ATTENTION_TENSORS` (MultiHeadAttention only).
        live: the twin holds the given sublayer objects themselves (built models
            keep their weights) instead of copies rebuilt from their configs.

    Returns:
        A `Quantized<Base>` instance with the layer's config and name.
    """
    base = layer._autoqnn_base if isinstance(layer, QuantizedComposite) else type(layer)
    config = layer.get_config()
    config.pop("autoqnn", None)
    config.setdefault("name", layer.name)  # auto-configs (no get_config) leave it out
    info = {"base": class_reference(base),
            "sublayers": {key: serialize_sublayer(sub) for key, sub in sublayers.items()}}
    if live:
        info["live"] = dict(sublayers)
    if output_quantizer:
        info["output_quantizer"] = _named(output_quantizer, "output_aq")
    if attention_quantizers:
        unknown = set(attention_quantizers) - set(ATTENTION_TENSORS)
        if unknown:
            raise ValueError(f"attention_quantizers may name {ATTENTION_TENSORS}, got "
                             f"{sorted(unknown)}")
        info["attention_quantizers"] = {name: _named(cfg, f"{name}_aq")
                                        for name, cfg in attention_quantizers.items()}
    twin_cls = composite_class(base, attention=bool(attention_quantizers))
    return twin_cls.from_config({**config, "autoqnn": info})


def _named(config, name):
    config = dict(config)
    config.setdefault("name", name)
    return config
