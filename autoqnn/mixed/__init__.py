"""Mixed precision under a budget: `search` and its strategies ("sensitivity",
"dnas" / "qpl" / "dnas+qpl", "rl"), each with its config, the budget maths and the
`SearchResult`; `target="litert"` (`LiteRTTarget`) searches the `.tflite` file LiteRT runs."""

from autoqnn.mixed.budget import Budget, solve_policy
from autoqnn.mixed.dispatch import STRATEGIES, search
from autoqnn.mixed.dnas_qpl import DifferentiableConfig
from autoqnn.mixed.result import PolicyRow, SearchResult
from autoqnn.mixed.rl import RLConfig
from autoqnn.mixed.rl_env import AgentConfig
from autoqnn.mixed.sensitivity import SensitivityConfig
from autoqnn.mixed.table import SensitivityTable, measure_sensitivity
from autoqnn.mixed.target import LiteRTTarget

__all__ = [
    "STRATEGIES",
    "AgentConfig",
    "Budget",
    "DifferentiableConfig",
    "LiteRTTarget",
    "PolicyRow",
    "RLConfig",
    "SearchResult",
    "SensitivityConfig",
    "SensitivityTable",
    "measure_sensitivity",
    "search",
    "solve_policy",
]
