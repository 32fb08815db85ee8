"""The retrain-free autopilot: per model, the PTQ recipe and the per-layer bits chosen
together, on the user's own data, within a time budget.

For each recipe (`autoqnn.autopilot.recipes`: the seeds, then Quantune's cost-model
picks) it runs the retrain-free mixed-precision search (`autoqnn.mixed`, strategy
"sensitivity") *under that recipe* (the sensitivity table is measured with that recipe's
calibration, grid, clipping and bias correction) and judges the searched model on images
held out from the ones it calibrated on (`autoqnn.autopilot.judge`). A table is measured
once per weight clipping (`table_key`): a recipe that differs from a measured one only in
calibration, grid, bias correction or rounding is built at that search's policy (kind
"shared"), at the cost of one build instead of a search, so many more recipes fit the
time budget. Beside them it builds
uniform quantization at the same budget (every searched layer at one width, under the
defaults and under the best recipe) and, when time remains after the cheap seeds, the best
policy so far rebuilt with AdaRound. It returns the best candidate on its judge, so never
one that is worse than uniform quantization at the same budget by that judge, and says what
it tried in `qmodel.autoqnn_report.recipe` (a `RecipeChoice`).

Example:
    >>> import keras, numpy as np, autoqnn
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(32, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="b")(x))
    >>> data = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    >>> qmodel = autoqnn.quantize(model, calibration_data=data, weight_bits_budget=3.0,
    ...                           time_budget_seconds=5, verbose=0)
    >>> qmodel.autoqnn_report.weight_bits_avg <= 3.0
    True
    >>> qmodel.autoqnn_report.recipe.candidates[0].name
    'defaults'
"""

from __future__ import annotations

import dataclasses
import time

from autoqnn import defaults
from autoqnn.autopilot.choice import Candidate, RecipeChoice
from autoqnn.autopilot.data_check import check_input_range
from autoqnn.autopilot.judge import Judge, as_arrays, split_holdout
from autoqnn.autopilot.recipes import RecipeProposer, recipe_name
from autoqnn.evaluate import labelled_arrays
from autoqnn.mixed.budget import Budget
from autoqnn.mixed.common import fit_memory
from autoqnn.mixed.dispatch import search
from autoqnn.mixed.result import search_result
from autoqnn.mixed.sensitivity import SensitivityConfig
from autoqnn.mixed.target import tflite_file

ADAROUND_ITERATIONS = 150
"""Adam steps per layer of the autopilot's AdaRound candidate (`PTQConfig`'s default is 500):
on `cnn` at W3A8, validation top-1 89.35 % at 150 steps in 72 s against 87.45 % at 50
steps in 46 s (shared machine); most of the cost is the per-layer setup, not the steps."""
ADAROUND_COST = 2.0
"""AdaRound's cost estimate, in sensitivity searches of the same model (500 steps measured
3-3.5x a search on `cnn`, 150 steps about 0.7x of that)."""
MSE_CLIPPING_COST = 3.0
"""A search under MSE weight clipping costs about this many times one without (it refines
the clip of every probed layer; measured 3x on `cnn`), until one is measured."""


def table_key(recipe: dict | None) -> str:
    """What a recipe's sensitivity table depends on enough to be measured again: the weight
    clipping (a clip refined per probe changes each layer's error at low bits). Recipes
    that differ only in calibration, grid, bias correction or rounding share the table and
    its policy, and cost one build each."""
    return (recipe or {}).get("weight_clipping", "max")


@dataclasses.dataclass
class _Best:
    """The best candidate so far, its model and (searched candidates) its policy."""

    candidate: Candidate | None = None
    model: object = None
    overrides: dict | None = None
    recipe: dict | None = None


class _Run:
    """One autopilot run: the shared state of its candidates."""

    def __init__(self, model, calibrate, judge, budget, settings, config, time_budget,
                 verbose):
        self.model, self.data, self.judge = model, calibrate, judge
        self.budget, self.settings, self.config = budget, settings, config
        self.time_budget, self.verbose = time_budget, verbose
        self.start = time.perf_counter()
        self.candidates, self.best = [], _Best()
        self.proposer = RecipeProposer(settings["num_samples"])
        self.policies = {}  # table key -> (overrides, SearchResult, recipe name)
        self.search_costs, self.build_costs = {}, []

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def affordable(self, cost: float) -> bool:
        return self.elapsed() + cost <= self.time_budget

    def estimate(self, recipe) -> float:
        """Predicted seconds of the candidate of `recipe`, from those so far."""
        key = table_key(recipe)
        if key in self.policies and self.build_costs:
            return max(self.build_costs)
        if key in self.search_costs:
            return max(self.search_costs[key])
        seen = max(max(v) for v in self.search_costs.values())
        return seen * (MSE_CLIPPING_COST if key == "mse" else 1.0)

    def options(self, recipe: dict | None) -> SensitivityConfig:
        ptq = self.proposer.ptq(recipe)
        settings = dict(self.settings)
        if ptq is not None:
            settings["ptq"] = ptq
        return SensitivityConfig(**settings)

    def keep(self, candidate, qmodel, overrides=None, recipe=None):
        """Records a judged candidate; keeps its model when it is the best so far."""
        self.candidates.append(candidate)
        if candidate.kind in ("search", "shared"):
            self.proposer.tell(recipe, 100.0 * candidate.score.key[0]
                               - 100.0 * candidate.score.kl)
        if self.verbose:
            print(f"autopilot: {candidate.name:<22} {candidate.kind:<8} "
                  f"{candidate.weight_bits:.2f} bits  {candidate.score}  "
                  f"({candidate.seconds:.1f} s)")
        best = self.best.candidate
        if best is None or candidate.score.key > best.score.key:
            self.best = _Best(candidate, qmodel, overrides, recipe)

    def fail(self, name, recipe, kind, start, error):
        self.candidates.append(Candidate(name, recipe, kind, None, None, None,
                                         round(time.perf_counter() - start, 2), error))
        if kind in ("search", "shared"):
            self.proposer.tell(recipe, None)
        if self.verbose:
            print(f"autopilot: {name:<22} {kind:<8} not kept: {error}")

    def judged(self, name, recipe, kind, qmodel, start, overrides):
        options = self.options(recipe)
        report = qmodel.autoqnn_report
        self.keep(Candidate(name, options.ptq and options.ptq.to_dict(), kind,
                            self.judge(qmodel), round(report.weight_bits_avg, 4),
                            report.size_bytes, round(time.perf_counter() - start, 2)),
                  qmodel, overrides, recipe)

    def candidate(self, recipe, strict=False):
        """Judges `recipe`: a search under it, or its build at the policy of the search
        that measured its table (`table_key`)."""
        start = time.perf_counter()
        name, key = recipe_name(recipe), table_key(recipe)
        kind = "shared" if key in self.policies else "search"
        try:
            if kind == "shared":
                overrides, _, _ = self.policies[key]
                qmodel = self.build(recipe, overrides, start, f"policy of {self.policies[key][2]}")
            else:
                result = search(self.model, calibration_data=self.data,
                                strategy=self.options(recipe), config=self.config, verbose=0,
                                **self.budget.to_dict())
                searched = set(result.sensitivity.layers)
                overrides = {path: {"weight_bits": bits} for path, bits in result.bits().items()
                             if path in searched}
                self.policies[key] = (overrides, result, name)
                qmodel = result.model
        except Exception as err:  # noqa: BLE001 - a failed recipe is a row; the first raises
            if strict:
                raise
            self.fail(name, recipe, kind, start, f"{type(err).__name__}: {err}")
            return
        self.judged(name, recipe, kind, qmodel, start, overrides)
        # costs include the judging, so the estimates of what fits the time left do too
        costs = self.build_costs if kind == "shared" else self.search_costs.setdefault(key, [])
        costs.append(time.perf_counter() - start)

    def build(self, recipe, overrides, start, step):
        """The model of `recipe` at a searched policy (`overrides`), with its result."""
        options = self.options(recipe)
        qmodel = options.build(self.model, self.data, overrides, self.config)
        table = self.policies[table_key(recipe)][1].sensitivity \
            if table_key(recipe) in self.policies else None
        self.finish(qmodel, options, start, {"step": step}, "sensitivity", table)
        return qmodel

    def finish(self, qmodel, options, start, record, strategy, table):
        """Fits the memory budget and attaches the `SearchResult` of a built candidate."""
        history = []
        memory = fit_memory(qmodel, self.budget.memory_bytes, options.candidate_activation_bits,
                            self.data, options.observer, options.num_samples, history)
        search_result(qmodel, [record, *history], strategy, start, memory, self.budget, table,
                      options.activation_bits)

    def uniform(self, recipe):
        """Every searched layer at the widest single width within the budget (with a
        target: a width LiteRT stores every layer at, the size counted in file bytes)."""
        if not self.budget.on_weights:
            return
        options = self.options(recipe)
        start = time.perf_counter()
        name = f"uniform {recipe_name(recipe)}"
        if options.target is not None and self.budget.latency_ms is not None:
            self.fail(name, options.ptq and options.ptq.to_dict(), "uniform", start,
                      "not built under a latency budget (only the search times its files)")
            return
        for bits in sorted(options.candidate_bits, reverse=True):
            if self.budget.weight_bits is not None and bits > self.budget.weight_bits:
                continue
            if options.target is not None and bits not in LITERT_UNIFORM_BITS:
                continue
            qmodel = options.build(self.model, self.data, {}, self.config, bits=bits)
            report = qmodel.autoqnn_report
            size = report.size_bytes if options.target is None else len(tflite_file(qmodel))
            over = (self.budget.weight_bits is not None
                    and report.weight_bits_avg > self.budget.weight_bits + 1e-9) or \
                (self.budget.size_bytes is not None and size > self.budget.size_bytes)
            if over:
                continue
            self.finish(qmodel, options, start, {"step": "uniform", "weight_bits": bits},
                        "uniform", None)
            self.judged(f"{name} {bits}-bit", recipe, "uniform", qmodel, start, None)
            self.build_costs.append(time.perf_counter() - start)
            return
        self.fail(name, options.ptq and options.ptq.to_dict(), "uniform", start,
                  "no single width of candidate_bits meets the budget")

    def adaround(self):
        """The best policy rebuilt with AdaRound (learned rounding)."""
        best = self.best
        start = time.perf_counter()
        recipe = {**(best.recipe or {}), "rounding": "adaround",
                  "adaround_iterations": ADAROUND_ITERATIONS}
        qmodel = self.build(recipe, best.overrides, start, f"adaround on {best.candidate.name}")
        self.judged(recipe_name(recipe), recipe, "adaround", qmodel, start, best.overrides)


LITERT_UNIFORM_BITS = (4, 8)
"""Single widths LiteRT stores every weighted layer at (int2 is fully-connected only)."""
ADAROUND = object()
"""Marks AdaRound's turn in the order of candidates (after the cheap seeds)."""


def choose_retrain_free(model, calibration_data, *, budget: Budget, settings: dict,
                        config=None, val_data=None,
                        time_budget_seconds: float = defaults.AUTOPILOT_SECONDS,
                        target=None, verbose: int = 0):
    """Runs the retrain-free autopilot (see the module doc); returns the chosen model with
    `autoqnn_report.recipe` (a `RecipeChoice`) and `autoqnn_search` (its `SearchResult`).

    Args:
        model: the float model.
        calibration_data: inputs; without `val_data` the judge holds out the last quarter.
        budget: the `Budget`.
        settings: `SensitivityConfig` fields shared by every candidate (activation bits,
            activation scheme, input bits, BatchNorm folding, candidate bits,
            `num_samples`, ...), no recipe fields.
        config: the user's per-layer overrides (pinned layers).
        val_data: labelled `(x, y)` data to judge on by accuracy instead.
        time_budget_seconds: time to spend; the first recipe and the uniform baseline are
            always tried.
        target: None, or "litert" / a `LiteRTTarget`: every recipe's search counts the
            `.tflite` file's bytes (and LiteRT latency) and stores each layer at its
            searched width (`autoqnn.mixed.target`); candidates built at a searched policy
            have its widths, so its file; the uniform baseline takes 4 or 8 bits.
        verbose: 1 prints each candidate and the choice.
    """
    inputs = as_arrays(calibration_data, "calibration_data")
    if val_data is not None:
        x_val, y_val = labelled_arrays(val_data, "val_data")
        calibrate, judge = inputs, Judge(model, x_val, y_val)
    else:
        calibrate, held_out = split_holdout(inputs)
        judge = Judge(model, held_out)
    check_input_range(model, calibrate)
    if target is not None:
        settings = {**settings, "target": target}
    run = _Run(model, calibrate, judge, budget, settings, config, time_budget_seconds, verbose)
    seeds = run.proposer.seeds()
    run.candidate(seeds[0], strict=True)
    run.uniform(seeds[0])
    skipped = []
    pending = [*seeds[1:3], ADAROUND, *seeds[3:]]
    while pending:
        recipe = pending.pop(0)
        if recipe is ADAROUND:
            if run.best.candidate.kind not in ("search", "shared"):
                continue
            cost = ADAROUND_COST * min(min(v) for v in run.search_costs.values())
            if run.affordable(cost):
                run.adaround()
            else:
                skipped.append(f"adaround on {run.best.candidate.name}")
        elif run.affordable(run.estimate(recipe)):
            run.candidate(recipe)
        else:
            skipped.append(recipe_name(recipe))
    while True:  # the cost model's picks among the recipes that fit the time left
        recipe = run.proposer.propose(lambda r: run.affordable(run.estimate(r)))
        if recipe is None:
            left = len(run.proposer.state.untried())
            if left:
                skipped.append(f"{left} more recipes of the space")
            break
        run.candidate(recipe)
    if run.best.recipe is not None and run.best.candidate.kind in ("search", "shared"):
        if run.affordable(max(run.build_costs, default=0.0)):
            run.uniform(run.best.recipe)
        else:
            skipped.append(f"uniform {recipe_name(run.best.recipe)}")
    choice = RecipeChoice(run.best.candidate.name, run.candidates, judge.describe(),
                          judge.float_score, time_budget_seconds, run.elapsed(), skipped)
    qmodel = run.best.model
    qmodel.autoqnn_report.recipe = choice
    if verbose:
        print(choice)
    return qmodel
