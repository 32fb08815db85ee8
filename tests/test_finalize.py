"""`finalize`, `set_bits`, layer paths and the calibration pass on real (nested) models."""

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.export import run_tflite
from autoqnn.layers import ActivationQuantizer


def _output_steps(info, model, x):
    """The largest LiteRT-vs-Keras output difference, in steps of the int8 output."""
    step = info.output_quantization[0][0]
    return float(np.abs(run_tflite(info.path, x) - model.predict(x, verbose=0)).max() / step)

RNG = np.random.default_rng(0)
X = RNG.random((48, 8, 8, 3), dtype=np.float32)


def _nested_model():
    inner_in = keras.Input((6, 6, 4))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inner_in)
    inner = keras.Model(inner_in, y, name="inner")
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)  # same bare name
    x = inner(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))


SEARCHABLE = {
    "fc": {"weight_quantizer": {"trainable_bits": True, "bits_range": (2, 8)}},
    "dw": {"weight_quantizer": {"candidates": [
        {"name": "uniform", "bits": 4, "granularity": "per_channel"},
        {"name": "pot", "bits": 3}, {"name": "ternary"}]}},
}


def test_finalize_collapses_to_rounded_bits_and_argmax(tmp_path):
    model = _nested_model()
    qmodel = autoqnn.quantize(model, weight_bits=4, calibration_data=X, config=SEARCHABLE)
    fc = qmodel.get_layer("fc").weight_quantizers["kernel"]
    fc.bits_variable.assign(3.4)
    dw = qmodel.get_layer("dw").weight_quantizers["kernel"]
    dw.logits.assign([0.1, 2.0, -1.0])  # pot wins
    expected_fc = autoqnn.get_scheme("uniform", bits=3, granularity="per_channel").quantize(
        qmodel.get_layer("fc").kernel, fc.state, channel_axis=-1)
    expected_dw = autoqnn.get_scheme("pot", bits=3).quantize(
        qmodel.get_layer("dw").kernel, dw.states[1], channel_axis=(2, 3))

    final = autoqnn.finalize(qmodel)
    assert final is not qmodel and fc.trainable_bits  # the input is unchanged
    f_fc = final.get_layer("fc").weight_quantizers["kernel"]
    f_dw = final.get_layer("dw").weight_quantizers["kernel"]
    assert f_fc.is_final and f_fc.bits == 3 and f_dw.is_final and f_dw.scheme.name == "pot"
    np.testing.assert_array_equal(np.asarray(final.get_layer("fc").quantized_weight("kernel")),
                                  np.asarray(expected_fc))
    np.testing.assert_array_equal(np.asarray(final.get_layer("dw").quantized_weight("kernel")),
                                  np.asarray(expected_dw))
    # The whole model equals the source evaluated at the rounded bits / argmax scheme.
    fc.bits_variable.assign(3.0)
    dw.logits.assign([-1e4, 1e4, -1e4])
    np.testing.assert_array_equal(final.predict(X, verbose=0), qmodel.predict(X, verbose=0))
    report = final.autoqnn_report
    assert report.get("fc").weight_bits == 3 and report.get("dw").scheme == "pot"
    names = {v.name for v in final.get_layer("dw").weights}
    assert "kernel_logits" not in names and not any("_c0_" in n for n in names)
    path = tmp_path / "final.keras"
    final.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), final.predict(X, verbose=0))
    info = autoqnn.export_tflite(final, tmp_path / "final.tflite")
    assert _output_steps(info, final, X) <= 2.0 + 1e-4  # float noise on the step count
    with pytest.raises(autoqnn.export.ExportError, match="autoqnn.finalize"):
        autoqnn.export_tflite(qmodel, tmp_path / "mixed.tflite")


def test_set_bits_in_place_by_path(tmp_path):
    qmodel = autoqnn.quantize(_nested_model(), weight_bits=4, calibration_data=X)
    layers_before = [id(layer) for layer in qmodel.layers]
    before = qmodel.predict(X, verbose=0)
    autoqnn.set_bits(qmodel, {"inner/conv": 2, "fc": {"kernel": 3}, "fc_aq": 4})
    assert [id(layer) for layer in qmodel.layers] == layers_before  # no re-clone
    inner_conv = qmodel.get_layer("inner").get_layer("conv")
    assert inner_conv.weight_quantizers["kernel"].bits == 2
    assert qmodel.get_layer("conv").weight_quantizers["kernel"].bits == 4  # the other "conv"
    assert qmodel.get_layer("fc_aq").bits == 4
    after = qmodel.predict(X, verbose=0)  # compiled functions were dropped: new bits used
    assert not np.array_equal(before, after)
    assert qmodel.autoqnn_report.get("inner/conv").weight_bits == 2
    path = tmp_path / "bits.keras"
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(X, verbose=0), after)
    autoqnn.set_bits(qmodel, {"inner/conv": 4, "fc": 4, "fc_aq": 8})
    np.testing.assert_array_equal(qmodel.predict(X, verbose=0), before)


def test_set_bits_errors():
    inputs = keras.Input((8, 8, 3))
    branches = []
    for name in ("left", "right"):
        block_in = keras.Input((8, 8, 3))
        block = keras.Model(block_in, keras.layers.Conv2D(2, 1, name="pw")(block_in), name=name)
        branches.append(block(inputs))
    twins = keras.Model(inputs, keras.layers.Add()(branches))
    qtwins = autoqnn.quantize(twins, weight_bits=4, activation_bits=None)
    with pytest.raises(ValueError, match=r"'pw' is ambiguous: it names \['left/pw', "
                                         r"'right/pw'\]; use the path"):
        autoqnn.set_bits(qtwins, {"pw": 3})
    autoqnn.set_bits(qtwins, {"right/pw": 3})
    assert qtwins.autoqnn_report.get("right/pw").weight_bits == 3
    qmodel = autoqnn.quantize(_nested_model(), weight_bits=4, calibration_data=X)
    with pytest.raises(KeyError, match="'nope' is not a layer"):
        autoqnn.set_bits(qmodel, {"nope": 3})
    with pytest.raises(ValueError, match=r"bits\['fc'\]: bits must be in \[2, 16\] for scheme "
                                         r"'uniform', got 1"):
        autoqnn.set_bits(qmodel, {"fc": 1})
    with pytest.raises(ValueError, match="has no autoqnn quantizer"):
        autoqnn.set_bits(qmodel, {"flatten": 3})
    with pytest.raises(KeyError, match="quantizes \\['kernel'\\], not 'bias'"):
        autoqnn.set_bits(qmodel, {"fc": {"bias": 3}})


def test_overrides_and_report_by_path():
    qmodel = autoqnn.quantize(_nested_model(), weight_bits=4, calibration_data=X,
                              config={"inner/conv": {"weight_bits": 2}, "inner/.*": None})
    report = qmodel.autoqnn_report
    # "inner/.*" (regex) keeps the inner layers float, the exact path wins for inner/conv.
    assert report.get("inner/conv").weight_bits == 2
    assert report.get("conv").weight_bits == 4


def test_calibration_is_a_pass_over_nested_models():
    qmodel = autoqnn.quantize(_nested_model(), weight_bits=4)
    quantizers = autoqnn.activation_quantizers(qmodel)
    assert not any(q.is_calibrated for q in quantizers)
    autoqnn.calibrate(qmodel, X)
    assert all(q.is_calibrated for q in quantizers)
    assert not any(hasattr(q, "_observer") for q in quantizers)  # no hook left on layers
    # The inner model's output quantizer saw the inner conv's ReLU outputs: [0, max].
    inner_aq = qmodel.get_layer("inner").get_layer("conv_aq")
    lo, hi = inner_aq.get_range()
    probe = keras.Model(qmodel.inputs, qmodel.get_layer("dw").input)  # = the inner output
    assert lo == 0.0 and hi == pytest.approx(float(np.max(probe.predict(X, verbose=0))),
                                             rel=0.02)


def test_lsq_and_pact_initialised_by_calibration_and_exported(tmp_path):
    model = _nested_model()
    qmodel = autoqnn.quantize(model, weight_bits=4, activation_scheme="lsq", activation_bits=8,
                              calibration_data=X)
    quantizers = autoqnn.activation_quantizers(qmodel)
    assert all(q.is_calibrated for q in quantizers)
    # After ReLU the data are non-negative: an unsigned grid (all 2^b levels usable).
    relu_aq = qmodel.get_layer("conv_aq")
    assert float(np.asarray(relu_aq.state["signed"])) == 0.0
    steps = [float(np.asarray(q.state["step"])) for q in quantizers]
    weights_before = [np.asarray(v) for v in qmodel.weights]
    autoqnn.export_tflite(qmodel, tmp_path / "lsq.tflite")
    # Export probes the quantizers with huge inputs: nothing in the model changed.
    assert [float(np.asarray(q.state["step"])) for q in quantizers] == steps
    for before, after in zip(weights_before, qmodel.weights):
        np.testing.assert_array_equal(before, np.asarray(after))
    pact = autoqnn.quantize(model, weight_bits=4, activation_scheme="pact", activation_bits=4,
                            calibration_data=X)
    alpha = float(np.asarray(pact.get_layer("conv_aq").state["alpha"]))
    assert alpha != 10.0 and alpha > 0  # set from the calibrated maximum


def test_uncalibrated_lsq_activations_pass_through_and_refuse_export(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, ActivationQuantizer("lsq", bits=2, name="aq")(inputs))
    x = np.array([[0.1, 0.7, 2.0, -1.0]], "float32")
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    with pytest.raises(autoqnn.export.ExportError, match="not calibrated"):
        autoqnn.export_tflite(model, tmp_path / "x.tflite")


def test_finalize_folds_batchnorm_trained_unfolded(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(x))
    model.compile("adam", "mse")
    model.fit(X, RNG.normal(size=(len(X), 4)), epochs=2, verbose=0)  # non-trivial BN stats
    qmodel = autoqnn.quantize(model, weight_bits=8, calibration_data=X, fold_batchnorm=False)
    assert qmodel.autoqnn_report.get("bn").status == "float"
    final = autoqnn.finalize(qmodel)
    report = final.autoqnn_report
    assert report.get("bn").status == "folded" and report.get("dw_bn").status == "folded"
    assert qmodel.autoqnn_report.get("bn").status == "float"  # the input is unchanged
    # The folded weights are quantized again: close to the unfolded model at 8 bits.
    out, ref = final.predict(X, verbose=0), qmodel.predict(X, verbose=0)
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()
    kept = autoqnn.finalize(qmodel, fold_batchnorm=False)
    np.testing.assert_array_equal(kept.predict(X, verbose=0), ref)
    info = autoqnn.export_tflite(final, tmp_path / "folded.tflite")
    assert _output_steps(info, final, X) <= 2.0 + 1e-4  # float noise on the step count


def test_per_channel_folding_after_training_unfolded_is_exact(tmp_path):
    # Per-channel abs-max grids are scale-equivariant: Q(g * k) = g * Q(k) per channel,
    # so folding BN after QAT leaves the quantized model's function unchanged.
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(keras.layers.Flatten()(x)))
    qmodel = autoqnn.quantize(model, weight_bits=3, activation_bits=4, calibration_data=X,
                              fold_batchnorm=False)
    qmodel.compile("adam", "mse")
    qmodel.fit(X, RNG.normal(size=(len(X), 4)), epochs=2, verbose=0)
    final = autoqnn.finalize(qmodel)
    np.testing.assert_allclose(final.predict(X, verbose=0), qmodel.predict(X, verbose=0),
                               atol=1e-5)
    # export_tflite folds it by itself (on a copy).
    info = autoqnn.export_tflite(qmodel, tmp_path / "qat.tflite")
    assert "conv/kernel" in info.weight_dtypes
    assert qmodel.autoqnn_report.get("bn").status == "float"


def test_folding_keeps_trained_per_channel_lsq_steps():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(keras.layers.Flatten()(x)))
    qmodel = autoqnn.quantize(model, scheme="lsq", weight_bits=3, activation_bits=None,
                              granularity="per_channel", fold_batchnorm=False)
    qmodel.compile("adam", "mse")
    qmodel.fit(X, RNG.normal(size=(len(X), 4)), epochs=3, verbose=0)
    final = autoqnn.finalize(qmodel)
    np.testing.assert_allclose(final.predict(X, verbose=0), qmodel.predict(X, verbose=0),
                               atol=1e-4)
