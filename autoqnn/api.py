"""The entry point: `autoqnn.quantize`."""

from __future__ import annotations

import warnings

import keras
import numpy as np

from autoqnn.config import QuantizationConfig
from autoqnn.ptq.calibrate import calibrate
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


def quantize(
    model,
    scheme="uniform",
    weight_bits: int = 8,
    activation_bits: int | None = 8,
    granularity: str = "per_channel",
    calibration_data=None,
    config: dict | None = None,
    *,
    activation_scheme: str = "uniform",
    input_bits: int | None = None,
    fold_batchnorm: bool = True,
    scheme_options: dict | None = None,
    activation_options: dict | None = None,
    calibration_method: str = "max",
    calibration_samples: int | None = None,
    verbose: int = 0,
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
        weight_bits: bits of the weights (the scheme's valid range applies).
        activation_bits: bits of the activations; None keeps them float.
        granularity: "per_channel" or "per_tensor" weight quantization.
        calibration_data: inputs to calibrate activation ranges on (array,
            `(x, y)`, list of arrays or `tf.data.Dataset`). Without it,
            activation quantizers pass float values until calibrated
            (`autoqnn.calibrate`) or trained (`fit`); the report says so.
        config: per-layer overrides `{selector: {field: value} or None}`;
            a selector is an exact layer name, a regex on names, or a layer
            class / class name; None keeps the layer float. Fields:
            quantize, scheme, weight_bits, activation_bits,
            activation_scheme, granularity, scheme_options, activation_options.
        activation_scheme: activation scheme ("uniform", "pact", ...).
        input_bits: bits of the model-input quantizers (default: activation_bits).
        fold_batchnorm: fold BatchNormalization into the preceding layer.
        scheme_options: extra arguments of the weight scheme (e.g. symmetric).
        activation_options: extra arguments of the activation scheme.
        calibration_method: observer used with `calibration_data`
            (`autoqnn.list_calibration_methods()`).
        calibration_samples: calibrate on at most this many samples.
        verbose: 1 shows progress.

    Returns:
        A new `keras.Model`; `model.autoqnn_report` holds the per-layer report.

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
    qconfig = QuantizationConfig(
        scheme=scheme,
        weight_bits=weight_bits,
        activation_bits=activation_bits,
        activation_scheme=activation_scheme,
        granularity=granularity,
        scheme_options=dict(scheme_options or {}),
        activation_options=dict(activation_options or {}),
        input_bits=input_bits,
        fold_batchnorm=fold_batchnorm,
        overrides={} if config is None else config,
    )
    _check_finite_weights(model)
    qmodel, log = rewrite(model, qconfig)
    if calibration_data is not None:
        calibrate(qmodel, calibration_data, method=calibration_method,
                  num_samples=calibration_samples, verbose=verbose)
    report = quantization_report(qmodel, log.float_reasons)
    qmodel.autoqnn_report = report
    if report.float_layers and verbose:
        names = ", ".join(f"{r.name} ({r.reason})" for r in report.float_layers)
        print(f"autoqnn: layers left float: {names}")
    if report.uncalibrated and calibration_data is None and activation_bits is not None:
        warnings.warn(
            f"{len(report.uncalibrated)} activation quantizer(s) are not calibrated and pass float "
            "values until you call autoqnn.calibrate(model, data) or train the model; pass "
            "calibration_data= to quantize to calibrate now",
            stacklevel=2,
        )
    return qmodel
