"""`finalize` and `set_bits`: the two operations a search performs on a quantized model.

* `finalize(qmodel)` returns a plain quantized model: every trainable
  bitwidth rounded to its nearest integer (within its range) and every scheme
  mixture collapsed to its argmax candidate, with that candidate's state.
  Its outputs equal the quantized model evaluated at those rounded bits and
  argmax schemes; the report and export see fixed bits and one scheme.
* `set_bits(qmodel, {path: bits})` changes bits in place: no re-clone, the
  same layer objects and variables (RL episodes, sensitivity sweeps).

Example:
    >>> import keras, numpy as np, autoqnn
    >>> inputs = keras.Input((6,))
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
    >>> qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=None,
    ...                           config={"fc": {"weight_quantizer": {"trainable_bits": True}}})
    >>> autoqnn.set_bits(qmodel, {"fc": 2.6})
    >>> final = autoqnn.finalize(qmodel)
    >>> final.get_layer("fc").weight_quantizers["kernel"].bits
    3
"""

from __future__ import annotations

from autoqnn.layers.activation import ActivationQuantizer, reset_compiled_functions
from autoqnn.layers.folded import FoldedBatchNorm
from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.report import float_reasons, quantization_report
from autoqnn.rewrite import fold
from autoqnn.rewrite.clone import Change, clone_quantized
from autoqnn.rewrite.graph import ModelGraph
from autoqnn.walk import find_layer, iter_layers, iter_models


def _is_quantized_model(model):
    return any(isinstance(layer, (QuantizedWeightsMixin, ActivationQuantizer))
               for _, layer in iter_layers(model))


def finalize(model, fold_batchnorm: bool = True):
    """Returns the fixed-bits, one-scheme-per-tensor twin of a quantized model.

    Args:
        model: a model from `autoqnn.quantize` (trainable bits / mixtures or not).
        fold_batchnorm: also fold each BatchNormalization that directly follows
            a quantized Conv/Dense (QAT with `fold_batchnorm=False` trains them
            unfolded) into that layer, as TFLite runs it: the layer's float
            weights absorb the BN scale and are quantized again; per-channel
            learned state (LSQ steps, learned ranges) is scaled with them, so
            per-channel models keep their function; per-tensor learned state is
            initialised again from the folded weights.

    Returns:
        A new `keras.Model` (the input is not changed) with `autoqnn_report`.

    Raises:
        TypeError: not a Keras model.
        ValueError: the model has no autoqnn quantizer.
    """
    import keras

    if not isinstance(model, keras.Model):
        raise TypeError(f"model must be a keras.Model, got {type(model).__name__}")
    if not _is_quantized_model(model):
        raise ValueError(f"model {model.name!r} has no autoqnn quantizer; quantize it first "
                         "(autoqnn.quantize)")
    folds = _plan_folds(model) if fold_batchnorm else {}

    def change(path, layer):
        del path
        if isinstance(layer, QuantizedWeightsMixin):
            bn = folds.get(id(layer))
            if bn is None and all(q.is_final for q in layer.weight_quantizers.values()):
                return None
            config = layer.get_config()
            renames = {}
            for attr, quantizer in layer.weight_quantizers.items():
                final, moved = quantizer.finalized()
                config["weight_quantizers"][attr] = final
                renames.update(moved)
            state = {id(v) for q in layer.weight_quantizers.values() for v in q.variables}
            for variable in layer.weights:  # the layer's own weights keep their names
                if id(variable) not in state:
                    renames.setdefault(variable.name, variable.name)
            values, after = {}, None
            if bn is not None:
                config["use_bias"] = True
                weight, bias = fold.fold_batchnorm_weights(layer, bn)
                values = {fold.folded_weight_name(layer): weight, "bias": bias}
                factor = fold.batchnorm_factor(bn)
                folded_attr = fold.folded_weight_name(layer)

                def after(clone, factor=factor, attr=folded_attr):
                    _rescale_state(clone, attr, factor)
            return Change(type(layer).from_config(config), renames, values, after)
        if id(layer) in folds:  # the BatchNormalization itself
            owner = folds[id(layer)]
            return Change(FoldedBatchNorm(folded_into=owner.name, name=layer.name), {})
        if isinstance(layer, ActivationQuantizer) and not layer.quantizer.is_final:
            config = layer.get_config()
            final, renames = layer.quantizer.finalized()
            config.pop("quantizer", None)
            config.pop("scheme", None)
            config["quantizer"] = final
            for name in ("range_min", "range_max", "range_observed"):
                renames.setdefault(name, name)
            return Change(ActivationQuantizer.from_config(config), renames)
        return None

    per_tensor = [layer.name for _, layer in iter_layers(model)
                  if id(layer) in folds and isinstance(layer, QuantizedWeightsMixin)
                  and any(q.scheme.granularity == "per_tensor"
                          for q in layer.weight_quantizers.values())]
    if per_tensor:
        import warnings

        warnings.warn(f"folding BatchNorm into per-tensor quantized weights of {per_tensor} "
                      "changes their quantized values (one scale cannot follow per-channel BN "
                      "scales), so the folded model differs from the trained one; train "
                      "per-tensor models with fold_batchnorm=True, or use per-channel weights",
                      stacklevel=2)
    final = clone_quantized(model, change)
    final.autoqnn_report = quantization_report(final, float_reasons(model))
    return final


def _rescale_state(layer, attr, factor):
    """Carries trained per-channel state through a BN fold: the weight's channel c was
    scaled by `factor[c]`, so a learned LSQ step scales by `|factor[c]|` and a learned
    range by `factor[c]` (ends swapped where it is negative); per-tensor learned state
    cannot follow a per-channel scale and is initialised again from the folded weight."""
    import numpy as np

    quantizer = layer.weight_quantizers[attr]
    reinitialise = False
    for state in quantizer.states:
        if "step" in state:
            step = np.asarray(state["step"])
            if step.size == factor.size:
                state["step"].assign(step * np.abs(factor).reshape(step.shape))
            else:
                reinitialise = True
        if "min" in state and "max" in state and getattr(state["min"], "trainable", False):
            lo, hi = np.asarray(state["min"]), np.asarray(state["max"])
            if lo.size == factor.size:
                f = factor.reshape(lo.shape)
                state["min"].assign(np.minimum(lo * f, hi * f))
                state["max"].assign(np.maximum(lo * f, hi * f))
            else:
                reinitialise = True
    if reinitialise:
        layer.initialize_quantizers()


def _plan_folds(model) -> dict:
    """`fold.plan_folds` over `model` and every nested model, for quantized layers."""
    folds = {}
    for level in iter_models(model):
        folds.update(fold.plan_folds(ModelGraph(level),
                                     lambda layer: isinstance(layer, QuantizedWeightsMixin)))
    return folds


def set_bits(model, bits: dict, *, update_report: bool = True):
    """Sets bits in place: `{layer path or name: bits}`.

    A weighted layer's value sets all its quantized weights (or give
    `{"kernel": 3, ...}` per weight); an `ActivationQuantizer`'s value sets
    its activation bits. Fixed bits change the quantizer's scheme (validated
    against its bit range); trainable bits are assigned. The layers and
    variables stay the same; the model's compiled functions are dropped so
    the next `predict`/`fit` retraces.

    Args:
        model: a quantized model.
        bits: `{path: int}` (or `{path: {weight name: int}}`; trainable bits
            take floats).
        update_report: rebuild `model.autoqnn_report` (a sweep of many
            probes passes False and rebuilds it once at the end).

    Raises:
        KeyError: an unknown layer or weight name.
        ValueError: bits outside a quantizer's range, or a layer without quantizers.
    """
    if not isinstance(bits, dict):
        raise TypeError(f"bits must be a dict {{layer path: bits}}, got {bits!r}")
    for key, value in bits.items():
        path, layer = find_layer(model, key, "bits key")
        if isinstance(layer, ActivationQuantizer):
            targets = {"activation": layer.quantizer}
        elif isinstance(layer, QuantizedWeightsMixin) and layer.weight_quantizers:
            targets = dict(layer.weight_quantizers)
        else:
            raise ValueError(f"bits[{key!r}]: layer {path!r} ({type(layer).__name__}) has no "
                             "autoqnn quantizer")
        per_weight = value if isinstance(value, dict) else dict.fromkeys(targets, value)
        for attr, b in per_weight.items():
            if attr not in targets:
                raise KeyError(f"bits[{key!r}]: {path!r} quantizes {sorted(targets)}, not "
                               f"{attr!r}")
            try:
                targets[attr].set_bits(b)
            except (TypeError, ValueError) as err:
                raise type(err)(f"bits[{key!r}]: {err}") from None
    for level in iter_models(model):
        reset_compiled_functions(level)
    if update_report:
        model.autoqnn_report = quantization_report(model, float_reasons(model))
