"""`export_report`: per layer, how a quantized model exports: its searched bits, the
tensor type the `.tflite` stores, the LiteRT kernel that runs it, and why anything is
wider than searched.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> inputs = keras.Input((6,))
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
    >>> x = np.random.default_rng(0).random((16, 6), dtype=np.float32)
    >>> qmodel = autoqnn.quantize(model, weight_bits=4, calibration_data=x, verbose=0)
    >>> row = autoqnn.export_report(qmodel)[1]
    >>> # 18 weights at 4 bits, 3 float32 biases and 3 float32 clip ratios: 33 bytes
    >>> row.name, row.weight_bits, row.tflite_dtype, row.packed_bytes
    ('fc', 4, 'int4', 33.0)
    >>> row.op, row.kernel
    ('FULLY_CONNECTED', 'XNNPACK')
    >>> autoqnn.export_report(qmodel, storage="int8")[1].note
    "storage='int8': int8 container (XNNPACK's fastest kernels)"
"""

from __future__ import annotations

import dataclasses

from autoqnn.export.lowering import (
    ExportError,
    iter_layers,
    plan_activation,
    plan_weights,
)
from autoqnn.export.storage import check_storage, kernel
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.quantized import QuantizedWeightsMixin

PARITY_NOTE = ("int4 convolution: its int32 bias is stored at input step x int4 weight step, "
               "coarser than the model's float bias, on LiteRT's reference kernel: LiteRT may "
               "differ from Keras by a few output steps (storage='xnnpack' keeps it int8, "
               "within one step)")


@dataclasses.dataclass
class ExportRow:
    """How one layer exports.

    Attributes:
        name: layer path.
        class_name: layer class.
        kind: "weights", "activation" or "float".
        scheme: weight or activation scheme name.
        weight_bits: the layer's own (searched) storage bits (max over weights).
        params: number of parameters of the layer.
        packed_bytes: bytes at the true bit widths (float parameters at 32 bits).
        tflite_dtype: "int2", "int4", "int8", "int8 (re-quantized)", "int8
            activations", "float32" or "not exportable".
        exact: whether TFLite stores the Keras weight values exactly.
        note: why the tensor is wider than `weight_bits`, why the layer cannot
            export, etc.
        op: the TFLite op its weights feed.
        kernel: the LiteRT kernel that runs it ("XNNPACK", "LiteRT reference
            (...)", "LiteRT builtin").
    """

    name: str
    class_name: str
    kind: str
    scheme: str = ""
    weight_bits: int | None = None
    params: int = 0
    packed_bytes: float = 0.0
    tflite_dtype: str = ""
    exact: bool = True
    note: str = ""
    op: str = ""
    kernel: str = ""


class ExportReport(list):
    """A list of `ExportRow`s with totals and a table view."""

    @property
    def packed_bytes(self) -> float:
        return float(sum(r.packed_bytes for r in self))

    @property
    def not_exportable(self) -> list[str]:
        return [r.name for r in self if r.tflite_dtype == "not exportable"]

    def to_dicts(self) -> list[dict]:
        return [dataclasses.asdict(r) for r in self]

    def __str__(self):
        header = ("layer", "class", "scheme", "bits", "params", "bytes", "tflite", "exact",
                  "kernel", "note")
        rows = [header] + [
            (r.name, r.class_name, r.scheme, "" if r.weight_bits is None else str(r.weight_bits),
             str(r.params), f"{r.packed_bytes:.0f}", r.tflite_dtype, "yes" if r.exact else "no",
             r.kernel, r.note)
            for r in self
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"total packed: {self.packed_bytes / 1024:.1f} KiB; not exportable to "
                     f"TFLite: {self.not_exportable or 'none'}")
        return "\n".join(lines)

    __repr__ = __str__


def _count(variable):
    size = 1
    for dim in variable.shape:
        size *= int(dim)
    return size


def export_report(model, *, storage="narrow") -> ExportReport:
    """Per layer: searched bits, packed bytes, the TFLite tensor type and kernel.

    Layers whose levels have no exact int8 form are listed with
    `exact=False` ("int8 (re-quantized)": `export_tflite(..., inexact="requantize")`
    would be needed); uncalibrated activation quantizers as "not exportable".

    Args:
        model: a quantized Keras model.
        storage: as in `export_tflite` ("narrow", "xnnpack" or "int8").

    Returns:
        An `ExportReport`.
    """
    check_storage(storage)
    report = ExportReport()
    for path, layer in iter_layers(model):
        cls = type(layer).__name__
        if isinstance(layer, ActivationQuantizer):
            row = ExportRow(path, cls, "activation", scheme=layer.scheme.name,
                            tflite_dtype="int8 activations")
            try:
                plan = plan_activation(path, layer)
                row.note = f"{plan.levels} levels, step {plan.step:.4g}"
            except ExportError as err:
                row.tflite_dtype, row.exact, row.note = "not exportable", False, str(err)
            report.append(row)
            continue
        params = sum(_count(v) for v in layer.weights)
        if isinstance(layer, QuantizedWeightsMixin) and layer.weight_quantizers:
            quantized = {id(getattr(layer, a)): q.scheme
                         for a, q in layer.weight_quantizers.items()}
            size = sum(_count(v) * (quantized[id(v)].storage_bits() / 8 if id(v) in quantized
                                    else 4) for v in layer.weights)
            bits = max(int(q.scheme.storage_bits()) for q in layer.weight_quantizers.values())
            first = next(iter(layer.weight_quantizers.values())).scheme
            row = ExportRow(path, cls, "weights", scheme=first.name, weight_bits=bits,
                            params=params, packed_bytes=size)
            plans = plan_weights(path, layer, storage=storage, inexact="requantize")
            dtypes = sorted({f"int{p.container_bits}" for p in plans})
            row.exact = all(p.exact for p in plans)
            row.tflite_dtype = "/".join(dtypes) + ("" if row.exact else " (re-quantized)")
            row.op = plans[0].op
            row.kernel = kernel(row.op, max(p.container_bits for p in plans))
            row.note = "; ".join(sorted({p.note for p in plans if p.note}))
            if row.kernel.startswith("LiteRT reference") and row.exact:
                row.note = "; ".join(filter(None, [row.note, PARITY_NOTE]))
            report.append(row)
        elif params:
            report.append(ExportRow(path, cls, "float", params=params, packed_bytes=4.0 * params,
                                    tflite_dtype="float32", exact=True,
                                    note="not quantized: no int8 range unless representative_data"
                                    " is given to export_tflite"))
    return report
