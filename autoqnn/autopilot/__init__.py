"""The autopilot: `autoqnn.quantize` under a budget chooses the recipe and the per-layer
bits for *this* model on the user's data (`retrain_free`), judged on held-out images
(`judge`), and says what it chose (`choice.RecipeChoice`, as
`qmodel.autoqnn_report.recipe`)."""

from autoqnn.autopilot.choice import Candidate, RecipeChoice
from autoqnn.autopilot.judge import Judge, Score
from autoqnn.autopilot.recipes import RECIPE_SPACE, SEEDS
from autoqnn.autopilot.retrain_free import choose_retrain_free

__all__ = ["Candidate", "Judge", "RECIPE_SPACE", "RecipeChoice", "SEEDS", "Score",
           "choose_retrain_free"]
