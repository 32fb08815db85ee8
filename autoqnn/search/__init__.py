"""Search: the PTQ tuner (XGBoost cost model, Quantune) and its baselines."""

from autoqnn.search.executor import (
    Executor,
    FuturesExecutor,
    Outcome,
    SerialExecutor,
    ThreadExecutor,
)
from autoqnn.search.features import model_descriptors
from autoqnn.search.ptq_tuner import Trial, TuneResult, read_history, run_search, tune_ptq
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
    "RandomStrategy",
    "SearchSpace",
    "SearchState",
    "SerialExecutor",
    "Strategy",
    "ThreadExecutor",
    "Trial",
    "TuneResult",
    "XGBoostStrategy",
    "get_strategy",
    "model_descriptors",
    "read_history",
    "run_search",
    "tune_ptq",
]
