"""A mixed-precision model's `.tflite`: each layer stored at its own bits, smaller than W4A8."""

import keras
import numpy as np

import autoqnn
from autoqnn.export import run_tflite


def build_net():
    inputs = keras.Input((8, 8, 2), name="image")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="relu", name="dw")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


def test_mixed_model_is_stored_as_searched(tmp_path):
    keras.utils.set_random_seed(3)
    model = build_net()
    data = np.random.default_rng(0).random((32, 8, 8, 2), dtype=np.float32)
    mixed = autoqnn.quantize(model, weight_bits=4, calibration_data=data, verbose=0,
                             config={"conv": {"weight_bits": 3}, "fc1": {"weight_bits": 2}})
    uniform = autoqnn.quantize(model, weight_bits=4, calibration_data=data, verbose=0)
    info = autoqnn.export_tflite(mixed, tmp_path / "mixed.tflite")
    w4 = autoqnn.export_tflite(uniform, tmp_path / "w4.tflite")
    assert info.weight_dtypes == {"conv/kernel": "int4", "dw/kernel": "int4",
                                  "fc1/kernel": "int2", "logits/kernel": "int4"}
    # fc1 holds most of the weights (1024 x 32): int2 saves 4 KiB over int4.
    assert info.size_bytes < w4.size_bytes - 3500
    report = {r.name: r for r in autoqnn.export_report(mixed)}
    assert (report["fc1"].weight_bits, report["fc1"].tflite_dtype) == (2, "int2")
    assert (report["conv"].weight_bits, report["conv"].tflite_dtype) == (3, "int4")
    assert "no 3-bit tensor type" in report["conv"].note  # wider than searched, and why
    assert report["fc1"].kernel == "XNNPACK"
    expected = mixed.predict(data, verbose=0)
    steps = np.abs(run_tflite(info.path, data) - expected) / info.output_quantization[0][0]
    # int4 convolutions: their int32 bias is stored at input step x int4 weight step, coarser
    # than the model's float bias, and they run on LiteRT's reference kernels: a drift of a
    # few output steps (3 here), which the report states.
    assert steps.max() <= 4.0 + 1e-4
    assert "output steps" in report["conv"].note + report["dw"].note
    # storage="xnnpack": int2 / int4 fully connected on XNNPACK, convolutions int8: exact.
    exact = autoqnn.export_tflite(mixed, tmp_path / "xnnpack.tflite", storage="xnnpack")
    assert exact.weight_dtypes["fc1/kernel"] == "int2"
    steps = np.abs(run_tflite(exact.path, data) - expected) / exact.output_quantization[0][0]
    assert steps.max() <= 1.0 + 1e-4
    assert info.size_bytes < exact.size_bytes < w4.size_bytes
    print("int8 steps", steps.max(), np.mean(steps < 0.5))
    # storage="int8": the same model at XNNPACK's int8 kernels, within one output step.
    fast = autoqnn.export_tflite(mixed, tmp_path / "int8.tflite", storage="int8")
    steps = np.abs(run_tflite(fast.path, data) - expected) / fast.output_quantization[0][0]
    assert steps.max() <= 1.0 + 1e-4
