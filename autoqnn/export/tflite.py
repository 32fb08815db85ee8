"""`export_tflite`: a full-integer TFLite model from a quantized Keras model.

Nothing is re-calibrated: the exporter lowers the model's own fake-quant
graph (`autoqnn.export.lowering`) to constant-range `FakeQuantWithMinMaxVars`
ops that the TFLite converter turns into int8 kernels:

* weights keep exactly the values the Keras model uses, each layer in the
  narrowest tensor type LiteRT runs for its op and its own bits
  (`autoqnn.export.storage`: int2 FULLY_CONNECTED, int4 FULLY_CONNECTED /
  CONV_2D / DEPTHWISE_CONV_2D, int8 otherwise; `storage="int8"` for the
  fastest file); the integer step is the finest that fits the container, so
  the int32 bias TFLite stores at input step x weight step is as fine as it
  can be;
* activation ranges are the calibrated / trained ranges of the model's
  `ActivationQuantizer`s (sub-8-bit grids keep their clamp);
* per-channel Dense kernels are exported as a 1x1 CONV_2D (the converter
  rejects per-channel fake-quant through FULLY_CONNECTED's kernel transpose),
  and so are EinsumDense kernels whose equation is a matmul in disguise (the
  projections of MultiHeadAttention: "abc,cde->abde", "abcd,cde->abe"), with
  the kernel flattened to 2-D (the converter's einsum lowering reshapes a
  per-channel kernel onto the wrong quantized axis); after conversion these
  1x1 convolutions become FULLY_CONNECTED again (`autoqnn.export.flatbuffer`),
  the op and kernel the converter's own int8 file uses.

Attention models: the projections export as integer convolutions; the
attention core (the query-key and probability-value batch matmuls, the
softmax) has int8 ranges in the model only with `attention_activations=True`
(`autoqnn.rewrite.composite`). Where a tensor has no range, the converter
needs `representative_data=` to calibrate it, and `export_tflite` says which
layers stay float otherwise.

Example:
    >>> import os, tempfile, keras, numpy as np, autoqnn
    >>> inputs = keras.Input((6,))
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
    >>> x = np.random.default_rng(0).random((16, 6), dtype=np.float32)
    >>> qmodel = autoqnn.quantize(model, weight_bits=4, calibration_data=x, verbose=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.tflite")
    >>> info = autoqnn.export_tflite(qmodel, path)
    >>> info.weight_dtypes
    {'fc/kernel': 'int4'}
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from autoqnn.data import iterate_batches
from autoqnn.export.calls import (
    affine_call,
    affine_parameters,
    dense_as_conv_call,
    einsum_as_conv_call,
    einsum_as_matmul,
    layer_norm_call,
)
from autoqnn.export.diagnose import float_hint, float_operators, layer_names_in
from autoqnn.export.flatbuffer import convs_to_fully_connected, dump, load, pack_int2
from autoqnn.export.lowering import (
    ExportError,
    iter_layers,
    lowered,
    plan_activation,
    plan_weights,
    quantized_layers,
)
from autoqnn.export.runtime import dequantize_output, quantize_input, run_tflite
from autoqnn.export.storage import check_storage, storage_from_int4
from autoqnn.finalize import finalize
from autoqnn.layers.quantized import QuantDense, QuantEinsumDense
from autoqnn.rewrite.clone import clone_quantized

__all__ = ["TFLiteExport", "dequantize_output", "export_tflite", "quantize_input", "run_tflite"]


@dataclasses.dataclass
class TFLiteExport:
    """What `export_tflite` wrote.

    Attributes:
        path: the `.tflite` file.
        size_bytes: its size.
        weight_plans: one `WeightPlan` per exported quantized weight.
        activation_plans: one `ActivationPlan` per activation quantizer.
        input_quantization: `(scale, zero_point)` per model input (int8 I/O).
        output_quantization: `(scale, zero_point)` per model output.
    """

    path: str
    size_bytes: int
    weight_plans: list
    activation_plans: list
    input_quantization: list
    output_quantization: list

    @property
    def weight_dtypes(self) -> dict:
        """`{"layer/weight": "int2" | "int4" | "int8"}`."""
        return {f"{p.layer}/{p.attr}": f"int{p.container_bits}" for p in self.weight_plans}


def check_writable(path) -> Path:
    """Returns `path` as a Path, or raises `ExportError` when it cannot be written."""
    path = Path(os.fspath(path))
    if path.is_dir():
        raise ExportError(f"cannot write {str(path)!r}: it is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(f"cannot write {str(path)!r}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ExportError(f"cannot write {str(path)!r}: permission denied")
    return path


def plan_model(model, *, storage="narrow", inexact="error"):
    """Checks that `model` is an exportable quantized model and plans its lowering.

    Returns:
        `(weight_plans, activation_plans)`.

    Raises:
        ExportError: float (unquantized) model, uncalibrated activation
            quantizers, or levels without an int8 representation.
    """
    if not isinstance(model, keras.Model):
        raise ExportError(f"model must be a keras.Model, got {type(model).__name__}")
    weight_layers, act_layers = quantized_layers(model)
    if not weight_layers and not act_layers:
        raise ExportError(
            f"model {model.name!r} is not quantized (no autoqnn quantized layers); "
            "quantize it first: autoqnn.quantize(model, calibration_data=...)"
        )
    not_final = [path for path, layer in weight_layers
                 if not all(q.is_final for q in layer.weight_quantizers.values())]
    not_final += [path for path, layer in act_layers if not layer.quantizer.is_final]
    if not_final:
        raise ExportError(
            f"layers {not_final} have trainable bits or scheme mixtures; fix them first with "
            "model = autoqnn.finalize(model)"
        )
    per_channel = [path for path, layer in act_layers if layer.range_axis is not None]
    if per_channel:
        raise ExportError(
            f"activation quantizers {per_channel} have per-channel ranges, which TFLite "
            "activations cannot carry (one scale per tensor); convert them first: model = "
            "autoqnn.per_tensor_activations(model, calibration_data)"
        )
    uncalibrated = [path for path, layer in act_layers if not layer.is_calibrated]
    if uncalibrated:
        raise ExportError(
            f"activation quantizers {uncalibrated} are not calibrated, so their int8 ranges are "
            "unknown; calibrate first: autoqnn.calibrate(model, data)"
        )
    if inexact not in ("error", "requantize"):
        raise ValueError(f"inexact must be 'error' or 'requantize', got {inexact!r}")
    weight_plans = []
    for path, layer in weight_layers:
        weight_plans.extend(plan_weights(path, layer, storage=storage, inexact=inexact))
    activation_plans = [plan_activation(path, layer) for path, layer in act_layers]
    return weight_plans, activation_plans


def _has_unfolded_batchnorm(model) -> bool:
    return any(isinstance(layer, keras.layers.BatchNormalization)
               for _, layer in iter_layers(model))


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


def convert(model, weight_plans, activation_plans, *, representative_data=None, int8_io=True):
    """Traces a lowered copy of the model and runs the TFLite converter; returns the
    flatbuffer bytes. The model itself is never changed: the lowering patches a clone."""
    model = clone_quantized(model)
    layers = dict(iter_layers(model))
    dense_calls = [
        (layers[p.layer], dense_as_conv_call(layers[p.layer], p))
        for p in weight_plans
        if isinstance(layers[p.layer], QuantDense) and p.channel_axis is not None
    ] + [
        (layers[p.layer], einsum_as_conv_call(layers[p.layer], p))
        for p in weight_plans
        if isinstance(layers[p.layer], QuantEinsumDense)
        and einsum_as_matmul(layers[p.layer].equation) is not None
    ] + [
        (layer, layer_norm_call(layer)) for layer in layers.values()
        if isinstance(layer, keras.layers.LayerNormalization) and not layer.rms_scaling
    ] + affine_calls(layers)
    with tempfile.TemporaryDirectory(prefix="autoqnn_export_") as tmp:
        saved = os.path.join(tmp, "saved_model")
        with lowered(model, weight_plans, activation_plans):
            for layer, call in dense_calls:
                object.__setattr__(layer, "call", call)
            try:
                model.export(saved, format="tf_saved_model", verbose=False)
            finally:
                for layer, _call in dense_calls:
                    object.__delattr__(layer, "call")
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
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


def export_tflite(model, path, representative_data=None, *, int8_io=True,
                  storage="narrow", int4=None, inexact="error") -> TFLiteExport:
    """Writes a full-integer `.tflite` file, each weight at the width its layer was searched.

    Args:
        model: a quantized model (`autoqnn.quantize` / `search`), calibrated.
        path: the `.tflite` file to write.
        representative_data: optional inputs the converter calibrates with,
            only for tensors that have no range in the model (float layers);
            the model's own ranges are never re-calibrated.
        int8_io: int8 model inputs and outputs (False: float32 I/O with
            QUANTIZE/DEQUANTIZE at the ends).
        storage: "narrow" (default): each weight in the narrowest type LiteRT
            runs for its op that holds its levels (int2 / int4 fully connected,
            int4 convolutions, which run on LiteRT's slower reference
            kernels); "xnnpack": narrow only for fully connected layers
            (XNNPACK's fast int4 / int2 kernels), convolutions int8; "int8":
            every weight int8 (the fastest file). `export_report` says per
            layer what is stored, which kernel runs it and why.
        int4: the older spelling of `storage` (True: "xnnpack", "all":
            "narrow", False: "int8"); give one of the two.
        inexact: "error" (default) raises when a layer's levels do not embed
            in int8; "requantize" re-quantizes them (error <= half a step).

    Returns:
        A `TFLiteExport`.

    Raises:
        ExportError: float model, uncalibrated quantizers, levels or layers
            LiteRT cannot run (the message names them), unwritable path.
        ValueError: an unknown `storage`, or both `storage` and `int4` given.
    """
    storage = resolve_storage(storage, int4)
    path = check_writable(path)
    plan_model(model, storage=storage, inexact=inexact)  # checks the model as the user gave it
    if _has_unfolded_batchnorm(model):
        # Trained with BatchNorm unfolded (QAT): export the folded twin, as TFLite runs it.
        model = finalize(model, fold_batchnorm=True)
    weight_plans, activation_plans = plan_model(model, storage=storage, inexact=inexact)
    flatbuffer = convert(model, weight_plans, activation_plans,
                         representative_data=representative_data, int8_io=int8_io)
    float_ops = float_operators(flatbuffer)
    if float_ops:
        names = sorted({n for _op, tensor in float_ops for n in layer_names_in(
            "/" + tensor + "/", model)})
        ops = sorted({op for op, _tensor in float_ops})
        raise ExportError(
            f"layers {names or [t for _o, t in float_ops][:5]} have no int8 range and stay float "
            f"(ops {ops}), so the graph is not full-integer; quantize them (or keep them out of "
            "the model), or pass representative_data= to let the converter calibrate them"
            + float_hint(model)
        )
    flatbuffer = restore_fully_connected(flatbuffer, weight_plans)
    interpreter = checked_interpreter(flatbuffer, model)
    write_atomically(path, flatbuffer)
    return TFLiteExport(
        str(path), len(flatbuffer), weight_plans, activation_plans,
        [tuple(d["quantization"]) for d in interpreter.get_input_details()],
        [tuple(d["quantization"]) for d in interpreter.get_output_details()],
    )


def resolve_storage(storage, int4) -> str:
    """`storage`, or its equivalent of the older `int4=` when that is given instead."""
    if int4 is None:
        return check_storage(storage)
    if storage != "narrow":
        raise ValueError(f"give storage= or int4=, not both (got storage={storage!r}, "
                         f"int4={int4!r})")
    return storage_from_int4(int4)


def restore_fully_connected(flatbuffer: bytes, weight_plans) -> bytes:
    """The converted file with traced 1x1 convolutions back as FULLY_CONNECTED and the
    int2-planned weights packed as INT2 (`autoqnn.export.flatbuffer`)."""
    tree = load(flatbuffer)
    converted = convs_to_fully_connected(tree)
    planned = [p for p in weight_plans if p.container_bits == 2]
    packed = pack_int2(tree) if planned else []
    if len(packed) < len(planned):
        raise ExportError(f"internal error: {len(planned)} weights planned as int2 "
                          f"({[p.layer for p in planned]}), {len(packed)} packed")
    return dump(tree) if converted or packed else flatbuffer


def checked_interpreter(flatbuffer: bytes, model):
    """A LiteRT interpreter with its tensors allocated, or `ExportError`: a file LiteRT
    cannot load (an invalid quantization) is never written."""
    try:
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as err:
        names = layer_names_in("/" + str(err) + "/", model)
        where = f" (layers {names})" if names else ""
        raise ExportError(f"LiteRT cannot load the converted model{where}: "
                          f"{str(err).strip()[:400]}; nothing was written") from None
    return interpreter


def write_atomically(path: Path, data: bytes):
    """Writes `data` to a temporary file beside `path`, then renames it into place."""
    temporary = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent or ".", prefix=f".{path.name}.",
                                         delete=False) as handle:
            temporary = handle.name
            handle.write(data)
        os.replace(temporary, path)
    except OSError as err:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
        raise ExportError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
