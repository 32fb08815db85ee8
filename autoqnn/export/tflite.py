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
softmax) has int8 ranges in the model whenever its activations are quantized
(`autoqnn.rewrite.composite`; an override `attention_activations=False` keeps
it float), and a LayerNormalization's inner tensors have theirs
(`autoqnn.layers.normalization`), so the default W8A8 model of a transformer
exports full-integer without data. Where a tensor has no range (a float layer,
an op inside a custom layer), the converter needs `representative_data=` to
calibrate it, and `export_tflite` says which layers stay float otherwise.

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
import tempfile
from pathlib import Path

import keras
from ai_edge_litert.interpreter import Interpreter

from autoqnn.export.converter import ACTIVATIONS, convert
from autoqnn.export.diagnose import float_hint, float_operators, layer_names_in
from autoqnn.export.flatbuffer import (
    convs_to_fully_connected,
    drop_fc_reshapes,
    dump,
    load,
    pack_int2,
    short_names,
)
from autoqnn.export.grid import embed_in_int_grid
from autoqnn.export.lowering import (
    ExportError,
    iter_layers,
    plan_activation,
    plan_weights,
    quantized_layers,
)
from autoqnn.export.runtime import dequantize_output, quantize_input, run_tflite
from autoqnn.export.storage import check_storage, storage_from_int4
from autoqnn.export.weight_only import dequantize_weights
from autoqnn.finalize import finalize

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


def plan_model(model, *, storage="narrow", inexact="error", activations="int8"):
    """Checks that `model` is an exportable quantized model and plans its lowering
    (with `activations="float"` the activation quantizers are left out).

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
    if activations == "float":
        act_layers = []
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


def export_tflite(model, path, representative_data=None, *, int8_io=None,
                  storage="narrow", int4=None, inexact="error",
                  activations="int8") -> TFLiteExport:
    """Writes a full-integer `.tflite` file, each weight at the width its layer was searched.

    Args:
        model: a quantized model (`autoqnn.quantize` / `search`), calibrated.
        path: the `.tflite` file to write.
        representative_data: optional inputs the converter calibrates with,
            only for tensors that have no range in the model (float layers);
            the model's own ranges are never re-calibrated.
        int8_io: int8 model inputs and outputs (False: float32 I/O with
            QUANTIZE/DEQUANTIZE at the ends); default True, and False with
            `activations="float"` (which cannot have int8 I/O).
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
        activations: "int8" (default): a full-integer graph; "float":
            weight-only, integer weights (int4 where the levels fit, unless
            `storage="int8"`) dequantized into float32 ops
            (`autoqnn.export.weight_only`); activation quantizers are left
            out, so it also exports models quantized with `activation_bits=None`.

    Returns:
        A `TFLiteExport`.

    Raises:
        ExportError: float model, uncalibrated quantizers, levels or layers
            LiteRT cannot run (the message names them), unwritable path.
        ValueError: an unknown `storage` or `activations`, both `storage` and
            `int4`, or an option that does not apply to float activations.
    """
    storage = resolve_storage(storage, int4)
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if activations == "float":
        for name, given in (("int8_io", bool(int8_io)),
                            ("representative_data", representative_data is not None)):
            if given:
                raise ValueError(f"{name}= does not apply to activations='float' "
                                 "(float inputs, outputs and activations)")
        int8_io = False
    int8_io = True if int8_io is None else int8_io
    path = check_writable(path)
    options = {"storage": storage, "inexact": inexact, "activations": activations}
    plan_model(model, **options)  # checks the model as the user gave it
    if activations == "int8" and representative_data is None and not quantized_layers(model)[1]:
        raise ExportError(
            f"model {model.name!r} has no activation quantizers (quantized with "
            "activation_bits=None?), so its activations have no int8 ranges: export it "
            "weight-only with activations='float', or pass representative_data= to let the "
            "converter calibrate them")
    if _has_unfolded_batchnorm(model):
        # Trained with BatchNorm unfolded (QAT): export the folded twin, as TFLite runs it.
        model = finalize(model, fold_batchnorm=True)
    weight_plans, activation_plans = plan_model(model, **options)
    flatbuffer = convert(model, weight_plans, activation_plans,
                         representative_data=representative_data, int8_io=int8_io,
                         activations=activations)
    if activations == "float":
        flatbuffer, weight_plans = weight_only_file(flatbuffer, weight_plans, storage, model)
        interpreter = checked_interpreter(flatbuffer, model)
        write_atomically(path, flatbuffer)
        return TFLiteExport(str(path), len(flatbuffer), weight_plans, [], [(0.0, 0)], [(0.0, 0)])
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


def weight_only_file(flatbuffer: bytes, weight_plans, storage: str, model):
    """`(bytes, plans)` of a weight-only file: the float file's quantized weights stored
    as integers + DEQUANTIZE; raises `ExportError` naming weights left float."""
    tree = load(flatbuffer)
    convs_to_fully_connected(tree)
    drop_fc_reshapes(tree)
    short_names(tree)
    stored, left_float = dequantize_weights(tree, storage)
    exact = [p for p in weight_plans if p.exact]
    if len(stored) < len(exact):
        names = sorted({n for t in left_float for n in layer_names_in("/" + t + "/", model)})
        raise ExportError(f"weights of layers {names or left_float} stay float32 in the "
                          f"weight-only file: their values have no integer grid "
                          f"({len(stored)} of {len(exact)} quantized weights stored)")
    plans = []
    for plan in weight_plans:
        own = embed_in_int_grid(plan.values, plan.channel_axis) if plan.exact else None
        bits = 4 if storage != "int8" and own is not None and own.max_abs <= 7 else 8
        note = plan.note if bits >= plan.container_bits else ""
        plans.append(dataclasses.replace(plan, container_bits=bits, note=note))
    return dump(tree), plans


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
    convs_to_fully_connected(tree)
    drop_fc_reshapes(tree)
    planned = [p for p in weight_plans if p.container_bits == 2]
    packed = pack_int2(tree) if planned else []
    if len(packed) < len(planned):
        raise ExportError(f"internal error: {len(planned)} weights planned as int2 "
                          f"({[p.layer for p in planned]}), {len(packed)} packed")
    short_names(tree)
    return dump(tree)


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
