"""QAG for composite layers: layers without a handler that own weighted sublayers.

`quantize_composite` plans the twin of such a layer (`autoqnn.layers.composite`):

* each sublayer with a handler (Dense, EinsumDense, Conv*, DepthwiseConv2D,
  Embedding...) becomes its quantized class with the sublayer's resolved
  config; a sublayer that itself owns weighted sublayers (the attention layer
  of a keras-hub block) becomes a nested twin, recursively;
* configs resolve by path, "encoder/self_attention_layer/query": a
  sublayer starts from its parent's resolved config, then the overrides that
  select it apply (class, regex on the path or the bare name, exact path or
  name), so `{"encoder": None}` keeps a whole block float and
  `{"mha/query": {"weight_bits": 8}}` reaches one projection;
* activations: the composite's own inputs are graph tensors, quantized by QAG
  as any layer's inputs are. Its internal tensors are not, so each quantized
  sublayer that does not read the composite's inputs directly gets an input
  quantizer (which sublayers read them is found by calling the float layer
  once on zeros and watching its sublayers' calls). Float sublayers (LayerNorm,
  Softmax, activations) keep float outputs unless an override that selects
  them sets `activation_bits`: then their twin quantizes its output.
  Quantized sublayers of layers other than attention also quantize their
  outputs, which feed the layer's own code (an add, a softmax, a matmul).
  A MultiHeadAttention whose activations are quantized also quantizes its
  attention core (`ATTENTION_TENSORS`: the projected and scaled query, key,
  value, scores, probabilities and their combination), so TFLite runs it in
  int8; an override `{"attention_activations": False}` keeps the core float.

What stays float, and why, is logged by path for the report. `copy_into_twin`
copies the float weights into the built twin (swapped sublayers by slot,
everything else in order) and initialises the quantizers.

Example:
    >>> import numpy as np, keras, autoqnn
    >>> inputs = keras.Input((4, 8))
    >>> outputs = keras.layers.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)
    >>> q = autoqnn.quantize(keras.Model(inputs, outputs), weight_bits=4,
    ...                      config={"mha/query": {"weight_bits": 8}})
    >>> [(r.name, r.weight_bits) for r in q.autoqnn_report if r.status == "quantized"]
    [('mha/query', 8), ('mha/key', 4), ('mha/value', 4), ('mha/attention_output', 4)]
"""

from __future__ import annotations

import keras
from keras import tree

from autoqnn.config import LayerConfig, QuantizationConfig
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.composite import ATTENTION_TENSORS, QuantizedComposite, quantized_composite
from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.layers.slots import get_slot, sublayer_slots
from autoqnn.rewrite.registry import Unsupported, find_handler
from autoqnn.rewrite.replica import copy_in_order, finalize_states
from autoqnn.walk import sublayers


def is_composite(layer) -> bool:
    """A layer (not a model) without a quantization handler that tracks sublayers."""
    return (isinstance(layer, keras.layers.Layer) and not isinstance(layer, keras.Model)
            and find_handler(layer) is None and bool(sublayers(layer)))


def quantize_composite(layer, path: str, layer_config: LayerConfig,
                       config: QuantizationConfig, float_reasons: dict, rewrite_model=None):
    """The unbuilt twin of a composite layer (see the module docstring).

    Args:
        layer: the built float layer.
        path: its path in the model ("block" or "outer/block").
        layer_config: its resolved config.
        config: the model's `QuantizationConfig` (overrides reach sublayers).
        float_reasons: `{path: reason}` to record float weighted sublayers in.
        rewrite_model: `rewrite_model(model, prefix)` -> the quantized twin of a
            Functional or Sequential model held by the layer (QAG's own rewrite, with
            its weights copied); None leaves such models float.

    Raises:
        Unsupported: nothing in it can be quantized (the message says why).
    """
    arguments = example_arguments(layer)
    readers = input_readers(layer, arguments) if arguments is not None else None
    planner = _Planner(config, float_reasons, readers, rewrite_model)
    twin = planner.plan(layer, path, layer_config)
    if twin is None:
        inner = sorted({type(s).__name__ for s in layer._flatten_layers(include_self=False)})
        raise Unsupported(f"no quantization handler for {type(layer).__name__}, nor for its "
                          f"sublayers ({', '.join(inner)})")
    missing = unswapped(twin, arguments) if arguments is not None else []
    if missing:
        raise Unsupported(
            f"{type(layer).__name__} creates its sublayers {missing} where autoqnn cannot "
            "swap them for quantized ones (it swaps sublayers assigned to an attribute, or in "
            "a list, tuple or dict assigned at once, in __init__ or build)")
    return twin


class _Planner:
    def __init__(self, config, float_reasons, readers, rewrite_model):
        self.config = config
        self.float_reasons = float_reasons
        self.readers = readers  # (ids called on the composite's inputs, ids called) or None
        self.rewrite_model = rewrite_model

    def needs_input_quantizer(self, layer) -> bool:
        if self.readers is None:
            return True
        direct, called = self.readers
        return id(layer) in called and id(layer) not in direct

    def plan(self, layer, path, layer_config):
        """The twin of `layer`, or None when nothing in it is quantized."""
        replacements = {}
        # A sublayer's output feeds the layer's own code (an add, a softmax, a matmul):
        # it gets a range, except in attention (its core has quantizers of its own).
        outputs = not isinstance(layer, keras.layers.MultiHeadAttention)
        for key, sub in sublayer_slots(layer).items():
            sub_path = f"{path}/{sub.name}"
            replacement = self.plan_sublayer(sub, sub_path, layer_config, outputs)
            if replacement is not None:
                replacements[key] = replacement
        attention = {}
        if (isinstance(layer, keras.layers.MultiHeadAttention) and layer_config.quantize
                and self.attention_activations(layer, path, layer_config)):
            spec = layer_config.output_quantizer_spec()
            if spec is not None:
                attention = dict.fromkeys(ATTENTION_TENSORS, spec)
        if not replacements and not attention:
            return None
        return quantized_composite(layer, replacements, attention_quantizers=attention or None,
                                   live=True)

    def attention_activations(self, layer, path, layer_config) -> bool:
        """Whether the attention core of `layer` is quantized: as an override selecting
        it says (`attention_activations`), else whenever its activations are (so the
        default W8A8 model exports full-integer)."""
        for selector in self.config.matching_selectors(layer.name, type(layer), path):
            value = self.config.overrides[selector]
            if isinstance(value, dict) and "attention_activations" in value:
                return bool(value["attention_activations"])
        return layer_config.activation_bits is not None

    def plan_sublayer(self, sub, path, parent_config, outputs=True):
        cfg = self.config.for_layer(sub.name, type(sub), path, base=parent_config)
        weighted = bool(sub.weights)
        if not cfg.quantize:
            if weighted:
                self.float_reasons[path] = "excluded by config"
            return None
        if isinstance(sub, keras.Model):
            if self.rewrite_model is None or not weighted:
                return None
            # A model in a custom layer (a convolutional tokenizer): QAG rewrites it as
            # it rewrites nested models, quantizers on its internal tensors included.
            return self.rewrite_model(sub, path + "/")
        handler = find_handler(sub)
        if handler is not None:
            try:
                quantized = handler(sub, cfg)
            except Unsupported as err:
                self.float_reasons[path] = str(err)
                return None
            spec = cfg.output_quantizer_spec()
            if (spec is None or not isinstance(quantized, QuantizedWeightsMixin)
                    or isinstance(sub, keras.layers.Embedding)):
                return quantized
            extra = {}
            if self.needs_input_quantizer(sub):
                extra["input_quantizer"] = spec
            if outputs:
                extra["output_quantizer"] = spec
            if extra:
                quantized = type(quantized).from_config({**quantized.get_config(), **extra})
            return quantized
        if is_composite(sub):
            twin = self.plan(sub, path, cfg)
            if twin is not None:
                return twin
        if self.explicit_activation_bits(sub, path) and cfg.output_quantizer_spec():
            return quantized_composite(sub, {}, output_quantizer=cfg.output_quantizer_spec())
        if weighted and path not in self.float_reasons:
            self.float_reasons[path] = f"no quantization handler for {type(sub).__name__}"
        return None

    def explicit_activation_bits(self, layer, path) -> bool:
        """Whether an override selecting this very layer sets `activation_bits`."""
        for selector in self.config.matching_selectors(layer.name, type(layer), path):
            value = self.config.overrides[selector]
            if isinstance(value, dict) and value.get("activation_bits") is not None:
                return True
        return False


def example_arguments(layer):
    """`(args, kwargs)` of the layer's first call with zeros for its tensors (a `None`
    dimension becomes 2), or None when the layer was never called in a graph."""
    nodes = getattr(layer, "_inbound_nodes", None)
    if not nodes:
        return None

    def concrete(x):
        if not isinstance(x, keras.KerasTensor):
            return x
        shape = tuple(2 if d is None else d for d in x.shape)
        return keras.ops.zeros(shape, dtype=x.dtype)

    arguments = nodes[0].arguments
    return (tree.map_structure(concrete, arguments.args),
            tree.map_structure(concrete, arguments.kwargs))


def input_readers(layer, arguments=None):
    """`(ids of the sublayers called on the layer's own inputs, ids of those called)`
    from one eager call of `layer` on `arguments` (default: `example_arguments`); None
    when it cannot be called so (then every quantized sublayer quantizes its input)."""
    arguments = example_arguments(layer) if arguments is None else arguments
    if arguments is None:
        return None
    args, kwargs = arguments
    inputs, direct, called = set(), set(), set()
    patched = [layer] + list(layer._flatten_layers(include_self=False, recursive=True))

    def spy(target):
        original = target.call

        def call(*call_args, **call_kwargs):
            if target is layer:
                inputs.update(id(t) for t in tree.flatten((call_args, call_kwargs)))
            else:
                first = call_args[0] if call_args else call_kwargs.get("inputs")
                called.add(id(target))
                if id(first) in inputs:
                    direct.add(id(target))
            return original(*call_args, **call_kwargs)

        return call

    try:
        for target in patched:
            object.__setattr__(target, "call", spy(target))
        layer(*args, **kwargs)
    except Exception:  # noqa: BLE001 - fall back to input quantizers everywhere
        return None
    finally:
        for target in patched:
            if "call" in vars(target):
                object.__delattr__(target, "call")
    return direct, called


def unswapped(twin, arguments) -> list[str]:
    """Slot keys (nested ones as "outer.inner") that a fresh copy of `twin`, called on
    `arguments`, never assigned: sublayers its code creates where the twin cannot
    intercept them. Empty when all swaps happen (or the call fails: not checked)."""
    probe = type(twin).from_config(twin.get_config())
    try:
        probe(*arguments[0], **arguments[1])
    except Exception:  # noqa: BLE001 - the copy after the real build checks again
        return []

    def missing(layer, prefix):
        out = [prefix + key for key in layer.missing_replacements]
        for key, sub in layer.replaced_sublayers.items():
            if isinstance(sub, QuantizedComposite):
                out += missing(sub, f"{prefix}{key}.")
        return out

    return missing(probe, "")


def copy_into_twin(original, twin):
    """Copies a float composite's variables into its built twin and initialises the
    quantizers (see the module docstring).

    Raises:
        RuntimeError: the twin did not swap a planned sublayer (the layer creates it in
            a way the twin cannot intercept), or the variables do not pair up.
    """
    if twin.missing_replacements:
        raise RuntimeError(
            f"{type(original).__name__} {original.name!r}: the sublayers "
            f"{twin.missing_replacements} were never assigned while building its quantized "
            "twin, so they cannot be quantized; autoqnn swaps sublayers assigned to an "
            "attribute (or in a list/dict assigned at once). Keep the layer float with "
            f"config={{{original.name!r}: None}}")
    done_original, done_twin = set(), set()
    for key, dst in twin.replaced_sublayers.items():
        src = get_slot(original, key)
        if isinstance(dst, keras.Model):
            pass  # rewritten by QAG, which copied its weights
        elif isinstance(dst, QuantizedComposite):
            copy_into_twin(src, dst)
        else:
            targets = {v.name: v for v in dst.weights}
            for variable in src.weights:
                if variable.name not in targets:
                    raise RuntimeError(f"internal error: weight {variable.name!r} of "
                                       f"{src.name!r} has no twin in {type(dst).__name__}")
                targets[variable.name].assign(keras.ops.convert_to_numpy(variable))
            if isinstance(dst, QuantizedWeightsMixin):
                dst.initialize_quantizers()
        done_original.update(id(v) for v in src.weights)
        done_twin.update(id(v) for v in dst.weights)
    for aq in twin.autoqnn_quantizers:
        done_twin.update(id(v) for v in aq.weights)
    rest_src = [v for v in original.weights if id(v) not in done_original]
    rest_dst = [v for v in twin.weights if id(v) not in done_twin]
    copy_in_order(rest_src, rest_dst, original)
    finalize_states(twin)


def sync_quantizer_flags(layer):
    """Reads each activation quantizer's calibrated flag from its variables (after a copy)."""
    for sub in layer._flatten_layers(include_self=True, recursive=True):
        if isinstance(sub, ActivationQuantizer):
            _ = sub.is_calibrated
