"""The retrain-free autopilot behind `autoqnn.quantize(..., weight_bits_budget=...)`."""

import warnings

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.autopilot.judge import Judge, split_holdout
from autoqnn.autopilot.recipes import RecipeProposer

RNG = np.random.default_rng(0)
X = RNG.random((96, 10, 10, 1), dtype=np.float32)
Y = RNG.integers(0, 5, 96)


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 1))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="dw")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(X, Y, epochs=2, verbose=0)  # BatchNorm statistics of this data
    return model


def test_one_call_chooses_a_recipe_and_never_loses_to_uniform(cnn):
    before = [w.copy() for w in cnn.get_weights()]
    qmodel = autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=3.0,
                              time_budget_seconds=15, calibration_samples=48, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, cnn.get_weights()))
    report = qmodel.autoqnn_report
    assert report.weight_bits_avg <= 3.0
    choice = report.recipe
    names = [c.name for c in choice.candidates]
    assert names[:2] == ["defaults", "uniform defaults 3-bit"] and len(names) > 2
    judged = [c for c in choice.candidates if c.score is not None]
    assert choice.best.score.key == max(c.score.key for c in judged)
    uniform = [c for c in judged if c.kind == "uniform"]
    assert uniform and all(choice.best.score.key >= c.score.key for c in uniform)
    assert "24 held-out samples" in choice.judge
    # the chosen model is the one judged: the same score again on the held-out images
    _, held_out = split_holdout(X)
    assert Judge(cnn, held_out)(qmodel).kl == pytest.approx(choice.best.score.kl, abs=1e-5)
    assert qmodel.autoqnn_search.average_weight_bits <= 3.0
    assert "chose" in str(choice) and choice.to_dict()["chosen"] == choice.chosen


def test_order_of_candidates_on_a_fast_model():
    """Cheap recipes share the defaults' table; AdaRound comes after the cheap seeds; MSE
    clipping measures a table of its own."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(24, activation="relu", name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(4, name="b")(hidden))
    data = RNG.random((64, 8), dtype=np.float32)
    qmodel = autoqnn.quantize(model, calibration_data=data, weight_bits_budget=3.0,
                              time_budget_seconds=20, verbose=0)
    choice = qmodel.autoqnn_report.recipe
    kinds = [(c.name, c.kind) for c in choice.candidates]
    assert kinds[:5] == [("defaults", "search"), ("uniform defaults 3-bit", "uniform"),
                         ("bc", "shared"), ("percentile", "shared"),
                         (kinds[4][0], "adaround")]
    assert "adaround" in kinds[4][0]
    assert ("mse+bc", "search") in kinds or "mse+bc" in choice.skipped
    assert choice.seconds < 20 + 5 * max(c.seconds for c in choice.candidates)


def test_time_budget_says_what_it_left(cnn):
    qmodel = autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=4.0,
                              time_budget_seconds=0.01, calibration_samples=48, verbose=0)
    choice = qmodel.autoqnn_report.recipe
    assert [c.name for c in choice.candidates][:2] == ["defaults", "uniform defaults 4-bit"]
    assert {"mse+bc", "bc", "percentile"} <= set(choice.skipped)
    assert any(s.startswith("adaround on") for s in choice.skipped)
    assert "not tried within 0.01 s" in str(choice)


def test_labelled_judge_and_saved_model(cnn, tmp_path):
    qmodel = autoqnn.quantize(cnn, calibration_data=X, val_data=(X[:40], Y[:40]),
                              weight_bits_budget=4.0, time_budget_seconds=0.01, verbose=0)
    choice = qmodel.autoqnn_report.recipe
    assert choice.best.score.accuracy is not None and "accuracy" in choice.judge
    path = tmp_path / "auto.keras"
    qmodel.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(X[:8], verbose=0), qmodel.predict(X[:8], verbose=0),
                               atol=1e-5)


def test_fixed_recipes_skip_the_autopilot(cnn):
    qmodel = autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=4.0,
                              recipe="defaults", calibration_samples=32, verbose=0)
    assert qmodel.autoqnn_report.recipe is None
    assert qmodel.autoqnn_search.strategy == "sensitivity"
    with pytest.raises(ValueError, match=r"\['time_budget_seconds'\] apply to the autopilot "
                                         r"only; the recipe is fixed here by \['ptq'\]"):
        autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=4.0,
                         ptq={"bias_correction": True}, time_budget_seconds=5)
    with pytest.raises(ValueError, match=r"recipe must be one of \['auto', 'defaults'\], "
                                         "got 'mse'"):
        autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=4.0, recipe="mse")
    with pytest.raises(ValueError, match=r"\['recipe'\] apply to the autopilot only; they "
                                         "choose the recipe under a budget"):
        autoqnn.quantize(cnn, calibration_data=X, recipe="defaults")
    with pytest.raises(ValueError, match="val_data= is for the trained search"):
        autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=4.0, scheme="pot",
                         val_data=(X, Y))


def test_bad_input(cnn):
    with pytest.raises(ValueError, match="calibration_data has 5 samples: the autopilot holds "
                                         "some out"):
        autoqnn.quantize(cnn, calibration_data=X[:5], weight_bits_budget=3.0, verbose=0)
    with pytest.raises(ValueError, match="below the smallest achievable average of 2.0000"):
        autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=1.0, verbose=0)
    with pytest.raises(ValueError, match="needs calibration_data="):
        autoqnn.quantize(cnn, weight_bits_budget=3.0, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        autoqnn.quantize(cnn, calibration_data=(X * 255).astype("uint8"),
                         weight_bits_budget=4.0, time_budget_seconds=0.01, verbose=0)
    messages = [str(w.message) for w in caught]
    assert any("holds integers up to" in m for m in messages)
    assert any("does not look like the model's training data" in m for m in messages)


def test_proposer_hands_out_untried_recipes():
    proposer = RecipeProposer(calibration_samples=64)
    for recipe in proposer.seeds()[1:]:
        proposer.tell(recipe, 1.0)
    assert len(proposer.state.tried) == 3
    proposed = proposer.propose()
    assert proposed is not None
    proposer.tell(proposed, 2.0)
    assert len(proposer.state.tried) == 4


def test_target_litert_counts_the_file_bytes(cnn, tmp_path):
    """Under target="litert" every recipe's search budgets the .tflite file: the chosen
    model's file is within the byte budget, whichever candidate won."""
    uniform = autoqnn.quantize(cnn, weight_bits=8, calibration_data=X, verbose=0)
    w8_bytes = autoqnn.export_tflite(uniform, tmp_path / "w8.tflite").size_bytes
    budget = int(0.75 * w8_bytes)
    qmodel = autoqnn.quantize(cnn, calibration_data=X, size_budget_bytes=budget,
                              target="litert", time_budget_seconds=8, calibration_samples=48,
                              verbose=0)
    choice = qmodel.autoqnn_report.recipe
    assert choice.candidates[0].kind == "search"
    info = autoqnn.export_tflite(qmodel, tmp_path / "chosen.tflite")
    assert info.size_bytes <= budget < w8_bytes
    # the uniform baseline took a width LiteRT stores every layer at (or said why not)
    rows = [c for c in choice.candidates if c.kind == "uniform"]
    assert rows and all(c.name.endswith(("4-bit", "8-bit")) or c.error for c in rows)
