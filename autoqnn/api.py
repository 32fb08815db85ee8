"""The public entry point `autoqnn.quantize`: a thin facade. Keywords become a validated
`QuantizationConfig` for the core call (`autoqnn.core.quantize_config`); a budget routes the
same settings to the mixed-precision search (`autoqnn.mixed.dispatch.search`). Every keyword either
acts on the route taken or raises an error naming it."""

from __future__ import annotations

import dataclasses

from autoqnn import defaults
from autoqnn.config import QuantizationConfig, field_defaults
from autoqnn.core import quantize_config
from autoqnn.mixed.dispatch import search
from autoqnn.ptq.apply import quantization_config
from autoqnn.ptq.config import PTQConfig
from autoqnn.rewrite.qag import check_model

_DEFAULTS = field_defaults(QuantizationConfig)
"""The defaults of `QuantizationConfig` (from `autoqnn.defaults`), as `quantize` keywords."""
_NOT_PTQ = ("activation_scheme", "input_bits", "fold_batchnorm")
"""quantize() settings a PTQConfig does not decide (they combine with ptq=)."""
_CALIBRATION = {"calibration_method": defaults.CALIBRATION_METHOD,
                "calibration_samples": defaults.CALIBRATION_SAMPLES}


def quantize(
    model,
    scheme: str = defaults.SCHEME,
    weight_bits: int | None = None,
    activation_bits: int | None = defaults.ACTIVATION_BITS,
    granularity: str = defaults.GRANULARITY,
    calibration_data=None,
    config: dict | QuantizationConfig | None = None,
    *,
    activation_scheme: str = defaults.ACTIVATION_SCHEME,
    input_bits: int | None = None,
    fold_batchnorm: bool = defaults.FOLD_BATCHNORM,
    scheme_options: dict | None = None,
    activation_options: dict | None = None,
    calibration_method: str = defaults.CALIBRATION_METHOD,
    calibration_samples: int | None = defaults.CALIBRATION_SAMPLES,
    verbose: int = defaults.VERBOSE,
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
        scheme: weight scheme name (`autoqnn.list_schemes("weight")`); the
            activations take `activation_scheme` (e.g. `scheme="lsq"` gives LSQ
            weights and uniform activations; the report lists both).
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
        verbose: 1 (default) shows calibration progress and names the layers left
            float; 0 is silent.
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
            strategy="sensitivity", ...)` (per-layer bits, retrain-free) with the
            settings above (scheme, activation scheme and bits, input bits,
            granularity, options, BatchNorm folding, calibration method, `ptq`,
            `config`; `calibration_samples` is the number of images the search
            measures and calibrates on, default 512) and returns its model;
            `model.autoqnn_search` holds the `SearchResult`.
        train_data, val_data: labelled `(x, y)` data: with a weight-bits or size
            budget the search is the trained `strategy="dnas+qpl"` (a scheme and
            bits per layer, then a distilled fine-tune; `search`'s defaults)
            instead of the retrain-free one. It takes `activation_bits` and
            `config`; the other settings raise (it chooses the schemes and learns
            the activation ranges itself).

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
        >>> qmodel = autoqnn.quantize(model, scheme="pot", weight_bits=4, calibration_data=x,
        ...                           verbose=0)
        >>> qmodel.predict(x, verbose=0).shape
        (32, 4)
    """
    check_model(model)
    given = {"scheme": scheme, "weight_bits": weight_bits, "activation_bits": activation_bits,
             "granularity": granularity, "activation_scheme": activation_scheme,
             "input_bits": input_bits, "fold_batchnorm": fold_batchnorm,
             "scheme_options": dict(scheme_options or {}),
             "activation_options": dict(activation_options or {})}
    changed = {k: v for k, v in given.items() if v != _DEFAULTS[k]}
    calibration = {"calibration_method": calibration_method,
                   "calibration_samples": calibration_samples}
    calibration_changed = {k: v for k, v in calibration.items() if v != _CALIBRATION[k]}
    budgets = {"weight_bits_budget": weight_bits_budget, "size_budget_bytes": size_budget_bytes,
               "memory_budget_bytes": memory_budget_bytes}
    if any(v is not None for v in budgets.values()):
        return _search(model, given, changed, calibration_changed, config, ptq, budgets,
                       calibration_data, train_data, val_data, verbose)
    if train_data is not None or val_data is not None:
        raise ValueError("train_data= / val_data= are for the trained search: give "
                         "weight_bits_budget= or size_budget_bytes= with them (quantize's "
                         "own calibration takes calibration_data=)")
    if isinstance(config, QuantizationConfig):
        if changed or ptq is not None:
            names = sorted(changed) + (["ptq"] if ptq is not None else [])
            raise ValueError(f"{names} conflict with config={config!r}; set them in the "
                             "QuantizationConfig")
        return quantize_config(model, config, calibration_data, verbose=verbose, **calibration)
    if ptq is None:
        qconfig = QuantizationConfig(**given, overrides={} if config is None else config)
        return quantize_config(model, qconfig, calibration_data, verbose=verbose,
                               **calibration)
    ptq = PTQConfig.from_dict(ptq)
    qconfig = _ptq_config(model, ptq, config, changed, calibration_changed)
    return quantize_config(model, qconfig, calibration_data, ptq=ptq, verbose=verbose)


def _ptq_config(model, ptq, overrides, changed, calibration_changed):
    """The `QuantizationConfig` of a PTQ recipe, with the keywords it does not decide."""
    qconfig = quantization_config(model, ptq, overrides=overrides)
    from_ptq = {"calibration_method": ptq.calibration_method,
                "calibration_samples": ptq.calibration_samples}
    conflicts = {name: value for name, value in changed.items()
                 if name not in _NOT_PTQ and value != getattr(qconfig, name)}
    conflicts.update({name: value for name, value in calibration_changed.items()
                      if value != from_ptq[name]})
    for name, value in conflicts.items():
        raise ValueError(
            f"{name}={value!r} conflicts with ptq={ptq!r}; set it in the PTQConfig "
            "(ptq= decides the scheme, bits, granularity and calibration)"
        )
    return dataclasses.replace(qconfig, **{k: v for k, v in changed.items() if k in _NOT_PTQ})


_TRAINED_SETTINGS = ("activation_bits",)
"""The `quantize` settings the trained search (strategy "dnas+qpl") takes; it chooses the
schemes, learns the activation ranges on uniform grids, keeps 8-bit inputs and BatchNorm
unfolded for training (folded at export)."""


def _search(model, given, changed, calibration_changed, config, ptq, budgets,
            calibration_data, train_data, val_data, verbose):
    """`quantize` with a budget: the search, with every setting passed on or refused."""
    if given["weight_bits"] is not None:
        raise ValueError(f"weight_bits={given['weight_bits']!r} conflicts with a budget: the "
                         "search chooses the bits per layer")
    if isinstance(config, QuantizationConfig):
        if changed:
            raise ValueError(f"{sorted(changed)} conflict with config={config!r}; set them in "
                             "the QuantizationConfig")
        if config.weight_bits is not None:
            raise ValueError(f"config.weight_bits={config.weight_bits!r} conflicts with a "
                             "budget: the search chooses the bits per layer")
        given = {name: getattr(config, name) for name in given}
        changed = {k: v for k, v in given.items() if v != _DEFAULTS[k]}
        config = config.overrides
    if train_data is not None:
        refused = sorted(set(changed) - set(_TRAINED_SETTINGS)) + sorted(calibration_changed)
        refused += ["ptq"] if ptq is not None else []
        if refused:
            raise ValueError(
                f"{refused} do not apply to the trained search (strategy 'dnas+qpl', chosen "
                "because train_data= is given): it chooses the schemes and learns uniform "
                "activation ranges itself; drop them, or search retrain-free with "
                "calibration_data= alone")
        return search(model, train_data, val_data, strategy="dnas+qpl",
                      calibration_data=calibration_data, activation_bits=given["activation_bits"],
                      config=config, verbose=verbose, **budgets).model
    if val_data is not None:
        raise ValueError("val_data= is for the trained search: give train_data= with it")
    settings = {k: v for k, v in given.items() if k != "weight_bits"}
    samples = calibration_changed.get("calibration_samples")
    if "calibration_method" in calibration_changed:
        settings["calibration_method"] = calibration_changed["calibration_method"]
    return search(model, calibration_data=calibration_data, strategy="sensitivity", ptq=ptq,
                  config=config, num_samples=samples or defaults.SEARCH_SAMPLES,
                  verbose=verbose, **settings, **budgets).model
