"""Weight-only `.tflite` files: integer weights, float activations (`activations="float"`).

For models whose activations should stay float (a model quantized with
`activation_bits=None`, or one whose activation ranges are not wanted on the
phone), `export_tflite(..., activations="float")` writes each quantized
weight as an int8 or int4 tensor (the same `storage=` rule as full-integer
files) followed by a DEQUANTIZE, and computes in float32: the file is as
small as the integer one and LiteRT reproduces the Keras model to float
rounding. The activation quantizers are left out (identity).

`dequantize_weights` is the pass over the converted float file: every float
CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weight whose values embed in a
small integer grid (per output channel) becomes integer + DEQUANTIZE; the
weights that do not (layers left float) stay float32 and are returned by name.

Example:
    >>> import numpy as np
    >>> from autoqnn.export.weight_only import int4_bytes
    >>> int4_bytes(np.array([1, -1, 7], np.int8)).tolist()  # low nibble first
    [241, 7]
"""

from __future__ import annotations

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

from autoqnn.export.flatbuffer import op_code, tensor_name
from autoqnn.export.grid import INT8_MAX, embed_in_int_grid
from autoqnn.export.storage import NARROW_TYPES, finer_grid

_WEIGHT_OPS = {schema.BuiltinOperator.CONV_2D: ("CONV_2D", 0),
               schema.BuiltinOperator.DEPTHWISE_CONV_2D: ("DEPTHWISE_CONV_2D", 3),
               schema.BuiltinOperator.FULLY_CONNECTED: ("FULLY_CONNECTED", 0)}


def int4_bytes(values: np.ndarray) -> np.ndarray:
    """Packs integers in `[-8, 7]` two to a byte (low nibble first)."""
    values = np.asarray(values, np.int8).ravel()
    padded = np.concatenate([values, np.zeros(values.size % 2, np.int8)])
    nibbles = (padded.astype(np.int16) & 15).astype(np.uint8).reshape(-1, 2)
    return nibbles[:, 0] | (nibbles[:, 1] << 4)


def _dequantize_code(model) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == schema.BuiltinOperator.DEQUANTIZE:
            code.version = max(code.version, 6)  # int4 / per-channel inputs
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.DEQUANTIZE
    code.version = 6
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def dequantize_weights(model: schema.ModelT, storage: str) -> tuple[dict, list[str]]:
    """Stores the float weights that lie on an integer grid as int8 / int4 + DEQUANTIZE.

    Args:
        model: the object tree of a float `.tflite` file (changed in place).
        storage: "narrow" / "xnnpack": int4 where the levels fit `[-7, 7]`
            (DEQUANTIZE runs any op's int4 weights); "int8": int8 only.

    Returns:
        `({weight tensor name: "int4" | "int8"}, [float weight tensor names])`.
    """
    graph = model.subgraphs[0]
    stored, left_float, done = {}, [], set()
    new_ops = []
    for op in graph.operators:
        info = _WEIGHT_OPS.get(op_code(model, op))
        index = op.inputs[1] if info is not None and len(op.inputs) > 1 else -1
        tensor = graph.tensors[index] if index >= 0 else None
        if (tensor is None or tensor.type != schema.TensorType.FLOAT32 or index in done
                or model.buffers[tensor.buffer].data is None
                or not len(model.buffers[tensor.buffer].data)):
            new_ops.append(op)
            continue
        done.add(index)
        op_name, axis = info
        values = np.frombuffer(bytes(bytearray(model.buffers[tensor.buffer].data)),
                               np.float32).reshape(tuple(tensor.shape))
        grid = embed_in_int_grid(values, axis, INT8_MAX)
        if grid is None:
            left_float.append(tensor_name(tensor))
            new_ops.append(op)
            continue
        bits = 4 if storage != "int8" and grid.max_abs <= 7 and 4 in NARROW_TYPES[op_name] else 8
        grid = finer_grid(grid, bits)
        ints = np.moveaxis(grid.ints.reshape(np.moveaxis(values, axis, -1).shape), -1, axis)
        quantized = schema.TensorT()
        quantized.name = (tensor_name(tensor) + "/int").encode()
        quantized.shape = np.asarray(tensor.shape, np.int32)
        quantized.type = schema.TensorType.INT4 if bits == 4 else schema.TensorType.INT8
        quantized.quantization = schema.QuantizationParametersT()
        quantized.quantization.scale = grid.scale.astype(np.float32)
        quantized.quantization.zeroPoint = np.zeros(grid.scale.size, np.int64)
        quantized.quantization.quantizedDimension = axis
        buffer = schema.BufferT()
        flat = ints.astype(np.int8).ravel()
        buffer.data = int4_bytes(flat) if bits == 4 else flat.view(np.uint8)
        model.buffers.append(buffer)
        quantized.buffer = len(model.buffers) - 1
        model.buffers[tensor.buffer].data = None  # the float copy goes
        tensor.buffer = 0  # the DEQUANTIZE output: a computed tensor now
        graph.tensors.append(quantized)
        dequantize = schema.OperatorT()
        dequantize.opcodeIndex = _dequantize_code(model)
        dequantize.inputs = np.asarray([len(graph.tensors) - 1], np.int32)
        dequantize.outputs = np.asarray([index], np.int32)
        new_ops.extend([dequantize, op])
        stored[tensor_name(tensor)] = f"int{bits}"
    graph.operators = new_ops
    return stored, left_float
