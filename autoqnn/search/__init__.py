"""Search: `autoqnn.search` (per-layer mixed precision under a budget: sensitivity,
DNAS/QPL, RL), the PTQ tuner (XGBoost cost model, Quantune), its baselines and the
executors that run trials (serial, threads, Ray)."""

import sys
import types

from autoqnn.search.budget import solve_policy
from autoqnn.search.executor import (
    Executor,
    FuturesExecutor,
    Outcome,
    RayExecutor,
    SerialExecutor,
    ThreadExecutor,
)
from autoqnn.search.features import model_descriptors
from autoqnn.search.ptq_tuner import Trial, TuneResult, read_history, run_search, tune_ptq
from autoqnn.search.result import PolicyRow, SearchResult
from autoqnn.search.rl import RLConfig
from autoqnn.search.search import search
from autoqnn.search.sensitivity import SensitivityTable, measure_sensitivity
from autoqnn.search.space import DEFAULT_SPACE, SearchSpace
from autoqnn.search.strategies import (
    GeneticStrategy,
    GridStrategy,
    RandomStrategy,
    SearchState,
    Strategy,
    XGBoostStrategy,
    get_strategy,
)

__all__ = [
    "DEFAULT_SPACE",
    "Executor",
    "FuturesExecutor",
    "GeneticStrategy",
    "GridStrategy",
    "Outcome",
    "PolicyRow",
    "RLConfig",
    "RandomStrategy",
    "RayExecutor",
    "SearchResult",
    "SearchSpace",
    "SearchState",
    "SensitivityTable",
    "SerialExecutor",
    "Strategy",
    "ThreadExecutor",
    "Trial",
    "TuneResult",
    "XGBoostStrategy",
    "get_strategy",
    "measure_sensitivity",
    "model_descriptors",
    "read_history",
    "run_search",
    "search",
    "solve_policy",
    "tune_ptq",
]


class _CallablePackage(types.ModuleType):
    """`autoqnn.search` is this package and also the entry point: calling the package
    calls `autoqnn.search.search.search`, so `autoqnn.search(model, ...)` and
    `autoqnn.search.ptq_tuner`, `autoqnn.search.SearchSpace` all work."""

    def __call__(self, *args, **kwargs):
        return search(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
