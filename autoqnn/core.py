"""The core quantization call: a validated `QuantizationConfig` in, the quantized twin
out. It knows nothing of budgets or searches (`autoqnn.api.quantize`, the public facade,
builds the config from keywords and routes a budget to `autoqnn.mixed`); the searches call
it for every model they build.

Example:
    >>> import keras
    >>> from autoqnn.config import QuantizationConfig
    >>> from autoqnn.core import quantize_config
    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    >>> qmodel = quantize_config(model, QuantizationConfig(weight_bits=4, activation_bits=None))
    >>> qmodel.autoqnn_report[1].weight_bits
    4
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from autoqnn import defaults
from autoqnn.config import QuantizationConfig
from autoqnn.ptq.apply import apply_ptq, quantization_config
from autoqnn.ptq.calibrate import calibrate
from autoqnn.ptq.config import PTQConfig
from autoqnn.report import quantization_report
from autoqnn.rewrite.qag import check_model, rewrite


def check_finite_weights(model):
    """Raises a ValueError naming the first weight of `model` holding NaN or Inf."""
    for variable in model.weights:
        value = keras.ops.convert_to_numpy(variable)
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise ValueError(
                f"model weight {variable.path!r} contains NaN or Inf values; fix the model "
                "before quantizing"
            )


def quantize_config(model, config: QuantizationConfig, calibration_data=None, *,
                    ptq: PTQConfig | None = None,
                    calibration_method: str = defaults.CALIBRATION_METHOD,
                    calibration_samples: int | None = defaults.CALIBRATION_SAMPLES,
                    verbose: int = 0, warn_uncalibrated: bool = True):
    """The quantized twin of `model` under `config` (the input model is not changed).

    Args:
        model: a built Functional or Sequential Keras model.
        config: the validated settings (model-wide and per layer).
        calibration_data: inputs to calibrate the activation ranges on (None: the
            ranges initialise from the first training batches, or `autoqnn.calibrate`).
        ptq: a post-training recipe to run after the rewrite (weight clipping,
            calibration with its own method and samples, AdaRound, bias correction);
            `config` must be the one it stands for (`autoqnn.ptq.quantization_config`).
        calibration_method, calibration_samples: the observer and sample count of the
            plain calibration (without `ptq`).
        verbose: 1 shows progress and names the layers left float.
        warn_uncalibrated: warn when activation quantizers are left uncalibrated.

    Returns:
        The new `keras.Model`, with `autoqnn_report` (and `autoqnn_ptq` with `ptq`).
    """
    check_model(model)
    check_finite_weights(model)
    qmodel, log = rewrite(model, config)
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
    if warn_uncalibrated and report.uncalibrated and calibration_data is None and \
            config.activation_bits is not None:
        warnings.warn(
            f"{len(report.uncalibrated)} activation quantizer(s) are not calibrated; they "
            "take their ranges from the first training batches, or call "
            "autoqnn.calibrate(model, data) (or pass calibration_data= to quantize) before "
            "evaluating or exporting",
            stacklevel=3,
        )
    return qmodel


def quantize_ptq(model, ptq: PTQConfig, calibration_data=None, overrides: dict | None = None,
                 verbose: int = 0):
    """The quantized twin of `model` under a PTQ recipe (its `QuantizationConfig`, the
    user's per-layer `overrides` on top, then the recipe's steps)."""
    return quantize_config(model, quantization_config(model, ptq, overrides), calibration_data,
                           ptq=ptq, verbose=verbose)
