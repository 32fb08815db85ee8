"""`RayExecutor` on a local 2-CPU Ray instance: outcomes, tune_ptq and an RL search.

One executor (two worker processes, each with its own TensorFlow) is shared by the
tests: starting a worker costs seconds (TensorFlow's import).
"""

import json
import os
import sys

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.executor import RayExecutor, SerialExecutor, get_executor
from autoqnn.tune import read_history

SPACE = {"granularity": ["per_tensor", "per_channel"],
         "grid": ["symmetric", "asymmetric"], "calibration_method": ["max", "mse"]}
RNG = np.random.default_rng(0)
X = RNG.normal(size=(160, 10)).astype("float32")
Y = (X[:, :3].sum(axis=1) > 0).astype("int64") + (X[:, 3] > 1).astype("int64")


@pytest.fixture(scope="module")
def executor():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    executor = RayExecutor(num_workers=2)
    yield executor
    executor.close()
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,), name="features")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    h = keras.layers.Dense(16, activation="relu", name="hidden2")(h)
    m = keras.Model(inputs, keras.layers.Dense(3, name="out")(h), name="mlp")
    m.compile(keras.optimizers.Adam(0.05),
              keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(X[:96], Y[:96], epochs=10, batch_size=96, verbose=0)
    return m


def test_outcomes_in_order_with_errors(executor):
    outcomes = executor.map(lambda x: 10 / x, [5, 0, 2])
    assert [o.value for o in outcomes] == [2.0, None, 5.0]
    assert outcomes[1].error.startswith("ZeroDivisionError")
    # Both workers took part: each is its own process.
    pids = {o.value for o in executor.map(lambda _: os.getpid(), range(6))}
    assert len(pids) == 2 and os.getpid() not in pids


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(ImportError, match=r"pip install autoqnn\[distributed\]"):
        get_executor("ray")
    with pytest.raises(ImportError, match=r"pip install autoqnn\[distributed\]"):
        RayExecutor()


def test_get_executor_ray_uses_the_running_instance(executor):
    ray = pytest.importorskip("ray")
    made = get_executor("ray")
    try:
        assert isinstance(made, RayExecutor) and made.max_workers == 2
    finally:
        made.close()  # it did not start Ray, so Ray keeps running
    assert ray.is_initialized()
    with pytest.raises(ValueError, match="num_workers must be a positive int, got 0"):
        RayExecutor(num_workers=0)


def test_tune_ptq_on_ray_resumes_from_the_same_history(executor, model, tmp_path):
    calib, val = X[:48], (X[96:], Y[96:])
    history = tmp_path / "h.jsonl"
    first = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=3, sampler="random",
                             history=history, executor=executor, seed=1, verbose=0)
    assert len(first.trials) == 3 and len(read_history(history)) == 3
    second = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=5, sampler="random",
                              history=history, executor=executor, seed=1, verbose=0)
    assert [t.config for t in second.trials[:3]] == [t.config for t in first.trials]
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert len(lines) == 5 and len({json.dumps(r["config"], sort_keys=True)
                                    for r in lines}) == 5
    assert {"config", "accuracy", "error", "seconds", "sampler", "float_accuracy"} <= \
        set(lines[0])
    # A serial run resumes the Ray history too, and each config's accuracy is the one a
    # serial evaluation gives.
    third = autoqnn.tune_ptq(model, calib, val, space=SPACE, max_trials=6, sampler="random",
                             history=history, seed=1, verbose=0)
    assert len(third.trials) == 6
    from autoqnn.evaluate import top1_accuracy

    for trial in second.trials[:2]:
        config = autoqnn.PTQConfig.from_dict(trial.config)
        q = autoqnn.quantize(model, calibration_data=calib, ptq=config)
        assert top1_accuracy(q, val) == trial.accuracy


class _TwoAtATime(SerialExecutor):
    max_workers = 2  # the batching a 2-worker executor gets, evaluated in this process


def test_rl_search_on_ray_matches_local_batches_and_resumes(executor, model, tmp_path):
    settings = {"val_data": (X[96:], Y[96:]), "calibration_data": X[:64], "strategy": "rl",
                "weight_bits_budget": 3.0, "verbose": 0, "finetune_epochs": 0, "seed": 2,
                "agent": {"hidden": (16, 16), "batch_size": 8, "warmup_episodes": 2}}
    on_ray = autoqnn.search(model, episodes=4, executor=executor, **settings)
    local = autoqnn.search(model, episodes=4, executor=_TwoAtATime(), **settings)

    def episodes(result):
        return [{k: v for k, v in h.items() if "seconds" not in k}
                for h in result.history if h["step"] == "episode"]

    assert len(episodes(on_ray)) == 4 and episodes(on_ray) == episodes(local)
    assert on_ray.average_weight_bits <= 3.0 and on_ray.bits() == local.bits()
    # Interrupted after 2 episodes, resumed to 4 on Ray: the same search.
    autoqnn.search(model, episodes=2, executor=executor, checkpoint_dir=tmp_path, **settings)
    resumed = autoqnn.search(model, episodes=4, executor=executor, checkpoint_dir=tmp_path,
                             **settings)
    assert episodes(resumed) == episodes(on_ray)


def test_a_dead_worker_is_a_failed_outcome_and_is_replaced(executor):
    def evaluate(x):
        if x < 0:
            os._exit(1)
        return x

    outcomes = executor.map(evaluate, [1, -1])
    assert outcomes[0].value == 1 and outcomes[1].value is None
    assert "Error" in outcomes[1].error
    assert [o.value for o in executor.map(evaluate, [3, 4, 5])] == [3, 4, 5]
