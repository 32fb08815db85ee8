"""AdaRound: lower layer error than nearest rounding, exact write-back, config, export."""

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.ptq import PTQConfig, adaround
from autoqnn.ptq.adaround import roundable_layers, weight_grid
from autoqnn.tune.space import SearchSpace

ITERATIONS = 200  # enough for a clear gain on these tiny layers, ~1 s per layer


@pytest.fixture
def data():
    return np.random.default_rng(2).random((128, 12, 12, 1), dtype=np.float32)


def _quantize(model, data, **ptq):
    return autoqnn.quantize(model, calibration_data=data, ptq={"weight_bits": 3, **ptq})


def _grids(qmodel):
    """{layer: (min, max) of its kernel grid}, as the scheme computes them now."""
    out = {}
    for layer in roundable_layers(qmodel):
        quantizer = layer.weight_quantizers["kernel"]
        lo, hi = quantizer.scheme.grid_range(layer.kernel, quantizer.state,
                                             channel_axis=layer.weight_channel_axes["kernel"])
        out[layer.name] = (np.asarray(lo), np.asarray(hi))
    return out


def _output_mse(model, qmodel, x):
    return float(np.mean((qmodel.predict(x, verbose=0) - model.predict(x, verbose=0)) ** 2))


def test_lowers_the_layer_error_of_nearest_rounding(small_cnn, data):
    qmodel = _quantize(small_cnn, data)
    nearest_mse = _output_mse(small_cnn, qmodel, data)
    stats = adaround(qmodel, data, iterations=ITERATIONS)
    assert set(stats) == {"conv1", "dw", "logits"}
    for name, layer_stats in stats.items():
        assert layer_stats["kept"] == "adaround", name
        assert layer_stats["loss_adaround"] < layer_stats["loss_nearest"], name
        assert 0.0 < layer_stats["changed"] < 0.5
    # The layers' gains add up end to end (loose: a local objective, not the output's).
    assert _output_mse(small_cnn, qmodel, data) < nearest_mse


@pytest.mark.parametrize("granularity, grid", [
    ("per_channel", "asymmetric"),
    ("per_tensor", "symmetric"),
    ("per_channel", "symmetric_pot"),
])
def test_write_back_is_exact_and_on_the_grid(small_cnn, data, granularity, grid):
    qmodel = _quantize(small_cnn, data, granularity=granularity, grid=grid,
                       weight_clipping="mse")
    before = _grids(qmodel)
    nearest = {layer.name: np.asarray(layer.quantized_weight("kernel"))
               for layer in roundable_layers(qmodel)}
    stats = adaround(qmodel, data, iterations=ITERATIONS)
    assert all(r["kept"] in ("adaround", "nearest") for r in stats.values())  # written exactly
    # The grid is a statistic of the kernel: bit-identical after the write-back.
    for name, (lo, hi) in _grids(qmodel).items():
        np.testing.assert_array_equal(lo, before[name][0])
        np.testing.assert_array_equal(hi, before[name][1])
    for layer in roundable_layers(qmodel):
        grid = weight_grid(layer)
        q = np.asarray(layer.quantized_weight("kernel"))
        levels = (q - grid["offset"]) / grid["step"]
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
        bits = layer.weight_quantizers["kernel"].scheme.bits
        assert levels.min() > -0.5 and levels.max() < 2**bits - 0.5
        # Only a rounding changed: by at most one step, and some did change.
        moved = np.abs(q - nearest[layer.name]) / grid["step"]
        assert moved.max() < 1.0 + 1e-3
        assert (moved > 0.5).any(), layer.name


def test_keras_round_trip_is_identical(small_cnn, data, tmp_path):
    qmodel = _quantize(small_cnn, data, rounding="adaround", adaround_iterations=50)
    assert set(qmodel.autoqnn_ptq["rounding"]) == {"conv1", "dw", "logits"}
    path = tmp_path / "adaround.keras"
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(data, verbose=0),
                                  qmodel.predict(data, verbose=0))


def test_bias_correction_and_tflite_export(small_cnn, data, tmp_path):
    qmodel = autoqnn.quantize(small_cnn, calibration_data=data,
                              ptq={"weight_bits": 4, "grid": "symmetric", "rounding": "adaround",
                                   "adaround_iterations": 50, "bias_correction": True})
    result = qmodel.autoqnn_ptq
    assert set(result["bias_shifts"]) == {"conv1", "dw", "logits"}
    assert all(r["kept"] in ("adaround", "nearest") for r in result["rounding"].values())
    info = autoqnn.export_tflite(qmodel, tmp_path / "adaround.tflite")
    got = autoqnn.export.run_tflite(info.path, data[:16])
    steps = np.abs(got - qmodel.predict(data[:16], verbose=0)) / info.output_quantization[0][0]
    assert steps.max() <= 1.0 + 1e-4  # the export tests' parity bound


def test_needs_calibration_data(small_cnn):
    with pytest.raises(ValueError, match="rounding='adaround' needs calibration_data, got None"):
        autoqnn.quantize(small_cnn, ptq={"rounding": "adaround"})
    qmodel = autoqnn.quantize(small_cnn, weight_bits=3, activation_bits=None)
    with pytest.raises(ValueError, match="adaround needs calibration_data, got None"):
        adaround(qmodel, None)
    with pytest.raises(ValueError, match="iterations must be a positive int, got 0"):
        adaround(qmodel, np.zeros((4, 12, 12, 1), "float32"), iterations=0)


@pytest.mark.parametrize("field, value, message", [
    ("rounding", "up", "rounding must be one of ['adaround', 'nearest'], got 'up'"),
    ("adaround_iterations", 0, "adaround_iterations must be a positive int, got 0"),
    ("adaround_iterations", 1.5, "adaround_iterations must be a positive int, got 1.5"),
    ("adaround_iterations", True, "adaround_iterations must be a positive int, got True"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError) as info:
        PTQConfig(**{field: value})
    assert message in str(info.value)


def test_config_round_trip_and_search_space():
    cfg = PTQConfig(rounding="adaround", adaround_iterations=300)
    assert PTQConfig.from_dict(cfg.to_dict()) == cfg
    assert PTQConfig().rounding == "nearest"
    space = SearchSpace({"rounding": ["nearest", "adaround"]}, fixed={"weight_bits": 4})
    assert [space.ptq_config(i).rounding for i in range(len(space))] == ["nearest", "adaround"]
