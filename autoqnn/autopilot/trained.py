"""The trained autopilot: `quantize(model, train_data=(x, y), weight_bits_budget=b,
activation_bits=a, epochs=n)`.

1. **Bits per layer, retrain-free.** The sensitivity search (`autoqnn.mixed`, strategy
   "sensitivity") gives the per-layer weight bits under the budget, its table measured
   with 8-bit activations (at 2-4 activation bits an untrained model's outputs are too
   distorted for per-layer differences to show).
2. **The low-bit recipe and policy, chosen per model on validation.** Each recipe of
   `TRAINED_RECIPES` quantizes the model at that policy and trains a short probe (a
   `PROBE_FRACTION` of an epoch, distilled from the float model); the leader is probed
   again at the conventional policy of the same budget (`ends_policy`: first and last
   layers at 8 bits, the rest at one width); the best validation accuracy wins. The last
   layer's outputs stay at 8 bits. The recipes are those of `tools/bench_lowbit.py`: uniform
   per-channel weights with learned activation ranges, LSQ weights and activations, and
   ACD (learned per-channel weight clips, per-tensor activation clips with asymmetric
   decay, from MSE calibration) with the SQNR term. BatchNorm stays unfolded while
   training in all (folded at export).
3. **Fine-tune.** The winner trains on for `epochs` with distillation
   (`autoqnn.finetune`), the best validation epoch kept.

The report's `recipe` (a `RecipeChoice`, mode "trained") lists the probes' validation
accuracies and what was decided.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> rng = np.random.default_rng(0)
    >>> x = rng.random((128, 8), dtype=np.float32); y = (x[:, 0] > 0.5).astype("int64")
    >>> inputs = keras.Input((8,))
    >>> hidden = keras.layers.Dense(16, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2, name="b")(hidden))
    >>> qmodel = autoqnn.quantize(model, train_data=(x, y), weight_bits_budget=4.0,
    ...                           activation_bits=4, epochs=1, verbose=0)
    >>> qmodel.autoqnn_report.recipe.mode, qmodel.autoqnn_report.weight_bits_avg <= 4.0
    ('trained', True)
"""

from __future__ import annotations

import time

import keras

from autoqnn import defaults
from autoqnn.autopilot.choice import Candidate, RecipeChoice
from autoqnn.autopilot.data_check import check_input_range
from autoqnn.autopilot.judge import Score, as_arrays
from autoqnn.config import QuantizationConfig
from autoqnn.core import quantize_config
from autoqnn.evaluate import labelled_arrays, split_validation, top1_accuracy
from autoqnn.finetune import finetune
from autoqnn.mixed.budget import Budget
from autoqnn.mixed.common import activation_memory
from autoqnn.mixed.dispatch import search
from autoqnn.mixed.result import search_result
from autoqnn.mixed.sensitivity import SensitivityConfig
from autoqnn.report import quantization_report

TRAINED_RECIPES = {
    "uniform": {"quantize": {"scheme": "uniform", "activation_scheme": "uniform"},
                "calibration_method": "max", "sqnr_weight": 0.0},
    "lsq": {"quantize": {"scheme": "lsq", "activation_scheme": "lsq"},
            "calibration_method": "mse", "sqnr_weight": 0.0},
    "acd+sqnr": {"quantize": {"scheme": "acd", "activation_scheme": "acd",
                              "activation_options": {"granularity": "per_tensor"}},
                 "calibration_method": "mse", "sqnr_weight": 0.02},
}
"""The low-bit training recipes probed per model (`tools/bench_lowbit.py`'s, with per-tensor
activation clips for ACD: what TFLite runs)."""
PROBE_FRACTION = 0.15
"""Share of an epoch each recipe's probe trains."""
LEARNING_RATES = {2: 1e-3, 4: 2e-4}
"""Peak learning rate by the smallest activation/weight bits (`tools/bench_lowbit.py`'s):
1e-3 at 2-3 bits, 2e-4 from 4 bits up."""


def learning_rate(bits: int) -> float:
    """The peak fine-tune learning rate for a model whose narrowest width is `bits`."""
    return LEARNING_RATES[2] if bits < 4 else LEARNING_RATES[4]


def _policy(model, x_cal, budget, activation_bits, config, num_samples):
    """`{path: {"weight_bits": b}}` from the retrain-free search, and its result."""
    probe_bits = None if activation_bits is None else max(activation_bits, 8)
    options = SensitivityConfig(activation_bits=probe_bits, num_samples=num_samples)
    result = search(model, calibration_data=x_cal, strategy=options, config=config, verbose=0,
                    **budget.to_dict())
    searched = set(result.sensitivity.layers)
    return {p: {"weight_bits": b} for p, b in result.bits().items() if p in searched}, result


def ends_policy(result, budget):
    """The conventional low-bit policy at the same budget: the first and last searched
    layers at 8 bits, the others at one width, the widest that keeps the average-bits
    budget (None without one, or when no width fits or there are fewer than 3 layers)."""
    table = result.sensitivity
    if budget.weight_bits is None or table is None or len(table.layers) < 3:
        return None
    ends = {table.layers[0], table.layers[-1]}
    middle = [p for p in table.layers if p not in ends]
    widths = set.intersection(*(set(table.candidates[p]) for p in middle))
    if 8 not in set(table.candidates[table.layers[0]]) & set(table.candidates[table.layers[-1]]):
        return None
    report = result.model.autoqnn_report
    total = sum(r.quantized_params for r in report if r.status == "quantized")
    searched = sum(table.params.values())
    outside = result.model.autoqnn_report.weight_bits_avg * total - sum(
        table.params[p] * bits for p, bits in result.bits().items() if p in table.params)
    for width in sorted(widths, reverse=True):
        bits = outside + 8 * sum(table.params[p] for p in ends) + width * (
            searched - sum(table.params[p] for p in ends))
        if bits / total <= budget.weight_bits + 1e-9:
            return {p: {"weight_bits": 8 if p in ends else width} for p in table.layers}
    return None


def _build(model, recipe, overrides, config, activation_bits, input_bits, x_cal, num_samples,
           last=None):
    """The model of a training recipe at a policy; the `last` layer's outputs at 8 bits."""
    spec = TRAINED_RECIPES[recipe]
    if last is not None and activation_bits is not None and activation_bits < 8:
        overrides = {**overrides, last: {**overrides.get(last, {}), "activation_bits": 8}}
    qconfig = QuantizationConfig(**spec["quantize"], activation_bits=activation_bits,
                                 input_bits=input_bits, fold_batchnorm=False,
                                 overrides={**overrides, **(config or {})})
    return quantize_config(model, qconfig, x_cal, calibration_method=spec["calibration_method"],
                           calibration_samples=num_samples, verbose=0)


def choose_trained(model, train_data, val_data=None, *, budget: Budget, activation_bits,
                   input_bits=None, config=None, calibration_data=None,
                   epochs: int = defaults.FINETUNE_EPOCHS,
                   num_samples: int = defaults.SEARCH_SAMPLES, verbose: int = 0):
    """Runs the trained autopilot (see the module doc); returns the fine-tuned model with
    `autoqnn_report.recipe` (a `RecipeChoice`) and `autoqnn_search` (the policy's
    `SearchResult`).

    Args:
        model: the float model (not changed).
        train_data: labelled `(x, y)` arrays.
        val_data: labelled validation data (default: the last 10 % of `train_data`).
        budget: a weight-side `Budget` (average bits or size).
        activation_bits: activation bits of the trained model (None: float).
        input_bits: bits of the model inputs (default 8).
        config: the user's per-layer overrides (pinned).
        calibration_data: inputs to calibrate on (default: the training inputs).
        epochs: fine-tune epochs after the probes.
        num_samples: calibration images (search and quantizer initialisation).
        verbose: 1 prints the probes and the fine-tune's progress.
    """
    start = time.perf_counter()
    if budget.memory_bytes is not None:
        raise ValueError("memory_budget_bytes= is not taken by the trained autopilot; search "
                         "it with autoqnn.search(model, train_data, strategy='dnas+qpl', "
                         "memory_budget_bytes=...)")
    train = labelled_arrays(train_data, "train_data")
    if val_data is None:
        train, val = split_validation(train)
    else:
        val = labelled_arrays(val_data, "val_data")
    x_cal = train[0][:num_samples] if calibration_data is None else \
        as_arrays(calibration_data, "calibration_data")
    check_input_range(model, x_cal)
    input_bits = 8 if input_bits is None else input_bits
    overrides, result = _policy(model, x_cal, budget, activation_bits, config, num_samples)
    bits = [v["weight_bits"] for v in overrides.values()] + [activation_bits or 8]
    rate = learning_rate(min(bits))
    notes = [f"bits per layer from the retrain-free sensitivity search "
             f"({result.average_weight_bits:.2f} average, table at 8-bit activations)",
             f"model inputs at {input_bits} bits; BatchNorm unfolded while training; "
             f"peak learning rate {rate:g}"]
    probe_n = max(1, int(len(train[0]) * PROBE_FRACTION))
    probe = (train[0][:probe_n], train[1][:probe_n])
    last = result.sensitivity.layers[-1]
    policies = {"search": overrides}
    candidates, models = [], {}

    def run_probe(recipe, policy):
        name = recipe if policy == "search" else f"{recipe}, 8-bit ends"
        spec, t0 = TRAINED_RECIPES[recipe], time.perf_counter()
        try:
            keras.utils.set_random_seed(0)
            qmodel = _build(model, recipe, policies[policy], config, activation_bits, input_bits,
                            x_cal, num_samples, last)
            finetune(qmodel, probe, epochs=1, teacher=model, sqnr_weight=spec["sqnr_weight"],
                     learning_rate=rate, restore_best=False, verbose=0)
            score = Score(0.0, top1_accuracy(qmodel, val))
        except (ValueError, TypeError) as err:
            candidates.append(Candidate(name, None, "probe", None, None, None,
                                        round(time.perf_counter() - t0, 2),
                                        f"{type(err).__name__}: {err}"))
            return
        report = quantization_report(qmodel)
        candidates.append(Candidate(name, {**spec["quantize"], "policy": policy}, "probe",
                                    score, round(report.weight_bits_avg, 4), report.size_bytes,
                                    round(time.perf_counter() - t0, 2)))
        models[name] = (qmodel, recipe)
        if verbose:
            print(f"autopilot: probe {name:<24} val accuracy {score.accuracy:.4f} "
                  f"({candidates[-1].seconds:.1f} s)")

    for recipe in TRAINED_RECIPES:
        run_probe(recipe, "search")
    ends = ends_policy(result, budget)
    if models and ends is not None and ends != overrides:
        policies["ends"] = ends
        leader = max((c for c in candidates if c.score is not None), key=lambda c: c.score.key)
        run_probe(models[leader.name][1], "ends")
    else:
        notes.append("no 8-bit-ends policy probed (no average-bits budget, fewer than 3 "
                     "layers, no width that fits, or the search chose it)")
    notes.append(f"the last layer ({last}) outputs at 8 bits")
    if not models:
        raise ValueError("every trained recipe failed: " + "; ".join(
            f"{c.name}: {c.error}" for c in candidates))
    best = max((c for c in candidates if c.score is not None), key=lambda c: c.score.key)
    qmodel, recipe = models[best.name]
    spec = TRAINED_RECIPES[recipe]
    tuned = finetune(qmodel, train, epochs=epochs, val_data=val, teacher=model,
                     sqnr_weight=spec["sqnr_weight"], learning_rate=rate, verbose=verbose)
    notes.append(f"{best.name} fine-tuned {epochs} epochs with distillation: validation "
                 + ", ".join(f"{a:.4f}" for a in tuned["val_accuracy"])
                 + f" (best kept: {max(tuned['val_accuracy']):.4f})")
    qmodel.autoqnn_report = quantization_report(qmodel)
    memory = max((n * b / 8 for n, b in activation_memory(qmodel).values()), default=0.0)
    search_result(qmodel, [*result.history, {"step": "probes", "chosen": best.name},
                           {"step": "finetune", "epochs": epochs,
                            "val_accuracy": tuned["val_accuracy"]}],
                  "autopilot", start, memory, budget, result.sensitivity, activation_bits)
    choice = RecipeChoice(best.name, candidates, f"validation accuracy on {len(val[0])} "
                          f"samples after a {PROBE_FRACTION:g}-epoch probe",
                          Score(0.0, top1_accuracy(model, val)), None,
                          time.perf_counter() - start, [], mode="trained", notes=notes)
    qmodel.autoqnn_report.recipe = choice
    if verbose:
        print(choice)
    return qmodel
