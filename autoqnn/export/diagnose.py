"""Why a converted graph is not full-integer: its float operators and the layers they
come from.

Example:
    >>> from autoqnn.export.diagnose import layer_names_in
    >>> import keras
    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
    >>> layer_names_in("error at 'model/fc/MatMul/' op", model)
    ['fc']
"""

from __future__ import annotations

import re

import keras

from autoqnn.export.lowering import iter_layers
from autoqnn.layers.composite import QuantizedComposite


def layer_names_in(message: str, model) -> list[str]:
    found = []
    for path, _layer in iter_layers(model):
        name = path.split("/")[-1]
        if re.search(rf"/{re.escape(name)}(_\d+)?/", message):
            found.append(path)
    # Keep the most specific names ("conv1_bn" over "conv1").
    return [n for n in found if not any(o != n and o.startswith(n) for o in found)]


def float_hint(model) -> str:
    """Why a model with normalization or attention layers has tensors without a range."""
    layers = [layer for _, layer in iter_layers(model)]
    hints = []
    if any(isinstance(layer, keras.layers.LayerNormalization) for layer in layers):
        hints.append("LayerNormalization's mean, variance and rsqrt")
    attention = [layer for layer in layers if isinstance(layer, keras.layers.MultiHeadAttention)]
    if any(not getattr(layer, "attention_aq", None) for layer in attention):
        hints.append("the attention core of MultiHeadAttention (query/key/value, scores, "
                     "softmax; config={MultiHeadAttention: {'attention_activations': True}} "
                     "quantizes its matmul operands)")
    elif attention:
        hints.append("the attention scores and the softmax input")
    if any(isinstance(layer, QuantizedComposite) and not isinstance(
            layer, keras.layers.MultiHeadAttention) for layer in layers):
        hints.append("float sublayers inside composite layers")
    if not hints:
        return ""
    return (". In this model, " + "; ".join(hints) + " compute on tensors that have no int8 "
            "range in the model (TFLite needs one per tensor); representative_data= lets the "
            "converter calibrate them")


def float_operators(flatbuffer: bytes) -> list[tuple[str, str]]:
    """`(op name, output tensor name)` of every operator computing in float32.

    QUANTIZE / DEQUANTIZE (the float I/O ends) are not counted.
    """
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    found = []
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            name = op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            tensors = [graph.tensors[i] for i in list(op.outputs) if i >= 0]
            if any(t.type == schema.TensorType.FLOAT32 for t in tensors):
                found.append((name, tensors[0].name.decode("utf-8", "replace")))
    return found
