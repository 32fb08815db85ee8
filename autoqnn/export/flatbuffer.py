"""Passes over a converted `.tflite` flatbuffer: the ops the converter cannot emit.

The TFLite converter lowers a per-channel fake-quant Dense kernel only as a
1x1 CONV_2D (`autoqnn.export.calls.dense_as_conv_call`) and never writes
int2 tensors. Two passes fix the file it wrote:

* `convs_to_fully_connected`: a 1x1 CONV_2D on a `(N, 1, 1, C)` input (what
  `dense_as_conv_call` traces) becomes the FULLY_CONNECTED the layer is:
  same weights (`(out, 1, 1, in)` viewed as `(out, in)`, per-channel scales on
  axis 0), same int32 bias, same fused activation, `keep_num_dims` so the
  tensors around it keep their shapes. XNNPACK runs int8, int4 and int2
  FULLY_CONNECTED on its fast paths (int4 CONV_2D falls back to LiteRT's
  reference kernel).
* `drop_fc_reshapes`: the RESHAPE to `(N, 1, 1, C)` before such a
  FULLY_CONNECTED and the RESHAPE back to `(N, out)` after it go (it reads
  the 2-D rows itself);
* `short_names`: internal tensor names keep their first fused segment (the
  converter joins every fused op's name with ";"), saving bytes;
* `pack_int2`: FULLY_CONNECTED int4 weights whose integers lie in `[-1, 1]`
  (ternary: the 2-bit symmetric grid) are repacked four to a byte (INT2).

Example:
    >>> import numpy as np
    >>> from autoqnn.export.flatbuffer import int2_bytes
    >>> int2_bytes(np.array([1, -1, 0, -2, 1], np.int8)).tolist()  # low bits first
    [141, 1]
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema

_OP_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TYPE_NAMES = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def load(flatbuffer: bytes) -> schema.ModelT:
    """The mutable object tree of a `.tflite` flatbuffer."""
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytes(flatbuffer), 0))


def dump(model: schema.ModelT) -> bytes:
    """Serialises an object tree back to `.tflite` bytes."""
    builder = flatbuffers.Builder(1 << 16)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tensor_name(tensor) -> str:
    """A flatbuffer tensor's name as a str."""
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def op_code(model: schema.ModelT, op) -> int:
    code = model.operatorCodes[op.opcodeIndex]
    return max(code.builtinCode, code.deprecatedBuiltinCode)


def operators(flatbuffer: bytes) -> list[tuple[str, list[str]]]:
    """`[(op name, [input tensor types])]` of the main subgraph, in execution order."""
    model = load(flatbuffer)
    graph = model.subgraphs[0]
    return [(_OP_NAMES.get(op_code(model, op), str(op_code(model, op))),
             [_TYPE_NAMES.get(graph.tensors[i].type, "?") for i in op.inputs if i >= 0])
            for op in graph.operators]


def _code_index(model: schema.ModelT, builtin: int) -> int:
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, 127)
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _fc_version(weight_type: int) -> int:
    # The FULLY_CONNECTED versions LiteRT registers: 4 = int8 per-channel, 13 = int4, 14 = int2.
    return {schema.TensorType.INT4: 13, schema.TensorType.INT2: 14}.get(weight_type, 4)


def convs_to_fully_connected(model: schema.ModelT) -> list[str]:
    """Turns 1x1 convolutions of a 1x1 map (traced Dense kernels) into FULLY_CONNECTED.

    Such a convolution is a matrix product of its input rows: FULLY_CONNECTED
    with `keep_num_dims` computes the same integers with the same shapes.

    Args:
        model: the object tree (changed in place).

    Returns:
        The filter tensor names converted.
    """
    graph = model.subgraphs[0]
    fc_index = None
    done = []
    for op in graph.operators:
        if op_code(model, op) != schema.BuiltinOperator.CONV_2D:
            continue
        filt = graph.tensors[op.inputs[1]]
        name = tensor_name(filt)
        shape = list(filt.shape)
        opts = op.builtinOptions
        if (len(shape) != 4 or shape[1:3] != [1, 1] or opts.strideH != 1 or opts.strideW != 1
                or opts.dilationHFactor != 1 or opts.dilationWFactor != 1):
            continue
        in_shape = list(graph.tensors[op.inputs[0]].shape)
        if len(in_shape) != 4 or in_shape[1:3] != [1, 1]:
            continue
        if fc_index is None:
            fc_index = _code_index(model, schema.BuiltinOperator.FULLY_CONNECTED)
        fc = schema.FullyConnectedOptionsT()
        fc.fusedActivationFunction = opts.fusedActivationFunction
        fc.keepNumDims = True
        filt.shape = np.asarray([shape[0], shape[3]], np.int32)
        if filt.shapeSignature is not None and len(filt.shapeSignature):
            filt.shapeSignature = np.asarray([shape[0], shape[3]], np.int32)
        op.opcodeIndex = fc_index
        op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = fc
        done.append(name)
    _set_fc_versions(model)
    return done


def _set_fc_versions(model: schema.ModelT):
    graph = model.subgraphs[0]
    versions = [_fc_version(graph.tensors[op.inputs[1]].type) for op in graph.operators
                if op_code(model, op) == schema.BuiltinOperator.FULLY_CONNECTED]
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == \
                schema.BuiltinOperator.FULLY_CONNECTED and versions:
            code.version = max(code.version, *versions)


def _consumers(graph, index) -> list:
    return [op for op in graph.operators if index in list(op.inputs)]


def _is_row_view(shape) -> bool:
    return len(shape) == 4 and list(shape[1:3]) == [1, 1]


def drop_fc_reshapes(model: schema.ModelT) -> int:
    """Removes the RESHAPEs around FULLY_CONNECTED ops that only view rows as
    `(N, 1, 1, C)` (FULLY_CONNECTED flattens its input to rows itself, and a
    RESHAPE back to the same 2-D rows is a copy). Returns how many RESHAPEs went."""
    graph = model.subgraphs[0]
    keep = {int(i) for i in graph.inputs} | {int(i) for i in graph.outputs}
    fc = schema.BuiltinOperator.FULLY_CONNECTED
    reshape = schema.BuiltinOperator.RESHAPE
    for op in graph.operators:  # 2-D outputs where only RESHAPEs read them
        out = int(op.outputs[0])
        if (op_code(model, op) == fc and op.builtinOptions.keepNumDims
                and out not in keep and _consumers(graph, out)
                and all(op_code(model, c) == reshape for c in _consumers(graph, out))):
            shape = [int(d) for d in graph.tensors[out].shape]
            op.builtinOptions.keepNumDims = False
            graph.tensors[out].shape = np.asarray([int(np.prod(shape[:-1])), shape[-1]],
                                                  np.int32)
            graph.tensors[out].shapeSignature = None
    dropped = set()
    for op in graph.operators:
        if op_code(model, op) != fc:
            continue
        producer = next((p for p in graph.operators if int(op.inputs[0]) in
                         [int(o) for o in p.outputs]), None)
        view = int(op.inputs[0])
        if (producer is not None and op_code(model, producer) == reshape
                and _is_row_view(graph.tensors[view].shape) and view not in keep
                and len(_consumers(graph, view)) == 1):
            op.inputs = np.concatenate([[producer.inputs[0]], op.inputs[1:]]).astype(np.int32)
            dropped.add(id(producer))
        out = int(op.outputs[0])
        after = _consumers(graph, out)
        if (len(after) == 1 and op_code(model, after[0]) == reshape and out not in keep
                and not op.builtinOptions.keepNumDims
                and [int(d) for d in graph.tensors[int(after[0].outputs[0])].shape]
                == [int(d) for d in graph.tensors[out].shape]):
            op.outputs = np.asarray(after[0].outputs, np.int32).copy()
            dropped.add(id(after[0]))
    graph.operators = [op for op in graph.operators if id(op) not in dropped]
    return len(dropped)


def short_names(model: schema.ModelT):
    """Cuts internal tensor names at their first ";" (inputs and outputs keep theirs)."""
    graph = model.subgraphs[0]
    keep = set(graph.inputs.tolist()) | set(graph.outputs.tolist())
    for index, tensor in enumerate(graph.tensors):
        if index not in keep and tensor.name and b";" in tensor.name:
            tensor.name = tensor.name.split(b";")[0]


def int4_values(data: np.ndarray, count: int) -> np.ndarray:
    """Unpacks `count` int4 values (two a byte, low nibble first)."""
    data = np.asarray(data, np.uint8)
    nibbles = np.stack([data & 15, data >> 4], axis=-1).ravel()[:count].astype(np.int8)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def int2_bytes(values: np.ndarray) -> np.ndarray:
    """Packs integers in `[-2, 1]` four to a byte (lowest bits first)."""
    values = np.asarray(values, np.int8).ravel()
    padded = np.concatenate([values, np.zeros((-values.size) % 4, np.int8)])
    crumbs = (padded.astype(np.int16) & 3).astype(np.uint8).reshape(-1, 4)
    return crumbs[:, 0] | (crumbs[:, 1] << 2) | (crumbs[:, 2] << 4) | (crumbs[:, 3] << 6)


def pack_int2(model: schema.ModelT) -> list[str]:
    """Stores int4 FULLY_CONNECTED weights whose integers lie in `[-1, 1]` as INT2.

    Returns:
        The tensor names repacked.
    """
    graph = model.subgraphs[0]
    done = []
    for op in graph.operators:
        if op_code(model, op) != schema.BuiltinOperator.FULLY_CONNECTED:
            continue
        tensor = graph.tensors[op.inputs[1]]
        name = tensor_name(tensor)
        if tensor.type != schema.TensorType.INT4:
            continue
        buffer = model.buffers[tensor.buffer]
        values = int4_values(buffer.data, int(np.prod(tensor.shape)))
        if np.abs(values).max(initial=0) > 1:
            continue
        buffer.data = int2_bytes(values)
        tensor.type = schema.TensorType.INT2
        done.append(name)
    _set_fc_versions(model)
    return done
