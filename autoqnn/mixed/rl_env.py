"""The environment of the "rl" strategy (`autoqnn.mixed.rl`): each layer's state
features, the action-to-bits mapping, HAQ's budget rule, the reward, the agent's
settings and the evaluator that measures a policy.

Example:
    >>> from autoqnn.mixed.rl_env import action_index, enforce_budget
    >>> [action_index(a, 4) for a in (0.0, 0.3, 1.0)]
    [0, 1, 3]
    >>> enforce_budget([2, 2], lambda idx: sum(idx) <= 2)
    [1, 1]
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np

from autoqnn.evaluate import top1_accuracy
from autoqnn.finalize import set_bits
from autoqnn.finetune import finetune
from autoqnn.mixed.budget import fixed_bytes, pinned_cost, solve_policy
from autoqnn.mixed.common import fit_memory
from autoqnn.ptq.weights import search_weight_clips
from autoqnn.walk import find_layer

STATE_FEATURES = ("index", "conv", "depthwise", "in_channels", "out_channels", "kernel",
                  "stride", "input_size", "params", "params_share", "previous_action")


def layer_features(layers) -> np.ndarray:
    """Raw `(L, 10)` state features of `[(path, layer)]` (`STATE_FEATURES` less the action)."""
    rows = []
    for index, (_, layer) in enumerate(layers):
        attr = next(iter(layer.weight_quantizers))
        shape = tuple(getattr(layer, attr).shape)
        depthwise = "Depthwise" in type(layer).__name__ or attr == "depthwise_kernel"
        c_in = shape[-2] if len(shape) >= 2 else 1
        c_out = shape[-1]
        if depthwise:
            c_out = shape[-2] * shape[-1]
            if hasattr(layer, "pointwise_kernel"):
                c_out = layer.pointwise_kernel.shape[-1]
        conv = len(shape) >= 3
        kernel = int(np.prod(shape[:-2])) if conv else 1
        stride = max(getattr(layer, "strides", (1,)) or (1,)) if conv else 1
        try:
            in_shape = tuple(layer.input.shape)
            size = int(np.prod(in_shape[1:-1])) if conv and None not in in_shape[1:-1] else 1
        except (AttributeError, ValueError):  # a layer called more than once
            size = 0
        params = sum(int(np.prod(getattr(layer, a).shape)) for a in layer.weight_quantizers)
        rows.append([index, float(conv), float(depthwise), c_in, c_out, kernel, stride, size,
                     params, 0.0])
    features = np.array(rows, "float64")
    features[:, 9] = features[:, 8] / max(features[:, 8].sum(), 1.0)
    return features


def normalise(features: np.ndarray) -> np.ndarray:
    """Min-max normalises each column over the layers (a constant column becomes 0)."""
    low, high = features.min(axis=0), features.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((features - low) / span).astype("float32")


def action_index(action: float, count: int) -> int:
    """The candidate index of an action in [0, 1]: `min(floor(a * K), K - 1)`."""
    return int(min(max(math.floor(float(action) * count), 0), count - 1))


def enforce_budget(indices, fits) -> list:
    """HAQ's rule: lower one candidate at a time from the last layer backwards
    (repeating the walk) until `fits(indices)`; the all-smallest policy must fit."""
    indices = list(indices)
    while not fits(indices):
        lowered = False
        for layer in reversed(range(len(indices))):
            if indices[layer] > 0:
                indices[layer] -= 1
                lowered = True
                if fits(indices):
                    return indices
        if not lowered:
            raise ValueError("no policy fits the budget")  # the caller checked this first
    return indices


def reward(accuracy, float_accuracy, policy, params, bits_range, bits_weight) -> float:
    """`0.1 * (acc - acc_float)` in percent, less `bits_weight` times the parameter-weighted
    average bits of `policy` scaled to [0, 1] over `bits_range` (the module docstring)."""
    average = sum(params[p] * b for p, b in policy.items()) / sum(params[p] for p in policy)
    low, high = bits_range
    term = (average - low) / (high - low) if high > low else 0.0
    return 0.1 * 100.0 * (accuracy - float_accuracy) - bits_weight * term


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """The DDPG agent and reward settings of the "rl" strategy (defaults: HAQ's).

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
        object.__setattr__(self, "hidden", tuple(self.hidden))
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
    def from_value(cls, value) -> AgentConfig:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {f.name for f in dataclasses.fields(cls)}
            if unknown:
                raise ValueError(f"agent has unknown keys {sorted(unknown)}")
            return cls(**value)
        raise ValueError(f"agent must be None, a dict or an AgentConfig, got {value!r}")


class EpisodeEvaluator:
    """Measures a policy `{path: bits}`: top-1 validation accuracy of the calibrated model.

    The quantized model is built (and calibrated) on the first call in each
    process and kept; policies are applied in place with `set_bits`. Pickles
    without that model (a Ray worker builds its own).
    """

    def __init__(self, model, calibration, val, settings, config, memory, finetune):
        self.model, self.calibration, self.val = model, calibration, val
        self.settings, self.config = settings, config
        self.memory, self.finetune = memory, finetune
        self.qmodel = None

    def __getstate__(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("_start", "_current")}
        state["qmodel"] = None  # each process builds its own
        return state

    def ensure_built(self):
        if self.qmodel is None:
            settings = self.settings
            qmodel = settings.build(self.model, self.calibration, {}, self.config)
            if self.memory is not None:
                fit_memory(qmodel, self.memory, settings.candidate_activation_bits,
                           self.calibration, settings.observer, settings.num_samples, [])
            self._start = qmodel.get_weights()
            self._current = {}
            self.qmodel = qmodel
        return self.qmodel

    def __call__(self, policy: dict) -> dict:
        qmodel = self.ensure_built()
        steps = self.finetune["steps"]
        if steps:
            qmodel.set_weights(self._start)
            self._current = {}
        changed = {p: int(b) for p, b in policy.items() if self._current.get(p) != int(b)}
        set_bits(qmodel, changed, update_report=False)
        ptq = self.settings.ptq
        if ptq is not None and ptq.weight_clipping == "mse" and changed:
            search_weight_clips(qmodel, layers=[find_layer(qmodel, p)[1] for p in changed])
        self._current.update(changed)
        if steps:
            x, y = self.finetune["data"]
            keras.utils.set_random_seed(self.finetune["seed"])
            finetune(qmodel, (x, y), epochs=1, teacher=self.model, loss=self.finetune["loss"],
                     batch_size=self.finetune["batch_size"], verbose=0, restore_best=False,
                     learning_rate=self.finetune["learning_rate"])
        return {"accuracy": top1_accuracy(qmodel, self.val)}


class PolicySpace:
    """The searched layers' candidate bits under the budget: what a policy costs, HAQ's
    budget rule on the agent's actions, and the exact solver's check that the budget is
    reachable at all (raised at construction, with the achievable minimum)."""

    def __init__(self, layers, candidates, params, report, pinned, budget):
        self.paths = [p for p, _ in layers]
        self.candidates, self.params, self.budget = candidates, params, budget
        self.pinned_params, self.pinned_bit_params = pinned_cost(report, pinned)
        self.fixed = fixed_bytes(report, params)
        solve_policy({p: dict.fromkeys(c, 0.0) for p, c in zip(self.paths, candidates)},
                     params, weight_bits_budget=budget.weight_bits,
                     size_budget_bytes=budget.size_bytes, fixed_bytes=self.fixed,
                     pinned_params=self.pinned_params,
                     pinned_bit_params=self.pinned_bit_params)
        self.total_params = sum(params.values()) + self.pinned_params
        bits = [b for c in candidates for b in c]
        self.bits_range = (min(bits), max(bits))

    def measure(self, policy) -> tuple[float, float]:
        """`(average weight bits, size in bytes)` of a policy, pinned layers included."""
        bit_params = sum(self.params[p] * b for p, b in policy.items())
        return ((bit_params + self.pinned_bit_params) / self.total_params,
                self.fixed + bit_params / 8)

    def fits(self, indices) -> bool:
        average, size = self.measure({p: c[i] for p, c, i in
                                      zip(self.paths, self.candidates, indices)})
        return (self.budget.weight_bits is None or
                average <= self.budget.weight_bits + 1e-9) and \
            (self.budget.size_bytes is None or size <= self.budget.size_bytes + 1e-6)

    def policy_of(self, actions) -> dict:
        """The policy of one action per layer, lowered by HAQ's rule until it fits."""
        chosen = [action_index(a, len(c)) for a, c in zip(actions, self.candidates)]
        return {p: int(c[i]) for p, c, i in
                zip(self.paths, self.candidates, enforce_budget(chosen, self.fits))}
