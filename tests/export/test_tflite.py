"""export_tflite: full-integer graphs, int4 tensors, parity with the Keras model, errors."""

import keras
import numpy as np
import pytest
from tensorflow.lite.python import schema_py_generated as schema

import autoqnn
from autoqnn.export import ExportError, run_tflite
from autoqnn.export.lowering import plan_weights

from .conftest import output_step


def tensor_types(path):
    """{tensor name: TensorType name} of the constant (weight) tensors of a .tflite file."""
    buf = open(path, "rb").read()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = model.subgraphs[0]
    return {t.name.decode(): names[t.type] for t in graph.tensors
            if model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data)}


def parity_steps(qmodel, info, data):
    """|TFLite - Keras| in output quantization steps, element-wise."""
    expected = qmodel.predict(data, verbose=0)
    got = run_tflite(info.path, data)
    return np.abs(got - expected) / output_step(info)


def test_int8_per_channel_is_bit_exact(cnn_w8, data, tmp_path):
    info = autoqnn.export_tflite(cnn_w8, tmp_path / "w8.tflite")
    assert set(info.weight_dtypes.values()) == {"int8"}
    steps = parity_steps(cnn_w8, info, data)
    # XNNPACK's int8 kernels round like the float fake-quant graph: bit-exact
    # up to float-accumulation ties, never more than one output step.
    assert steps.max() <= 1.0 + 1e-4
    assert np.mean(steps < 0.5) >= 0.99
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=info.path)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    types = set(tensor_types(info.path).values())
    assert "FLOAT32" not in types
    # representative_data only serves tensors without a range: the model's own
    # ranges are kept even when the data would calibrate them differently.
    again = autoqnn.export_tflite(cnn_w8, tmp_path / "rep.tflite", representative_data=data * 3)
    assert again.output_quantization == info.output_quantization
    assert parity_steps(cnn_w8, again, data).max() <= 1.0 + 1e-4


def operator_names(path):
    from autoqnn.export.flatbuffer import operators

    return [name for name, _types in operators(open(path, "rb").read())]


def test_storage_follows_each_layers_bits(cnn_w4, cnn_w8, data, tmp_path):
    narrow = autoqnn.export_tflite(cnn_w4, tmp_path / "w4.tflite")  # storage="narrow"
    assert narrow.weight_dtypes == {"conv1/kernel": "int4", "dw/kernel": "int4",
                                    "logits/kernel": "int4"}
    assert "INT4" in tensor_types(narrow.path).values()
    plan = next(p for p in narrow.weight_plans if p.layer == "logits")
    assert plan.exact and plan.grid.max_abs <= 7 and plan.bits == 4
    # The per-channel Dense is a FULLY_CONNECTED again (XNNPACK's int4 fast path), with no
    # dynamic-shape ops around it.
    ops = operator_names(narrow.path)
    assert ops.count("FULLY_CONNECTED") == 1 and ops.count("CONV_2D") == 1
    assert "SHAPE" not in ops and "STRIDED_SLICE" not in ops and "RESHAPE" not in ops
    # ...and it still takes any batch size.
    np.testing.assert_array_equal(run_tflite(narrow.path, data, batch_size=16),
                                  run_tflite(narrow.path, data))
    # int4 convolutions run on LiteRT's reference kernels; its int32 bias is at input step x
    # int4 weight step, coarser than the Keras model's float bias: a small drift.
    assert parity_steps(cnn_w4, narrow, data).max() <= 4.0 + 1e-4
    fast = autoqnn.export_tflite(cnn_w4, tmp_path / "w4_fast.tflite", storage="xnnpack")
    assert fast.weight_dtypes == {"conv1/kernel": "int8", "dw/kernel": "int8",
                                  "logits/kernel": "int4"}
    int8 = autoqnn.export_tflite(cnn_w4, tmp_path / "w4_int8.tflite", storage="int8")
    assert set(int8.weight_dtypes.values()) == {"int8"}
    assert narrow.size_bytes < fast.size_bytes < int8.size_bytes
    # In int8 containers the 4-bit integers are scaled to the finest step that fits (x18),
    # so the int32 bias is 18x finer: within one output step of the Keras model.
    conv = next(p for p in int8.weight_plans if p.layer == "conv1")
    assert 7 * 17 < conv.grid.max_abs <= 127 and conv.bits == 4
    assert np.allclose(conv.grid.ints * conv.grid.scale, conv.values.reshape(
        conv.grid.ints.shape), rtol=1e-5, atol=1e-7)
    assert parity_steps(cnn_w4, int8, data).max() <= 1.0 + 1e-4
    assert parity_steps(cnn_w4, fast, data).max() <= 1.0 + 1e-4
    # The older int4= spelling maps onto storage; both at once is an error.
    legacy = autoqnn.export_tflite(cnn_w4, tmp_path / "legacy.tflite", int4=True)
    assert legacy.weight_dtypes == fast.weight_dtypes
    with pytest.raises(ValueError, match="not both"):
        autoqnn.export_tflite(cnn_w4, tmp_path / "x.tflite", storage="int8", int4=True)
    with pytest.raises(ValueError, match="storage must be one of"):
        autoqnn.export_tflite(cnn_w4, tmp_path / "x.tflite", storage="int4")


def test_float_io_option(float_cnn, data, tmp_path):
    qmodel = autoqnn.quantize(float_cnn, weight_bits=8, granularity="per_tensor",
                              calibration_data=data)
    info = autoqnn.export_tflite(qmodel, tmp_path / "f.tflite", int8_io=False)
    from ai_edge_litert.interpreter import Interpreter

    assert Interpreter(model_path=info.path).get_input_details()[0]["dtype"] == np.float32
    expected = qmodel.predict(data, verbose=0)
    got = run_tflite(info.path, data)
    step = (expected.max() - expected.min()) / 255
    assert np.abs(got - expected).max() <= step * 1.001


@pytest.mark.parametrize("scheme", ["binary", "ternary", "pot"])
def test_non_uniform_schemes_export_exactly(scheme, data, tmp_path):
    cls = type(autoqnn.get_scheme(scheme, bits=autoqnn.get_scheme(scheme).min_bits))
    bits = min(max(cls.min_bits, 3), cls.max_bits)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))
    qmodel = autoqnn.quantize(model, scheme=scheme, weight_bits=bits, calibration_data=data)
    info = autoqnn.export_tflite(qmodel, tmp_path / f"{scheme}.tflite")
    assert [p.exact for p in info.weight_plans] == [True, True]
    # binary / ternary levels {-a, (0,) a} fit in [-1, 1]: an int2 fully connected kernel;
    # 3-bit powers of two (|int| <= 4) in int4; a convolution has no int2 kernel: int4.
    fc = "int2" if scheme in ("binary", "ternary") else "int4"
    assert info.weight_dtypes == {"conv/kernel": "int4", "fc/kernel": fc}
    assert parity_steps(qmodel, info, data).max() <= 1.0 + 1e-4


# Which weight schemes' 4-bit levels (the scheme's minimum if above 4, its maximum if below)
# embed exactly in the int8 grid of the tiny CNN's Dense kernel. A newly registered scheme
# fails test_every_weight_scheme_is_classified until it is added to one of the two sets.
EXPORT_EXACTLY = {"acd", "apot", "asd", "binary", "clipq", "lsq", "minifloat", "pot", "ternary",
                  "uniform", "vecq"}
OFF_THE_INT8_GRID = {"esb", "ml2q", "resq", "zoomq"}


def test_every_weight_scheme_is_classified():
    assert not EXPORT_EXACTLY & OFF_THE_INT8_GRID
    assert set(autoqnn.list_schemes("weight")) == EXPORT_EXACTLY | OFF_THE_INT8_GRID


def _logits_layer(float_cnn, name):
    cls = type(autoqnn.get_scheme(name, bits=autoqnn.get_scheme(name).min_bits))
    bits = min(max(cls.min_bits, 4), cls.max_bits)
    qmodel = autoqnn.quantize(float_cnn, scheme=name, weight_bits=bits, activation_bits=None)
    return qmodel.get_layer("logits")


@pytest.mark.parametrize("name", sorted(EXPORT_EXACTLY))
def test_weight_scheme_embeds_exactly(float_cnn, name):
    (plan,) = plan_weights("logits", _logits_layer(float_cnn, name))
    assert plan.exact and plan.grid is not None
    ints = np.asarray(plan.grid.ints)
    assert np.array_equal(ints, np.round(ints)) and np.abs(ints).max() <= 127
    assert np.allclose(ints * plan.grid.scale, plan.values, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(OFF_THE_INT8_GRID))
def test_weight_scheme_off_the_grid_names_the_layer(float_cnn, name):
    layer = _logits_layer(float_cnn, name)
    with pytest.raises(ExportError, match=rf"layer 'logits': the {name} levels .*int8 grid"):
        plan_weights("logits", layer)
    # The fallback always works and says it is not exact.
    (plan,) = plan_weights("logits", layer, inexact="requantize")
    assert not plan.exact and plan.grid is None and "not exact" in plan.note


def test_float_model_is_refused(float_cnn, tmp_path):
    with pytest.raises(ExportError, match="not quantized"):
        autoqnn.export_tflite(float_cnn, tmp_path / "m.tflite")


def test_uncalibrated_model_names_the_layers(float_cnn, tmp_path):
    with pytest.warns(UserWarning):
        qmodel = autoqnn.quantize(float_cnn)
    with pytest.raises(ExportError, match=r"image_aq.*not calibrated"):
        autoqnn.export_tflite(qmodel, tmp_path / "m.tflite")


def test_unwritable_path_is_named(cnn_w8, tmp_path):
    missing = tmp_path / "no_such_dir" / "m.tflite"
    with pytest.raises(ExportError, match="no_such_dir"):
        autoqnn.export_tflite(cnn_w8, missing)
    with pytest.raises(ExportError, match="is a directory"):
        autoqnn.export_tflite(cnn_w8, tmp_path)


def test_layer_litert_cannot_run_in_int8_is_named(data, tmp_path):
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(6, name="fc")(x)
    x = keras.layers.Activation("softplus", name="soft")(x)
    outputs = keras.layers.Dense(3, name="out")(x)
    qmodel = autoqnn.quantize(keras.Model(inputs, outputs), calibration_data=data,
                              config={"fc": {"activation_bits": None}})
    with pytest.raises(ExportError, match="soft"):
        autoqnn.export_tflite(qmodel, tmp_path / "m.tflite")


@pytest.mark.parametrize("name", ["apot", "minifloat", "esb"])
def test_inexact_levels_name_the_layer(float_cnn, name):
    """At 8 bits these schemes' levels are off the int8 grid in every layer."""
    qmodel = autoqnn.quantize(float_cnn, scheme=name, weight_bits=8, activation_bits=None)
    for layer in ("conv1", "dw", "logits"):
        with pytest.raises(ExportError, match=rf"layer '{layer}': the {name} levels.*int8 grid"):
            plan_weights(layer, qmodel.get_layer(layer))
