"""The per-layer quantization report: what is quantized, how, and what stayed float.

Composite layers (a MultiHeadAttention, a keras-hub block, a user layer with
Dense/Conv sublayers) have a row of their own ("composite" when quantized,
counting only the weights that are not in a sublayer) followed by one row per
sublayer, named by path ("encoder/self_attention_layer/query"). Float
sublayers say why they stay float (LayerNorm, Softmax and activations run in
float; their outputs are quantized only when an override asks).

Example:
    >>> import keras, autoqnn
    >>> inputs = keras.Input((4,), name="x")
    >>> dense = keras.layers.Dense(3, name="dense")(inputs)
    >>> x = keras.layers.LayerNormalization(name="layer_normalization")(dense)
    >>> qmodel = autoqnn.quantize(keras.Model(inputs, x), weight_bits=4, activation_bits=None,
    ...                           verbose=0)
    >>> [(r.name, r.status) for r in autoqnn.quantization_report(qmodel) if r.params]
    [('dense', 'quantized'), ('layer_normalization', 'float')]
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.composite import QuantizedComposite
from autoqnn.layers.folded import FoldedBatchNorm
from autoqnn.walk import iter_layers, own_weights


@dataclasses.dataclass
class LayerReport:
    """One row of the report.

    Attributes:
        name: layer name (nested models: "outer/inner").
        class_name: the layer's class.
        status: "quantized" (weights quantized), "float" (weights kept
            float: see `reason`), "activation" (an activation quantizer),
            "folded" (a BatchNormalization folded into the previous layer),
            "composite" (a layer whose sublayers, the next rows, are
            quantized), or "no weights".
        scheme: weight (or activation) scheme name.
        weight_bits: bits of the quantized weights.
        granularity: per_tensor / per_channel.
        activation_bits: bits of an activation quantizer.
        params: number of weight parameters of the layer.
        quantized_params: how many of them are quantized.
        size_bytes: storage at the quantized bit widths (float weights at 32 bits).
        reason: why a weighted layer stayed float, or a note.
        state_params: how many of `params` are quantizer state (scales, clips,
            bits) that the quantization added, not weights of the float layer.
    """

    name: str
    class_name: str
    status: str
    scheme: str | None = None
    weight_bits: int | None = None
    granularity: str | None = None
    activation_bits: int | None = None
    params: int = 0
    quantized_params: int = 0
    size_bytes: float = 0.0
    reason: str = ""
    state_params: int = 0


class QuantizationReport:
    """`LayerReport` rows (iterable, indexable) with model-level summaries and a table view.

    Args:
        rows: the `LayerReport`s.

    Attributes:
        recipe: what the autopilot of `autoqnn.quantize` tried and chose (an
            `autoqnn.autopilot.RecipeChoice`), None when the model was not made by it.
    """

    def __init__(self, rows=()):
        self.rows = list(rows)
        self.recipe = None

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        """A row by position, or by layer name (`report["conv1"]`)."""
        if isinstance(index, str):
            return self.get(index)
        return self.rows[index]

    def get(self, name: str) -> LayerReport:
        """The row of the layer called `name`."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no layer named {name!r} in the report")

    @property
    def float_layers(self) -> list[LayerReport]:
        """Layers with weights that stayed float."""
        return [r for r in self if r.status == "float"]

    @property
    def size_bytes(self) -> float:
        return float(sum(r.size_bytes for r in self))

    @property
    def weight_bits_avg(self) -> float:
        """Average bits of the quantized weight parameters (0 if none)."""
        q = sum(r.quantized_params for r in self)
        return float(sum(r.quantized_params * (r.weight_bits or 0) for r in self) / q) if q else 0.0

    @property
    def quantized_fraction(self) -> float:
        """The share of the model's weight parameters that are quantized: quantized
        weights over all weights of the rows (composite rows count only their own
        weights), the quantizers' own state (scales, clips) left out. Biases and float
        layers' weights count as float."""
        weights = sum(r.params - r.state_params for r in self if r.status != "composite")
        return sum(r.quantized_params for r in self) / weights if weights else 0.0

    @property
    def uncalibrated(self) -> list[str]:
        return [r.name for r in self if r.status == "activation" and "not calibrated" in r.reason]

    def to_dicts(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self]

    def __str__(self):
        header = (
            "layer",
            "class",
            "status",
            "scheme",
            "w bits",
            "granularity",
            "a bits",
            "params",
            "note",
        )
        rows = [header] + [
            (
                r.name,
                r.class_name,
                r.status,
                r.scheme or "",
                _fmt(r.weight_bits),
                r.granularity or "",
                _fmt(r.activation_bits),
                str(r.params),
                r.reason,
            )
            for r in self
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(
            f"total: {self.size_bytes / 1024:.1f} KiB, average weight bits "
            f"{self.weight_bits_avg:.2f}, float weighted layers: {len(self.float_layers)}"
        )
        weights = sorted({r.scheme for r in self if r.status == "quantized" and r.scheme})
        activations = sorted({r.scheme for r in self if r.status == "activation" and r.scheme})
        lines.append(f"schemes: weights {', '.join(weights) or 'none'}; activations "
                     f"{', '.join(activations) or 'float'}")
        return "\n".join(lines)

    __repr__ = __str__


_FLOAT_FUNCTIONS = (
    (keras.layers.LayerNormalization, "normalization"),
    (keras.layers.GroupNormalization, "normalization"),
    (keras.layers.UnitNormalization, "normalization"),
    (keras.layers.BatchNormalization, "normalization"),
    (keras.layers.Softmax, "softmax"),
    (keras.layers.Activation, "activation"),
)


def _no_handler(layer) -> str:
    base = getattr(layer, "_autoqnn_base", None) or type(layer)
    return f"no quantization handler for {base.__name__}"


def _sublayer_note(row, layer, parent):
    """The reason a float sublayer of a composite layer stays float (unless the rewrite
    recorded another): normalization, softmax and activations run in float."""
    kind = next((k for cls, k in _FLOAT_FUNCTIONS if isinstance(layer, cls)), None)
    if kind is None or row.status not in ("float", "no weights") or row.reason not in (
            "", _no_handler(layer)):
        return row
    base = getattr(layer, "_autoqnn_base", None) or type(layer)
    what = {"normalization": f"{base.__name__} runs in float",
            "softmax": "softmax runs in float",
            "activation": "the activation runs in float"}[kind]
    if isinstance(layer, QuantizedComposite) and layer.output_aq is not None:
        note = f"{what}; its output is quantized (output_aq)"
    else:
        note = f"{what}, its output stays float (an override setting activation_bits on it " \
               "quantizes it)"
        if kind == "softmax" and isinstance(parent, keras.layers.MultiHeadAttention):
            note = f"{what} (attention_activations=True quantizes the attention probabilities)"
            if "probabilities" in (getattr(parent, "attention_aq", None) or {}):
                note = (f"{what} on quantized scores; its output, the attention probabilities, "
                        "is quantized (probabilities_aq): int8 in TFLite")
    row.reason = f"{row.reason}: {note}" if row.reason else note
    return row


def _fmt(v):
    return "" if v is None else str(v)


def float_reasons(model) -> dict:
    """`{layer path: reason}` of the float layers in `model.autoqnn_report` (if any), to
    carry into the report of a model derived from it."""
    return {row.name: row.reason for row in getattr(model, "autoqnn_report", ())
            if row.status == "float" or (row.status == "no weights" and row.reason)}


def quantization_report(model, float_reasons: dict | None = None) -> QuantizationReport:
    """Builds the report of a (quantized) model; works on loaded `.keras` models too.

    Args:
        model: a Keras model.
        float_reasons: optional `{layer name: reason}` recorded by the rewrite
            (`quantize` attaches its own report as `model.autoqnn_report`).

    Returns:
        A `QuantizationReport`.
    """
    float_reasons = float_reasons or {}
    layers = dict(iter_layers(model))
    rows = []
    for path, layer in layers.items():
        parent = layers.get(path.rsplit("/", 1)[0]) if "/" in path else None
        row = _layer_row(layer, path, float_reasons)
        if isinstance(parent, keras.layers.Layer) and not isinstance(parent, keras.Model):
            row = _sublayer_note(row, layer, parent)
        rows.append(row)
    return QuantizationReport(rows)


def _count(variable):
    return int(np.prod(variable.shape)) if len(variable.shape) else 1


def _layer_row(layer, name, reasons):
    cls = type(layer).__name__
    if isinstance(layer, ActivationQuantizer):
        rng = layer.get_range()
        if rng and layer.range_axis is not None:
            note = (f"per-channel ranges ({len(rng[0])} channels) within "
                    f"[{float(rng[0].min()):.4g}, {float(rng[1].max()):.4g}]")
        elif rng:
            note = f"range [{rng[0]:.4g}, {rng[1]:.4g}]"
        elif layer.is_calibrated:  # range-free schemes (PACT, LSQ)
            note = ""
        else:
            note = "not calibrated: passes float values until calibrated or trained"
        return LayerReport(
            name,
            cls,
            "activation",
            scheme=layer.scheme.name,
            activation_bits=layer.bits,
            reason=note,
        )
    quantizers = getattr(layer, "weight_quantizers", None)
    weights = own_weights(layer)
    params = sum(_count(v) for v in weights)
    if quantizers:
        quantized = {id(getattr(layer, attr)): q for attr, q in quantizers.items()}
        size, qparams = 0.0, 0
        state = {id(v) for q in quantizers.values() for v in q.variables}
        for v in weights:  # quantizer state (scales, clips) counts at 32 bits
            quantizer = quantized.get(id(v))
            if quantizer is not None:
                size += _count(v) * quantizer.scheme.storage_bits() / 8
                qparams += _count(v)
            else:
                size += _count(v) * 4
        first = next(iter(quantizers.values()))
        bits = max(int(math.ceil(q.scheme.storage_bits())) for q in quantizers.values())
        notes = [", ".join(sorted(quantizers))]
        if not first.is_final:
            kinds = []
            if first.is_mixture:
                kinds.append("scheme mixture of " + "/".join(c.name for c in first.candidates))
            if first.trainable_bits:
                kinds.append(f"trainable bits {first.bits:.2f}")
            notes.append("; ".join(kinds) + " (shown: the rounded / argmax choice; "
                         "autoqnn.finalize fixes it)")
        return LayerReport(
            name,
            cls,
            "quantized",
            scheme=first.scheme.name,
            weight_bits=bits,
            granularity=first.scheme.granularity,
            params=params,
            quantized_params=qparams,
            size_bytes=size,
            reason="; ".join(notes),
            state_params=sum(_count(v) for v in weights if id(v) in state),
        )
    if isinstance(layer, QuantizedComposite) and layer.replaced_sublayers:
        names = [sub.name for sub in layer.replaced_sublayers.values()]
        note = f"quantized sublayers: {', '.join(names)}"
        if getattr(layer, "attention_aq", None):
            note += ("; attention activations quantized ("
                     + ", ".join(layer.attention_aq) + ")")
        return LayerReport(name, cls, "composite", params=params, size_bytes=params * 4.0,
                           reason=note)
    if isinstance(layer, FoldedBatchNorm):
        return LayerReport(
            name, cls, "folded", reason=f"BatchNormalization folded into {layer.folded_into}"
        )
    if params:
        reason = reasons.get(name, reasons.get(layer.name, _no_handler(layer)))
        return LayerReport(
            name, cls, "float", params=params, size_bytes=params * 4.0, reason=reason
        )
    return LayerReport(name, cls, "no weights", reason=reasons.get(name, ""))
