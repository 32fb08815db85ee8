"""Samplers: each proposes untried configs only, deterministically per seed, and finds a
planted optimum; the XGBoost cost model finds it in far fewer trials than random."""

import json
import statistics

import numpy as np
import pytest

from autoqnn.tune import SearchSpace, SearchState, get_sampler, run_search
from autoqnn.tune.samplers import XGBoostSampler

SPACE = SearchSpace({
    "calibration_method": ["max", "percentile", "kl", "mse"],
    "calibration_samples": [1, 100, 1000],
    "granularity": ["per_tensor", "per_channel"],
    "grid": ["symmetric", "asymmetric", "symmetric_pot"],
})


def _table():
    """A structured accuracy surface: additive option effects, one best config."""
    effects = {
        "calibration_method": {"max": 0.0, "percentile": 0.4, "kl": -3.0, "mse": 0.6},
        "calibration_samples": {1: -4.0, 100: 0.0, 1000: 0.2},
        "granularity": {"per_tensor": -5.0, "per_channel": 0.0},
        "grid": {"symmetric": -0.5, "asymmetric": 0.3, "symmetric_pot": -2.0},
    }
    return [0.9 + sum(effects[o][c[o]] for o in effects) / 100 for c in SPACE.configs()]


def _features():
    return np.concatenate([SPACE.encode_all(), np.zeros((len(SPACE), 3), "float32")], axis=1)


def _evaluations(sampler, seed, table, prior=None):
    best = max(table)
    results = run_search(SPACE, lambda i: table[i], sampler, len(SPACE), seed=seed,
                         features=_features(), prior=prior, float_accuracy=0.9,
                         stop=lambda r: best in r.values())
    return list(results.values()).index(best) + 1


def test_the_cost_model_is_trained_with_quantunes_parameters():
    """The booster the sampler fits carries Quantune's settings (eta 0.15, gamma 3, squared
    error, 200 rounds), and a caller's params override them."""
    table = _table()
    state = SearchState(SPACE, {i: 100 * (table[i] - 0.9) for i in range(6)}, _features())
    sampler = XGBoostSampler()
    config = json.loads(sampler.fit(state).save_config())["learner"]
    assert config["objective"]["name"] == "reg:squarederror"
    params = config["gradient_booster"]["tree_train_param"]
    assert float(params["eta"]) == pytest.approx(0.15) and float(params["gamma"]) == 3.0
    assert sampler.fit(state).num_boosted_rounds() == 200
    other = XGBoostSampler(params={"eta": 0.5}).fit(state)
    assert float(json.loads(other.save_config())["learner"]["gradient_booster"][
        "tree_train_param"]["eta"]) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["xgboost", "random", "grid", "genetic"])
def test_full_budget_covers_space_once(name):
    space = SearchSpace({"calibration_method": ["max", "kl", "mse"],
                         "grid": ["symmetric", "asymmetric"]})
    results = run_search(space, lambda i: 0.5 + 0.01 * i, name, len(space), seed=1,
                         features=space.encode_all())
    assert sorted(results) == list(range(len(space)))


@pytest.mark.parametrize("name", ["xgboost", "random", "genetic"])
def test_deterministic_per_seed(name):
    table = _table()
    runs = [list(run_search(SPACE, lambda i: table[i], name, 12, seed=3,
                            features=_features())) for _ in range(2)]
    assert runs[0] == runs[1]


def test_xgboost_beats_random_on_structured_surface():
    table = _table()
    xgb = statistics.median(_evaluations("xgboost", s, table) for s in range(5))
    rnd = statistics.median(_evaluations("random", s, table) for s in range(5))
    # Measured: xgboost 16, random 40 (the exact best of 72 must be found; option
    # effects of 0.2-0.6 % sit below gamma 3, so the last steps are local refinement).
    assert xgb <= 0.6 * rnd and xgb <= 22


def test_transfer_rows_warm_start():
    table = _table()
    prior = (_features(), np.array([100 * (a - 0.9) for a in table]))
    strategy = XGBoostSampler(n_initial=3)
    # With transfer rows the very first proposal already uses the cost model.
    assert _evaluations(strategy, 0, table, prior) <= 3


def test_xgboost_needs_features():
    with pytest.raises(ValueError, match="needs state.features"):
        get_sampler("xgboost").propose(SearchState(SPACE, {0: 1.0, 1: 0.0, 2: 0.5}))


def test_unknown_sampler():
    with pytest.raises(ValueError, match="sampler must be one of .* got 'bayes'"):
        get_sampler("bayes")


def test_failed_trials_are_not_proposed_again():
    state = SearchState(SPACE, {i: None for i in range(70)}, _features())
    assert sorted(get_sampler("genetic").propose(state, 5)) == [70, 71]


def test_tie_break_nearest_refines_around_the_best_random_does_not():
    """Equal scores give equal predictions: the tie-break alone orders the proposals."""
    tried = {0: 0.0, 40: 0.0, 71: 0.0}
    state = SearchState(SPACE, tried, _features(), seed=0)

    def distance(index):
        return sum(a != b for a, b in zip(SPACE.digits(index), SPACE.digits(0)))

    nearest = XGBoostSampler().propose(state, 8)
    assert [distance(i) for i in nearest] == [1] * 8  # index 0 is the (first) best trial
    random = XGBoostSampler(tie_break="random").propose(state, 8)
    untried = state.untried()
    jitter_order = [untried[i] for i in np.argsort(state.rng(2).random(len(untried)))]
    assert random == jitter_order[:8]
    assert max(distance(i) for i in random) > 1
    with pytest.raises(ValueError, match="tie_break must be"):
        XGBoostSampler(tie_break="none")
