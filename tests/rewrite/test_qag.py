"""QAG: Sequential/Functional/nested rewrites, BN folding, overrides, report, no mutation."""

import keras
import numpy as np

import autoqnn
from autoqnn.layers import ActivationQuantizer, FoldedBatchNorm, QuantConv2D, QuantDense


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


def test_functional_twin_structure_and_no_mutation(small_cnn, images):
    before = _weights(small_cnn)
    n_layers = len(small_cnn.layers)
    q = autoqnn.quantize(small_cnn, weight_bits=4, activation_bits=8, calibration_data=images)
    assert len(small_cnn.layers) == n_layers
    for a, b in zip(before, _weights(small_cnn)):
        np.testing.assert_array_equal(a, b)
    kinds = {layer.name: type(layer) for layer in q.layers}
    assert kinds["conv1"] is QuantConv2D and kinds["logits"] is QuantDense
    assert kinds["bn1"] is FoldedBatchNorm
    # Quantizers: the input, after the fused conv-bn-relu, after the depthwise's ReLU6, the
    # Add, and the logits (max pooling and flatten keep the grid).
    aq = sorted(layer.name for layer in q.layers if isinstance(layer, ActivationQuantizer))
    assert aq == ["add_aq", "image_aq", "logits_aq", "relu1_aq", "relu2_aq"]
    assert q.input.shape == small_cnn.input.shape


def test_bn_folding_is_exact_without_quantization(small_cnn, images):
    # 16-bit weights and float activations: the folded model equals the original.
    q = autoqnn.quantize(small_cnn, weight_bits=16, activation_bits=None)
    np.testing.assert_allclose(q(images), small_cnn(images), atol=1e-3)
    unfolded = autoqnn.quantize(
        small_cnn, weight_bits=16, activation_bits=None, fold_batchnorm=False
    )
    assert isinstance(unfolded.get_layer("bn1"), keras.layers.BatchNormalization)
    np.testing.assert_allclose(unfolded(images), small_cnn(images), atol=1e-3)


def test_w8a8_is_close_to_float(small_cnn, images):
    q = autoqnn.quantize(small_cnn, calibration_data=images)
    ref = np.asarray(small_cnn(images))
    err = np.abs(np.asarray(q(images)) - ref).max()
    assert err < 0.05 * np.abs(ref).max()


def test_sequential_model_becomes_functional_twin(images):
    model = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )
    q = autoqnn.quantize(model, weight_bits=4, calibration_data=images)
    assert [type(layer).__name__ for layer in q.layers if layer.weights][:2] == [
        "ActivationQuantizer",
        "QuantConv2D",
    ]
    assert q(images).shape == (32, 3)


def test_nested_model_is_rewritten_recursively(images):
    inner_in = keras.Input((12, 12, 1))
    inner = keras.Model(
        inner_in, keras.layers.Conv2D(4, 3, name="inner_conv")(inner_in), name="backbone"
    )
    outer_in = keras.Input((12, 12, 1))
    x = keras.layers.GlobalAveragePooling2D()(inner(outer_in))
    model = keras.Model(outer_in, keras.layers.Dense(2, name="head")(x))
    q = autoqnn.quantize(model, calibration_data=images)
    backbone = q.get_layer("backbone")
    assert isinstance(backbone.get_layer("inner_conv"), QuantConv2D)
    rows = {r.name: r for r in q.autoqnn_report}
    assert rows["backbone/inner_conv"].status == "quantized"
    np.testing.assert_allclose(q(images), model(images), atol=0.1)


def test_shared_layer_is_cloned_once():
    inputs = [keras.Input((4,)), keras.Input((4,))]
    dense = keras.layers.Dense(3, name="shared")
    out = keras.layers.Add()([dense(inputs[0]), dense(inputs[1])])
    q = autoqnn.quantize(keras.Model(inputs, out), activation_bits=None)
    assert sum(isinstance(layer, QuantDense) for layer in q.layers) == 1
    x = [np.ones((2, 4), "float32"), np.zeros((2, 4), "float32")]
    assert q(x).shape == (2, 3)


def test_overrides_by_class_regex_and_name(small_cnn):
    q = autoqnn.quantize(
        small_cnn,
        weight_bits=4,
        activation_bits=None,
        config={
            "Conv2D": {"weight_bits": 6},
            "d.*": {"weight_bits": 3},
            "conv1": {"weight_bits": 8},
            keras.layers.Dense: None,
        },
    )
    report = q.autoqnn_report
    assert report.get("conv1").weight_bits == 8  # name beats class
    assert report.get("dw").weight_bits == 3  # regex beats default
    assert report.get("logits").status == "float"
    assert report.get("logits").reason == "excluded by config"


def test_unknown_layers_stay_float_and_are_reported(images):
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.GroupNormalization(groups=2, name="ln")(x)
    x = keras.layers.PReLU(name="prelu")(x)
    q = autoqnn.quantize(keras.Model(inputs, x), calibration_data=images)
    floats = {r.name: r.reason for r in q.autoqnn_report.float_layers}
    assert floats == {
        "ln": "no quantization handler for GroupNormalization",
        "prelu": "no quantization handler for PReLU",
    }
    # Their outputs are still quantized, so the next integer op gets a grid.
    assert "ln_aq" in [layer.name for layer in q.layers]
    text = str(q.autoqnn_report)
    assert "ln" in text and "float" in text


def test_all_weighted_layer_types_quantize_and_round_trip(tmp_path):
    tokens = keras.Input((6,), dtype="int32")
    emb = keras.layers.Embedding(20, 8, name="emb")(tokens)
    seq = keras.layers.Conv1D(4, 3, padding="same", name="c1")(emb)
    seq = keras.layers.EinsumDense("abc,cd->abd", output_shape=(6, 5), bias_axes="d", name="ein")(
        seq
    )
    image = keras.Input((8, 8, 3))
    y = keras.layers.SeparableConv2D(4, 3, padding="same", name="sep")(image)
    y = keras.layers.Conv2DTranspose(4, 3, strides=2, name="tconv")(y)
    y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(y)
    y = keras.layers.GlobalAveragePooling2D()(y)
    vol = keras.Input((4, 4, 4, 1))
    z = keras.layers.GlobalAveragePooling3D()(keras.layers.Conv3D(2, 2, name="c3")(vol))
    out = keras.layers.Concatenate()([keras.layers.Flatten()(seq), y, z])
    out = keras.layers.Dense(3, name="head")(out)
    model = keras.Model([tokens, image, vol], out)
    rng = np.random.default_rng(0)
    data = [
        rng.integers(0, 20, (16, 6)).astype("int32"),
        rng.random((16, 8, 8, 3), dtype=np.float32),
        rng.random((16, 4, 4, 4, 1), dtype=np.float32),
    ]
    q = autoqnn.quantize(model, weight_bits=4, activation_bits=8, calibration_data=data)
    statuses = {r.name: r.status for r in q.autoqnn_report if r.params}
    assert set(statuses.values()) == {"quantized"}, statuses
    assert set(statuses) == {"emb", "c1", "ein", "sep", "tconv", "dw", "c3", "head"}
    path = tmp_path / "all.keras"
    q.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(data, verbose=0), q.predict(data, verbose=0), atol=1e-6
    )
