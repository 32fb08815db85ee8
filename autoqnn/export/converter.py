"""Tracing a lowered quantized model and running the TFLite converter on it.

`convert` clones the model, patches its quantized layers with constant
fake-quant ops (`autoqnn.export.lowering`) and the converter-friendly calls of
single layers (`autoqnn.export.calls`), exports a SavedModel and converts it:
full-integer with `activations="int8"`, a float graph (weights folded to
their quantized values; `autoqnn.export.weight_only` stores them as integers)
with `activations="float"`.

Example:
    >>> from autoqnn.export.converter import ACTIVATIONS
    >>> ACTIVATIONS
    ('int8', 'float')
"""

from __future__ import annotations

import os
import re
import tempfile

import keras
import numpy as np
import tensorflow as tf

from autoqnn.data import iterate_batches
from autoqnn.export.calls import (
    affine_call,
    affine_parameters,
    dense_as_conv_call,
    einsum_as_conv_call,
    einsum_as_matmul,
    integer_layer_norm_call,
    layer_norm_call,
)
from autoqnn.export.diagnose import layer_names_in
from autoqnn.export.lowering import ExportError, iter_layers, lowered
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.normalization import IntegerLayerNormalization
from autoqnn.layers.quantized import QuantDense, QuantEinsumDense
from autoqnn.rewrite.clone import clone_quantized

ACTIVATIONS = ("int8", "float")


def affine_calls(layers: dict) -> list:
    """`(layer, call)` for the float per-channel affine layers (`autoqnn.export.calls`)."""
    found = []
    for path, layer in layers.items():
        if not isinstance(layer, (keras.layers.BatchNormalization, keras.layers.Rescaling,
                                  keras.layers.Normalization)) or not layer.built:
            continue
        try:
            channels = layer.input.shape[-1]
        except (AttributeError, ValueError):  # never called in a graph
            continue
        parameters = affine_parameters(layer, channels) if channels else None
        if parameters is not None:
            found.append((layer, affine_call(layer, path, *parameters)))
    return found


def _representative(model, data):
    def gen():
        for batch in iterate_batches(model, data, batch_size=1, num_samples=200,
                                     argument="representative_data"):
            inputs = batch if isinstance(batch, (list, tuple)) else [batch]
            yield [np.asarray(x, np.float32) for x in inputs]

    return gen


def _identity(inputs, *args, **kwargs):
    del args, kwargs
    return inputs


def convert(model, weight_plans, activation_plans, *, representative_data=None, int8_io=True,
            activations="int8"):
    """Traces a lowered copy of the model and runs the TFLite converter; returns the
    flatbuffer bytes. The model itself is never changed: the lowering patches a clone.

    With `activations="float"` the activation quantizers trace as the identity and
    the converter writes a float graph (`activation_plans` and `int8_io` unused)."""
    model = clone_quantized(model)
    layers = dict(iter_layers(model))
    float_activations = activations == "float"
    if float_activations:
        activation_plans, int8_io = [], False
    # Float activations need no conv workaround (no per-channel int8 FULLY_CONNECTED to
    # trace) and no affine rewrite (float BatchNorm / Rescaling stay float ops).
    integer = not float_activations
    dense_calls = [
        (layers[p.layer], dense_as_conv_call(layers[p.layer], p))
        for p in weight_plans
        if integer and isinstance(layers[p.layer], QuantDense) and p.channel_axis is not None
    ] + [
        (layers[p.layer], einsum_as_conv_call(layers[p.layer], p))
        for p in weight_plans
        if integer and isinstance(layers[p.layer], QuantEinsumDense)
        and einsum_as_matmul(layers[p.layer].equation) is not None
    ] + [
        (layer, layer_norm_call(layer)) for layer in layers.values()
        if isinstance(layer, keras.layers.LayerNormalization) and not layer.rms_scaling
        and not (integer and isinstance(layer, IntegerLayerNormalization))
    ] + [
        (layer, integer_layer_norm_call(layer, path)) for path, layer in layers.items()
        if integer and isinstance(layer, IntegerLayerNormalization)
    ] + (affine_calls(layers) if integer else []) + [
        (layer, _identity) for layer in layers.values()
        if float_activations and isinstance(layer, ActivationQuantizer)
    ]
    with tempfile.TemporaryDirectory(prefix="autoqnn_export_") as tmp:
        saved = os.path.join(tmp, "saved_model")
        with lowered(model, weight_plans, activation_plans, float_weights=float_activations):
            for layer, call in dense_calls:
                object.__setattr__(layer, "call", call)
            try:
                model.export(saved, format="tf_saved_model", verbose=False)
            finally:
                for layer, _call in dense_calls:
                    object.__delattr__(layer, "call")
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        if not float_activations:  # a float graph keeps its folded weight values as they are
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if representative_data is not None:
            converter.representative_dataset = _representative(model, representative_data)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        try:
            return converter.convert()
        except Exception as err:  # ConverterError and friends: name the layers
            message = str(err)
            names = layer_names_in(message, model)
            ops = sorted(set(re.findall(r"'(tf\.\w+|tfl\.\w+)' op", message)))
            where = f"layers {names}" if names else "the model"
            detail = next((line.strip() for line in message.splitlines() if "error:" in line),
                          message.splitlines()[0] if message else "")
            raise ExportError(
                f"the TFLite converter cannot build a full-integer graph for {where}"
                f"{' (ops ' + ', '.join(ops) + ')' if ops else ''}: "
                f"{detail[-400:]}. Keep such layers out of the model, or pass "
                "representative_data= to calibrate layers without a quantized range"
            ) from None
