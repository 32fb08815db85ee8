"""tune_ptq on a tiny real model: result, trial log, history resume, transfer, failures."""

import json
import math

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.executor import ThreadExecutor
from autoqnn.tune import SearchSpace, read_history
from autoqnn.tune.features import model_descriptors

SPACE = {"granularity": ["per_tensor", "per_channel"],
         "grid": ["symmetric", "asymmetric"], "calibration_method": ["max", "mse"]}


@pytest.fixture(scope="module")
def task():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 10)).astype("float32")
    y = (x[:, :3].sum(axis=1) > 0).astype("int64") + (x[:, 3] > 1).astype("int64")
    inputs = keras.Input((10,), name="features")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(h), name="mlp")
    keras.utils.set_random_seed(0)
    model.compile(keras.optimizers.Adam(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=10, batch_size=96, verbose=0)
    return model, x[:48], (x[48:], y[48:])


def test_tune_returns_best_model_and_log(task, tmp_path):
    model, calib, val = task
    history = tmp_path / "h.jsonl"
    result = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=5, sampler="xgboost",
                              history=history, fixed={"weight_bits": 3}, verbose=0)
    assert len(result.trials) == 5
    assert result.best_accuracy == max(t.accuracy for t in result.trials)
    assert isinstance(result.best_config, autoqnn.PTQConfig)
    assert result.best_config.weight_bits == 3
    assert autoqnn.tune.tuner.top1_accuracy(result.model, val) == result.best_accuracy
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert len(lines) == 5 and lines[0]["descriptors"] == model_descriptors(model)
    assert {"config", "accuracy", "error", "seconds", "sampler", "float_accuracy"} <= set(lines[0])


def test_resume_after_interruption(task, tmp_path):
    model, calib, val = task
    history = tmp_path / "h.jsonl"
    first = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=3, sampler="random",
                             history=history, seed=4, verbose=0)
    # A cut last line (the process was killed while writing) is skipped.
    with open(history, "a") as handle:
        handle.write('{"trial": 3, "config": {"granul')
    second = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=5, sampler="random",
                              history=history, seed=4, verbose=0)
    assert [t.config for t in second.trials[:3]] == [t.config for t in first.trials]
    assert len(second.trials) == 5 and len(read_history(history)) == 5
    configs = [json.dumps(t.config, sort_keys=True) for t in second.trials]
    assert len(set(configs)) == 5  # resumed trials are not evaluated again
    # Same as an uninterrupted run with the same seed.
    fresh = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=5, sampler="random",
                             seed=4, verbose=0)
    assert [t.config for t in fresh.trials] == [t.config for t in second.trials]


def test_transfer_rows_come_from_other_models(task, tmp_path):
    model, calib, val = task
    history = tmp_path / "h.jsonl"
    autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=8, sampler="grid",
                     history=history, model_name="other", verbose=0)
    # With 8 transfer rows, xgboost predicts from the first trial on (no random start).
    result = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=1, sampler="xgboost",
                              history=history, model_name="target", verbose=0)
    assert result.trials[0].sampler == "xgboost" and len(read_history(history)) == 9


@pytest.mark.parametrize("bad", ["raise", "nan", "none"])
def test_failed_evaluations_are_recorded_and_search_continues(task, tmp_path, bad):
    model, calib, val = task
    calls = []

    def metric(qmodel):
        calls.append(1)
        if len(calls) == 3:  # the float model is call 1; trial 2 fails
            if bad == "raise":
                raise RuntimeError("device lost")
            return float("nan") if bad == "nan" else None
        return 0.5

    result = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=4, sampler="grid",
                              history=tmp_path / "h.jsonl", metric=metric, verbose=0)
    assert len(result.trials) == 4
    failed = [t for t in result.trials if t.failed]
    assert len(failed) == 1 and failed[0].trial == 1
    assert ("RuntimeError: device lost" if bad == "raise" else "evaluation returned") in \
        failed[0].error
    assert result.best_accuracy == 0.5
    record = read_history(tmp_path / "h.jsonl")[1]
    assert record.accuracy is None and record.error


def test_every_trial_failing(task):
    model, calib, val = task
    calls = []

    def metric(qmodel):
        calls.append(1)
        if len(calls) > 1:
            raise ValueError("bad")
        return 1.0

    result = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=2, metric=metric,
                              verbose=0)
    assert result.best_config is None and result.model is None
    assert all(t.failed for t in result.trials)


def test_parallel_executor(task):
    model, calib, val = task
    result = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=4, sampler="random",
                              executor=ThreadExecutor(2), verbose=0)
    assert len(result.trials) == 4 and all(not t.failed for t in result.trials)


def test_bad_inputs(task):
    model, calib, val = task
    with pytest.raises(ValueError, match="space must be a non-empty dict"):
        autoqnn.tune_ptq(model, calib, val, space={}, verbose=0)
    with pytest.raises(ValueError, match="invalid value 'entropy'"):
        autoqnn.tune_ptq(model, calib, val, space={"calibration_method": ["entropy"]}, verbose=0)
    with pytest.raises(ValueError, match="calibration_data has samples of shape \\(7,\\)"):
        autoqnn.tune_ptq(model, np.zeros((4, 7), "float32"), val, space=SPACE, verbose=0)
    with pytest.raises(ValueError, match="sampler must be one of"):
        autoqnn.tune_ptq(model, calib, val, space=SPACE, sampler="annealing", verbose=0)
    with pytest.raises(ValueError, match="max_trials must be a positive int, got 0"):
        autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=0, verbose=0)
    with pytest.raises(ValueError, match="val_data must be an \\(x, y\\) tuple"):
        autoqnn.tune_ptq(model, calib, val[0], space=SPACE, verbose=0)


def test_search_space_object_and_features(task):
    model, calib, val = task
    space = SearchSpace({"calibration_samples": [1, 48]}, fixed={"activation_bits": 4})
    result = autoqnn.tune_ptq(model, calib, val, space=space, max_trials=2, sampler="genetic",
                              verbose=0)
    assert {t.config["calibration_samples"] for t in result.trials} == {1, 48}
    assert all(math.isfinite(t.accuracy) for t in result.trials)
