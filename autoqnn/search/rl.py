"""The "rl" strategy of `autoqnn.search`: HAQ-style DDPG over per-layer weight bits.

A DDPG agent (`autoqnn.search.ddpg`) walks the searchable quantized layers (the
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
  as `autoqnn.search.budget` counts them, pinned layers included), walk the
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
  of the calibrated model (retrain-free; `rl_finetune_steps > 0` first trains
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
  generator's state and the history go to one `rl_<key>.npz` (key: a digest of
  the model, data and settings; not of `episodes`), so a longer run resumes
  where a shorter one stopped; a finished search loads its final model.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(96, 8)).astype("float32"); y = (x[:, 0] > 0).astype("int64")
    >>> inputs = keras.Input((8,))
    >>> h = keras.layers.Dense(16, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="b")(h))
    >>> result = autoqnn.search(model, val_data=(x, y), calibration_data=x, strategy="rl",
    ...                         episodes=3, weight_bits_budget=3.0, verbose=0,
    ...                         rl_config={"hidden": (16, 16), "warmup_episodes": 1})
    >>> result.average_weight_bits <= 3.0
    True
    >>> [h["episode"] for h in result.history if h["step"] == "episode"]
    [0, 1, 2]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import math
from pathlib import Path

import keras
import numpy as np

from autoqnn.search.rl_env import (  # noqa: F401  (part of this module's namespace)
    STATE_FEATURES,
    action_index,
    enforce_budget,
    layer_features,
    normalise,
    reward,
)


@dataclasses.dataclass
class RLConfig:
    """Agent and reward settings of the "rl" strategy (defaults: HAQ's).

    Attributes:
        warmup_episodes: random-action episodes first (not trained on).
        bits_weight: weight of the parameter-weighted bit term of the reward.
        hidden: hidden widths of actor and critic.
        actor_lr, critic_lr: Adam learning rates.
        tau: soft target update rate.
        discount: return discount.
        batch_size: transitions per update.
        replay_episodes: replay capacity in episodes (x layers transitions).
        sigma, sigma_decay: exploration noise `sigma * sigma_decay ** (episode - warmup)`.
        baseline_decay: rate of the moving-average reward baseline.
    """

    warmup_episodes: int = 10
    bits_weight: float = 0.1
    hidden: tuple = (300, 300)
    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    discount: float = 1.0
    batch_size: int = 64
    replay_episodes: int = 128
    sigma: float = 0.5
    sigma_decay: float = 0.99
    baseline_decay: float = 0.5

    def __post_init__(self):
        self.hidden = tuple(self.hidden)
        if isinstance(self.warmup_episodes, bool) or not isinstance(self.warmup_episodes, int) \
                or self.warmup_episodes < 0:
            raise ValueError(f"warmup_episodes must be an int >= 0, got {self.warmup_episodes!r}")
        for name in ("batch_size", "replay_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                  for h in self.hidden):
            raise ValueError(f"hidden must be a non-empty tuple of positive ints, got "
                             f"{self.hidden!r}")
        for name, low, high in (("bits_weight", 0, math.inf), ("actor_lr", 0, math.inf),
                                ("critic_lr", 0, math.inf), ("tau", 0, 1), ("discount", 0, 1),
                                ("sigma", 0, math.inf), ("sigma_decay", 0, 1),
                                ("baseline_decay", 0, 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not low <= value <= high:
                raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")

    @classmethod
    def from_value(cls, value) -> RLConfig:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"rl_config has unknown keys {sorted(unknown)}")
            return cls(**value)
        raise ValueError(f"rl_config must be None, a dict or an RLConfig, got {value!r}")


class EpisodeEvaluator:
    """Measures a policy `{path: bits}`: top-1 validation accuracy of the calibrated model.

    The quantized model is built (and calibrated) on the first call in each
    process and kept; policies are applied in place with `set_bits`. Pickles
    without that model (a Ray worker builds its own).
    """

    def __init__(self, model, calibration, val, build_kwargs, memory, finetune):
        self.model, self.calibration, self.val = model, calibration, val
        self.build_kwargs, self.memory, self.finetune = build_kwargs, memory, finetune
        self.qmodel = None

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("_start", "_current")}
        state["qmodel"] = None  # each process builds its own
        return state

    def ensure_built(self):
        if self.qmodel is None:
            from autoqnn.search.search import _fit_memory, build_quantized

            qmodel = build_quantized(self.model, self.calibration, {}, **self.build_kwargs)
            if self.memory["budget"] is not None:
                _fit_memory(qmodel, self.memory["budget"], self.memory["candidates"],
                            self.calibration, self.build_kwargs["ptq"],
                            self.build_kwargs["num_samples"], [])
            self._start = qmodel.get_weights()
            self._current = {}
            self.qmodel = qmodel
        return self.qmodel

    def __call__(self, policy: dict) -> dict:
        from autoqnn.finalize import set_bits
        from autoqnn.search.ptq_tuner import top1_accuracy
        from autoqnn.walk import find_layer

        qmodel = self.ensure_built()
        steps = self.finetune["steps"]
        if steps:
            qmodel.set_weights(self._start)
            self._current = {}
        changed = {p: int(b) for p, b in policy.items() if self._current.get(p) != int(b)}
        set_bits(qmodel, changed, update_report=False)
        ptq = self.build_kwargs["ptq"]
        if ptq is not None and ptq.weight_clipping == "mse" and changed:
            from autoqnn.ptq.weights import search_weight_clips

            search_weight_clips(qmodel, layers=[find_layer(qmodel, p)[1] for p in changed])
        self._current.update(changed)
        if steps:
            from autoqnn.finetune import finetune

            x, y = self.finetune["data"]
            keras.utils.set_random_seed(self.finetune["seed"])
            finetune(qmodel, (x, y), epochs=1, teacher=self.model, loss=self.finetune["loss"],
                     batch_size=self.finetune["batch_size"], verbose=0, restore_best=False,
                     learning_rate=self.finetune["learning_rate"])
        return {"accuracy": top1_accuracy(qmodel, self.val)}


def _digest(*parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            digest.update(np.ascontiguousarray(part).tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=repr).encode())
    return digest.hexdigest()[:16]


def _sample(data, count=None):
    """What identifies `data` in the checkpoint key: its length and first samples (arrays),
    else its repr (a tf.data pipeline)."""
    if data is None:
        return [None]
    if isinstance(data, (tuple, list)):
        return [part for item in data for part in _sample(item, count)]
    try:
        array = np.asarray(data)
    except (TypeError, ValueError):
        return [repr(data)]
    if array.dtype == object:
        return [repr(data)]
    return [len(array), np.ascontiguousarray(array[:count or 4096])]


def _labelled(data):
    """`(x, y)` arrays of labelled data, else None."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        from autoqnn.search.dnas_qpl import _arrays

        return _arrays(data, "train_data")
    return None


def run(model, train_data, val_data, *, calibration_data, weight_bits_budget, size_budget_bytes,
        memory_budget_bytes, candidate_bits, activation_bits, candidate_activation_bits, scheme,
        granularity, ptq, config, num_samples, checkpoint_dir, seed, verbose, episodes,
        rl_config, rl_finetune_steps, finetune_epochs, loss, batch_size, learning_rate,
        executor):
    """Returns `(final model, history)`; see the module docstring."""
    from autoqnn.search.budget import fixed_bytes, solve_policy
    from autoqnn.search.ddpg import EpisodeLoop
    from autoqnn.search.differentiable import _loss_fn
    from autoqnn.search.dnas_qpl import _arrays, finetune_stage
    from autoqnn.search.executor import FuturesExecutor, get_executor
    from autoqnn.search.ptq_tuner import top1_accuracy
    from autoqnn.search.search import _fit_memory, build_quantized, pinned_paths
    from autoqnn.search.sensitivity import layer_candidates, searchable_layers

    for name, value, low in (("episodes", episodes, 1), ("batch_size", batch_size, 1),
                             ("rl_finetune_steps", rl_finetune_steps, 0),
                             ("finetune_epochs", finetune_epochs, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            kind = "a positive int" if low else "an int >= 0"
            raise ValueError(f"{name} must be {kind}, got {value!r}")
    config_rl = RLConfig.from_value(rl_config)
    if weight_bits_budget is None and size_budget_bytes is None:
        raise ValueError("strategy='rl' searches weights: give weight_bits_budget= or "
                         "size_budget_bytes= (memory_budget_bytes= alone is the activation "
                         "side: strategy='sensitivity')")
    train = _labelled(train_data)
    if val_data is not None:
        val = _arrays(val_data, "val_data")
    elif train is not None:  # carve the last 10 % of the training data
        cut = max(1, len(train[0]) // 10)
        train, val = (train[0][:-cut], train[1][:-cut]), (train[0][-cut:], train[1][-cut:])
    else:
        raise ValueError("strategy='rl' rewards validation accuracy: give val_data=(x, y) or "
                         "labelled train_data=(x, y)")
    if calibration_data is not None:
        calibration = calibration_data
    elif train is not None:
        calibration = train[0]
    elif isinstance(train_data, np.ndarray):
        calibration = train_data
    else:
        calibration = val[0]
    executor_arg = executor
    build_kwargs = {"config": config, "ptq": ptq, "scheme": scheme, "bits": candidate_bits[-1],
                    "activation_bits": activation_bits, "granularity": granularity,
                    "num_samples": num_samples}
    steps = rl_finetune_steps if train is not None else 0
    if rl_finetune_steps and train is None:
        raise ValueError("rl_finetune_steps > 0 trains: give labelled train_data=(x, y)")
    finetune = {"steps": steps, "batch_size": batch_size, "learning_rate": learning_rate * 0.1,
                "loss": _loss_fn(model, loss), "seed": seed,
                "data": None if not steps else (train[0][:steps * batch_size],
                                                train[1][:steps * batch_size])}
    key = _digest(model.get_weights(), *_sample(val[0]), *_sample(val[1]),
                  *_sample(calibration, num_samples), *_sample(finetune["data"]),
                  [weight_bits_budget, size_budget_bytes, memory_budget_bytes,
                   list(candidate_bits), activation_bits, list(candidate_activation_bits), scheme,
                   granularity, None if ptq is None else ptq.to_dict(), config, num_samples,
                   seed, dataclasses.asdict(config_rl), steps, batch_size, learning_rate,
                   loss if loss is None or isinstance(loss, str) else
                   getattr(loss, "__name__", type(loss).__name__)])
    checkpoint = None if checkpoint_dir is None else Path(checkpoint_dir) / f"rl_{key}.npz"
    final_path = None if checkpoint_dir is None else \
        Path(checkpoint_dir) / f"rl_{key}_e{episodes}_f{finetune_epochs}.keras"
    if final_path is not None and final_path.is_file() and \
            final_path.with_suffix(".json").is_file():  # this search finished: its result
        return keras.models.load_model(final_path), json.loads(
            final_path.with_suffix(".json").read_text())
    evaluator = EpisodeEvaluator(model, calibration, val, build_kwargs,
                                 {"budget": memory_budget_bytes,
                                  "candidates": candidate_activation_bits}, finetune)
    qmodel = evaluator.ensure_built()
    pinned = pinned_paths(model, config, ptq)
    report = qmodel.autoqnn_report
    layers = [(p, layer) for p, layer in searchable_layers(qmodel) if p not in pinned]
    if not layers:
        raise ValueError(f"model {model.name!r} has no quantized weighted layer to search")
    candidates = [layer_candidates(layer, candidate_bits) for _, layer in layers]
    for (path, _), bits in zip(layers, candidates):
        if not bits:
            raise ValueError(f"candidate_bits {tuple(candidate_bits)} are all outside the bit "
                             f"range of layer {path!r}'s scheme")
    params = {p: int(sum(np.prod(getattr(layer, a).shape) for a in layer.weight_quantizers))
              for p, layer in layers}
    pinned_rows = [r for r in report if r.name in pinned and r.status == "quantized"]
    pinned_params = sum(r.quantized_params for r in pinned_rows)
    pinned_bit_params = sum(r.quantized_params * r.weight_bits for r in pinned_rows)
    fixed = fixed_bytes(report, params)
    # The same checks and messages as the exact solver (a budget below the minimum).
    solve_policy({p: dict.fromkeys(c, 0.0) for (p, _), c in zip(layers, candidates)}, params,
                 weight_bits_budget=weight_bits_budget, size_budget_bytes=size_budget_bytes,
                 fixed_bytes=fixed, pinned_params=pinned_params,
                 pinned_bit_params=pinned_bit_params)
    paths = [p for p, _ in layers]
    total_params = sum(params.values()) + pinned_params

    def measure(policy):
        bit_params = sum(params[p] * b for p, b in policy.items())
        return (bit_params + pinned_bit_params) / total_params, fixed + bit_params / 8

    def fits(indices):
        average, size = measure({p: c[i] for p, c, i in zip(paths, candidates, indices)})
        return (weight_bits_budget is None or average <= weight_bits_budget + 1e-9) and \
            (size_budget_bytes is None or size <= size_budget_bytes + 1e-6)

    float_accuracy = top1_accuracy(model, val)
    executor = get_executor(executor_arg)
    if executor.max_workers > 1 and isinstance(executor, FuturesExecutor) and \
            isinstance(executor.pool, concurrent.futures.ThreadPoolExecutor):
        if isinstance(executor_arg, int):
            executor.close()
        raise ValueError("strategy='rl' evaluates episodes on one quantized model per worker "
                         "process: use executor=None, 'ray' or a process pool (threads would "
                         "share the model)")
    static = normalise(layer_features(layers))
    bits = [b for c in candidates for b in c]
    low, high = min(bits), max(bits)

    def policy_of(actions):
        chosen = [action_index(a, len(c)) for a, c in zip(actions, candidates)]
        return {p: int(c[i]) for p, c, i in zip(paths, candidates, enforce_budget(chosen, fits))}

    def score(policy, value):
        accuracy = float(value["accuracy"])
        average_bits, size = measure(policy)
        return {"reward": reward(accuracy, float_accuracy, policy, params, (low, high),
                                 config_rl.bits_weight),
                "accuracy": accuracy, "average_bits": average_bits, "size_bytes": size}

    loop = EpisodeLoop(static, policy_of, score, evaluator, config=config_rl, episodes=episodes,
                       seed=seed, executor=executor, checkpoint=checkpoint, verbose=verbose,
                       start={"float_accuracy": float_accuracy, "layers": len(layers)})
    try:
        history = loop.run()
    finally:
        if isinstance(executor_arg, (str, int)):
            executor.close()
    best = loop.best()
    history = list(history)
    final = build_quantized(model, calibration,
                            {p: {"weight_bits": b} for p, b in best["policy"].items()},
                            **build_kwargs)
    _fit_memory(final, memory_budget_bytes, candidate_activation_bits, calibration, ptq,
                num_samples, history)
    history.append({"step": "best", "episode": best["episode"], "reward": best["reward"],
                    "episode_accuracy": best["accuracy"], "policy": best["policy"],
                    "val_accuracy": top1_accuracy(final, val)})
    if finetune_epochs and train is not None:
        keras.utils.set_random_seed(seed)
        history += finetune_stage(final, train, val, model, epochs=finetune_epochs,
                                  learning_rate=learning_rate, batch_size=batch_size, loss=loss,
                                  verbose=verbose)
    history.append({"step": "done"})
    if final_path is not None:
        final.save(final_path)
        final_path.with_suffix(".json").write_text(json.dumps(history, indent=1))
    return final, history
