"""autoqnn.quantize: the public contract, QAT, saving, and every bad input."""

import keras
import numpy as np
import pytest

import autoqnn


def _dense_model():
    inputs = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, activation="relu", name="dense_1")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="dense_2")(h))


def test_default_is_w8a8_per_channel():
    q = autoqnn.quantize(_dense_model(), calibration_data=np.ones((4, 6), "float32"))
    row = q.autoqnn_report.get("dense_1")
    assert (row.scheme, row.weight_bits, row.granularity) == ("uniform", 8, "per_channel")
    assert {r.activation_bits for r in q.autoqnn_report if r.status == "activation"} == {8}


def test_qat_fit_changes_weights_and_lowers_loss():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype("float32")
    y = (x[:, :3] > 0).argmax(-1)
    q = autoqnn.quantize(_dense_model(), weight_bits=4, activation_bits=4, calibration_data=x)
    q.compile(keras.optimizers.Adam(1e-2),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = q.evaluate(x, y, verbose=0)
    q.fit(x, y, epochs=8, batch_size=32, verbose=0)
    assert q.evaluate(x, y, verbose=0) < before


def test_keras_round_trip_without_custom_objects(tmp_path):
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    q = autoqnn.quantize(_dense_model(), scheme="uniform", weight_bits=3, activation_bits=6,
                         granularity="per_tensor", calibration_data=x)
    q.save(tmp_path / "q.keras")
    loaded = keras.models.load_model(tmp_path / "q.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), q.predict(x, verbose=0))
    assert autoqnn.quantization_report(loaded).get("dense_2").weight_bits == 3


def test_uncalibrated_activations_warn_and_calibrate_later():
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    with pytest.warns(UserWarning, match="not calibrated"):
        q = autoqnn.quantize(_dense_model())
    assert q.autoqnn_report.uncalibrated
    q.predict(x, verbose=0)  # traced before calibration
    autoqnn.calibrate(q, x)
    assert all(layer.is_calibrated for layer in autoqnn.activation_quantizers(q))
    # The compiled predict function was reset, so quantization now applies.
    out = q.predict(x, verbose=0)
    rng = autoqnn.activation_quantizers(q)[-1].get_range()
    step = (rng[1] - rng[0]) / 255  # zero is on the grid, so out / step is an integer
    assert np.allclose(np.round(out / step), out / step, atol=1e-3)


def test_list_schemes_names_uniform():
    assert "uniform" in autoqnn.list_schemes()
    assert "uniform" in autoqnn.list_schemes("activation")


@pytest.mark.parametrize("bad_model, error, match", [
    (np.zeros(3), TypeError, "model must be a keras.Model, got ndarray"),
    ("model.keras", TypeError, "model must be a keras.Model, got str"),
])
def test_non_keras_models(bad_model, error, match):
    with pytest.raises(error, match=match):
        autoqnn.quantize(bad_model)


def test_unbuilt_model():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="is not built"):
        autoqnn.quantize(model)


def test_subclassed_model_gets_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="subclassed model.*rebuild it as a Functional"):
        autoqnn.quantize(net)


def test_already_quantized_model():
    q = autoqnn.quantize(_dense_model(), activation_bits=None)
    with pytest.raises(ValueError, match="already quantized"):
        autoqnn.quantize(q)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"weight_bits": 0}, ValueError, r"weight_bits: bits must be in \[2, 16\].*got 0"),
    ({"weight_bits": 17}, ValueError, "got 17"),
    ({"activation_bits": 1}, ValueError, r"activation_bits: bits must be in \[2, 16\].*got 1"),
    ({"weight_bits": "4"}, TypeError, "bits must be an integer, got '4'"),
    ({"scheme": "nope"}, ValueError, r"scheme must be one of \[.*'uniform'.*\], got 'nope'"),
    ({"scheme": 3}, TypeError, "scheme must be a scheme name, got 3"),
    ({"granularity": "per_row"}, ValueError, "granularity must be one of .*got 'per_row'"),
    ({"config": {"dense_1": {"bitz": 3}}}, ValueError, r"unknown keys \['bitz'\]"),
    ({"config": {"dense_1": {"weight_bits": 99}}}, ValueError, r"config\['dense_1'\].*got 99"),
    ({"config": {"(": {}}}, ValueError, "not a valid regex"),
    ({"config": ["dense_1"]}, TypeError, "config must be a dict"),
    ({"calibration_method": "magic", "calibration_data": np.ones((2, 6), "float32")},
     ValueError, r"method must be one of \[.*'max'.*\], got 'magic'"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        autoqnn.quantize(_dense_model(), **kwargs)


def test_nan_weights():
    model = _dense_model()
    kernel = model.get_layer("dense_1").kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    with pytest.raises(ValueError, match="dense_1/kernel.*NaN or Inf"):
        autoqnn.quantize(model)


@pytest.mark.parametrize("data, match", [
    (np.ones((4, 5), "float32"), r"calibration_data has samples of shape \(5,\).*expects \(6,\)"),
    (np.ones((0, 6), "float32"), "calibration_data is empty"),
    (np.full((2, 6), np.inf, "float32"), "calibration_data contains NaN or Inf"),
    ([np.ones((2, 6)), np.ones((2, 6))], "gives 2 input array"),
])
def test_bad_calibration_data(data, match):
    with pytest.raises(ValueError, match=match):
        autoqnn.quantize(_dense_model(), calibration_data=data)


def test_calibration_with_dataset_and_labels():
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(20, 6)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(20))).batch(8)
    q = autoqnn.quantize(_dense_model(), calibration_data=ds)
    assert not q.autoqnn_report.uncalibrated
    q2 = autoqnn.quantize(_dense_model(), calibration_data=(x, np.zeros(20)),
                          calibration_samples=3)
    assert not q2.autoqnn_report.uncalibrated


def test_scheme_implies_its_bits_when_none_are_given():
    q = autoqnn.quantize(_dense_model(), scheme="binary", activation_bits=None)
    assert q.autoqnn_report.get("dense_1").weight_bits == 1
    # The issue's own example: a ternary override under 4-bit weights is 2-bit ternary,
    # a pot override keeps the 4 bits it accepts.
    q = autoqnn.quantize(_dense_model(), scheme="uniform", weight_bits=4, activation_bits=None,
                         config={"dense_1": {"scheme": "ternary"}, "dense_2": {"scheme": "pot"}})
    assert (q.autoqnn_report.get("dense_1").scheme, q.autoqnn_report.get("dense_1").weight_bits) \
        == ("ternary", 2)
    assert (q.autoqnn_report.get("dense_2").scheme, q.autoqnn_report.get("dense_2").weight_bits) \
        == ("pot", 4)
    # Bits given explicitly are never changed behind the user's back.
    with pytest.raises(ValueError, match=r"config\['dense_1'\].*bits must be in \[2, 2\]"):
        autoqnn.quantize(_dense_model(), weight_bits=4,
                         config={"dense_1": {"scheme": "ternary", "weight_bits": 4}})


def test_quantize_accepts_a_quantization_config():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
    config = autoqnn.QuantizationConfig(weight_bits=3, activation_bits=None,
                                        overrides={"fc": {"granularity": "per_tensor"}})
    qmodel = autoqnn.quantize(model, config=config)
    row = qmodel.autoqnn_report.get("fc")
    assert (row.weight_bits, row.granularity) == (3, "per_tensor")
    with pytest.raises(ValueError, match=r"\['weight_bits'\] conflict with config="):
        autoqnn.quantize(model, weight_bits=4, config=config)


def test_ptq_config_is_the_same_vocabulary():
    from autoqnn.ptq.apply import quantization_config

    inputs = keras.Input((6,))
    x = keras.layers.Dense(4, name="first")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="last")(x))
    ptq = autoqnn.PTQConfig(weight_bits=4, grid="symmetric", keep_layers="last")
    config = quantization_config(model, ptq, overrides={"first": {"weight_bits": 6}})
    assert isinstance(config, autoqnn.QuantizationConfig)
    assert config.for_layer("last", keras.layers.Dense).weight_bits == 8
    assert config.for_layer("first", keras.layers.Dense).weight_bits == 6  # user's wins
    assert config.scheme_options == {"symmetric": True, "power_of_two_scale": False}
    with pytest.raises(ValueError, match=r"weight_bits=3 conflicts with ptq="):
        autoqnn.quantize(model, weight_bits=3, ptq=ptq)


def test_a_weight_scheme_leaves_the_activation_scheme_to_its_own_setting():
    """`scheme` names the weight scheme only; the report says what the activations got."""
    x = np.random.default_rng(0).normal(size=(16, 6)).astype("float32")
    q = autoqnn.quantize(_dense_model(), scheme="lsq", weight_bits=4, calibration_data=x,
                         verbose=0)
    assert "schemes: weights lsq; activations uniform" in str(q.autoqnn_report)
    both = autoqnn.quantize(_dense_model(), scheme="lsq", weight_bits=4, activation_scheme="lsq",
                            calibration_data=x, verbose=0)
    assert "schemes: weights lsq; activations lsq" in str(both.autoqnn_report)


def test_one_defaults_table():
    """quantize, search's configs and the configs read their defaults from one table."""
    import inspect

    from autoqnn import defaults

    params = inspect.signature(autoqnn.quantize).parameters
    assert params["activation_bits"].default == defaults.ACTIVATION_BITS
    assert params["granularity"].default == defaults.GRANULARITY
    assert params["calibration_samples"].default == defaults.CALIBRATION_SAMPLES
    assert params["verbose"].default == inspect.signature(autoqnn.search).parameters[
        "verbose"].default == defaults.VERBOSE
    config = autoqnn.QuantizationConfig()
    assert (config.activation_bits, config.granularity, config.scheme) == (
        defaults.ACTIVATION_BITS, defaults.GRANULARITY, defaults.SCHEME)
    sensitivity = autoqnn.SensitivityConfig()
    assert sensitivity.candidate_bits == defaults.CANDIDATE_BITS
    assert sensitivity.num_samples == defaults.SEARCH_SAMPLES
    assert autoqnn.DifferentiableConfig().epochs == defaults.SEARCH_EPOCHS
    assert autoqnn.RLConfig().episodes == defaults.EPISODES


def test_each_weight_quantizer_is_built_once(monkeypatch):
    """From the setting to the layer: the config validates by building the quantizer, and
    that very object is what the layer uses (no dict round trip, no rebuilds)."""
    from autoqnn.layers import quantizer as quantizer_module

    built = []
    original = quantizer_module.Quantizer.__init__

    def counting(self, *args, **kwargs):
        built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(quantizer_module.Quantizer, "__init__", counting)
    q = autoqnn.quantize(_dense_model(), scheme="lsq", weight_bits=4, activation_bits=None,
                         verbose=0)
    used = [layer.weight_quantizers["kernel"] for layer in q.layers[1:]]
    assert len(built) == 1 + len(used)  # the model-wide validation, then one per tensor
    assert all(any(u is b for b in built) for u in used)
