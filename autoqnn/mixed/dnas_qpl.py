"""The "dnas", "qpl" and "dnas+qpl" strategies: build the searchable model, run the
alternating search (`autoqnn.mixed.differentiable`), derive, repair, fine-tune.

Every run writes its checkpoints into a folder keyed by the float weights, the data and
every setting (`autoqnn.checkpoint.KeyedCheckpoint`): the same call resumes at the next
epoch (or returns its finished model), and any other setting, another budget included,
starts fresh beside it.
"""

from __future__ import annotations

import dataclasses
import math
import time

import keras
import numpy as np

from autoqnn import defaults
from autoqnn.checkpoint import KeyedCheckpoint, data_sample
from autoqnn.config import QuantizationConfig
from autoqnn.core import quantize_config
from autoqnn.evaluate import labelled_arrays, split_validation, top1_accuracy
from autoqnn.finalize import finalize, set_bits
from autoqnn.mixed import sensitivity
from autoqnn.mixed.budget import Budget, fixed_bytes, solve_policy, weighted_layers
from autoqnn.mixed.common import check_bits_list, check_int, finetune_stage, fit_memory
from autoqnn.mixed.differentiable import (
    ARCH_UPDATES,
    DEFAULT_CANDIDATES,
    DifferentiableSearch,
    unify_scheme,
)
from autoqnn.mixed.result import search_result
from autoqnn.mixed.table import measure_sensitivity
from autoqnn.report import quantization_report
from autoqnn.schemes import get_scheme

STRATEGIES = ("dnas", "qpl", "dnas+qpl")


@dataclasses.dataclass(frozen=True)
class DifferentiableConfig:
    """Settings of the differentiable strategies, validated on construction.

    Attributes:
        strategy: "dnas" (a scheme per layer from `candidates`), "qpl" (learned bits per
            layer) or "dnas+qpl" (both).
        candidates: "dnas" / "dnas+qpl": candidate schemes (default
            `autoqnn.mixed.differentiable.DEFAULT_CANDIDATES`).
        activation_bits: activation bits (None: "qpl" learns them; float for "dnas").
        candidate_activation_bits: activation bits tried for a memory budget.
        epochs, finetune_epochs: search epochs and QAT epochs of the derived model.
        batch_size, learning_rate: training settings.
        precision_weight: lambda of the precision loss.
        scheme_scope: "dnas" / "dnas+qpl": "layer" (a scheme per layer) or "model" (one
            scheme for the whole model, `autoqnn.mixed.differentiable.unify_scheme`).
        qpl_start: "qpl" / "dnas+qpl": where the trainable bits start, "sensitivity" (the
            retrain-free policy at the budget, judged with 8-bit activations) or "budget"
            (every layer at the budget's bits).
        arch_update: "bilevel" (architecture steps on validation batches, alternating
            with weight steps on training batches) or "joint" (one step on the training
            batch for both).
        loss: task loss (default: the model's, else sparse categorical CE).
        seed: seeds initialisation and shuffling.
        num_samples: calibration images (default calibration from the training inputs,
            and a memory budget's recalibration); the start policy is judged on half.
    """

    strategy: str = "dnas+qpl"
    candidates: tuple | None = None
    activation_bits: int | None = defaults.ACTIVATION_BITS
    candidate_activation_bits: tuple = defaults.CANDIDATE_ACTIVATION_BITS
    epochs: int = defaults.SEARCH_EPOCHS
    finetune_epochs: int = defaults.FINETUNE_EPOCHS
    batch_size: int = defaults.BATCH_SIZE
    learning_rate: float = defaults.LEARNING_RATE
    precision_weight: float = 1.0
    scheme_scope: str = "layer"
    qpl_start: str = "sensitivity"
    arch_update: str = "bilevel"
    loss: object = None
    seed: int = 0
    num_samples: int = defaults.SEARCH_SAMPLES

    @property
    def name(self) -> str:
        return self.strategy

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {list(STRATEGIES)}, got "
                             f"{self.strategy!r}")
        check_int("epochs", self.epochs)
        check_int("finetune_epochs", self.finetune_epochs, low=0)
        check_int("batch_size", self.batch_size)
        check_int("num_samples", self.num_samples)
        check_int("seed", self.seed, low=0)
        object.__setattr__(self, "candidate_activation_bits", check_bits_list(
            "candidate_activation_bits", self.candidate_activation_bits))
        if self.activation_bits is not None:
            check_int("activation_bits", self.activation_bits, low=2)
        for name in ("learning_rate", "precision_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    not np.isfinite(value) or value < 0 or (name == "learning_rate" and
                                                            value == 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, valid in (("scheme_scope", ("layer", "model")),
                            ("qpl_start", ("sensitivity", "budget")),
                            ("arch_update", ARCH_UPDATES)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {list(valid)}, got "
                                 f"{getattr(self, name)!r}")
        dnas, qpl = "dnas" in self.strategy, "qpl" in self.strategy
        for name, applies, default in (("candidates", dnas, None),
                                       ("scheme_scope", dnas, "layer"),
                                       ("qpl_start", qpl, "sensitivity")):
            if not applies and getattr(self, name) != default:
                users = [s for s in STRATEGIES if (("dnas" in s) if name != "qpl_start"
                                                   else ("qpl" in s))]
                raise ValueError(f"{name}= does not apply to strategy {self.strategy!r}; "
                                 f"it is used by {users}")
        if self.candidates is not None:
            object.__setattr__(self, "candidates", tuple(self.candidates))
            for spec in self.candidates:
                get_scheme(spec)  # validates

    def to_dict(self) -> dict:
        """The settings (a loss object stays itself; `autoqnn.checkpoint.describe` names
        it in a key)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _candidates_at(candidates, bits):
    out = []
    for spec in candidates:
        scheme = get_scheme(spec)
        out.append({**spec, "bits": int(np.clip(bits, scheme.min_bits, scheme.max_bits))})
    return out


def _pin(config):
    """User overrides pin their layers: no mixture, no trainable bits there."""
    pinned = {}
    for selector, value in (config or {}).items():
        if isinstance(value, dict):
            value = {"weight_quantizer": {}, "activation_quantizer": {}, **value}
        pinned[selector] = value
    return pinned


def lowest_bits(options: DifferentiableConfig) -> int:
    """The smallest average weight bits the strategy can reach."""
    candidates = options.candidates or DEFAULT_CANDIDATES
    lowest = min(get_scheme(c).min_bits for c in candidates) if "dnas" in options.strategy \
        else 2
    return max(lowest, 2) if "qpl" in options.strategy else lowest


def searchable_model(model, options, budget, calibration, config):
    """The quantized model the search trains: candidate mixtures and/or trainable bits on
    every unpinned weighted layer. Returns `(model, top_bits)`."""
    strategy = options.strategy
    start_bits = int(np.clip(math.floor(budget.weight_bits) + 1, 2, 8)) \
        if budget.weight_bits is not None else 4
    # Trainable bits in [2, start + 2], not 2..8: a smaller window traces faster.
    top_bits = min(8, start_bits + 2)
    spec = {}
    if "dnas" in strategy:
        # Fixed bits (dnas): the budget's floor. With trainable bits the candidates'
        # data-dependent state (e.g. ACD's SAWB clips) starts at the budget's nearest
        # integer, where the projection puts the bits.
        target = 4 if budget.weight_bits is None else budget.weight_bits
        bits = max(2, math.floor(target + 0.5) if "qpl" in strategy else math.floor(target))
        spec["candidates"] = _candidates_at(options.candidates or DEFAULT_CANDIDATES, bits)
    if "qpl" in strategy:
        spec.update(trainable_bits=True, bits_range=(2, top_bits),
                    initial_bits=float(start_bits))
    overrides = {".*": {"weight_quantizer": spec}}
    act_bits = options.activation_bits
    if act_bits is None and "qpl" in strategy:  # QPL learns the activation bits too
        overrides[".*"]["activation_quantizer"] = {"trainable_bits": True, "bits_range": (2, 8)}
        act_bits = 8
    # At <= 4 activation bits (or learned ones) a min/max range wastes the few levels:
    # activation ranges are learned (LSQ+ gradients) from an MSE calibration.
    low_bits = options.activation_bits is None or options.activation_bits <= 4
    qconfig = QuantizationConfig(
        weight_bits=start_bits, activation_bits=act_bits, input_bits=8, fold_batchnorm=False,
        activation_options={"learn_range": True} if low_bits else {},
        overrides={**overrides, **_pin(config)})
    searchable = quantize_config(model, qconfig, calibration,
                                 calibration_method="mse" if low_bits else "max", verbose=0)
    return searchable, top_bits


def sensitivity_start(searchable, model, calibration, *, budget, candidate_bits, config,
                      num_samples) -> dict:
    """Starts the trainable weight bits at the retrain-free policy of the "sensitivity"
    strategy (8-bit activations, so that only the weights are judged), so QPL refines a
    good mixed-precision policy. Returns the history record."""
    start = time.perf_counter()
    options = sensitivity.SensitivityConfig(candidate_bits=tuple(candidate_bits),
                                            activation_bits=8, num_samples=num_samples)
    weights_only = Budget(weight_bits=budget.weight_bits, size_bytes=budget.size_bytes)
    result = sensitivity.run(model, None, None, options=options, budget=weights_only,
                             calibration_data=calibration, config=config, checkpoint_dir=None,
                             verbose=0)
    trainable = {path for path, layer in searchable_layers_with_bits(searchable)}
    policy = {p: int(b) for p, b in result.bits().items() if p in trainable}
    set_bits(searchable, {p: float(b) for p, b in policy.items()})
    return {"step": "start", "policy": policy,
            "seconds": round(time.perf_counter() - start, 2)}


def searchable_layers_with_bits(model):
    """`(path, layer)` of the weighted layers with a trainable weight bitwidth."""
    return [(p, layer) for p, layer in weighted_layers(model)
            if any(q.bits_variable is not None for q in layer.weight_quantizers.values())]


def _budget_cost(searchable, budget):
    """`(cost, size)`: what the precision loss compares with (total weight bits under a
    size budget, counted on the derived model, else the average bits)."""
    # The part of the size no bitwidth changes, counted on the derived model: the searchable
    # one also holds every candidate's state (scales, clips), which `finalize` drops.
    unsearched = fixed_bytes(finalize(searchable, fold_batchnorm=False).autoqnn_report)
    if budget.size_bytes is None:
        return budget.weight_bits, False
    cost = (budget.size_bytes - unsearched) * 8
    if cost <= 0:
        raise ValueError(f"size_budget_bytes={budget.size_bytes!r} is below the "
                         f"{unsearched:.0f} bytes of the model's unsearched part")
    return cost, True


def _repair(final, model, calibration, budget, lowest, val):
    """Lowers the least sensitive layers' bits until the rounded policy fits the budget;
    returns the history record, or None when it already fits (and the table)."""
    caps = {r.name: r.weight_bits for r in final.autoqnn_report if r.status == "quantized"}
    average = final.autoqnn_report.weight_bits_avg
    over_bits = budget.weight_bits is not None and average > budget.weight_bits + 1e-9
    over_size = budget.size_bytes is not None and \
        final.autoqnn_report.size_bytes > budget.size_bytes + 1e-6
    if not (over_bits or over_size):
        return None, None
    table = measure_sensitivity(final, model, calibration, candidate_bits=range(lowest, 9),
                                caps=caps, verbose=0)
    policy = solve_policy(table.values, table.params, weight_bits_budget=budget.weight_bits,
                          size_budget_bytes=budget.size_bytes,
                          fixed_bytes=fixed_bytes(final.autoqnn_report, table.values))
    set_bits(final, policy)
    return {"step": "repair", "from_average_bits": average,
            "changed": {p: [caps[p], b] for p, b in policy.items() if b != caps[p]},
            "val_accuracy": top1_accuracy(final, val)}, table


def _train_val(train_data, val_data):
    train = labelled_arrays(train_data, "train_data")
    if val_data is None:  # carve the last 10 % of the training data
        return split_validation(train)
    return train, labelled_arrays(val_data, "val_data")


def run(model, train_data, val_data, *, options: DifferentiableConfig, budget: Budget,
        calibration_data, config, checkpoint_dir, verbose):
    """Runs the strategy (see the module doc); returns the `SearchResult`."""
    start = time.perf_counter()
    strategy = options.strategy
    if train_data is None:
        raise ValueError(f"strategy={strategy!r} trains: give train_data=(x, y)")
    if not budget.on_weights:
        raise ValueError(f"strategy={strategy!r} searches weights: give weight_bits_budget= "
                         "or size_budget_bytes= (memory_budget_bytes= alone is the activation "
                         "side: strategy='sensitivity')")
    (x, y), val = _train_val(train_data, val_data)
    calib = calibration_data if calibration_data is not None else x[:options.num_samples]
    lowest = lowest_bits(options)
    if budget.weight_bits is not None and budget.weight_bits < lowest:
        raise ValueError(f"weight_bits_budget={budget.weight_bits!r} is below the smallest "
                         f"achievable average of {lowest} bits for strategy {strategy!r}")
    checkpoint = KeyedCheckpoint(
        checkpoint_dir, strategy, {"options": options.to_dict(), "budget": budget.to_dict(),
                                   "config": config},
        model.get_weights(), *data_sample((x, y)), *data_sample(val),
        *data_sample(calib, options.num_samples))
    keras.utils.set_random_seed(options.seed)
    done = checkpoint.read_json("result.json")
    if done is not None:
        final = keras.models.load_model(checkpoint.file("final.keras"))
        return _result(final, done["history"], options, budget, calib, start, None)
    history = checkpoint.read_json("history.json")
    if history is not None:
        searchable = keras.models.load_model(checkpoint.file("search.keras"))
    else:
        searchable, top_bits = searchable_model(model, options, budget, calib, config)
        history = []
        if "qpl" in strategy and options.qpl_start == "sensitivity":
            history.append(sensitivity_start(
                searchable, model, calib, budget=budget, config=config,
                candidate_bits=range(2, top_bits + 1), num_samples=options.num_samples // 2))
    budget_cost, size = _budget_cost(searchable, budget)
    loop = DifferentiableSearch(searchable, (x, y), val, budget_cost=budget_cost, size=size,
                                epochs=options.epochs, batch_size=options.batch_size,
                                learning_rate=options.learning_rate,
                                precision_weight=options.precision_weight, loss=options.loss,
                                seed=options.seed, verbose=verbose,
                                scheme_scope=options.scheme_scope,
                                arch_update=options.arch_update)
    for epoch in range(len([h for h in history if h.get("step") == "search"]), options.epochs):
        history.append({"step": "search", **loop.run_epoch(epoch)})
        if checkpoint.path is not None:
            searchable.save(checkpoint.file("search.keras"))
            checkpoint.write_json("history.json", history)
    if options.scheme_scope == "model":  # already fixed when a hard epoch ran; idempotent
        unify_scheme(searchable)
    # BatchNorm stays unfolded for the fine-tune (export folds it, as it does after QAT).
    final = finalize(searchable, fold_batchnorm=False)
    history.append({"step": "derive", "val_accuracy": top1_accuracy(final, val)})
    record, table = _repair(final, model, calib, budget, lowest, val)
    if record is not None:
        history.append(record)
    if options.finetune_epochs:
        history += finetune_stage(final, (x, y), val, model, epochs=options.finetune_epochs,
                                  learning_rate=options.learning_rate,
                                  batch_size=options.batch_size, loss=options.loss,
                                  verbose=verbose)
    history.append({"step": "done"})
    if checkpoint.path is not None:
        final.save(checkpoint.file("final.keras"))
        checkpoint.write_json("result.json", {"history": history})
    return _result(final, history, options, budget, calib, start, table)


def _result(final, history, options, budget, calib, start, table):
    memory = fit_memory(final, budget.memory_bytes, options.candidate_activation_bits, calib,
                        "max", options.num_samples, history)
    final.autoqnn_report = quantization_report(final)  # a checkpointed model has none
    return search_result(final, history, options.strategy, start, memory, budget, table,
                         options.activation_bits)
