"""PTQConfig: validation names the argument and the value; JSON round trip."""

import pytest

from autoqnn.ptq import PTQConfig


def test_defaults_and_round_trip():
    cfg = PTQConfig(weight_bits=4, keep_layers=("last", "first"), keep_bits=None)
    assert cfg.keep_layers == ("first", "last")
    again = PTQConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert cfg.to_dict()["keep_layers"] == "first+last"
    assert PTQConfig(keep_layers="none").keep_layers == ()


@pytest.mark.parametrize("grid, options", [
    ("symmetric", {"symmetric": True, "power_of_two_scale": False}),
    ("asymmetric", {"symmetric": False, "power_of_two_scale": False}),
    ("symmetric_pot", {"symmetric": True, "power_of_two_scale": True}),
    ("symmetric_weights", {"symmetric": True, "power_of_two_scale": False}),
])
def test_scheme_options(grid, options):
    assert PTQConfig(grid=grid).scheme_options == options
    activations = PTQConfig(grid=grid).activation_scheme_options
    assert activations["symmetric"] == (grid not in ("asymmetric", "symmetric_weights"))


def test_symmetric_weights_grid_exports_without_requantizing(tmp_path):
    """Symmetric weights with asymmetric activations is TFLite's own int8 scheme: the
    model exports as it is (an asymmetric weight grid would need inexact='requantize')."""
    import keras
    import numpy as np

    import autoqnn

    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(x)))
    data = np.random.default_rng(0).random((32, 6, 6, 1), dtype=np.float32)
    qmodel = autoqnn.quantize(model, calibration_data=data, verbose=0,
                              ptq=PTQConfig(weight_bits=4, grid="symmetric_weights"))
    conv = qmodel.get_layer("conv")
    assert all(q.scheme.symmetric for q in conv.weight_quantizers.values())
    activations = [layer.quantizer.scheme for layer in qmodel.layers
                   if isinstance(layer, autoqnn.ActivationQuantizer)]
    assert activations and not any(s.symmetric for s in activations)
    autoqnn.export_tflite(qmodel, tmp_path / "m.tflite")
    assert (tmp_path / "m.tflite").stat().st_size > 0


def test_old_field_names_warn_and_map():
    """`scheme` (a grid here, a scheme name in quantize) and `calibration` (quantize's
    calibration_method) were renamed; the old names still work, with a warning."""
    with pytest.warns(DeprecationWarning, match="scheme= is deprecated; use grid="):
        assert PTQConfig(scheme="symmetric").grid == "symmetric"
    with pytest.warns(DeprecationWarning, match=r"\['calibration'\] are deprecated"):
        assert PTQConfig.from_dict({"calibration": "kl"}).calibration_method == "kl"
    with pytest.raises(TypeError, match="unexpected keyword argument 'bits'"):
        PTQConfig(bits=4)


@pytest.mark.parametrize("field, value, message", [
    ("weight_bits", 1, "weight_bits must be an int in [2, 16], got 1"),
    ("weight_bits", 4.5, "weight_bits must be an int in [2, 16], got 4.5"),
    ("activation_bits", 17, "activation_bits must be an int in [2, 16] or None, got 17"),
    ("calibration_method", "median", "calibration_method must be one of"),
    ("calibration_samples", 0, "calibration_samples must be a positive int or None, got 0"),
    ("grid", "pot", "grid must be one of"),
    ("granularity", "per_row", "granularity must be one of"),
    ("weight_clipping", "kl", "weight_clipping must be one of"),
    ("bias_correction", "yes", "bias_correction must be a bool, got 'yes'"),
    ("keep_layers", "first+middle", "got 'middle'"),
    ("keep_bits", 0, "keep_bits must be an int"),
    ("percentile", 20, "percentile must be a number in (50, 100], got 20"),
])
def test_invalid_values_name_argument_and_value(field, value, message):
    with pytest.raises(ValueError) as info:
        PTQConfig(**{field: value})
    assert message in str(info.value)
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_unknown_field_in_dict():
    with pytest.raises(ValueError, match="unknown PTQConfig fields \\['bits'\\]"):
        PTQConfig.from_dict({"bits": 4})
