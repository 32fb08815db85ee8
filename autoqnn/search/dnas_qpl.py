"""The "dnas", "qpl" and "dnas+qpl" strategies of `autoqnn.search`: build the searchable
model, run the alternating search (`autoqnn.search.differentiable`), derive, repair, fine-tune.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import keras
import numpy as np

from autoqnn.search.differentiable import (
    DEFAULT_CANDIDATES,
    DifferentiableSearch,
    _accuracy,
    _layers,
    _loss_fn,
    load_checkpoint,
    save_checkpoint,
    unify_scheme,
)


def _arrays(data, argument):
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"{argument} must be an (x, y) pair of arrays for the differentiable "
                         f"strategies, got {type(data).__name__}")
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"{argument} must hold the same positive number of inputs and labels, "
                         f"got {len(x)} and {len(y)}")
    return x, y


def _pin(config):
    """User overrides pin their layers: no mixture, no trainable bits there."""
    pinned = {}
    for selector, value in (config or {}).items():
        if isinstance(value, dict):
            value = {"weight_quantizer": {}, "activation_quantizer": {}, **value}
        pinned[selector] = value
    return pinned


def _candidates_at(candidates, bits):
    from autoqnn.schemes import get_scheme

    out = []
    for spec in candidates:
        scheme = get_scheme(spec)
        out.append({**spec, "bits": int(np.clip(bits, scheme.min_bits, scheme.max_bits))})
    return out


def sensitivity_start(searchable, model, calibration, *, weight_bits_budget, size_budget_bytes,
                      candidate_bits, config) -> dict:
    """Starts the trainable weight bits at the retrain-free policy of the "sensitivity"
    strategy (each layer's KL sensitivity to each of `candidate_bits`, with 8-bit
    activations so that only the weights are judged, and the exact budget solver), so QPL
    refines a good mixed-precision policy instead of discovering one from uniform bits
    within a few epochs. Returns the history record."""
    from autoqnn.finalize import set_bits
    from autoqnn.search.search import search

    start = time.perf_counter()
    result = search(model, calibration_data=calibration, strategy="sensitivity",
                    weight_bits_budget=weight_bits_budget, size_budget_bytes=size_budget_bytes,
                    candidate_bits=tuple(candidate_bits), activation_bits=8, config=config,
                    num_samples=256, verbose=0)
    trainable = {path for path, layer in _layers(searchable)
                 if any(q.bits_variable is not None for q in layer.weight_quantizers.values())}
    policy = {p: int(b) for p, b in result.bits().items() if p in trainable}
    set_bits(searchable, {p: float(b) for p, b in policy.items()})
    return {"step": "start", "policy": policy,
            "seconds": round(time.perf_counter() - start, 2)}


def finetune_stage(final, train, val, model, *, epochs, learning_rate, batch_size, loss,
                   verbose) -> list[dict]:
    """The search strategies' last stage: `autoqnn.finetune` of the derived model at a tenth
    of the search learning rate, distilled from the float `model`, best validation epoch
    kept. Returns one history record per epoch."""
    from autoqnn.finetune import finetune

    start = time.perf_counter()
    tuned = finetune(final, train, epochs=epochs, val_data=val, teacher=model,
                     learning_rate=learning_rate * 0.1, batch_size=batch_size,
                     loss=_loss_fn(model, loss), verbose=verbose)
    seconds = round((time.perf_counter() - start) / epochs, 2)
    return [{"step": "finetune", "epoch": epoch + 1, "loss": tuned["loss"][epoch],
             "seconds": seconds, "val_accuracy": tuned["val_accuracy"][epoch]}
            for epoch in range(epochs)]


def run(model, train_data, val_data, *, strategy, candidates, weight_bits_budget,
        size_budget_bytes, calibration_data, activation_bits, epochs, finetune_epochs,
        checkpoint_dir, seed, verbose, config, loss, batch_size, learning_rate,
        precision_weight, scheme_scope="layer", qpl_start="sensitivity", arch_update=None):
    """Returns `(final model, history, sensitivity table or None)`; see the module doc."""
    from autoqnn.api import quantize
    from autoqnn.finalize import finalize, set_bits
    from autoqnn.search.budget import fixed_bytes, solve_policy
    from autoqnn.search.sensitivity import measure_sensitivity

    x, y = _arrays(train_data, "train_data")
    if val_data is None:  # carve the last 10 % of the training data
        cut = max(1, len(x) // 10)
        x, y, val = x[:-cut], y[:-cut], (x[-cut:], y[-cut:])
    else:
        val = _arrays(val_data, "val_data")
    calib = calibration_data if calibration_data is not None else x[:512]
    candidates = list(DEFAULT_CANDIDATES if candidates is None else candidates)
    from autoqnn.schemes import get_scheme

    lowest = min(get_scheme(c).min_bits for c in candidates) if "dnas" in strategy else 2
    lowest = max(lowest, 2) if "qpl" in strategy else lowest
    if weight_bits_budget is not None and weight_bits_budget < lowest:
        raise ValueError(f"weight_bits_budget={weight_bits_budget!r} is below the smallest "
                         f"achievable average of {lowest} bits for strategy {strategy!r}")
    if weight_bits_budget is not None:
        start_bits = int(np.clip(math.floor(weight_bits_budget) + 1, 2, 8))
    else:
        start_bits = 4
    # Trainable bits in [2, start + 2]: each integer in the range is one branch of the
    # interpolation's switch that tf.function traces for every layer and candidate, so
    # the window (not 2..8) halves the searchable graph's trace time.
    top_bits = min(8, start_bits + 2)
    spec = {}
    if "dnas" in strategy:
        # Fixed bits (dnas): the budget's floor. With trainable bits the candidates'
        # data-dependent state (e.g. ACD's SAWB clips) starts at the budget's nearest
        # integer, where the projection puts the bits.
        budget = 4 if weight_bits_budget is None else weight_bits_budget
        bits = max(2, math.floor(budget + 0.5) if "qpl" in strategy else math.floor(budget))
        spec["candidates"] = _candidates_at(candidates, bits)
    if "qpl" in strategy:
        spec.update(trainable_bits=True, bits_range=(2, top_bits),
                    initial_bits=float(start_bits))
    overrides = {".*": {"weight_quantizer": spec}}
    act_bits = activation_bits
    if activation_bits is None and "qpl" in strategy:  # QPL learns the activation bits too
        overrides[".*"]["activation_quantizer"] = {"trainable_bits": True, "bits_range": (2, 8)}
        act_bits = 8
    keras.utils.set_random_seed(seed)
    searchable, history = (None, [])
    if checkpoint_dir is not None:
        searchable, history = load_checkpoint(checkpoint_dir)
        done = Path(checkpoint_dir) / "final.keras"
        if done.is_file() and history and history[-1].get("step") == "done":
            return keras.models.load_model(done), history, None
    if searchable is None:
        # At <= 4 activation bits (or learned ones) a min/max range wastes the few levels:
        # activation ranges are learned (LSQ+ gradients) from an MSE calibration, which
        # took W2A2 QAT from 40 % to 65 % on the reference mobilenet (tools/bench_lowbit.py).
        low_bits = activation_bits is None or activation_bits <= 4
        searchable = quantize(model, scheme="uniform", weight_bits=start_bits,
                              activation_bits=act_bits, input_bits=8, calibration_data=calib,
                              fold_batchnorm=False, config={**overrides, **_pin(config)},
                              activation_options={"learn_range": True} if low_bits else None,
                              calibration_method="mse" if low_bits else "max")
        history = []
        if "qpl" in strategy and qpl_start == "sensitivity":
            history.append(sensitivity_start(
                searchable, model, calib, weight_bits_budget=weight_bits_budget,
                size_budget_bytes=size_budget_bytes, config=config,
                candidate_bits=range(2, top_bits + 1)))
    # The part of the size no bitwidth changes, counted on the derived model: the searchable
    # one also holds every candidate's state (scales, clips), which `finalize` drops.
    unsearched = fixed_bytes(finalize(searchable, fold_batchnorm=False).autoqnn_report)
    if size_budget_bytes is not None:
        budget_cost, size = (size_budget_bytes - unsearched) * 8, True
        if budget_cost <= 0:
            raise ValueError(f"size_budget_bytes={size_budget_bytes!r} is below the "
                             f"{unsearched:.0f} bytes of the model's unsearched part")
    else:
        budget_cost, size = weight_bits_budget, False
    loop = DifferentiableSearch(searchable, (x, y), val, budget_cost=budget_cost, size=size,
                                epochs=epochs, batch_size=batch_size,
                                learning_rate=learning_rate, precision_weight=precision_weight,
                                loss=loss, seed=seed, verbose=verbose,
                                scheme_scope=scheme_scope, arch_update=arch_update or "bilevel")
    for epoch in range(len([h for h in history if h.get("step") == "search"]), epochs):
        record = {"step": "search", **loop.run_epoch(epoch)}
        history.append(record)
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir, searchable, history)
    if scheme_scope == "model":  # already fixed when a hard epoch ran; idempotent
        unify_scheme(searchable)
    # BatchNorm stays unfolded for the fine-tune (export folds it, as it does after QAT).
    final = finalize(searchable, fold_batchnorm=False)
    history.append({"step": "derive", "val_accuracy": _accuracy(final, val)})
    table = None
    caps = {r.name: r.weight_bits for r in final.autoqnn_report if r.status == "quantized"}
    average = final.autoqnn_report.weight_bits_avg
    over_bits = weight_bits_budget is not None and average > weight_bits_budget + 1e-9
    over_size = size_budget_bytes is not None and \
        final.autoqnn_report.size_bytes > size_budget_bytes + 1e-6
    if over_bits or over_size:
        table = measure_sensitivity(final, model, calib, candidate_bits=range(lowest, 9),
                                    caps=caps, verbose=0)
        policy = solve_policy(table.values, table.params, weight_bits_budget=weight_bits_budget,
                              size_budget_bytes=size_budget_bytes,
                              fixed_bytes=fixed_bytes(final.autoqnn_report, table.values))
        set_bits(final, policy)
        history.append({"step": "repair", "from_average_bits": average,
                        "changed": {p: [caps[p], b] for p, b in policy.items() if b != caps[p]},
                        "val_accuracy": _accuracy(final, val)})
    if finetune_epochs:
        history += finetune_stage(final, (x, y), val, model, epochs=finetune_epochs,
                                  learning_rate=learning_rate, batch_size=batch_size,
                                  loss=loss, verbose=verbose)
    history.append({"step": "done"})
    if checkpoint_dir is not None:
        final.save(Path(checkpoint_dir) / "final.keras")
        (Path(checkpoint_dir) / "history.json").write_text(json.dumps(history, indent=1))
    return final, history, table


def search_differentiable(model, train_data, val_data, args):
    """`autoqnn.search` for the differentiable strategies: checks the arguments that only
    they use, `run`s, fits a memory budget and returns the `SearchResult`; `args` holds
    `search`'s arguments (and its start time, "start")."""
    from autoqnn.report import quantization_report
    from autoqnn.search.search import _fit_memory, _result

    if train_data is None:
        raise ValueError(f"strategy={args['strategy']!r} trains: give train_data=(x, y)")
    if args["memory_budget_bytes"] is not None and args["weight_bits_budget"] is None and \
            args["size_budget_bytes"] is None:
        raise ValueError(f"strategy={args['strategy']!r} searches weights: give "
                         "weight_bits_budget= or size_budget_bytes= (memory_budget_bytes= "
                         "alone is the activation side: strategy='sensitivity')")
    for name in ("epochs", "finetune_epochs", "batch_size"):
        value = args[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < (
                1 if name != "finetune_epochs" else 0):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    names = ("strategy", "candidates", "weight_bits_budget", "size_budget_bytes",
             "calibration_data", "activation_bits", "epochs", "finetune_epochs",
             "checkpoint_dir", "seed", "verbose", "config", "loss", "batch_size",
             "learning_rate", "precision_weight", "scheme_scope", "qpl_start", "arch_update")
    final, history, table = run(model, train_data, val_data, **{k: args[k] for k in names})
    data = args["calibration_data"]
    if data is None:
        data = np.asarray(train_data[0])[:512]
    memory = _fit_memory(final, args["memory_budget_bytes"], args["candidate_activation_bits"],
                         data, None, args["num_samples"], history)
    final.autoqnn_report = quantization_report(final)  # a checkpointed model has none
    budget = {k: args[k] for k in ("weight_bits_budget", "size_budget_bytes",
                                   "memory_budget_bytes")}
    return _result(final, history, args["strategy"], args["start"], memory, budget, table,
                   args["activation_bits"])
