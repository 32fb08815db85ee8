"""export_tflite(activations="float"): integer weights, float activations."""

import numpy as np
import pytest

import autoqnn
from autoqnn.export import run_tflite
from autoqnn.export.flatbuffer import operators


@pytest.fixture(scope="module")
def weights_only(float_cnn, data):
    return autoqnn.quantize(float_cnn, weight_bits=4, activation_bits=None, calibration_data=data)


def test_weight_only_file_is_small_and_exact(weights_only, cnn_w4, data, tmp_path):
    # A model without activation quantizers has no full-integer file...
    with pytest.raises(autoqnn.export.ExportError, match="activations=.float."):
        autoqnn.export_tflite(weights_only, tmp_path / "int.tflite")
    # ...but a weight-only one: int4 weights, DEQUANTIZE, float32 ops.
    info = autoqnn.export_tflite(weights_only, tmp_path / "wo.tflite", activations="float")
    assert set(info.weight_dtypes.values()) == {"int4"}
    ops = operators(open(info.path, "rb").read())
    assert [types for name, types in ops if name == "DEQUANTIZE"] == [["INT4"]] * 3
    assert ("CONV_2D", ["FLOAT32"] * 3) in ops
    expected = weights_only.predict(data, verbose=0)
    np.testing.assert_allclose(run_tflite(info.path, data), expected, atol=1e-5)
    wide = autoqnn.export_tflite(weights_only, tmp_path / "wo8.tflite", activations="float",
                                 storage="int8")
    assert set(wide.weight_dtypes.values()) == {"int8"}
    assert info.size_bytes < wide.size_bytes
    np.testing.assert_allclose(run_tflite(wide.path, data), expected, atol=1e-5)
    # The weights of a W4A8 model exported weight-only are stored the same way.
    again = autoqnn.export_tflite(cnn_w4, tmp_path / "w4.tflite", activations="float")
    assert again.size_bytes == info.size_bytes


def test_weight_only_options_that_do_not_apply_raise(weights_only, data, tmp_path):
    with pytest.raises(ValueError, match="int8_io"):
        autoqnn.export_tflite(weights_only, tmp_path / "x.tflite", activations="float",
                              int8_io=True)
    with pytest.raises(ValueError, match="representative_data"):
        autoqnn.export_tflite(weights_only, tmp_path / "x.tflite", activations="float",
                              representative_data=data)
    with pytest.raises(ValueError, match="activations must be one of"):
        autoqnn.export_tflite(weights_only, tmp_path / "x.tflite", activations="int4")
