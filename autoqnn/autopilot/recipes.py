"""The retrain-free recipes the autopilot chooses from, and the order it tries them in.

A recipe is a `PTQConfig` without bits (the search sets those per layer) or None,
`quantize`'s own defaults. The autopilot tries `SEEDS` first (the defaults and the
recipes that won on some reference model), then lets Quantune's cost model
(`autoqnn.tune.samplers.XGBoostSampler`, fitted to the scores seen so far on this model)
propose the next point of `RECIPE_SPACE` while time remains. AdaRound is not in the space:
it is tried last, on the best policy found (`autoqnn.autopilot.retrain_free`), because it
costs several searches.

Example:
    >>> from autoqnn.autopilot.recipes import RecipeProposer, recipe_name
    >>> proposer = RecipeProposer(calibration_samples=256)
    >>> [recipe_name(r) for r in proposer.seeds()]
    ['defaults', 'bc', 'percentile', 'mse+bc']
    >>> recipe_name({"calibration_method": "kl", "weight_clipping": "mse",
    ...              "bias_correction": False, "grid": "symmetric"})
    'kl+mse+sym'
"""

from __future__ import annotations

import numpy as np

from autoqnn.ptq.config import PTQConfig
from autoqnn.tune.samplers import SearchState, XGBoostSampler
from autoqnn.tune.space import SearchSpace

RECIPE_SPACE = {
    "calibration_method": ["max", "percentile", "mse", "kl"],
    "weight_clipping": ["max", "mse"],
    "bias_correction": [False, True],
    "grid": ["symmetric_weights", "symmetric"],
}
"""The recipe options searched (32 recipes); the other `PTQConfig` fields keep their
defaults, the bits come from the search. Only grids with symmetric weights: TFLite stores
weights symmetric, so a model with asymmetric weight grids exports only by requantizing
(another model than the one judged)."""
_GRID = {"grid": "symmetric_weights"}
SEEDS = (
    None,
    {**_GRID, "bias_correction": True},
    {**_GRID, "calibration_method": "percentile"},
    {**_GRID, "weight_clipping": "mse", "bias_correction": True},
)
"""Tried first, in this order: `quantize`'s defaults; bias correction and percentile
calibration (both share the defaults' sensitivity table: one build each); MSE weight
clipping with bias correction (the README's former mixed-precision recipe; a table of its
own)."""

_SHORT = {"calibration_method": {"max": None, "percentile": "percentile", "mse": "mse-act",
                                 "kl": "kl"},
          "weight_clipping": {"max": None, "mse": "mse"},
          "bias_correction": {False: None, True: "bc"},
          "grid": {"symmetric_weights": None, "asymmetric": "asym", "symmetric": "sym",
                   "symmetric_pot": "pot"},
          "rounding": {"nearest": None, "adaround": "adaround"}}


def recipe_name(recipe: dict | None) -> str:
    """A short readable name of a recipe ("defaults" for None, "ptq" for a `PTQConfig` with
    symmetric weights and nothing else on)."""
    if recipe is None:
        return "defaults"
    parts = [_SHORT[k].get(v) for k, v in recipe.items() if k in _SHORT]
    parts = [p for p in parts if p]
    return "+".join(parts) if parts else "ptq"


class RecipeProposer:
    """Hands out recipes: `SEEDS`, then the cost model's picks from `RECIPE_SPACE`.

    Args:
        calibration_samples: calibration samples every recipe uses.
        seed: the cost model's seed.
    """

    def __init__(self, calibration_samples: int | None, seed: int = 0):
        fixed = {"calibration_samples": calibration_samples}
        self.space = SearchSpace(RECIPE_SPACE, fixed=fixed)
        features = np.stack([self.space.encode(c) for c in self.space.configs()])
        self.state = SearchState(self.space, {}, features, seed=seed)
        self.sampler = XGBoostSampler(n_initial=2)
        self.fixed = fixed

    def seeds(self) -> list:
        """The seed recipes (None: `quantize`'s defaults), as recipe dicts."""
        return [None if s is None else {**s} for s in SEEDS]

    def ptq(self, recipe: dict | None) -> PTQConfig | None:
        """The `PTQConfig` of a recipe (None stays None)."""
        return None if recipe is None else PTQConfig.from_dict({**self.fixed, **recipe})

    def tell(self, recipe: dict | None, value: float | None):
        """Records a recipe's score (higher is better; None: it failed). `quantize`'s
        defaults are the space's symmetric-weights point with nothing else on."""
        if recipe is None:
            recipe = dict(_GRID)
        config = {**self.space.config(0), **PTQConfig.from_dict(
            {**self.fixed, **recipe}).to_dict()}
        index = self.space.index_of({k: config[k] for k in self.space.config(0)})
        if index is not None:
            self.state.tried[index] = value

    def propose(self, fits=None) -> dict | None:
        """The untried recipe of the space the cost model ranks highest among those
        `fits(recipe)` accepts (all when None); None when there is none."""
        untried = self.state.untried()
        if not untried:
            return None
        for index in self.sampler.propose(self.state, len(untried)):
            config = self.space.config(index)
            recipe = {k: config[k] for k in RECIPE_SPACE}
            if fits is None or fits(recipe):
                return recipe
        return None
