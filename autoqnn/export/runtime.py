"""Running a `.tflite` file with LiteRT on float inputs (int8 I/O handled).

Example:
    >>> import numpy as np
    >>> from autoqnn.export.runtime import quantize_input
    >>> detail = {"dtype": np.int8, "quantization": (0.5, -3)}
    >>> quantize_input(np.array([0.0, 1.0, 100.0]), detail).tolist()
    [-3, -1, 127]
"""

from __future__ import annotations

import os

import numpy as np
from ai_edge_litert.interpreter import Interpreter


def run_tflite(path_or_bytes, inputs, *, num_threads=1, batch_size=1) -> np.ndarray:
    """Runs a single-input, single-output `.tflite` model with LiteRT on float inputs.

    Quantizes the inputs and dequantizes the outputs for int8 I/O models.

    Args:
        path_or_bytes: a file path or the flatbuffer bytes.
        inputs: float array, batch first.
        num_threads: LiteRT threads.
        batch_size: rows per invoke.

    Returns:
        The float outputs, batch first.
    """
    kwargs = {"num_threads": num_threads}
    if isinstance(path_or_bytes, (bytes, bytearray)):
        interpreter = Interpreter(model_content=bytes(path_or_bytes), **kwargs)
    else:
        interpreter = Interpreter(model_path=os.fspath(path_or_bytes), **kwargs)
    inp = interpreter.get_input_details()[0]
    inputs = np.asarray(inputs, np.float32)
    interpreter.resize_tensor_input(inp["index"], (batch_size,) + inputs.shape[1:])
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start:start + batch_size]
        if len(chunk) < batch_size:
            interpreter.resize_tensor_input(inp["index"], (len(chunk),) + inputs.shape[1:])
            interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], quantize_input(chunk, inp))
        interpreter.invoke()
        results.append(dequantize_output(interpreter.get_tensor(out["index"]), out))
    return np.concatenate(results)


def quantize_input(x, detail):
    """Float `x` as the input tensor's dtype (int8: round to its scale and zero point)."""
    if detail["dtype"] == np.float32:
        return np.asarray(x, np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    q = np.round(np.asarray(x, np.float64) / scale) + zero
    return np.clip(q, info.min, info.max).astype(detail["dtype"])


def dequantize_output(y, detail):
    """The float value of an output tensor."""
    if detail["dtype"] == np.float32:
        return np.asarray(y, np.float32)
    scale, zero = detail["quantization"]
    return ((np.asarray(y, np.float64) - zero) * scale).astype(np.float32)
