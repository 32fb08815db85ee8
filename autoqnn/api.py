"""The public entry point `autoqnn.quantize`: a thin facade. Keywords become a validated
`QuantizationConfig` for the core call (`autoqnn.core.quantize_config`); a budget routes the
same settings to the autopilot (`autoqnn.autopilot`: retrain-free, or trained when labelled
`train_data` is given), or, when the caller fixed the recipe, to the mixed-precision search
(`autoqnn.mixed.dispatch.search`). Every keyword either acts on the route taken or raises an
error naming it."""

from __future__ import annotations

import dataclasses

from autoqnn import defaults
from autoqnn.autopilot.retrain_free import choose_retrain_free
from autoqnn.autopilot.trained import choose_trained
from autoqnn.config import QuantizationConfig, field_defaults
from autoqnn.core import quantize_config
from autoqnn.mixed.budget import Budget
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
_RECIPE_SETTINGS = ("scheme", "granularity", "scheme_options", "activation_scheme",
                    "activation_options")
"""Settings that fix the recipe: given (or `ptq=`, or `calibration_method=`), the budget
search runs with them instead of the autopilot choosing one."""
RECIPES = ("auto", "defaults")


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
    latency_budget_ms: float | None = None,
    target=None,
    train_data=None,
    val_data=None,
    recipe: str = "auto",
    time_budget_seconds: float = defaults.AUTOPILOT_SECONDS,
    epochs: int | None = None,
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
            makes this one call the autopilot (`autoqnn.autopilot`): per model it
            chooses the PTQ recipe (calibration, weight clipping, bias correction,
            grid, AdaRound) and the per-layer bits together, each recipe's bits
            searched retrain-free under it (`autoqnn.search(...,
            strategy="sensitivity")`), judged on images held out from
            `calibration_data` (KL to the float outputs; accuracy when `val_data`
            is given), beside uniform quantization at the same budget, within
            `time_budget_seconds`. `model.autoqnn_report.recipe` says what it tried
            and chose; `model.autoqnn_search` holds the chosen `SearchResult`. Given
            a recipe setting (`ptq`, `calibration_method`, `scheme`, `granularity`,
            the scheme options, `activation_scheme`) or `recipe="defaults"`, the
            search runs with that recipe alone. `calibration_samples` is the number
            of images the search measures and calibrates on (default 512).
        latency_budget_ms, target: `target="litert"` (or an
            `autoqnn.mixed.target.LiteRTTarget`) searches the `.tflite` file LiteRT
            runs: candidates LiteRT stores at their own width, `size_budget_bytes` in
            bytes of the file, `latency_budget_ms` (needs the target) in LiteRT
            milliseconds on this machine, the file checked before it is returned
            (`autoqnn.mixed.target`); the autopilot chooses the recipe under it as
            without one.
        train_data, val_data: labelled `(x, y)` data: with a weight-bits or size
            budget the autopilot trains (`autoqnn.autopilot.trained`): bits per layer
            from the retrain-free search, the low-bit training recipe (uniform, LSQ,
            ACD + SQNR) chosen on `val_data` (default: the last 10 % of
            `train_data`) after a short probe of each, then `epochs` of distilled
            fine-tuning. It takes `activation_bits`, `input_bits` (default 8),
            `config`, `calibration_data` and `calibration_samples`; the other settings
            raise (it chooses the schemes itself). `val_data` alone (no `train_data`)
            makes the retrain-free autopilot judge by accuracy on it.
            `autoqnn.search(..., strategy="dnas+qpl")` is the differentiable search.
        recipe: "auto" (default: the autopilot chooses, with a budget) or
            "defaults" (the search under `quantize`'s default recipe, no choice).
        time_budget_seconds: time the autopilot spends choosing (default 60); the
            first recipe and the uniform baseline are always tried, and the report
            lists what the time left untried.
        epochs: fine-tune epochs of the trained autopilot (default 3; with
            `train_data` only).

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
    if isinstance(config, QuantizationConfig):
        config.warn_unmatched(model)
    elif config:
        QuantizationConfig(overrides=config).warn_unmatched(model)
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
               "memory_budget_bytes": memory_budget_bytes, "latency_budget_ms": latency_budget_ms}
    if latency_budget_ms is not None and target is None:
        raise ValueError(f"latency_budget_ms={latency_budget_ms!r} needs target='litert' (the "
                         "latency of the .tflite file on LiteRT)")
    if target is not None and all(v is None for v in budgets.values()):
        raise ValueError(f"target={target!r} is for a budget search: give weight_bits_budget=, "
                         "size_budget_bytes= or latency_budget_ms= with it")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {list(RECIPES)}, got {recipe!r} (a recipe of "
                         "your own: ptq=PTQConfig(...))")
    autopilot = {"recipe": recipe, "time_budget_seconds": time_budget_seconds}
    if epochs is not None and (train_data is None or all(v is None for v in budgets.values())):
        raise ValueError(f"epochs={epochs!r} is for the trained autopilot: give train_data= "
                         "and a budget with it (or fine-tune with autoqnn.finetune)")
    if any(v is not None for v in budgets.values()):
        return _search(model, given, changed, calibration_changed, config, ptq, budgets,
                       calibration_data, train_data, val_data, verbose, autopilot, epochs,
                       target)
    _no_autopilot(autopilot, "they choose the recipe under a budget: give weight_bits_budget=, "
                  "size_budget_bytes= or memory_budget_bytes=")
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


_TRAINED_SETTINGS = ("activation_bits", "input_bits")
"""The `quantize` settings the trained autopilot takes (with `config` and the calibration
samples); it chooses the schemes, learns the ranges and keeps BatchNorm unfolded while
training (folded at export)."""


def _no_autopilot(autopilot, why):
    """Raises when an autopilot setting was changed on a route that does not use it."""
    changed = [name for name, value in autopilot.items()
               if value != {"recipe": "auto",
                            "time_budget_seconds": defaults.AUTOPILOT_SECONDS}[name]]
    if changed:
        raise ValueError(f"{changed} apply to the autopilot only; {why}")


def _search(model, given, changed, calibration_changed, config, ptq, budgets,
            calibration_data, train_data, val_data, verbose, autopilot, epochs=None,
            target=None):
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
        if target is not None:
            raise ValueError(f"target={target!r} applies to the retrain-free search: drop "
                             "train_data= (the trained autopilot does not take a target)")
        _no_autopilot(autopilot, "the trained autopilot (train_data=) chooses its recipe on "
                      "validation")
        refused = sorted(set(changed) - set(_TRAINED_SETTINGS))
        refused += sorted(set(calibration_changed) - {"calibration_samples"})
        refused += ["ptq"] if ptq is not None else []
        if refused:
            raise ValueError(
                f"{refused} do not apply to the trained autopilot (chosen because train_data= "
                "is given): it chooses the schemes and learns the ranges itself; drop them, "
                "use autoqnn.search(model, train_data, strategy='dnas+qpl', ...), or search "
                "retrain-free with calibration_data= alone")
        samples = calibration_changed.get("calibration_samples") or defaults.SEARCH_SAMPLES
        return choose_trained(model, train_data, val_data, budget=_budget(budgets),
                              activation_bits=given["activation_bits"],
                              input_bits=given["input_bits"], config=config,
                              calibration_data=calibration_data, num_samples=samples,
                              epochs=defaults.FINETUNE_EPOCHS if epochs is None else epochs,
                              verbose=verbose)
    settings = {k: v for k, v in given.items() if k != "weight_bits"}
    samples = calibration_changed.get("calibration_samples")
    fixed = sorted(set(changed) & set(_RECIPE_SETTINGS))
    fixed += ["ptq"] if ptq is not None else []
    fixed += ["calibration_method"] if "calibration_method" in calibration_changed else []
    if not fixed and autopilot["recipe"] == "auto":
        if calibration_data is None:
            raise ValueError("quantize with a budget needs calibration_data= (inputs, no "
                             "labels), or train_data= for the trained search")
        shared = {k: v for k, v in settings.items() if k not in _RECIPE_SETTINGS}
        return choose_retrain_free(
            model, calibration_data, budget=_budget(budgets),
            settings={**shared, "num_samples": samples or defaults.SEARCH_SAMPLES},
            config=config, val_data=val_data, target=target,
            time_budget_seconds=autopilot["time_budget_seconds"], verbose=verbose)
    fixed_by = fixed or "recipe='defaults'"
    if val_data is not None:
        raise ValueError("val_data= is for the trained search (with train_data=) and for "
                         f"the autopilot's judge; the recipe is fixed here by {fixed_by}")
    _no_autopilot({"time_budget_seconds": autopilot["time_budget_seconds"]},
                  f"the recipe is fixed here by {fixed_by}")
    if "calibration_method" in calibration_changed:
        settings["calibration_method"] = calibration_changed["calibration_method"]
    target = {} if target is None else {"target": target}
    return search(model, calibration_data=calibration_data, strategy="sensitivity", ptq=ptq,
                  config=config, num_samples=samples or defaults.SEARCH_SAMPLES,
                  verbose=verbose, **settings, **budgets, **target).model


def _budget(budgets: dict) -> Budget:
    """The `Budget` of quantize's budget keywords."""
    return Budget(budgets["weight_bits_budget"], budgets["size_budget_bytes"],
                  budgets["memory_budget_bytes"], budgets["latency_budget_ms"])
