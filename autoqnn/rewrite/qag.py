"""QAG: turns any Functional or Sequential Keras model into its quantized twin.

The rewrite clones the model with `keras.models.clone_model`: a clone function
swaps each layer that has a registered handler for its quantized twin (float
clones for the rest), and a call function inserts `ActivationQuantizer`s on
the model inputs and on the outputs of range-changing layers (compute layers
with their fused BatchNorm/ReLU, Add, Concatenate, average pooling, unknown
layers), so the graph is integer-friendly. Sequential models are rebuilt as
Functional ones; nested models are rewritten recursively; composite layers
(no handler, weighted sublayers: MultiHeadAttention, keras-hub blocks, user
layers) become quantized twins (`autoqnn.rewrite.composite`), and models they
hold are rewritten as nested models are. Layers left float are copied with their
state, never rebuilt through a config that cannot rebuild them
(`autoqnn.rewrite.replica`: adapted Normalization, layers without **kwargs).
A weighted layer whose own activation TFLite cannot fuse (softmax, sigmoid,
GELU, swish) is split: a quantizer on its pre-activation output, then the
activation as a layer. Weights are copied (BatchNorm folded when asked); the
input model is never modified.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import tree

from autoqnn.config import LayerConfig, QuantizationConfig
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.folded import FoldedBatchNorm
from autoqnn.layers.normalization import IntegerLayerNormalization, can_integerize
from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.rewrite import affine, composite, fold
from autoqnn.rewrite.graph import ModelGraph
from autoqnn.rewrite.registry import (
    Unsupported,
    find_handler,
    fuses_into,
    has_unfusable_activation,
    layer_role,
    quantize_builtin_layer,
)
from autoqnn.rewrite.replica import copy_in_order, copy_state, replicate
from autoqnn.walk import iter_layers, iter_sublayers, own_weights

INTEGER_NORM_NOTE = (
    "gamma and beta stay float here and export as an int8 per-channel affine (a 1x1 "
    "depthwise convolution); its mean, variance, rsqrt and normalized tensors are "
    "quantized (IntegerLayerNormalization), so TFLite runs it in int8")


@dataclasses.dataclass
class RewriteLog:
    """What the rewrite decided: layer name -> reason for each float weighted layer.

    Folded BatchNorms need no entry: they become `FoldedBatchNorm` layers that
    name the layer they were folded into.
    """

    float_reasons: dict = dataclasses.field(default_factory=dict)


def check_model(model, argument="model"):
    """Raises a clear error unless `model` is a built, clonable Keras model."""
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"{argument} must be a keras.Model, got {type(model).__name__}: {model!r:.80}"
        )
    if not isinstance(model, keras.Sequential) and not _is_functional(model):
        raise TypeError(
            f"{argument} {model.name!r} is a subclassed model ({type(model).__name__}), which "
            "cannot be cloned layer by layer; rebuild it as a Functional model "
            "(keras.Model(inputs, outputs)) or quantize its inner layers with autoqnn.layers"
        )
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"{argument} {model.name!r} is not built: call it on data or build it with an "
            "Input before quantizing"
        )
    for _, layer in iter_layers(model):
        if isinstance(layer, (QuantizedWeightsMixin, ActivationQuantizer)):
            raise ValueError(
                f"{argument} {model.name!r} is already quantized by autoqnn "
                f"(layer {layer.name!r}); "
                "quantize the float model instead"
            )


def rewrite(model, config: QuantizationConfig):
    """Returns `(quantized_model, RewriteLog)`; see the module docstring."""
    check_model(model)
    log = RewriteLog()
    return _Rewriter(config, log).rewrite(model), log


class _Rewriter:
    def __init__(self, config: QuantizationConfig, log: RewriteLog, prefix: str = ""):
        self.config = config
        self.log = log
        self.prefix = prefix
        self._layer_configs = {}

    def layer_config(self, layer) -> LayerConfig:
        """The layer's resolved settings, resolved once per layer (its validated weight
        quantizer is the one the handler hands to the quantized layer)."""
        key = (id(layer), self.prefix)
        if key not in self._layer_configs:
            self._layer_configs[key] = self.config.for_layer(layer.name, type(layer),
                                                             self.prefix + layer.name)
        return self._layer_configs[key]

    def rewrite(self, model):
        graph = ModelGraph(model)
        folds = self._plan_folds(graph)
        output_schemes = self._plan_output_quantizers(graph)
        state = _CloneState(self, folds, output_schemes, graph)
        if isinstance(model, keras.Sequential):
            new_model = state.clone_sequential(model)
        else:
            inputs = tree.map_structure(
                lambda t: keras.Input(
                    batch_shape=t.shape, dtype=t.dtype, name=t._keras_history.operation.name
                ),
                model.input,
            )
            new_model = keras.models.clone_model(
                model,
                input_tensors=inputs,
                clone_function=state.clone_layer,
                call_function=state.call_layer,
            )
        state.copy_weights()
        return new_model

    def _plan_folds(self, graph):
        """`{id(bn): layer, id(layer): bn}` for each BN folded into its producer."""
        if not self.config.fold_batchnorm:
            return {}
        return fold.plan_folds(graph, lambda layer: self.layer_config(layer).quantize)

    def _owner(self, graph, layer):
        """The compute layer heading the fused chain that ends at `layer`."""
        while layer_role(layer) == "fusable":
            producers = graph.producers(layer)
            if (len(producers) != 1 or graph.consumers(producers[0]) != [layer]
                    or not fuses_into(layer, producers[0])):
                break
            layer = producers[0]
        return layer

    def _plan_output_quantizers(self, graph):
        """Layer id -> activation scheme for its output quantizer."""
        plan = {}
        for layer in graph.layers:
            role = layer_role(layer)
            if role in ("passthrough", "model"):
                continue
            owner_config = self.layer_config(self._owner(graph, layer))
            if not owner_config.quantize or owner_config.activation_bits is None:
                continue
            consumers = graph.consumers(layer)
            fused = consumers and all(
                fuses_into(c, layer) and graph.producers(c) == [layer] for c in consumers
            )
            if fused and not graph.is_output(layer):
                continue
            plan[id(layer)] = owner_config.output_quantizer_spec()
        return plan


class _CloneState:
    """Clone/call functions for one model level, and the weight copy after."""

    def __init__(self, rewriter, folds, output_schemes, graph):
        self.rewriter = rewriter
        self.folds = folds
        self.output_schemes = output_schemes
        self.pairs = []  # (original, clone, kind)
        self.origin = {}  # id(clone) -> original
        self.input_quantizers = {}
        self.split_activations = {}  # id(clone) -> the activation taken out of it
        self.affine_clones = set()  # ids of BatchNorms rebuilt as depthwise convolutions
        self.used_names = {layer.name for layer in graph.layers}

    def unique_name(self, base):
        name, i = base, 1
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def clone_layer(self, layer):
        config = self.rewriter.config
        if isinstance(layer, keras.Model):
            prefix = self.rewriter.prefix + layer.name + "/"
            clone = _Rewriter(config, self.rewriter.log, prefix).rewrite(layer)
            kind = "model"
        elif isinstance(layer, keras.layers.BatchNormalization) and id(layer) in self.folds:
            clone = FoldedBatchNorm(folded_into=self.folds[id(layer)].name, name=layer.name)
            kind = "folded"
        else:
            clone, kind = self._quantize_or_copy(layer)
        self.pairs.append((layer, clone, kind))
        self.origin[id(clone)] = layer
        return clone

    def _quantize_or_copy(self, layer):
        if not isinstance(layer, keras.layers.Layer):
            # A bare keras.ops operation in the graph (e.g. `x + 3.0`): stateless.
            try:
                return type(layer).from_config(layer.get_config()), "op"
            except Exception:  # ops without a usable config are stateless: share them
                return layer, "op"
        layer_config = self.rewriter.layer_config(layer)
        handler = find_handler(layer)
        reason = None
        integer = layer_config.quantize and layer_config.activation_bits is not None
        if integer and can_integerize(layer):
            clone = IntegerLayerNormalization.from_config(
                {**layer.get_config(), "internal_quantizer": layer_config.output_quantizer_spec()})
            self.rewriter.log.float_reasons[self.rewriter.prefix + layer.name] = INTEGER_NORM_NOTE
            return clone, "integer_norm"
        if handler is None and isinstance(layer, keras.layers.BatchNormalization):
            unfit = affine.as_depthwise_reason(layer)
            if self.rewriter.config.fold_batchnorm and layer_config.quantize and unfit is None:
                clone = quantize_builtin_layer(affine.depthwise_for(layer), layer_config)
                self.affine_clones.add(id(clone))
                return clone, "affine"
            reason = (
                "BatchNormalization not folded (fold_batchnorm=False, or it does not "
                "directly follow a Conv/Dense"
                + (f", and it stays a BatchNormalization: {unfit}" if unfit else "")
                + "); runs as a float per-channel affine op between int8 ranges (TFLite: a "
                "1x1 depthwise convolution)"
            )
        elif handler is None and composite.is_composite(layer) and layer_config.quantize:
            try:
                path = self.rewriter.prefix + layer.name
                twin = composite.quantize_composite(layer, path, layer_config,
                                                    self.rewriter.config,
                                                    self.rewriter.log.float_reasons,
                                                    rewrite_model=self._rewrite_nested)
                return twin, "composite"
            except Unsupported as err:
                reason = str(err)
        elif handler is None and not layer_config.quantize and composite.is_composite(layer):
            reason = "excluded by config"
        elif handler is None:
            reason = f"no quantization handler for {type(layer).__name__}"
        elif not layer_config.quantize:
            reason = "excluded by config"
        else:
            try:
                clone = handler(layer, layer_config)
                if id(layer) in self.folds:
                    clone.use_bias = True
                if layer_config.activation_bits is not None and has_unfusable_activation(clone):
                    # Softmax, GELU, sigmoid, swish...: TFLite runs them as ops of their
                    # own, so the tensor before them needs a range; split them off.
                    self.split_activations[id(clone)] = clone.activation
                    clone.activation = keras.activations.linear
                return clone, "quantized"
            except Unsupported as err:
                reason = str(err)
        path = self.rewriter.prefix + layer.name
        reasons = self.rewriter.log.float_reasons
        if layer.weights:
            reasons[path] = reason
            if composite.is_composite(layer) and not reason.startswith("no quantization handler"):
                for sub_path, sub in iter_sublayers(layer, path + "/"):
                    if own_weights(sub):
                        reasons.setdefault(sub_path, reason)
        clone, note = replicate(layer)
        if note:
            reasons[path] = f"{reasons[path]}; {note}" if path in reasons else note
        return clone, "float"

    def _rewrite_nested(self, model, prefix):
        """The quantized twin of a model held by a custom layer, weights copied."""
        return _Rewriter(self.rewriter.config, self.rewriter.log,
                         self.rewriter.prefix + prefix).rewrite(model)

    def call_layer(self, layer, *args, **kwargs):
        args = tree.map_structure(self._quantize_if_model_input, args)
        if id(layer) in self.affine_clones:  # BatchNorm's call arguments (mask) go
            kwargs = {k: v for k, v in kwargs.items() if k == "training"}
        outputs = layer(*args, **kwargs)
        original = self.origin.get(id(layer))
        if id(layer) in self.split_activations:
            outputs = self._split_activation(layer, original, outputs)
        scheme = self.output_schemes.get(id(original)) if original is not None else None
        if scheme is None:
            return outputs

        def quantize_output(tensor):
            if not _is_float_tensor(tensor):
                return tensor
            name = self.unique_name(f"{original.name}_aq")
            return ActivationQuantizer(name=name, **scheme)(tensor)

        return tree.map_structure(quantize_output, outputs)

    def _split_activation(self, layer, original, outputs):
        """The split-off activation of `layer` on its quantized pre-activation output."""
        activation = self.split_activations[id(layer)]
        spec = self.rewriter.layer_config(original).output_quantizer_spec()
        pre = ActivationQuantizer(name=self.unique_name(f"{original.name}_preact_aq"),
                                  **spec)(outputs)
        suffix = getattr(activation, "__name__", "activation")
        return keras.layers.Activation(
            activation, name=self.unique_name(f"{original.name}_{suffix}"))(pre)

    def _quantize_if_model_input(self, tensor):
        if not isinstance(tensor, keras.KerasTensor) or not _is_float_tensor(tensor):
            return tensor
        op = tensor._keras_history.operation
        if not isinstance(op, keras.layers.InputLayer):
            return tensor
        if id(tensor) not in self.input_quantizers:
            cfg = self.rewriter.config
            bits = cfg.effective_input_bits
            if bits is None:
                self.input_quantizers[id(tensor)] = tensor
            else:
                spec = cfg.default_layer_config().output_quantizer_spec(bits)
                name = self.unique_name(f"{op.name}_aq")
                self.input_quantizers[id(tensor)] = ActivationQuantizer(name=name, **spec)(tensor)
        return self.input_quantizers[id(tensor)]

    def clone_sequential(self, model):
        spec = model.inputs[0]
        x = keras.Input(
            batch_shape=spec.shape,
            dtype=spec.dtype,
            name=model.layers[0].name + "_input" if model.layers else "input",
        )
        inputs = x
        for layer in model.layers:
            x = self.call_layer(self.clone_layer(layer), x)
        return keras.Model(inputs, x, name=model.name)

    def copy_weights(self):
        for original, clone, kind in self.pairs:
            if kind in ("model", "folded", "op"):
                continue
            if kind == "float":
                copy_state(original, clone)
                continue
            if kind == "composite":
                composite.copy_into_twin(original, clone)
                continue
            if kind == "integer_norm":
                copy_in_order(original.weights, own_weights(clone), original)
                continue
            if kind == "affine":
                clone.kernel.assign(affine.batchnorm_affine_weights(original)[0])
                clone.bias.assign(affine.batchnorm_affine_weights(original)[1])
                clone.initialize_quantizers()
                continue
            values = {v.name: keras.ops.convert_to_numpy(v) for v in original.weights}
            if id(original) in self.folds:
                weight, bias = fold.fold_batchnorm_weights(original, self.folds[id(original)])
                values[fold.folded_weight_name(original)] = weight
                values["bias"] = bias
            targets = {v.name: v for v in clone.weights}
            for name, value in values.items():
                if name not in targets:
                    raise RuntimeError(
                        f"internal error: weight {name!r} of {original.name!r} has no twin in "
                        f"{type(clone).__name__} ({sorted(targets)})"
                    )
                targets[name].assign(value)
            clone.initialize_quantizers()


def _is_float_tensor(tensor):
    return "float" in str(getattr(tensor, "dtype", ""))


def _is_functional(model):
    return hasattr(model, "_nodes_by_depth") and type(model).__name__ != "Sequential"

