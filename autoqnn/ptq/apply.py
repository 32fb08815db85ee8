"""Turns a `PTQConfig` into `quantize()` settings and runs the PTQ steps after the rewrite.

`quantize(model, calibration_data=x, ptq=cfg)` calls `quantization_config` to
get the `QuantizationConfig` (the same per-layer vocabulary as every other
quantization: uniform-scheme settings plus overrides of the kept layer kinds),
rewrites the model, then `apply_ptq`: weight clipping, activation
calibration, learned rounding (AdaRound, if asked), bias correction, in that
order (each step sees the result of the one before).

Example:
    >>> import keras
    >>> from autoqnn.ptq.apply import select_layers
    >>> inputs = keras.Input((8, 8, 3))
    >>> x = keras.layers.Conv2D(4, 3, name="stem")(inputs)
    >>> x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    >>> x = keras.layers.Conv2D(8, 1, name="pw")(x)
    >>> x = keras.layers.Dense(2, name="head")(keras.layers.Flatten()(x))
    >>> model = keras.Model(inputs, x)
    >>> select_layers(model, ("first", "last")), select_layers(model, ("depthwise", "pointwise"))
    (['stem', 'head'], ['dw', 'pw'])
"""

from __future__ import annotations

import keras

from autoqnn.config import QuantizationConfig
from autoqnn.ptq.adaround import adaround
from autoqnn.ptq.calibrate import calibrate
from autoqnn.ptq.config import PTQConfig
from autoqnn.ptq.weights import correct_biases, search_weight_clips
from autoqnn.rewrite.registry import find_handler
from autoqnn.walk import is_conv, is_depthwise, is_pointwise, iter_layers

CALIBRATION_BATCH_SIZE = 256


def weighted_layers(model) -> list:
    """Layers with a quantization handler, in graph order (nested models flattened)."""
    return [layer for _, layer in iter_layers(model)
            if layer.weights and find_handler(layer) is not None]


def select_layers(model, kinds) -> list[str]:
    """Names of the model's weighted layers of the given kinds, in graph order.

    Args:
        model: a float Keras model.
        kinds: any of "first", "last", "depthwise", "pointwise", "conv"
            (non-depthwise convolutions), "dense" (Dense, EinsumDense).

    Returns:
        Layer names (each once).
    """
    layers = weighted_layers(model)
    kinds = set(kinds)
    selected = []
    for i, layer in enumerate(layers):
        if (
            ("first" in kinds and i == 0)
            or ("last" in kinds and i == len(layers) - 1)
            or ("depthwise" in kinds and is_depthwise(layer))
            or ("pointwise" in kinds and is_pointwise(layer))
            or ("conv" in kinds and is_conv(layer))
            or ("dense" in kinds and isinstance(layer, (keras.layers.Dense,
                                                        keras.layers.EinsumDense)))
        ):
            selected.append(layer.name)
    return selected


def quantization_config(model, ptq: PTQConfig, overrides: dict | None = None):
    """The `QuantizationConfig` a PTQ recipe stands for on `model`.

    The uniform scheme with the recipe's grid options and bits, and one
    override per kept layer (its bits, or None for float) below the user's
    own `overrides` (which win). Calibration settings stay in the recipe.

    Returns:
        A validated `QuantizationConfig`.
    """
    kept = {}
    keep = {"weight_bits": ptq.keep_bits, "activation_bits": ptq.keep_bits}
    for name in select_layers(model, ptq.keep_layers):
        kept[name] = None if ptq.keep_bits is None else dict(keep)
        if ptq.activation_bits is None and ptq.keep_bits is not None:
            kept[name]["activation_bits"] = None
    return QuantizationConfig(
        scheme="uniform",
        weight_bits=ptq.weight_bits,
        activation_bits=ptq.activation_bits,
        granularity=ptq.granularity,
        scheme_options=dict(ptq.scheme_options),
        activation_options=dict(ptq.activation_scheme_options),
        overrides={**kept, **(overrides or {})},
    )


def apply_ptq(qmodel, ptq: PTQConfig, calibration_data=None, verbose: int = 0) -> dict:
    """Runs the post-rewrite PTQ steps on a quantized model, in place.

    Steps: MSE weight clipping (if `ptq.weight_clipping == "mse"`),
    activation calibration (when data is given), AdaRound (if
    `ptq.rounding == "adaround"`, on the clipped grids and calibrated
    activations), bias correction (if asked).

    AdaRound writes the rounded weights back into the float kernels, so a
    later bias correction could no longer see the float weights: with
    `rounding="adaround"` the layers it rounds are bias-corrected by it,
    right after each is rounded, against their original weights (the other
    layers are not corrected). Activations are not re-calibrated after
    rounding (a second calibration pass showed no consistent gain).

    Args:
        qmodel: the rewritten model (from `autoqnn.quantize`).
        ptq: the recipe.
        calibration_data: inputs for calibration, rounding and bias correction.
        verbose: 1 shows progress.

    Returns:
        `{"weight_clips": {...}, "rounding": {...}, "bias_shifts": {...}}`,
        what the steps chose ("rounding": `autoqnn.ptq.adaround.adaround`'s
        per-layer statistics, empty for nearest rounding).

    Raises:
        ValueError: bias correction or AdaRound without calibration data.
    """
    result = {"weight_clips": {}, "rounding": {}, "bias_shifts": {}}
    if ptq.bias_correction and calibration_data is None:
        raise ValueError("bias_correction=True needs calibration_data, got None")
    if ptq.rounding == "adaround" and calibration_data is None:
        raise ValueError("rounding='adaround' needs calibration_data, got None")
    if ptq.weight_clipping == "mse":
        result["weight_clips"] = search_weight_clips(qmodel)
    if calibration_data is not None:
        options = {"percentile": ptq.percentile} if ptq.calibration_method == "percentile" else None
        calibrate(qmodel, calibration_data, method=ptq.calibration_method,
                  num_samples=ptq.calibration_samples, batch_size=CALIBRATION_BATCH_SIZE,
                  verbose=verbose, observer_options=options)
    if ptq.rounding == "adaround":
        rounding = adaround(qmodel, calibration_data, iterations=ptq.adaround_iterations,
                            num_samples=ptq.calibration_samples,
                            bias_correction=ptq.bias_correction, verbose=verbose)
        result["rounding"] = {name: {k: v for k, v in stats.items() if k != "bias_shift"}
                              for name, stats in rounding.items()}
        result["bias_shifts"] = {name: stats["bias_shift"] for name, stats in rounding.items()
                                 if "bias_shift" in stats}
    elif ptq.bias_correction:
        result["bias_shifts"] = correct_biases(qmodel, calibration_data,
                                               num_samples=ptq.calibration_samples,
                                               verbose=verbose)
    return result
