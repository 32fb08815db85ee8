"""Samplers over a `SearchSpace`: XGBoost cost model (Quantune), random, grid, genetic.

A sampler proposes the next grid indices to evaluate from the trials so far
(`SearchState`); it keeps no state of its own between calls, so an
interrupted search resumes exactly (the random generator is derived from the
seed and the number of trials).

Example:
    >>> import numpy as np
    >>> from autoqnn.tune.space import SearchSpace
    >>> from autoqnn.tune.samplers import SearchState, get_sampler
    >>> space = SearchSpace({"calibration_method": ["max", "kl"],
    ...                      "grid": ["symmetric", "asymmetric"]})
    >>> state = SearchState(space, tried={0: -1.0, 3: None})
    >>> get_sampler("grid").propose(state, 2)
    [1, 2]
"""

from __future__ import annotations

import abc
import dataclasses
import warnings

import numpy as np

XGBOOST_PARAMS = {
    "objective": "reg:squarederror",
    "eta": 0.15,
    "gamma": 3.0,  # on the target in percent, as Quantune's top-1
}
XGBOOST_ROUNDS = 200


@dataclasses.dataclass
class SearchState:
    """What a sampler sees.

    Attributes:
        space: the `SearchSpace`.
        tried: `{grid index: score or None (failed)}` in evaluation order; the
            score is higher-is-better (the tuner uses the accuracy change
            from float, in percent).
        features: `(len(space), F)` feature matrix of the configurations
            (one-hot config + numeric bits + model descriptors), or None.
        prior_features, prior_scores: transfer rows from other models.
        seed: the search seed.
    """

    space: object
    tried: dict
    features: np.ndarray | None = None
    prior_features: np.ndarray | None = None
    prior_scores: np.ndarray | None = None
    seed: int = 0

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), len(self.tried), salt])

    def untried(self) -> list[int]:
        return [i for i in range(len(self.space)) if i not in self.tried]

    def scored(self) -> list[tuple[int, float]]:
        return [(i, s) for i, s in self.tried.items() if s is not None and np.isfinite(s)]


class Sampler(abc.ABC):
    """Interface: `propose(state, count) -> list of untried grid indices` (at most count)."""

    name = "base"

    @abc.abstractmethod
    def propose(self, state: SearchState, count: int = 1) -> list[int]:
        """Up to `count` untried grid indices to evaluate next."""


class GridSampler(Sampler):
    """Every configuration in grid order."""

    name = "grid"

    def propose(self, state, count=1):
        return state.untried()[:count]


class RandomSampler(Sampler):
    """Uniformly random untried configurations."""

    name = "random"

    def propose(self, state, count=1):
        untried = state.untried()
        order = state.rng().permutation(len(untried))
        return [untried[i] for i in order[:count]]


class GeneticSampler(Sampler):
    """Steady-state genetic search: tournament selection, uniform crossover, mutation.

    The first `population_size` trials are random; then each child's parents
    are tournament winners among the scored trials, its options are taken
    from either parent, and each option mutates with probability
    `mutation_rate` (default 1 / number of options). Children already
    evaluated are redrawn; after `max_redraws`, a random untried one is taken.

    Args:
        population_size: random trials before breeding starts.
        tournament: tournament size.
        mutation_rate: per-option mutation probability (None: 1 / options).
        max_redraws: attempts at an unseen child.
    """

    name = "genetic"

    def __init__(self, population_size=8, tournament=3, mutation_rate=None, max_redraws=50):
        self.population_size = population_size
        self.tournament = tournament
        self.mutation_rate = mutation_rate
        self.max_redraws = max_redraws

    def propose(self, state, count=1):
        space, rng = state.space, state.rng(1)
        scored = state.scored()
        chosen: list[int] = []
        if len(scored) < min(self.population_size, len(space)):
            return RandomSampler().propose(state, count)
        rate = self.mutation_rate or 1.0 / len(space.sizes)
        for _ in range(count):
            child = None
            for _ in range(self.max_redraws):
                a, b = (self._select(scored, rng) for _ in range(2))
                da, db = space.digits(a), space.digits(b)
                digits = [x if rng.random() < 0.5 else y for x, y in zip(da, db)]
                for position, size in enumerate(space.sizes):
                    if rng.random() < rate:
                        digits[position] = int(rng.integers(size))
                candidate = space.from_digits(digits)
                if candidate not in state.tried and candidate not in chosen:
                    child = candidate
                    break
            if child is None:
                rest = [i for i in state.untried() if i not in chosen]
                if not rest:
                    break
                child = rest[int(rng.integers(len(rest)))]
            chosen.append(child)
        return chosen

    def _select(self, scored, rng):
        picks = rng.integers(len(scored), size=min(self.tournament, len(scored)))
        return max((scored[i] for i in picks), key=lambda item: item[1])[0]


class XGBoostSampler(Sampler):
    """Quantune: fit an XGBoost regressor on the trials so far, evaluate the best predicted.

    Before `n_initial` scored trials (and without transfer rows), proposals
    are random. Then each round trains an XGBoost regressor (`xgboost.train`,
    Quantune's parameters: reg:squarederror, eta 0.15, gamma 3, 200 rounds;
    no early stopping, as there is no held-out set of trials) on the
    scored trials plus the transfer rows of other models, predicts every
    untried configuration and proposes the best (ties broken at random).

    Args:
        n_initial: random trials before the cost model is used.
        params: booster parameters (default `XGBOOST_PARAMS`).
        rounds: boosting rounds.
        tie_break: among configurations with the same prediction (gamma 3
            leaves effects under about a percent unsplit), "nearest" prefers
            those differing from the best trial in the fewest options (local
            refinement), "random" picks at random.
    """

    name = "xgboost"

    def __init__(self, n_initial: int = 3, params: dict | None = None,
                 rounds: int = XGBOOST_ROUNDS, tie_break: str = "nearest"):
        if isinstance(n_initial, bool) or not isinstance(n_initial, int) or n_initial < 0:
            raise ValueError(f"n_initial must be a non-negative int, got {n_initial!r}")
        self.n_initial = n_initial
        self.params = {**XGBOOST_PARAMS, **(params or {})}
        self.rounds = rounds
        if tie_break not in ("nearest", "random"):
            raise ValueError(f"tie_break must be 'nearest' or 'random', got {tie_break!r}")
        self.tie_break = tie_break

    def propose(self, state, count=1):
        if state.features is None:
            raise ValueError("the xgboost sampler needs state.features (the feature matrix)")
        scored = state.scored()
        has_prior = state.prior_features is not None and len(state.prior_features) > 0
        if len(scored) < self.n_initial and not has_prior:
            return RandomSampler().propose(state, count)
        untried = state.untried()
        if not untried:
            return []
        predictions = self.predict(state, untried)
        jitter = state.rng(2).random(len(untried))
        distance = np.zeros(len(untried))
        if self.tie_break == "nearest" and scored:
            best = np.array(state.space.digits(max(scored, key=lambda item: item[1])[0]))
            distance = np.array([np.sum(np.array(state.space.digits(i)) != best)
                                 for i in untried])
        predictions = np.round(predictions, 6)  # float noise is no preference
        order = np.lexsort((jitter, distance, -predictions))
        return [untried[i] for i in order[:count]]

    def fit(self, state):
        """Fits the cost model on the scored trials and the transfer rows."""
        import xgboost

        scored = state.scored()
        features = [state.features[i] for i, _ in scored]
        scores = [s for _, s in scored]
        if state.prior_features is not None and len(state.prior_features):
            features.extend(state.prior_features)
            scores.extend(state.prior_scores)
        params = {**self.params, "seed": int(state.seed), "nthread": 1}
        data = xgboost.DMatrix(np.asarray(features, "float32"),
                               label=np.asarray(scores, "float32"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return xgboost.train(params, data, num_boost_round=self.rounds)

    def predict(self, state, indices) -> np.ndarray:
        import xgboost

        booster = self.fit(state)
        return booster.predict(xgboost.DMatrix(np.asarray(state.features[indices], "float32")))


SAMPLERS = {
    "xgboost": XGBoostSampler,
    "random": RandomSampler,
    "grid": GridSampler,
    "genetic": GeneticSampler,
}


def get_sampler(sampler) -> Sampler:
    """A sampler from its name ("xgboost", "random", "grid", "genetic") or an instance."""
    if isinstance(sampler, Sampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
    return SAMPLERS[sampler]()
