"""The trained autopilot: `quantize(model, train_data=..., weight_bits_budget=...)`."""

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.autopilot.trained import TRAINED_RECIPES

RNG = np.random.default_rng(1)
X = RNG.random((320, 8, 8, 1), dtype=np.float32)
Y = (X[:, :4].mean(axis=(1, 2, 3)) > X[:, 4:].mean(axis=(1, 2, 3))).astype("int64")


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="relu", name="fc1")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(x))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, epochs=3, verbose=0)
    return model


def test_trained_one_call_probes_every_recipe_and_keeps_the_best(model, tmp_path):
    before = [w.copy() for w in model.get_weights()]
    qmodel = autoqnn.quantize(model, train_data=(X[:256], Y[:256]), val_data=(X[256:], Y[256:]),
                              weight_bits_budget=3.0, activation_bits=4, epochs=1, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    choice = qmodel.autoqnn_report.recipe
    assert choice.mode == "trained"
    names = [c.name for c in choice.candidates]
    assert names[:3] == list(TRAINED_RECIPES)
    assert names[3:] in ([], [f"{names[3].split(',')[0]}, 8-bit ends"])
    judged = [c for c in choice.candidates if c.score is not None]
    assert choice.best.score.accuracy == max(c.score.accuracy for c in judged)
    assert qmodel.autoqnn_report.weight_bits_avg <= 3.0
    assert qmodel.autoqnn_search.strategy == "autopilot"
    assert any("fine-tuned 1 epochs" in note for note in choice.notes)
    schemes = {r.scheme for r in qmodel.autoqnn_report if r.status == "quantized"}
    assert schemes == {choice.best.recipe["scheme"]}
    output = qmodel.layers[-1]  # the last layer's output quantizer: 8 bits
    assert isinstance(output, autoqnn.ActivationQuantizer)
    assert output.quantizer.scheme.bits == 8
    path = tmp_path / "trained.keras"
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(X[:8], verbose=0), qmodel.predict(X[:8], verbose=0),
                               atol=1e-5)


def test_ends_policy_fits_the_budget(model):
    from autoqnn.autopilot.trained import ends_policy
    from autoqnn.mixed.budget import Budget

    result = autoqnn.search(model, calibration_data=X, weight_bits_budget=3.0, verbose=0)
    policy = ends_policy(result, Budget(3.0))
    assert policy["conv"] == {"weight_bits": 8} and policy["logits"] == {"weight_bits": 8}
    assert policy["fc1"] == {"weight_bits": 2}  # 3 bits would average 3.11
    assert ends_policy(result, Budget(size_bytes=1e6)) is None


def test_trained_bad_input(model):
    with pytest.raises(ValueError, match=r"\['scheme'\] do not apply to the trained autopilot"):
        autoqnn.quantize(model, train_data=(X, Y), weight_bits_budget=3.0, scheme="pot")
    with pytest.raises(ValueError, match="epochs=2 is for the trained autopilot"):
        autoqnn.quantize(model, calibration_data=X, weight_bits_budget=3.0, epochs=2)
    with pytest.raises(ValueError, match="memory_budget_bytes= is not taken by the trained"):
        autoqnn.quantize(model, train_data=(X, Y), memory_budget_bytes=1000)
    with pytest.raises(ValueError, match=r"\['time_budget_seconds'\] apply to the autopilot "
                                         "only; the trained autopilot"):
        autoqnn.quantize(model, train_data=(X, Y), weight_bits_budget=3.0,
                         time_budget_seconds=5)
    with pytest.raises(ValueError, match="train_data must be an"):
        autoqnn.quantize(model, train_data=X, weight_bits_budget=3.0)
