"""ACD: SAWB weight clips, per-channel learned activation clips, asymmetric decay, export."""

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.export import run_tflite
from autoqnn.schemes.acd import ACDScheme, sawb_clip


def _model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.random((64, 8, 8, 1), dtype=np.float32), rng.integers(0, 3, 64)


def test_sawb_clip_golden_values():
    w = np.array([[1.0, -2.0, 0.5, -0.5]], "float32").T  # E[w^2] = 1.375, E|w| = 1.0
    expected = 3.12 * np.sqrt(1.375) - 2.064 * 1.0     # 1.5945..., below max|w| = 2
    np.testing.assert_allclose(sawb_clip(w, 2, (0,)), [expected], rtol=1e-6)
    np.testing.assert_allclose(sawb_clip(w, 8, (0,)), [2.0])  # no coefficients: max|w|


def test_decay_golden_value_and_one_sgd_step():
    scheme = ACDScheme(bits=2, upper_decay=0.1, lower_decay=0.2)
    lo = keras.Variable(np.array([0.0, -1.0], "float32"))
    hi = keras.Variable(np.array([1.0, 2.0], "float32"))
    state = {"min": lo, "max": hi, "role": "activation"}
    # 1/2 (0.1 (1 + 4) + 0.2 (0 + 1)) = 0.35
    np.testing.assert_allclose(float(scheme.regularization(state)), 0.35, rtol=1e-6)
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = scheme.regularization(state)
    g_lo, g_hi = tape.gradient(loss, [lo, hi])
    keras.optimizers.SGD(1.0).apply([g_lo, g_hi], [lo, hi])
    # The clips shrink toward 0 by lr * decay * value: upper 10 %, lower 20 %.
    np.testing.assert_allclose(np.array(hi), [0.9, 1.8], rtol=1e-6)
    np.testing.assert_allclose(np.array(lo), [0.0, -0.8], rtol=1e-6)
    weight_state = {"min": lo, "max": hi, "role": "weight"}
    np.testing.assert_allclose(float(scheme.regularization(weight_state)),
                               0.5 * 0.1 * (0.81 + 3.24), rtol=1e-5)


def test_quantize_with_acd_weights_and_activations(data):
    x, _ = data
    qmodel = autoqnn.quantize(_model(), scheme="acd", activation_scheme="acd", weight_bits=2,
                              activation_bits=2, calibration_data=x)
    aqs = autoqnn.activation_quantizers(qmodel)
    assert all(q.range_axis == -1 for q in aqs)
    conv = qmodel.get_layer("conv")
    kernel = np.asarray(conv.quantized_weight("kernel"))
    for c in range(kernel.shape[-1]):  # 2-bit symmetric per channel: {-a, 0, a}
        assert len(np.unique(np.round(kernel[..., c], 6))) <= 3
    clip = np.asarray(conv.weight_quantizers["kernel"].state["max"])
    folded = np.abs(np.asarray(conv.kernel)).reshape(-1, 6).max(axis=0)
    assert np.all(clip <= folded + 1e-6) and np.all(clip < folded)  # SAWB clips inside max|w|
    trainable = {v.path for v in qmodel.trainable_weights}
    assert "relu_aq/range_max" in trainable and "conv/kernel_max" in trainable
    relu_aq = qmodel.get_layer("relu_aq")
    out = np.asarray(relu_aq(np.asarray(x[:8].repeat(6, axis=-1))))
    for c in range(6):
        assert len(np.unique(out[..., c])) <= 4


def test_acd_trains_with_the_decay_and_sqnr_and_round_trips(data, tmp_path):
    x, y = data
    qmodel = autoqnn.quantize(_model(), scheme="acd", activation_scheme="acd", weight_bits=2,
                              activation_bits=2, calibration_data=x, fold_batchnorm=False)
    before = np.array(qmodel.get_layer("relu_aq").range_max)
    qmodel(x[:4], training=True)
    assert len(qmodel.losses) >= 4  # a decay term per ACD quantizer, in training only
    qmodel(x[:4])
    autoqnn.finetune(qmodel, (x, y), epochs=2, batch_size=16, sqnr_weight=0.05, verbose=0)
    after = np.array(qmodel.get_layer("relu_aq").range_max)
    assert not np.allclose(before, after)
    path = tmp_path / "acd.keras"
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), qmodel.predict(x, verbose=0),
                               atol=1e-6)


@pytest.mark.parametrize("with_data", [False, True])
def test_per_tensor_activations_export_to_tflite(data, tmp_path, with_data):
    x, y = data
    qmodel = autoqnn.quantize(_model(), scheme="acd", activation_scheme="acd", weight_bits=4,
                              activation_bits=4, calibration_data=x, fold_batchnorm=False)
    autoqnn.finetune(qmodel, (x, y), epochs=1, batch_size=16, verbose=0)
    with pytest.raises(autoqnn.export.ExportError, match="per_tensor_activations"):
        autoqnn.export_tflite(qmodel, tmp_path / "no.tflite")
    flat = autoqnn.per_tensor_activations(autoqnn.finalize(qmodel),
                                          calibration_data=x if with_data else None)
    assert all(q.range_axis is None for q in autoqnn.activation_quantizers(flat))
    assert len(flat.per_tensor_converted) == len(autoqnn.activation_quantizers(qmodel))
    assert all(q.range_axis == -1 for q in autoqnn.activation_quantizers(qmodel))  # unchanged
    info = autoqnn.export_tflite(flat, tmp_path / "acd.tflite")
    expected = flat.predict(x, verbose=0)
    got = run_tflite(info.path, x)
    lo, hi = autoqnn.activation_quantizers(flat)[-1].get_range()
    steps = np.abs(got - expected) / ((hi - lo) / 15)
    # As the other 4-bit exports: LiteRT's integer rounding is off by at most one step.
    assert steps.max() <= 1.0 + 1e-4 and steps.mean() <= 0.3


def test_acd_with_per_tensor_activation_clips_exports_as_trained(data, tmp_path):
    x, y = data
    qmodel = autoqnn.quantize(_model(), scheme="acd", activation_scheme="acd", weight_bits=4,
                              activation_bits=4, calibration_data=x, fold_batchnorm=False,
                              activation_options={"granularity": "per_tensor"})
    assert all(q.range_axis is None and q.learns_range
               for q in autoqnn.activation_quantizers(qmodel))
    autoqnn.finetune(qmodel, (x, y), epochs=1, batch_size=16, sqnr_weight=0.02, verbose=0)
    final = autoqnn.finalize(qmodel)
    info = autoqnn.export_tflite(final, tmp_path / "acd_pt.tflite")
    expected = final.predict(x, verbose=0)
    lo, hi = autoqnn.activation_quantizers(final)[-1].get_range()
    steps = np.abs(run_tflite(info.path, x) - expected) / ((hi - lo) / 15)
    assert steps.max() <= 1.0 + 1e-4


def test_per_tensor_activations_at_8_bits_and_bad_bits(data):
    x, _ = data
    qmodel = autoqnn.quantize(_model(), scheme="acd", activation_scheme="acd", weight_bits=2,
                              activation_bits=2, calibration_data=x)
    int8 = autoqnn.per_tensor_activations(qmodel, bits=8)
    assert {q.bits for q in autoqnn.activation_quantizers(int8)} == {8}
    with pytest.raises(ValueError, match="bits must be an int in \\[2, 16\\] or None, got 1"):
        autoqnn.per_tensor_activations(qmodel, bits=1)


def test_bad_decay():
    with pytest.raises(ValueError, match="upper_decay must be a number >= 0, got -1"):
        ACDScheme(upper_decay=-1)
    with pytest.raises(ValueError, match="lower_decay must be a number >= 0, got 'x'"):
        ACDScheme(lower_decay="x")
