"""The Quantune PTQ tuner: `tune_ptq` searches a space of `PTQConfig` recipes with an
XGBoost cost model (or a baseline sampler), trials run on an `autoqnn.executor`."""

from autoqnn.tune.features import model_descriptors
from autoqnn.tune.samplers import (
    GeneticSampler,
    GridSampler,
    RandomSampler,
    Sampler,
    SearchState,
    XGBoostSampler,
    get_sampler,
)
from autoqnn.tune.space import DEFAULT_SPACE, SearchSpace
from autoqnn.tune.tuner import Trial, TuneResult, read_history, run_search, tune_ptq

__all__ = [
    "DEFAULT_SPACE",
    "GeneticSampler",
    "GridSampler",
    "RandomSampler",
    "Sampler",
    "SearchSpace",
    "SearchState",
    "Trial",
    "TuneResult",
    "XGBoostSampler",
    "get_sampler",
    "model_descriptors",
    "read_history",
    "run_search",
    "tune_ptq",
]
