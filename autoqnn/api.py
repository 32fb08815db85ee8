"""The entry point: `autoqnn.quantize`."""

from __future__ import annotations

import dataclasses
import inspect
import warnings

import keras
import numpy as np

from autoqnn.config import QuantizationConfig
from autoqnn.ptq.apply import apply_ptq, quantization_config
from autoqnn.ptq.calibrate import calibrate
from autoqnn.ptq.config import PTQConfig
from autoqnn.report import quantization_report
from autoqnn.rewrite.qag import check_model, rewrite


def _check_finite_weights(model):
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(
                f"model weight {variable.path!r} contains NaN or Inf values; fix the model "
                "before quantizing"
            )


def _defaults():
    """The defaults of `QuantizationConfig` (the one table), as `quantize` keywords."""
    fields = {f.name: f for f in dataclasses.fields(QuantizationConfig)}
    out = {}
    for name, f in fields.items():
        out[name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else \
            f.default
    return out


_QUANTIZE_DEFAULTS = _defaults()
_NOT_PTQ = ("activation_scheme", "input_bits", "fold_batchnorm")
"""quantize() settings a PTQConfig does not decide (they combine with ptq=)."""


def quantize(
    model,
    scheme="uniform",
    weight_bits: int | None = None,
    activation_bits: int | None = 8,
    granularity: str = "per_channel",
    calibration_data=None,
    config: dict | QuantizationConfig | None = None,
    *,
    activation_scheme: str = "uniform",
    input_bits: int | None = None,
    fold_batchnorm: bool = True,
    scheme_options: dict | None = None,
    activation_options: dict | None = None,
    calibration_method: str = "max",
    calibration_samples: int | None = None,
    verbose: int = 0,
    ptq: PTQConfig | dict | None = None,
    weight_bits_budget: float | None = None,
    size_budget_bytes: float | None = None,
    memory_budget_bytes: float | None = None,
    train_data=None,
    val_data=None,
):
    """Returns the quantized twin of a Keras model (the input model is not changed).

    The twin has the same architecture with each supported weighted layer
    (Dense, Conv1D/2D/3D, DepthwiseConv2D, SeparableConv2D, Conv2DTranspose,
    EinsumDense, Embedding) replaced by its quantized version and activation
    quantizers on the inputs and on the outputs of range-changing layers. It
    trains with `fit` (quantization-aware training with the straight-through
    estimator), evaluates, predicts, and saves/loads as `.keras` with plain
    `keras.models.load_model`.

    Args:
        model: a built Functional or Sequential Keras model (nested models ok).
        scheme: weight scheme name (`autoqnn.list_schemes("weight")`).
        weight_bits: bits of the weights (the scheme's valid range applies);
            None: the scheme's default (8 for uniform, 1 for binary, 2 for
            ternary; `autoqnn schemes` lists them).
        activation_bits: bits of the activations; None keeps them float.
        granularity: "per_channel" or "per_tensor" weight quantization.
        calibration_data: inputs to calibrate activation ranges on (array,
            `(x, y)`, list of arrays or `tf.data.Dataset`). Without it,
            activation quantizers pass float values until calibrated
            (`autoqnn.calibrate`) or trained (`fit`); the report says so.
        config: per-layer overrides `{selector: {field: value} or None}`;
            a selector is an exact layer name, a regex on names, or a layer
            class / class name; None keeps the layer float. A name may
            be a path in nested models ("inner/conv"). Fields: quantize,
            scheme, weight_bits, activation_bits, activation_scheme,
            granularity, scheme_options, activation_options,
            weight_quantizer and activation_quantizer (`Quantizer` options:
            trainable_bits, bits_range, candidates, sqnr_weight; range_axis
            for activations).
        activation_scheme: activation scheme ("uniform", "pact", ...).
        input_bits: bits of the model-input quantizers (default: activation_bits).
        fold_batchnorm: fold BatchNormalization into the preceding layer.
        scheme_options: extra arguments of the weight scheme (e.g. symmetric).
        activation_options: extra arguments of the activation scheme.
        calibration_method: observer used with `calibration_data`
            (`autoqnn.list_calibration_methods()`).
        calibration_samples: calibrate on at most this many samples.
        verbose: 1 shows progress.
        config: also a whole `QuantizationConfig` (its `overrides` are the
            per-layer settings); the keyword settings above must then keep
            their defaults.
        ptq: a `PTQConfig` (or a dict of its fields): post-training
            quantization on the uniform scheme. It sets weight_bits,
            activation_bits, granularity, the scheme options, the
            calibration method and samples, and the overrides of the layer
            kinds it keeps at higher precision (`config` entries win over
            them); then clips the weights (MSE), calibrates on
            `calibration_data` and corrects the biases as it says. Passing
            one of those arguments with a different value raises.

        weight_bits_budget, size_budget_bytes, memory_budget_bytes: a budget
            makes this one call `autoqnn.search(model, calibration_data=...,
            strategy="sensitivity", ...)` (per-layer bits, retrain-free) and
            returns its model; `model.autoqnn_search` holds the `SearchResult`.
        train_data, val_data: labelled `(x, y)` data: with a weight-bits or size
            budget the search is the trained `strategy="dnas+qpl"` (a scheme and
            bits per layer, then a distilled fine-tune; `search`'s defaults)
            instead of the retrain-free one.

    Returns:
        A new `keras.Model`; `model.autoqnn_report` holds the per-layer report
        (and `model.autoqnn_ptq` what the PTQ steps chose, when `ptq` is given).

    Raises:
        TypeError: `model` is not a Keras model, or an argument has a wrong type.
        ValueError: invalid bits, scheme, granularity, data or weights.

    Example:
        >>> import keras, numpy as np, autoqnn
        >>> inputs = keras.Input((8,))
        >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
        >>> x = np.random.rand(32, 8).astype("float32")
        >>> qmodel = autoqnn.quantize(model, scheme="pot", weight_bits=4, calibration_data=x)
        >>> qmodel.predict(x, verbose=0).shape
        (32, 4)
    """
    check_model(model)
    if (train_data is not None or val_data is not None) and weight_bits_budget is None and \
            size_budget_bytes is None:
        raise ValueError("train_data= / val_data= are for the trained search: give "
                         "weight_bits_budget= or size_budget_bytes= with them (quantize's "
                         "own calibration takes calibration_data=)")
    budgets = {"weight_bits_budget": weight_bits_budget, "size_budget_bytes": size_budget_bytes,
               "memory_budget_bytes": memory_budget_bytes}
    if any(v is not None for v in budgets.values()):
        from autoqnn.search.search import search

        if weight_bits is not None:
            raise ValueError(f"weight_bits={weight_bits!r} conflicts with a budget: the search "
                             "chooses the bits per layer")
        if train_data is not None:
            result = search(model, train_data, val_data, strategy="dnas+qpl",
                            calibration_data=calibration_data, activation_bits=activation_bits,
                            config=config if isinstance(config, dict) else None,
                            verbose=verbose, **budgets)
            return result.model
        return search(model, calibration_data=calibration_data, activation_bits=activation_bits,
                      scheme=scheme, granularity=granularity, ptq=ptq,
                      config=config if isinstance(config, dict) else None,
                      num_samples=calibration_samples or 512, verbose=verbose,
                      **budgets).model
    given = {"scheme": scheme, "weight_bits": weight_bits, "activation_bits": activation_bits,
             "granularity": granularity, "activation_scheme": activation_scheme,
             "input_bits": input_bits, "fold_batchnorm": fold_batchnorm,
             "scheme_options": dict(scheme_options or {}),
             "activation_options": dict(activation_options or {})}
    changed = {k: v for k, v in given.items() if v != _QUANTIZE_DEFAULTS[k]}
    calibration = {"calibration_method": calibration_method,
                   "calibration_samples": calibration_samples}
    if isinstance(config, QuantizationConfig):
        if changed:
            raise ValueError(f"{sorted(changed)} conflict with config={config!r}; set them in "
                             "the QuantizationConfig")
        qconfig = config
    elif ptq is not None:
        ptq = PTQConfig.from_dict(ptq)
        qconfig = quantization_config(model, ptq, overrides=config)
        from_ptq = {"calibration_method": ptq.calibration,
                    "calibration_samples": ptq.calibration_samples}
        conflicts = {name: value for name, value in changed.items()
                     if name not in _NOT_PTQ and value != getattr(qconfig, name)}
        conflicts.update({name: value for name, value in calibration.items()
                          if value != _CALIBRATION_DEFAULTS[name] and value != from_ptq[name]})
        for name, value in conflicts.items():
            raise ValueError(
                f"{name}={value!r} conflicts with ptq={ptq!r}; set it in the PTQConfig "
                "(ptq= decides the scheme, bits, granularity and calibration)"
            )
        qconfig = dataclasses.replace(qconfig, **{k: v for k, v in changed.items()
                                                  if k in _NOT_PTQ})
    else:
        qconfig = QuantizationConfig(**given, overrides={} if config is None else config)
    _check_finite_weights(model)
    qmodel, log = rewrite(model, qconfig)
    if ptq is not None:
        qmodel.autoqnn_ptq = apply_ptq(qmodel, ptq, calibration_data, verbose=verbose)
    elif calibration_data is not None:
        calibrate(qmodel, calibration_data, method=calibration_method,
                  num_samples=calibration_samples, verbose=verbose)
    report = quantization_report(qmodel, log.float_reasons)
    qmodel.autoqnn_report = report
    if report.float_layers and verbose:
        names = ", ".join(f"{r.name} ({r.reason})" for r in report.float_layers)
        print(f"autoqnn: layers left float: {names}")
    if report.uncalibrated and calibration_data is None and qconfig.activation_bits is not None:
        warnings.warn(
            f"{len(report.uncalibrated)} activation quantizer(s) are not calibrated and pass float "
            "values until you call autoqnn.calibrate(model, data) or train the model; pass "
            "calibration_data= to quantize to calibrate now",
            stacklevel=2,
        )
    return qmodel


_CALIBRATION_DEFAULTS = {
    name: inspect.signature(quantize).parameters[name].default
    for name in ("calibration_method", "calibration_samples")
}
