"""`autoqnn.search(strategy="sensitivity")`: the table, the exact solver, budgets, errors."""

import itertools

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.export import run_tflite
from autoqnn.mixed.budget import solve_policy
from autoqnn.mixed.table import distortion, measure_sensitivity

RNG = np.random.default_rng(0)
X = RNG.random((64, 10, 10, 1), dtype=np.float32)


@pytest.fixture(scope="module")
def cnn():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 1))
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu", name="dw")(x)
    x = keras.layers.Conv2D(16, 1, activation="relu", name="pw")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(32, activation="relu", name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


def test_distortion_golden():
    ref = np.array([[2.0, 0.0], [0.0, 0.0]])
    assert distortion(ref, ref, "kl") == 0.0
    p = np.exp([2.0, 0.0]) / np.exp([2.0, 0.0]).sum()
    expected = np.sum(p * (np.log(p) - np.log([0.5, 0.5]))) / 2
    np.testing.assert_allclose(distortion(ref, np.zeros((2, 2)), "kl"), expected)
    assert distortion(ref, np.zeros((2, 2)), "mse") == 1.0


def test_table_in_place_and_start_at_top(cnn):
    qmodel = autoqnn.quantize(cnn, weight_bits=4, calibration_data=X)
    layer_ids = [id(layer) for layer in qmodel.layers]
    table = measure_sensitivity(qmodel, cnn, X, candidate_bits=(2, 4, 8), num_samples=32)
    assert [id(layer) for layer in qmodel.layers] == layer_ids
    assert table.layers == ["conv1", "dw", "pw", "fc1", "logits"]
    assert all(table.values[p][8] == 0.0 for p in table.layers)
    assert all(table.values[p][2] > table.values[p][8] for p in table.layers)
    assert qmodel.autoqnn_report.get("fc1").weight_bits == 8  # left at the top candidate
    assert table.params["fc1"] == 6 * 6 * 16 * 32
    again = type(table).from_dict(table.to_dict())
    assert again == table


@pytest.mark.parametrize("seed", range(5))
def test_solver_is_exact_against_enumeration(seed):
    rng = np.random.default_rng(seed)
    layers = [f"l{i}" for i in range(5)]
    bits = (2, 3, 4, 8)
    values = {p: dict(zip(bits, np.sort(rng.random(4))[::-1] * rng.random() * 10)) for p in layers}
    for p in layers:
        values[p][8] = 0.0
    params = {p: int(rng.integers(10, 1000)) for p in layers}
    budget = float(rng.uniform(2.2, 6.0))
    total = sum(params.values())
    best, best_cost = None, np.inf
    for choice in itertools.product(bits, repeat=len(layers)):
        if sum(params[p] * b for p, b in zip(layers, choice)) <= budget * total:
            cost = sum(values[p][b] for p, b in zip(layers, choice))
            if cost < best_cost - 1e-12:
                best, best_cost = dict(zip(layers, choice)), cost
    policy = solve_policy(values, params, weight_bits_budget=budget)
    assert sum(values[p][b] for p, b in policy.items()) == pytest.approx(best_cost, abs=1e-7)
    assert sum(params[p] * b for p, b in policy.items()) <= budget * total
    del best


def test_search_honours_each_budget_exactly(cnn, tmp_path):
    result = autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3.0, verbose=0,
                            num_samples=32)
    report = result.model.autoqnn_report
    assert result.average_weight_bits <= 3.0
    assert result.average_weight_bits == pytest.approx(report.weight_bits_avg)
    assert {r.weight_bits for r in result.policy} <= {2, 3, 4, 8}
    assert result.sensitivity is not None and result.history[0]["step"] == "sensitivity"
    sized = autoqnn.search(cnn, calibration_data=X, size_budget_bytes=report.size_bytes * 0.8,
                           verbose=0, num_samples=32)
    assert sized.size_bytes <= report.size_bytes * 0.8
    assert sized.size_bytes == pytest.approx(sized.model.autoqnn_report.size_bytes)
    # The searched model exports (mixed precision per layer).
    info = autoqnn.export_tflite(result.model, tmp_path / "mixed.tflite")
    agree = np.mean(run_tflite(info.path, X[:32]).argmax(-1) ==
                    result.model.predict(X[:32], verbose=0).argmax(-1))
    assert agree >= 0.9
    same = autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3.0, verbose=0,
                          num_samples=32)
    assert same.bits() == result.bits()  # deterministic


def test_memory_budget_lowers_activation_bits(cnn):
    # The largest activations: pw's output 6x6x16 = 576 values and conv1's 8x8x8 = 512,
    # 576 and 512 bytes at 8 bits; both fit 300 bytes at 4 bits.
    result = autoqnn.search(cnn, calibration_data=X, memory_budget_bytes=300, verbose=0,
                            num_samples=32)
    assert result.memory_bytes <= 300
    assert result.model.get_layer("conv1_aq").bits == 4
    assert result.model.get_layer("pw_aq").bits == 4
    assert result.model.get_layer("fc1_aq").bits == 8  # 32 values: untouched
    assert result.history[-1]["step"] == "memory"
    with pytest.raises(ValueError, match=r"memory_budget_bytes=10 is below the smallest "
                                         r"achievable 144 bytes"):
        autoqnn.search(cnn, calibration_data=X, memory_budget_bytes=10, verbose=0)


def test_pinned_layers_count_in_the_budget(cnn):
    result = autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3.5, verbose=0,
                            config={"logits": {"weight_bits": 8}}, num_samples=32)
    assert "logits" not in result.sensitivity.layers
    assert result.bits()["logits"] == 8 and result.average_weight_bits <= 3.5


def test_checkpoint_reuses_the_table(cnn, tmp_path):
    first = autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3.0, verbose=0,
                           checkpoint_dir=tmp_path, num_samples=32)
    assert len(list(tmp_path.glob("sensitivity_*/table.json"))) == 1
    second = autoqnn.search(cnn, calibration_data=X, weight_bits_budget=4.0, verbose=0,
                            checkpoint_dir=tmp_path, num_samples=32)
    assert second.sensitivity.to_dict() == first.sensitivity.to_dict()
    assert second.average_weight_bits <= 4.0
    assert len(list(tmp_path.glob("sensitivity_*/table.json"))) == 1  # the budget: same table


@pytest.mark.parametrize("setting", [{"scheme": "pot"}, {"granularity": "per_tensor"},
                                     {"activation_bits": 4}, {"config": {"logits": None}},
                                     {"activation_scheme": "pact"}])
def test_every_setting_that_changes_the_table_keys_it(cnn, tmp_path, setting):
    kwargs = dict(calibration_data=X, weight_bits_budget=4.0, verbose=0,
                  checkpoint_dir=tmp_path, num_samples=16, candidate_bits=(4, 8))
    first = autoqnn.search(cnn, **kwargs)
    other = autoqnn.search(cnn, **{**kwargs, **setting})
    assert len(list(tmp_path.glob("sensitivity_*/table.json"))) == 2
    assert other.sensitivity.to_dict() != first.sensitivity.to_dict()


def test_every_setting_acts_or_raises(cnn):
    """quantize's settings reach the searched model; a setting the strategy does not use
    raises, naming the strategies that use it."""
    qmodel = autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=4.0, verbose=0,
                              activation_scheme="pact", scheme="pot", calibration_samples=16,
                              input_bits=6, fold_batchnorm=False)
    schemes = {layer.quantizer.scheme.name for layer in qmodel.layers
               if isinstance(layer, autoqnn.ActivationQuantizer)}
    assert "pact" in schemes
    assert {r.scheme for r in qmodel.autoqnn_report if r.status == "quantized"} == {"pot"}
    assert qmodel.autoqnn_search.strategy == "sensitivity"
    for name, value in (("epochs", 2), ("seed", 1), ("precision_weight", 2.0),
                        ("scheme_scope", "model"), ("qpl_start", "budget"),
                        ("arch_update", "joint"), ("episodes", 3)):
        with pytest.raises(ValueError, match=f"{name}= is not a setting of strategy "
                                             "'sensitivity'; it is used by"):
            autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3, **{name: value})
    with pytest.raises(ValueError, match="val_data= is not used by strategy 'sensitivity'"):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3, val_data=(X, X))
    with pytest.raises(ValueError, match=r"\['activation_scheme'\] do not apply to the "
                                         "trained autopilot"):
        autoqnn.quantize(cnn, train_data=(X, np.zeros(len(X), "int64")),
                         weight_bits_budget=3.0, activation_scheme="lsq")
    with pytest.raises(ValueError, match=r"\['scheme'\] conflict with ptq="):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3, scheme="pot",
                       ptq={"weight_clipping": "mse"})


def test_plot(cnn, tmp_path):
    result = autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3.0, verbose=0,
                            num_samples=16)
    result.plot(tmp_path / "policy.png")
    assert (tmp_path / "policy.png").stat().st_size > 1000


def test_bad_input(cnn):
    with pytest.raises(ValueError, match=r"weight_bits_budget=1.5 is below the smallest "
                                         r"achievable average of 2.0000 bits"):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=1.5, verbose=0)
    with pytest.raises(ValueError, match=r"strategy must be one of \['sensitivity', 'dnas', "
                                         r"'qpl', 'dnas\+qpl', 'rl'\] or a strategy config, "
                                         r"got 'x'"):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3, strategy="x")
    with pytest.raises(ValueError, match="give a budget"):
        autoqnn.search(cnn, calibration_data=X)
    with pytest.raises(ValueError, match="needs calibration_data="):
        autoqnn.search(cnn, weight_bits_budget=3)
    with pytest.raises(ValueError, match="calibration_data is empty"):
        autoqnn.search(cnn, calibration_data=X[:0], weight_bits_budget=3)
    with pytest.raises(ValueError, match=r"candidate_bits \(1,\) include \(1,\), outside the "
                                         r"range \[2, 16\] of scheme 'uniform'"):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3, candidate_bits=(1,))
    with pytest.raises(ValueError, match=r"weight_bits_budget must be a positive number, "
                                         r"got -1"):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=-1)
    with pytest.raises(ValueError, match=r"metric must be one of \['kl', 'mse'\]"):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=3, metric="l1")


def test_keras_application_model():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None,
                                           classes=4)
    images = RNG.random((8, 32, 32, 3), dtype=np.float32)
    result = autoqnn.search(model, calibration_data=images, weight_bits_budget=4.0, verbose=0,
                            candidate_bits=(4, 8), num_samples=8)
    assert result.average_weight_bits <= 4.0
    assert len(result.sensitivity.layers) > 30


def test_quantize_with_a_budget_is_the_search(cnn):
    qmodel = autoqnn.quantize(cnn, calibration_data=X, weight_bits_budget=3.0,
                              calibration_samples=32, time_budget_seconds=1)
    assert qmodel.autoqnn_report.weight_bits_avg <= 3.0
    assert qmodel.autoqnn_search.strategy in ("sensitivity", "uniform")
    assert qmodel.autoqnn_report.recipe.candidates[0].name == "defaults"
    with pytest.raises(ValueError, match="weight_bits=4 conflicts with a budget"):
        autoqnn.quantize(cnn, weight_bits=4, calibration_data=X, weight_bits_budget=3.0)


def test_budget_checked_before_the_sensitivity_pass(cnn, monkeypatch):
    """An unreachable budget raises before any probe; one that cannot bind warns."""
    from autoqnn.mixed import sensitivity

    def no_probe(*args, **kwargs):
        raise AssertionError("the sensitivity pass ran")

    monkeypatch.setattr(sensitivity, "measure_sensitivity", no_probe)
    with pytest.raises(ValueError, match="below the smallest achievable average of 2.0000"):
        autoqnn.search(cnn, calibration_data=X, weight_bits_budget=0.5, verbose=0)
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="does not bind"):
        result = autoqnn.search(cnn, calibration_data=X, weight_bits_budget=40, verbose=0,
                                num_samples=16)
    assert set(result.bits().values()) == {8}
