"""QAG for composite layers: MultiHeadAttention, a keras-hub encoder, a user layer, the vit."""

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.export import ExportError, run_tflite
from autoqnn.export.per_tensor import per_tensor_activations
from autoqnn.layers import ActivationQuantizer, QuantDense, QuantEinsumDense
from autoqnn.layers.composite import (
    ATTENTION_TENSORS,
    QuantizedComposite,
    quantized_composite,
)
from autoqnn.models import build_model
from autoqnn.walk import find_layer

PROJECTIONS = ("query", "key", "value", "attention_output")


def attention_model():
    """A pre-norm transformer block on 6 tokens of 64: LN, MHA, Add, LN, MLP, Add, head."""
    inputs = keras.Input((6, 64), name="tokens")
    y = keras.layers.LayerNormalization(name="ln1")(inputs)
    y = keras.layers.MultiHeadAttention(4, 16, name="mha")(y, y)
    x = keras.layers.Add(name="add1")([inputs, y])
    y = keras.layers.LayerNormalization(name="ln2")(x)
    y = keras.layers.Dense(128, activation="gelu", name="mlp1")(y)
    y = keras.layers.Dense(64, name="mlp2")(y)
    x = keras.layers.Add(name="add2")([x, y])
    x = keras.layers.GlobalAveragePooling1D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(4, name="head")(x), name="attention")


@keras.saving.register_keras_serializable(package="autoqnn_tests")
class ResidualBlock(keras.layers.Layer):
    """A user composite layer: norm(x + scale * fc2(fc1(x))), sublayers made in __init__."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.fc1 = keras.layers.Dense(units, activation="relu", name="fc1")
        self.fc2 = keras.layers.Dense(units, name="fc2")
        self.norm = keras.layers.LayerNormalization(name="norm")

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(self.units,), initializer="ones")
        self.fc1.build(input_shape)
        self.fc2.build(tuple(input_shape[:-1]) + (self.units,))
        self.norm.build(input_shape)

    def call(self, x):
        return self.norm(x + self.scale * self.fc2(self.fc1(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class LateSublayers(keras.layers.Layer):
    """Appends its Dense to a list after assigning it: the twin cannot intercept it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.stack = []
        self.stack.append(keras.layers.Dense(8, name="inner"))

    def call(self, x):
        return self.stack[0](x)


class NormOnly(keras.layers.Layer):
    """A composite layer with nothing to quantize: one LayerNormalization."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.norm = keras.layers.LayerNormalization(name="norm")

    def call(self, x):
        return self.norm(x)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).normal(size=(48, 6, 64)).astype("float32")


@pytest.fixture(scope="module")
def float_model():
    keras.utils.set_random_seed(1)
    return attention_model()


@pytest.fixture(scope="module")
def quantized(float_model, tokens):
    return autoqnn.quantize(float_model, calibration_data=tokens)


def quantized_fraction(qmodel, model):
    return sum(r.quantized_params for r in qmodel.autoqnn_report) / model.count_params()


def relative_error(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_attention_projections_are_quantized_and_float_model_is_unchanged(tokens):
    keras.utils.set_random_seed(1)
    model = attention_model()
    before = [np.array(w) for w in model.get_weights()]
    q = autoqnn.quantize(model, calibration_data=tokens)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert type(model.get_layer("mha")) is keras.layers.MultiHeadAttention
    mha = q.get_layer("mha")
    assert isinstance(mha, QuantizedComposite) and isinstance(mha, keras.layers.MultiHeadAttention)
    report = q.autoqnn_report
    for name in PROJECTIONS:
        row = report.get(f"mha/{name}")
        assert (row.class_name, row.status, row.weight_bits) == ("QuantEinsumDense",
                                                                 "quantized", 8)
    assert report.get("mha").status == "composite"
    assert quantized_fraction(q, model) >= 0.95
    # W8A8 (per-channel weights, calibrated activations) stays close to float.
    assert relative_error(q.predict(tokens, verbose=0), model.predict(tokens, verbose=0)) < 0.05


def test_report_gives_sublayer_paths_and_float_reasons(quantized):
    report = quantized.autoqnn_report
    # Its gamma and beta stay float; its inner tensors are quantized (int8 in TFLite).
    assert "IntegerLayerNormalization" in report.get("ln1").reason
    assert report.get("ln1/variance_aq").status == "activation"
    softmax = [r for r in report if r.name.startswith("mha/softmax")]
    # The attention core is quantized by default at W8A8: the softmax reads quantized scores.
    assert len(softmax) == 1 and "probabilities_aq" in softmax[0].reason
    assert "mha/attention_output" in str(report)


def test_input_quantizers_only_where_the_graph_cannot_quantize(quantized):
    mha = quantized.get_layer("mha")
    # query/key/value read the layer's inputs (quantized by the graph: ln1_aq); the output
    # projection reads the attention context, an internal tensor: it quantizes its input.
    assert [getattr(mha, a).input_quantizer for a in ("query_dense", "key_dense",
                                                      "value_dense")] == [None] * 3
    aq = mha.output_dense.input_quantizer
    assert isinstance(aq, ActivationQuantizer) and aq.is_calibrated
    assert "ln1_aq" in [layer.name for layer in quantized.layers]
    assert not quantized.autoqnn_report.uncalibrated


def test_keras_round_trip_keeps_quantized_sublayers(quantized, tokens, tmp_path):
    path = tmp_path / "attention.keras"
    quantized.save(path)
    loaded = keras.models.load_model(path)
    mha = loaded.get_layer("mha")
    assert type(mha).__name__ == "QuantizedMultiHeadAttention"
    assert all(isinstance(d, QuantEinsumDense) for d in
               (mha.query_dense, mha.key_dense, mha.value_dense, mha.output_dense))
    np.testing.assert_allclose(loaded.predict(tokens, verbose=0),
                               quantized.predict(tokens, verbose=0), atol=1e-5)
    rows = {r.name: r.weight_bits for r in autoqnn.quantization_report(loaded)
            if r.status == "quantized"}
    assert rows == {r.name: r.weight_bits for r in quantized.autoqnn_report
                    if r.status == "quantized"}


def test_fit_trains_the_quantized_sublayers(float_model, tokens):
    q = autoqnn.quantize(float_model, weight_bits=4, calibration_data=tokens)
    kernel = np.array(q.get_layer("mha").query_dense.kernel)
    q.compile(keras.optimizers.Adam(1e-3),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.random.default_rng(0).integers(0, 4, len(tokens))
    history = q.fit(tokens, labels, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(kernel, np.array(q.get_layer("mha").query_dense.kernel))


def test_overrides_reach_sublayers_by_path(float_model):
    q = autoqnn.quantize(float_model, weight_bits=4, activation_bits=None, config={
        "mha/query": {"weight_bits": 8}, "mha/(key|value)": {"weight_bits": 3}})
    bits = {r.name: r.weight_bits for r in q.autoqnn_report if r.status == "quantized"}
    assert bits["mha/query"] == 8 and bits["mha/key"] == bits["mha/value"] == 3
    assert bits["mha/attention_output"] == 4 and bits["mlp1"] == 4
    # A parent's setting reaches its sublayers; None keeps the whole layer float.
    q = autoqnn.quantize(float_model, weight_bits=4, activation_bits=None,
                         config={"mha": {"weight_bits": 6}})
    assert q.autoqnn_report.get("mha/key").weight_bits == 6
    q = autoqnn.quantize(float_model, activation_bits=None, config={"mha": None})
    assert type(q.get_layer("mha")) is keras.layers.MultiHeadAttention
    assert q.autoqnn_report.get("mha").reason == "excluded by config"


def test_set_bits_and_finalize_reach_sublayers(float_model, tokens, tmp_path):
    q = autoqnn.quantize(float_model, weight_bits=4, calibration_data=tokens, config={
        "mha/value": {"weight_quantizer": {"trainable_bits": True, "bits_range": (2, 8)}}})
    autoqnn.set_bits(q, {"mha/query": 3, "mha/value": 5.0})
    assert find_layer(q, "mha/query")[1].weight_quantizers["kernel"].bits == 3
    final = autoqnn.finalize(q)  # at integer trainable bits: the same function
    value = final.get_layer("mha").value_dense.weight_quantizers["kernel"]
    assert value.is_final and value.bits == 5
    np.testing.assert_allclose(final.predict(tokens, verbose=0), q.predict(tokens, verbose=0),
                               atol=1e-4)
    final.save(tmp_path / "final.keras")
    loaded = keras.models.load_model(tmp_path / "final.keras")
    assert autoqnn.quantization_report(loaded).get("mha/query").weight_bits == 3


def test_attention_activations_option(float_model, quantized, tokens, tmp_path):
    # Default (activations quantized): the whole attention core has ranges.
    mha = quantized.get_layer("mha")
    assert sorted(mha.attention_aq) == sorted(ATTENTION_TENSORS)
    assert all(aq.is_calibrated for aq in mha.attention_aq.values())
    assert "mha/probabilities_aq" in [r.name for r in quantized.autoqnn_report]
    lo, hi = mha.attention_aq["probabilities"].get_range()
    assert lo == 0.0 and 0.0 < hi <= 1.0
    assert relative_error(quantized.predict(tokens, verbose=0),
                          float_model.predict(tokens, verbose=0)) < 0.05
    quantized.save(tmp_path / "att.keras")
    loaded = keras.models.load_model(tmp_path / "att.keras")
    np.testing.assert_allclose(loaded.predict(tokens, verbose=0),
                               quantized.predict(tokens, verbose=0), atol=1e-5)
    # An explicit False keeps the core float.
    q = autoqnn.quantize(float_model, calibration_data=tokens,
                         config={keras.layers.MultiHeadAttention: {"attention_activations": False}})
    assert not q.get_layer("mha").attention_aq


def test_sensitivity_search_treats_sublayers_as_units(float_model, tokens):
    result = autoqnn.search(float_model, calibration_data=tokens[:16], weight_bits_budget=4.0,
                            candidate_bits=(2, 4, 8), num_samples=16, verbose=0)
    assert {f"mha/{name}" for name in PROJECTIONS} <= set(result.bits())
    assert result.average_weight_bits <= 4.0


def test_tflite_export_of_attention(float_model, quantized, tokens, tmp_path):
    # Attention core and LayerNorm internals have ranges: full-integer without data.
    info = autoqnn.export_tflite(quantized, tmp_path / "att.tflite")
    assert {f"mha/{name}/kernel" for name in PROJECTIONS} <= set(info.weight_dtypes)
    got = run_tflite(info.path, tokens[:16])
    expected = quantized.predict(tokens[:16], verbose=0)
    assert relative_error(got, expected) < 0.05
    # With the core kept float, the export names what has no range.
    q = autoqnn.quantize(float_model, calibration_data=tokens,
                         config={keras.layers.MultiHeadAttention: {"attention_activations": False}})
    with pytest.raises(ExportError, match="representative_data"):
        autoqnn.export_tflite(q, tmp_path / "no_data.tflite")


def block_model():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((16,))
    x = keras.layers.Dense(32, name="stem")(inputs)
    x = ResidualBlock(32, name="block")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(x))
    model.get_layer("block").scale.assign(np.linspace(0.5, 1.5, 32).astype("float32"))
    return model, np.random.default_rng(0).normal(size=(64, 16)).astype("float32")


def test_user_composite_layer(tmp_path):
    model, data = block_model()
    q = autoqnn.quantize(model, weight_bits=8, calibration_data=data, config={
        "block/fc2": {"weight_bits": 4}, "block/norm": {"activation_bits": 8}})
    block = q.get_layer("block")
    assert isinstance(block, ResidualBlock)
    assert isinstance(block.fc1, QuantDense) and isinstance(block.fc2, QuantDense)
    assert block.fc1.input_quantizer is None and block.fc2.input_quantizer.is_calibrated
    assert block.fc2.weight_quantizers["kernel"].bits == 4
    assert block.norm.output_aq.is_calibrated  # the override asked for its output
    np.testing.assert_array_equal(np.array(block.scale), np.array(model.get_layer("block").scale))
    assert relative_error(q.predict(data, verbose=0), model.predict(data, verbose=0)) < 0.1
    q.save(tmp_path / "block.keras")
    loaded = keras.models.load_model(tmp_path / "block.keras")
    assert isinstance(loaded.get_layer("block").fc2, QuantDense)
    np.testing.assert_allclose(loaded.predict(data, verbose=0), q.predict(data, verbose=0),
                               atol=1e-5)


def test_overrides_quantize_outputs_of_float_sublayers():
    class Head(keras.layers.Layer):  # Softmax and Activation are built by __init__
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.fc = keras.layers.Dense(8, name="fc")
            self.act = keras.layers.Activation("gelu", name="act")
            self.probs = keras.layers.Softmax(name="probs")

        def call(self, x):
            return self.probs(self.act(self.fc(x)))

    inputs = keras.Input((8,))
    model = keras.Model(inputs, Head(name="head")(inputs))
    data = np.random.default_rng(0).random((16, 8), dtype=np.float32)
    q = autoqnn.quantize(model, calibration_data=data, config={
        "head/act": {"activation_bits": 8}, "Softmax": {"activation_bits": 6}})
    report = q.autoqnn_report
    assert report.get("head/act/output_aq").activation_bits == 8
    assert report.get("head/probs/output_aq").activation_bits == 6
    assert "output is quantized" in report.get("head/probs").reason
    assert not report.uncalibrated


def test_per_tensor_conversion_reaches_quantizers_inside_composites():
    model, data = block_model()
    q = autoqnn.quantize(model, scheme="acd", activation_scheme="acd", weight_bits=4,
                         activation_bits=4, calibration_data=data)
    assert q.get_layer("block").fc2.input_quantizer.range_axis == -1
    flat = per_tensor_activations(q)
    assert [aq.range_axis for aq in autoqnn.activation_quantizers(flat)] == [None] * len(
        autoqnn.activation_quantizers(q))
    assert flat.get_layer("block").fc2.input_quantizer.is_calibrated


def test_composites_that_cannot_be_quantized_stay_float_with_a_reason():
    inputs = keras.Input((8,))
    x = LateSublayers(name="late")(inputs)
    x = NormOnly(name="norm_only")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    q = autoqnn.quantize(model, activation_bits=None)
    report = q.autoqnn_report
    assert "where autoqnn cannot swap them" in report.get("late").reason
    assert "stack[0]" in report.get("late").reason
    assert report.get("late/inner").status == "float"
    assert type(q.get_layer("late")) is LateSublayers
    assert report.get("norm_only").reason == ("no quantization handler for NormOnly, nor for "
                                              "its sublayers (LayerNormalization)")
    assert report.get("head").status == "quantized"


def test_keras_hub_transformer_encoder(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6, 32))
    x = keras_hub.layers.TransformerEncoder(intermediate_dim=64, num_heads=2,
                                            name="encoder_1")(inputs)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(x))
    data = np.random.default_rng(0).normal(size=(32, 6, 32)).astype("float32")
    q = autoqnn.quantize(model, calibration_data=data)
    report = q.autoqnn_report
    for name in PROJECTIONS:
        assert report.get(f"encoder_1/self_attention_layer/{name}").status == "quantized"
    for name in ("feedforward_intermediate_dense", "feedforward_output_dense"):
        assert report.get(f"encoder_1/{name}").status == "quantized"
    assert "runs in float" in report.get("encoder_1/feedforward_layer_norm").reason
    assert quantized_fraction(q, model) >= 0.9
    assert relative_error(q.predict(data, verbose=0), model.predict(data, verbose=0)) < 0.1
    q.save(tmp_path / "encoder.keras")
    loaded = keras.models.load_model(tmp_path / "encoder.keras")
    encoder = loaded.get_layer("encoder_1")
    assert isinstance(encoder, keras_hub.layers.TransformerEncoder)
    assert isinstance(encoder._self_attention_layer.query_dense, QuantEinsumDense)
    np.testing.assert_allclose(loaded.predict(data, verbose=0), q.predict(data, verbose=0),
                               atol=1e-5)


def test_vit_builds_and_quantizes():
    model = build_model("vit")
    assert 100_000 < model.count_params() < 300_000
    images = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
    q = autoqnn.quantize(model, calibration_data=images)
    report = q.autoqnn_report
    assert report.get("block1_mha/query").status == "quantized"
    assert report.get("pos_embed").status == "float"  # a learned table, like a bias
    assert quantized_fraction(q, model) >= 0.95
    assert not report.uncalibrated


def test_attention_twin_with_the_first_four_quantizers_still_runs():
    # Twins saved before the scaled query, scores and context had quantizers load as
    # they were: the core quantizes the four tensors they name and nothing else.
    mha = keras.layers.MultiHeadAttention(2, 4, name="mha")
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype("float32")
    expected = mha(x, x)
    spec = {"scheme": "uniform", "bits": 8}
    twin = quantized_composite(mha, {}, attention_quantizers=dict.fromkeys(
        ("query", "key", "value", "probabilities"), spec))
    got = twin(x, x)  # uncalibrated quantizers pass values through
    for dense in ("query_dense", "key_dense", "value_dense", "output_dense"):
        getattr(twin, dense).set_weights(getattr(mha, dense).get_weights())
    np.testing.assert_allclose(np.asarray(twin(x, x)), np.asarray(expected), atol=1e-5)
    assert sorted(twin.attention_aq) == ["key", "probabilities", "query", "value"]
    assert got.shape == expected.shape
