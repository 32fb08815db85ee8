"""`tune_ptq`: search PTQ configurations with an XGBoost cost model (Quantune) or a baseline.

Each trial quantizes the model with one `PTQConfig`, calibrates it and
measures top-1 accuracy on the validation data. The cost model learns the
accuracy change from float (in percent) from one-hot configs plus model
descriptors, so trials of other models (the history file) warm-start it.
Every finished trial is appended to the history file (JSON lines) at once;
running the same tune again resumes from it.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((64, 6), dtype=np.float32); y = (x[:, 0] > 0.5).astype("int64")
    >>> inputs = keras.Input((6,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
    >>> space = {"granularity": ["per_tensor", "per_channel"]}
    >>> result = autoqnn.tune_ptq(model, x, (x, y), space=space, max_trials=2, sampler="grid",
    ...                           verbose=0)
    >>> len(result.trials), result.best_config.granularity in ("per_tensor", "per_channel")
    (2, True)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path

import keras
import numpy as np

from autoqnn import defaults
from autoqnn.core import quantize_ptq
from autoqnn.data import iterate_batches
from autoqnn.evaluate import top1_accuracy
from autoqnn.executor import Outcome, get_executor
from autoqnn.ptq.config import RENAMED, PTQConfig
from autoqnn.tune.features import descriptor_vector, model_descriptors, model_fingerprint
from autoqnn.tune.samplers import SearchState, get_sampler
from autoqnn.tune.space import SearchSpace


@dataclasses.dataclass
class Trial:
    """One evaluated configuration (a line of the history file)."""

    trial: int
    config: dict
    accuracy: float | None
    error: str | None = None
    seconds: float = 0.0
    sampler: str = ""
    model: str = ""
    model_name: str = ""
    float_accuracy: float | None = None
    descriptors: dict = dataclasses.field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.accuracy is None


@dataclasses.dataclass
class TuneResult:
    """What `tune_ptq` found.

    Attributes:
        best_config: the best `PTQConfig`.
        best_accuracy: its validation accuracy.
        model: the model quantized with it (None if every trial failed).
        trials: the trial log of this model (resumed trials included), in order.
        float_accuracy: accuracy of the float model on the same data.
        space: the `SearchSpace` searched.
    """

    best_config: PTQConfig | None
    best_accuracy: float | None
    model: object
    trials: list
    float_accuracy: float
    space: SearchSpace


def config_features(space: SearchSpace, config: dict, descriptors: dict) -> np.ndarray:
    """Cost-model features: one-hot config, weight/activation bits, model descriptors."""
    numeric = np.array([config.get("weight_bits", 8),
                        config.get("activation_bits") or 32], "float32")
    return np.concatenate([space.encode(config), numeric, descriptor_vector(descriptors)])


def read_history(path) -> list[Trial]:
    """Trials stored in a JSON-lines history file (missing file: none; bad lines skipped)."""
    if path is None or not Path(path).is_file():
        return []
    fields = {f.name for f in dataclasses.fields(Trial)}
    trials = []
    with open(path) as handle:
        for line in handle:
            try:
                record = json.loads(line)
                if "strategy" in record:  # the field's name before 0.2
                    record.setdefault("sampler", record.pop("strategy"))
                record["config"] = {RENAMED.get(k, k): v
                                    for k, v in record.get("config", {}).items()}
                trials.append(Trial(**{k: v for k, v in record.items() if k in fields}))
            except (json.JSONDecodeError, TypeError):
                continue  # a line cut by an interruption
    return trials


def append_history(path, trial: Trial):
    """Appends one trial to the history file and flushes it to disk."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = ""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            prefix = "" if handle.read(1) == b"\n" else "\n"  # after a cut line
    with open(path, "a") as handle:
        handle.write(prefix + json.dumps(dataclasses.asdict(trial)) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _score(accuracy, float_accuracy):
    return 100.0 * (accuracy - float_accuracy)


def _sampler_argument(sampler, strategy, stacklevel=3):
    if strategy is not None:
        warnings.warn("strategy= is deprecated here; use sampler= (autoqnn.search's "
                      "strategies are the mixed-precision searches)", DeprecationWarning,
                      stacklevel=stacklevel)
        return strategy
    return sampler


def run_search(space: SearchSpace, evaluate, sampler="xgboost",
               max_trials: int = defaults.TUNER_TRIALS, *, seed: int = 0, features=None,
               prior=None, done=None, executor=None, float_accuracy: float = 0.0,
               on_trial=None, stop=None, verbose: int = 0, strategy=None) -> dict:
    """The search loop on grid indices (used by `tune_ptq` and by benchmark replays).

    Args:
        space: the `SearchSpace`.
        evaluate: `fn(grid index) -> accuracy`; raising or returning NaN
            makes a failed trial.
        sampler: a name or a `Sampler` (`autoqnn.tune.samplers`).
        max_trials: total trials, `done` ones included.
        seed: the search seed.
        features: `(len(space), F)` cost-model features (xgboost).
        prior: `(features, scores)` transfer rows, or None.
        done: `{index: accuracy or None}` already evaluated (resume).
        executor: see `autoqnn.executor.get_executor`; one made here
            (from "ray" or an int) is closed at the end.
        float_accuracy: the reference the scores are relative to.
        on_trial: `fn(index, Outcome)` called as each trial finishes.
        stop: `fn(results) -> bool`, checked after each round; True ends the search.
        verbose: 1 shows a progress bar.
        strategy: the deprecated name of `sampler`.

    Returns:
        `{index: accuracy or None}` of all trials, in evaluation order.
    """
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(f"max_trials must be a positive int, got {max_trials!r}")
    sampler = get_sampler(_sampler_argument(sampler, strategy))
    owned = isinstance(executor, (str, int))  # made here ("ray", threads): closed here
    executor = get_executor(executor)
    try:
        return _search_loop(space, evaluate, sampler, max_trials, seed, features, prior,
                            done, executor, float_accuracy, on_trial, stop, verbose)
    finally:
        if owned:
            executor.close()


def _search_loop(space, evaluate, sampler, max_trials, seed, features, prior, done, executor,
                 float_accuracy, on_trial, stop, verbose):
    results = dict(done or {})
    state = SearchState(space, {i: None if a is None else _score(a, float_accuracy)
                                for i, a in results.items()}, features, seed=seed)
    if prior is not None and len(prior[0]):
        state.prior_features, state.prior_scores = np.asarray(prior[0]), np.asarray(prior[1])
    budget = min(max_trials, len(space))
    progbar = keras.utils.Progbar(budget, unit_name="trial",
                                  stateful_metrics=["best_accuracy"]) if verbose else None
    while len(results) < budget:
        indices = sampler.propose(state, min(executor.max_workers, budget - len(results)))
        if not indices:
            break
        for index, outcome in zip(indices, executor.map(evaluate, indices)):
            value = outcome.value
            if outcome.error is None and (value is None or not isinstance(
                    value, (int, float, np.floating)) or not math.isfinite(float(value))):
                outcome = Outcome(None, f"evaluation returned {value!r}", outcome.seconds)
            else:
                outcome = Outcome(None if value is None else float(value), outcome.error,
                                  outcome.seconds)
            results[index] = outcome.value
            state.tried[index] = None if outcome.value is None else _score(outcome.value,
                                                                           float_accuracy)
            if on_trial is not None:
                on_trial(index, outcome)
        if progbar is not None:
            best = max((a for a in results.values() if a is not None), default=float("nan"))
            progbar.update(len(results), [("best_accuracy", best)])
        if stop is not None and stop(results):
            break
    return results


def _check_data(model, data, argument):
    try:
        next(iter(iterate_batches(model, data, 1, 1, argument)))
    except StopIteration:
        raise ValueError(f"{argument} is empty") from None


def _resume(records, key, space, transfer):
    """From the history: `(done, trials, prior)`, this model's finished trials in the space
    (`{index: accuracy}` and their records) and the other models' trials as cost-model
    transfer rows (`(features, scores)` or None)."""
    done, trials = {}, []
    prior_features, prior_scores = [], []
    for record in records:
        if record.model == key:
            index = space.index_of(record.config)
            if index is not None and index not in done:
                done[index] = record.accuracy
                trials.append(record)
        elif transfer and record.accuracy is not None and record.float_accuracy is not None:
            prior_features.append(config_features(space, record.config, record.descriptors))
            prior_scores.append(_score(record.accuracy, record.float_accuracy))
    prior = (np.array(prior_features), np.array(prior_scores)) if prior_features else None
    return done, trials, prior


def tune_ptq(model, calibration_data, val_data, space=None,
             max_trials: int = defaults.TUNER_TRIALS, sampler="xgboost", history=None,
             seed: int = 0, *, fixed: dict | None = None, executor=None, metric=None,
             transfer: bool = True, model_name: str | None = None,
             verbose: int = defaults.VERBOSE, strategy=None) -> TuneResult:
    """Searches the PTQ configuration that keeps the most accuracy.

    Args:
        model: the float Keras model.
        calibration_data: calibration inputs (as `autoqnn.calibrate` takes).
        val_data: `(x, y)` validation data of the metric.
        space: a `SearchSpace`, a dict `{option: values}`, or None
            (`autoqnn.tune.space.DEFAULT_SPACE`).
        max_trials: total evaluations (resumed ones included).
        sampler: "xgboost", "random", "grid", "genetic" or a `Sampler`
            (`autoqnn.tune.samplers`).
        history: JSON-lines file: trials of this model resume from it,
            other models' trials warm-start the cost model, new trials are
            appended as they finish. None keeps nothing.
        seed: the search seed.
        fixed: options shared by every configuration when `space` is a dict
            or None, e.g. `{"weight_bits": 4}`.
        executor: None (serial), an int (threads: the evaluations must then
            be thread-safe, a custom `metric` may not be), "ray" (a local Ray
            instance, one worker per CPU; `pip install autoqnn[distributed]`),
            or an `Executor` such as `RayExecutor(address=...)`. With Ray the
            evaluation (model, data, `metric`) is pickled and shipped once to
            every worker; trials still land in `history` in this process, so a
            Ray run resumes like a serial one.
        metric: `fn(quantized model) -> float`, higher is better; default
            top-1 accuracy on `val_data`.
        transfer: use other models' trials in `history` (xgboost).
        model_name: the model's key in the history (default: its name and a
            hash of its weights).
        verbose: 1 shows a progress bar.
        strategy: the deprecated name of `sampler`.

    Returns:
        A `TuneResult`.

    Raises:
        ValueError: an invalid space or sampler, or data that does not fit.
    """
    space = space if isinstance(space, SearchSpace) else SearchSpace(space, fixed)
    sampler = get_sampler(_sampler_argument(sampler, strategy))
    _check_data(model, calibration_data, "calibration_data")
    metric = metric or (lambda qmodel: top1_accuracy(qmodel, val_data))
    key = model_name or model_fingerprint(model)
    descriptors = model_descriptors(model)
    float_accuracy = float(metric(model))

    def evaluate(index):
        qmodel = quantize_ptq(model, space.ptq_config(index), calibration_data)
        return metric(qmodel)

    done, trials, prior = _resume(read_history(history), key, space, transfer)
    features = np.stack([config_features(space, c, descriptors) for c in space.configs()])

    def on_trial(index, outcome):
        trial = Trial(len(trials), space.config(index), outcome.value, outcome.error,
                      round(outcome.seconds, 3), sampler.name, key, model.name, float_accuracy,
                      descriptors)
        trials.append(trial)
        append_history(history, trial)

    if verbose and done:
        print(f"tune_ptq: resuming with {len(done)} trial(s) from {history}")
    results = run_search(space, evaluate, sampler, max_trials, seed=seed, features=features,
                         prior=prior, done=done, executor=executor,
                         float_accuracy=float_accuracy, on_trial=on_trial, verbose=verbose)
    scored = [(a, i) for i, a in results.items() if a is not None]
    if not scored:
        return TuneResult(None, None, None, trials, float_accuracy, space)
    best_accuracy, best_index = max(scored, key=lambda item: (item[0], -item[1]))
    best_config = space.ptq_config(best_index)
    best_model = quantize_ptq(model, best_config, calibration_data)
    return TuneResult(best_config, best_accuracy, best_model, trials, float_accuracy, space)


def evaluations_to_reach(accuracies, target: float, tolerance: float = 0.001) -> int | None:
    """1-based number of evaluations until an accuracy >= target - tolerance (None: never)."""
    for n, accuracy in enumerate(accuracies, start=1):
        if accuracy is not None and accuracy >= target - tolerance:
            return n
    return None
