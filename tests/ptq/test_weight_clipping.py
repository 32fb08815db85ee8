"""MSE weight clipping and bias correction on tiny models."""

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.ptq import correct_biases, search_weight_clips


def _weight_error(qmodel, name):
    layer = qmodel.get_layer(name)
    w = keras.ops.convert_to_numpy(layer.kernel)
    q = keras.ops.convert_to_numpy(layer.quantized_weight("kernel"))
    return float(np.sum((q - w) ** 2))


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
def test_mse_clip_lowers_weight_error(small_cnn, granularity):
    qmodel = autoqnn.quantize(small_cnn, weight_bits=3, activation_bits=None,
                              granularity=granularity)
    before = {n: _weight_error(qmodel, n) for n in ("conv1", "dw", "logits")}
    clips = search_weight_clips(qmodel)
    assert set(clips) == {"conv1/kernel", "dw/kernel", "logits/kernel"}
    expected_shape = {"per_tensor": (), "per_channel": (8,)}[granularity]
    assert clips["conv1/kernel"].shape == expected_shape
    assert clips["dw/kernel"].shape == ((8, 1) if granularity == "per_channel" else ())
    for name, error in before.items():
        assert _weight_error(qmodel, name) <= error + 1e-9
    assert _weight_error(qmodel, "logits") < before["logits"]  # 3 bits: clipping pays


def test_clip_ratios_validated(small_cnn):
    qmodel = autoqnn.quantize(small_cnn, activation_bits=None)
    with pytest.raises(ValueError, match="ratios must be"):
        search_weight_clips(qmodel, ratios=[0.0, 1.5])


def test_bias_correction_removes_mean_output_shift(small_cnn, images):
    qmodel = autoqnn.quantize(small_cnn, weight_bits=2, activation_bits=None)
    layer = qmodel.get_layer("logits")
    extractor = keras.Model(qmodel.inputs[0], layer.input)
    x = extractor(images)

    from autoqnn.ptq.weights import _float_call

    quantized, reference = _float_call(layer, x)
    before = np.abs(quantized.mean(axis=0) - reference.mean(axis=0)).max()
    shifts = correct_biases(qmodel, images)
    assert {"conv1", "dw", "logits"} <= set(shifts)
    corrected, _ = _float_call(layer, x)  # same inputs: corrections use one forward pass
    after = np.abs(corrected.mean(axis=0) - reference.mean(axis=0)).max()
    assert after < 1e-4 < before


def test_bias_correction_needs_data(small_cnn):
    with pytest.raises(ValueError, match="bias_correction=True needs calibration_data"):
        autoqnn.quantize(small_cnn, ptq=autoqnn.PTQConfig(bias_correction=True))
