"""The "rl" strategy of `autoqnn.search`: HAQ-style DDPG over per-layer weight bits.

A DDPG agent (`autoqnn.mixed.ddpg`) walks the searchable quantized layers (the
set the "sensitivity" strategy searches; layers `config=` selects are pinned)
and picks one action a in [0, 1] per layer (HAQ, Wang et al. 2019, with the
parameter-count prior of Jung, KAIST 2021; `../shared/REFERENCES.md`).

* **State** of layer l (10 values, each min-max normalised over the layers):
  layer index, kind (conv 1 / dense 0), depthwise flag, input and output
  channels, kernel size (product of the spatial kernel dims), stride, input
  spatial size (h * w), #params_l, **#params_l / sum #params** (Jung's prior),
  plus the previous layer's action (already in [0, 1]).
* **Action -> bits**: the layer's candidate bits `c_0 < ... < c_{K-1}`
  (`candidate_bits` its scheme accepts), `bits = c_k` with
  `k = min(floor(a * K), K - 1)`: HAQ's `round(a (b_max - b_min + 1) + b_min - 0.5)`
  on the candidate index, i.e. HAQ's rule exactly for contiguous candidates.
* **Budget** (after the last layer; HAQ's rule, not the exact solver): while
  the policy is over `weight_bits_budget` and/or `size_budget_bytes` (counted
  as `autoqnn.mixed.budget` counts them, pinned layers included), walk the
  layers from the last to the first, lowering each by one candidate, until it
  holds. The agent's own actions are what it learns from; the environment's
  lowering is part of the dynamics. `memory_budget_bytes` lowers activation
  bits (as the other strategies do) on the model the episodes are measured
  on and on the final model.
* **Reward**: `0.1 * (acc_q - acc_float)` with accuracies in percent (HAQ),
  plus Jung's parameter-weighted bit term, written here as
  `- bits_weight * (b_avg - b_lo) / (b_hi - b_lo)` with `b_avg = sum_l
  (#params_l / sum #params) * bits_l` over the searched layers, `b_lo, b_hi`
  the smallest and largest candidate and `bits_weight = 0.1` (the whole bit
  range weighs as much as one point of accuracy: under a binding budget it
  breaks ties toward smaller models). acc_q is the top-1 validation accuracy
  of the calibrated model (retrain-free; `finetune_steps > 0` first trains
  that many distillation steps from the episode's start weights).
* **Episodes**: `episodes` (default 30); the first `warmup_episodes` (default
  10, a fixed count so that a run of k episodes is the start of a run of N,
  and a resumed search is the search run at once; with `episodes <= 10` the
  search is a random search) take uniform random actions and do not train;
  then actions are `mu(s)` plus truncated-normal noise with
  `sigma = 0.5 * 0.99 ** (episode - warmup)`. Every transition of an episode
  is stored with the episode's reward (HAQ) and, after the warm-up, each
  episode is followed by one update per layer.
* **One model**: the model is quantized and calibrated once at the largest
  candidate bits; every episode applies its policy with `autoqnn.set_bits`
  (no re-clone). The best-reward policy over all episodes wins; the final
  model is quantized at it with the sensitivity strategy's PTQ path, then
  fine-tuned for `finetune_epochs` with `autoqnn.finetune` (distilled from the
  float model) when labelled `train_data` is given.
* **Executors**: episodes are evaluated in batches of `executor.max_workers`
  (`executor="ray"`: one Ray worker per CPU, each with its own quantized
  model). Within a batch the agent acts with the same weights (each episode
  its own noise) and learns after the batch; with one worker (the default)
  this is HAQ's sequential loop. Warm-up batches are fully independent, so
  they gain the most. The same seed and the same number of workers give the
  same policy (on CPU).
* **Checkpoint**: with `checkpoint_dir`, after every batch the agent (weights,
  target networks, optimizer slots, replay buffer, baseline), the random
  generator's state and the history go to `agent.npz` in a folder keyed by the
  model, data and every setting but `episodes` and `finetune_epochs`
  (`autoqnn.checkpoint`), so a longer run resumes where a shorter one stopped; a
  finished search loads its final model.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(96, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    >>> inputs = keras.Input((8,))
    >>> h = keras.layers.Dense(16, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="b")(h))
    >>> result = autoqnn.search(model, val_data=(x, y), calibration_data=x, strategy="rl",
    ...                         episodes=3, weight_bits_budget=3.0, verbose=0,
    ...                         agent={"hidden": (16, 16), "warmup_episodes": 1})
    >>> result.average_weight_bits <= 3.0
    True
    >>> [h["episode"] for h in result.history if h["step"] == "episode"]
    [0, 1, 2]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time

import keras
import numpy as np

from autoqnn import defaults
from autoqnn.checkpoint import KeyedCheckpoint, data_sample
from autoqnn.evaluate import labelled_arrays, split_validation, task_loss, top1_accuracy
from autoqnn.executor import FuturesExecutor, get_executor
from autoqnn.mixed.budget import Budget
from autoqnn.mixed.common import PTQSettings, check_int, finetune_stage, fit_memory, pinned_paths
from autoqnn.mixed.ddpg import EpisodeLoop
from autoqnn.mixed.result import search_result
from autoqnn.mixed.rl_env import (
    AgentConfig,
    EpisodeEvaluator,
    PolicySpace,
    layer_features,
    normalise,
    reward,
)
from autoqnn.mixed.table import layer_candidates, searchable_layers
from autoqnn.report import quantization_report


@dataclasses.dataclass(frozen=True)
class RLConfig(PTQSettings):
    """Settings of the "rl" strategy: the quantization path's (`PTQSettings`) and the
    agent's.

    Attributes:
        episodes: episodes in all (the first `agent.warmup_episodes` random).
        agent: the DDPG agent and reward settings, an `AgentConfig` or a dict.
        finetune_steps: distillation steps on `train_data` before each episode's
            accuracy (0: retrain-free).
        finetune_epochs: QAT epochs of the final model (with labelled `train_data`).
        batch_size, learning_rate: fine-tune settings (a tenth of `learning_rate`).
        loss: task loss (default: the model's, else sparse categorical CE).
        seed: seeds the agent, its noise and the fine-tunes.
        executor: evaluate episodes in batches on an `autoqnn.executor.Executor`, e.g.
            "ray" (`pip install autoqnn[distributed]`); None: serially.
    """

    episodes: int = defaults.EPISODES
    agent: AgentConfig | dict | None = None
    finetune_steps: int = 0
    finetune_epochs: int = defaults.FINETUNE_EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    learning_rate: float = defaults.LEARNING_RATE
    loss: object = None
    seed: int = 0
    executor: object = None

    name = "rl"

    def __post_init__(self):
        super().__post_init__()
        check_int("episodes", self.episodes)
        check_int("batch_size", self.batch_size)
        check_int("finetune_steps", self.finetune_steps, low=0)
        check_int("finetune_epochs", self.finetune_epochs, low=0)
        check_int("seed", self.seed, low=0)
        object.__setattr__(self, "agent", AgentConfig.from_value(self.agent))

    def key_settings(self) -> dict:
        """What the checkpoint key holds: every setting but `episodes`, `finetune_epochs`
        and `executor` (a longer run resumes a shorter one)."""
        out = self.to_dict()
        for name in ("episodes", "finetune_epochs", "executor"):
            out.pop(name)
        out["agent"] = dataclasses.asdict(self.agent)
        return out


def _data(train_data, val_data, calibration_data, steps):
    """`(train or None, val, calibration)` of the strategy's data."""
    labelled = isinstance(train_data, (tuple, list)) and len(train_data) == 2
    train = labelled_arrays(train_data, "train_data") if labelled else None
    if val_data is not None:
        val = labelled_arrays(val_data, "val_data")
    elif train is not None:  # carve the last 10 % of the training data
        train, val = split_validation(train)
    else:
        raise ValueError("strategy='rl' rewards validation accuracy: give val_data=(x, y) or "
                         "labelled train_data=(x, y)")
    if steps and train is None:
        raise ValueError("finetune_steps > 0 trains: give labelled train_data=(x, y)")
    if calibration_data is not None:
        calibration = calibration_data
    elif train is not None:
        calibration = train[0]
    elif isinstance(train_data, np.ndarray):
        calibration = train_data
    else:
        calibration = val[0]
    return train, val, calibration


def _layers(qmodel, pinned, candidate_bits):
    """`(layers, candidates, params)` of the searched layers."""
    layers = [(p, layer) for p, layer in searchable_layers(qmodel) if p not in pinned]
    if not layers:
        raise ValueError(f"model {qmodel.name!r} has no quantized weighted layer to search")
    candidates = [layer_candidates(layer, candidate_bits) for _, layer in layers]
    for (path, _), bits in zip(layers, candidates):
        if not bits:
            raise ValueError(f"candidate_bits {tuple(candidate_bits)} are all outside the bit "
                             f"range of layer {path!r}'s scheme")
    params = {p: int(sum(np.prod(getattr(layer, a).shape) for a in layer.weight_quantizers))
              for p, layer in layers}
    return layers, candidates, params


def _executor(value):
    executor = get_executor(value)
    if executor.max_workers > 1 and isinstance(executor, FuturesExecutor) and \
            isinstance(executor.pool, concurrent.futures.ThreadPoolExecutor):
        if isinstance(value, int):
            executor.close()
        raise ValueError("strategy='rl' evaluates episodes on one quantized model per worker "
                         "process: use executor=None, 'ray' or a process pool (threads would "
                         "share the model)")
    return executor


def run(model, train_data, val_data, *, options: RLConfig, budget: Budget, calibration_data,
        config, checkpoint_dir, verbose):
    """Runs the strategy (see the module docstring); returns the `SearchResult`."""
    start = time.perf_counter()
    if not budget.on_weights:
        raise ValueError("strategy='rl' searches weights: give weight_bits_budget= or "
                         "size_budget_bytes= (memory_budget_bytes= alone is the activation "
                         "side: strategy='sensitivity')")
    train, val, calibration = _data(train_data, val_data, calibration_data,
                                    options.finetune_steps)
    steps = options.finetune_steps
    finetune = {"steps": steps, "batch_size": options.batch_size,
                "learning_rate": options.learning_rate * 0.1,
                "loss": task_loss(model, options.loss), "seed": options.seed,
                "data": None if not steps else (train[0][:steps * options.batch_size],
                                                train[1][:steps * options.batch_size])}
    checkpoint = KeyedCheckpoint(
        checkpoint_dir, "rl", {"options": options.key_settings(), "budget": budget.to_dict(),
                               "config": config},
        model.get_weights(), *data_sample(val[0]), *data_sample(val[1]),
        *data_sample(calibration, options.num_samples), *data_sample(finetune["data"]))
    final_name = f"final_e{options.episodes}_f{options.finetune_epochs}"
    done = checkpoint.read_json(final_name + ".json")
    if done is not None:  # this search finished: its result
        final = keras.models.load_model(checkpoint.file(final_name + ".keras"))
        return _result(final, done, options, start, budget)
    evaluator = EpisodeEvaluator(model, calibration, val, options, config, budget.memory_bytes,
                                 finetune)
    qmodel = evaluator.ensure_built()
    pinned = pinned_paths(model, config, options.ptq)
    layers, candidates, params = _layers(qmodel, pinned, options.candidate_bits)
    space = PolicySpace(layers, candidates, params, qmodel.autoqnn_report, pinned, budget)
    float_accuracy = top1_accuracy(model, val)
    executor = _executor(options.executor)

    def score(policy, value):
        accuracy = float(value["accuracy"])
        average_bits, size = space.measure(policy)
        return {"reward": reward(accuracy, float_accuracy, policy, params, space.bits_range,
                                 options.agent.bits_weight),
                "accuracy": accuracy, "average_bits": average_bits, "size_bytes": size}

    loop = EpisodeLoop(normalise(layer_features(layers)), space.policy_of, score, evaluator,
                       config=options.agent, episodes=options.episodes, seed=options.seed,
                       executor=executor, checkpoint=checkpoint.file("agent.npz"),
                       verbose=verbose,
                       start={"float_accuracy": float_accuracy, "layers": len(layers)})
    try:
        history = list(loop.run())
    finally:
        if isinstance(options.executor, (str, int)):
            executor.close()
    best = loop.best()
    final = options.build(model, calibration,
                          {p: {"weight_bits": b} for p, b in best["policy"].items()}, config)
    fit_memory(final, budget.memory_bytes, options.candidate_activation_bits, calibration,
               options.observer, options.num_samples, history)
    history.append({"step": "best", "episode": best["episode"], "reward": best["reward"],
                    "episode_accuracy": best["accuracy"], "policy": best["policy"],
                    "val_accuracy": top1_accuracy(final, val)})
    if options.finetune_epochs and train is not None:
        keras.utils.set_random_seed(options.seed)
        history += finetune_stage(final, train, val, model, epochs=options.finetune_epochs,
                                  learning_rate=options.learning_rate,
                                  batch_size=options.batch_size, loss=options.loss,
                                  verbose=verbose)
    history.append({"step": "done"})
    if checkpoint.path is not None:
        final.save(checkpoint.file(final_name + ".keras"))
        checkpoint.write_json(final_name + ".json", history)
    return _result(final, history, options, start, budget)


def _result(final, history, options, start, budget):
    final.autoqnn_report = quantization_report(final)  # a checkpointed model has none
    memory = fit_memory(final, None, options.candidate_activation_bits, None, None, None, [])
    return search_result(final, history, "rl", start, memory, budget, None,
                         options.activation_bits)
