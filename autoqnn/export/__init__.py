"""Export of quantized models: full-integer TFLite, bit-packed `.aqnn`, export report.

* `export_tflite(model, path)`: a full-integer graph, each weight at the narrowest
  type LiteRT runs for its op and bits (int2 / int4 / int8; `storage="int8"` for
  the fastest file); `activations="float"` for a weight-only file.
* `export_packed(model, path)` / `load_packed(path)`: weights at their true bit width.
* `export_report(model)`: per layer bits, bytes, TFLite dtype, kernel and why wider.
* `per_tensor_activations(model, data)`: per-channel activation ranges made per-tensor.
"""

from autoqnn.export.lowering import ExportError
from autoqnn.export.packed import PackedExport, PackedFormatError, export_packed, load_packed
from autoqnn.export.per_tensor import per_tensor_activations
from autoqnn.export.report import ExportReport, ExportRow, export_report
from autoqnn.export.tflite import TFLiteExport, export_tflite, run_tflite

__all__ = [
    "ExportError",
    "ExportReport",
    "ExportRow",
    "PackedExport",
    "PackedFormatError",
    "TFLiteExport",
    "export_packed",
    "export_report",
    "export_tflite",
    "load_packed",
    "per_tensor_activations",
    "run_tflite",
]
