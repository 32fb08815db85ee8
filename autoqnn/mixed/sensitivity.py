"""The "sensitivity" strategy: retrain-free mixed precision, no labels needed.

Quantize the model with every searchable layer at its largest candidate bits, measure
each layer's sensitivity to each candidate on calibration images
(`autoqnn.mixed.table`, in-place bit changes), pick the policy with the least total
sensitivity that meets the budget exactly (`autoqnn.mixed.budget`, an integer program
solved by HiGHS), then quantize the model at that policy with the same quantization path
(calibration, and weight clipping and bias correction when a `ptq` recipe says so).

Layers named in `config` keep their settings (pinned, outside the search) but count in the
budget; the first and last layers are not special-cased.

`target="litert"` (`autoqnn.mixed.target`) searches the `.tflite` file LiteRT runs:
candidates LiteRT stores at their own width, `size_budget_bytes` in bytes of the file,
`latency_budget_ms` in LiteRT milliseconds on this machine, and the searched file is
exported and checked before it is returned (`autoqnn.mixed.target_search`).

Example:
    >>> import keras, numpy as np, autoqnn
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(32, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="b")(x))
    >>> data = np.random.default_rng(0).random((64, 8), dtype=np.float32)
    >>> result = autoqnn.search(model, calibration_data=data, weight_bits_budget=3.0,
    ...                         verbose=0)
    >>> result.average_weight_bits <= 3.0
    True
    >>> sorted(result.bits())
    ['a', 'b']
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np

from autoqnn.checkpoint import KeyedCheckpoint, data_sample
from autoqnn.mixed.budget import Budget, fixed_bytes, pinned_cost, solve_policy
from autoqnn.mixed.common import PTQSettings, fit_memory, inputs_of, pinned_paths
from autoqnn.mixed.result import search_result
from autoqnn.mixed.table import (
    METRICS,
    SensitivityTable,
    layer_candidates,
    measure_sensitivity,
    searchable_layers,
)
from autoqnn.mixed.target import check_target
from autoqnn.mixed.target_search import TargetCosts, solve_checked
from autoqnn.ptq.weights import search_weight_clips


@dataclasses.dataclass(frozen=True)
class SensitivityConfig(PTQSettings):
    """Settings of the "sensitivity" strategy (the quantization path's, `PTQSettings`,
    and the distortion metric).

    Attributes:
        metric: "kl" (classifier logits) or "mse" (other outputs).
        target: None (bits as the report counts them) or "litert" / a
            `LiteRTTarget`: the `.tflite` file's storage, bytes and LiteRT latency
            (`autoqnn.mixed.target`); needed by `latency_budget_ms`.
    """

    metric: str = "kl"
    target: object = None

    name = "sensitivity"

    def __post_init__(self):
        super().__post_init__()
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        object.__setattr__(self, "target", check_target(self.target))

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["target"] = None if self.target is None else self.target.to_dict()
        return out


def _check_reachable(qmodel, pinned, options, budget, report, pinned_params,
                     pinned_bit_params):
    """Before the sensitivity pass: a budget below the smallest policy raises (with the
    achievable minimum); one above the largest warns that it does not bind."""
    layers = [(p, layer) for p, layer in searchable_layers(qmodel) if p not in pinned]
    if not budget.on_weights or not layers:
        return
    bits = {p: layer_candidates(layer, options.candidate_bits) for p, layer in layers}
    params = {p: int(sum(np.prod(getattr(layer, a).shape) for a in layer.weight_quantizers))
              for p, layer in layers}
    solve_policy({p: dict.fromkeys(b or (options.candidate_bits[-1],), 0.0)
                  for p, b in bits.items()}, params,
                 weight_bits_budget=budget.weight_bits, size_budget_bytes=budget.size_bytes,
                 fixed_bytes=fixed_bytes(report, params), pinned_params=pinned_params,
                 pinned_bit_params=pinned_bit_params)
    top = {p: max(b) for p, b in bits.items() if b}
    largest_bits = (sum(params[p] * b for p, b in top.items()) + pinned_bit_params) / \
        max(sum(params.values()) + pinned_params, 1)
    largest_size = fixed_bytes(report, params) + sum(params[p] * b for p, b in top.items()) / 8
    if (budget.weight_bits is None or budget.weight_bits >= largest_bits) and \
            (budget.size_bytes is None or budget.size_bytes >= largest_size):
        warnings.warn(f"the budget {budget.to_dict()} does not bind: every searched layer "
                      f"fits at its largest candidate ({largest_bits:.2f} average bits, "
                      f"{largest_size / 1024:.1f} KiB)", stacklevel=4)


def _check_target_reachable(costs, budget, params, pinned_params, pinned_bit_params):
    """`_check_reachable` under a target: raises below the cheapest policy (file bytes,
    latency, average bits over LiteRT's candidates); warns when the start fits."""
    rows = costs.budgets(budget)
    if budget.on_weights or rows:
        solve_policy({p: dict.fromkeys(b, 0.0) for p, b in costs.allowed.items()}, params,
                     weight_bits_budget=budget.weight_bits, pinned_params=pinned_params,
                     pinned_bit_params=pinned_bit_params, layer_budgets=rows)
    top = costs.top()
    bits = (sum(params[p] * b for p, b in top.items()) + pinned_bit_params) / \
        max(sum(params.values()) + pinned_params, 1)
    if (budget.weight_bits is None or budget.weight_bits >= bits) and \
            all(row.budget >= row.cost(top) for row in rows):
        warnings.warn(f"the budget {budget.to_dict()} does not bind: the file with every "
                      f"searched layer at its largest candidate fits ({bits:.2f} average bits, "
                      f"{costs.predict(top)})", stacklevel=4)


def run(model, train_data, val_data, *, options: SensitivityConfig, budget: Budget,
        calibration_data, config, checkpoint_dir, verbose):
    """Runs the strategy (see the module doc); returns the `SearchResult`."""
    start = time.perf_counter()
    if val_data is not None:
        raise ValueError("val_data= is not used by strategy 'sensitivity' (retrain-free, no "
                         "labels); it is used by 'dnas', 'qpl', 'dnas+qpl' and 'rl'")
    data = calibration_data if calibration_data is not None else inputs_of(train_data)
    if data is None:
        raise ValueError("search needs calibration_data= (inputs, no labels) or train_data=")
    history = []
    start_model = options.build(model, data, {}, config)
    pinned = pinned_paths(model, config, options.ptq)
    report = start_model.autoqnn_report
    pinned_params, pinned_bit_params = pinned_cost(report, pinned)
    costs = None
    if options.target is not None:
        layers = [(p, layer) for p, layer in searchable_layers(start_model) if p not in pinned]
        costs = TargetCosts(options.target, start_model, model, layers, options, budget,
                            verbose)
        params = {p: int(sum(np.prod(getattr(layer, a).shape) for a in layer.weight_quantizers))
                  for p, layer in layers}
        _check_target_reachable(costs, budget, params, pinned_params, pinned_bit_params)
    else:
        if budget.latency_ms is not None:
            raise ValueError(f"latency_budget_ms={budget.latency_ms!r} needs target='litert' "
                             "(the latency of the .tflite file on LiteRT)")
        _check_reachable(start_model, pinned, options, budget, report, pinned_params,
                         pinned_bit_params)
    checkpoint = KeyedCheckpoint(checkpoint_dir, "sensitivity",
                                 {"options": options.to_dict(), "config": config,
                                  "pinned": sorted(pinned)},
                                 model.get_weights(), *data_sample(data, options.num_samples))
    stored = checkpoint.read_json("table.json")
    if stored is not None:
        table = SensitivityTable.from_dict(stored)
    else:
        refine = None
        if options.ptq is not None and options.ptq.weight_clipping == "mse":
            def refine(layer):
                search_weight_clips(start_model, layers=[layer])
        table = measure_sensitivity(start_model, model, data, options.candidate_bits,
                                    metric=options.metric, num_samples=options.num_samples,
                                    refine=refine, exclude=pinned, verbose=verbose,
                                    allowed=None if costs is None else costs.allowed)
        checkpoint.write_json("table.json", table.to_dict())
    history.append({"step": "sensitivity", "layers": len(table.layers),
                    "probes": sum(len(c) - 1 for c in table.candidates.values()),
                    "seconds": round(table.seconds, 3), "metric": options.metric})
    searched = list(table.layers)
    memory, solve_seconds = {}, [0.0]

    def solve(layer_budgets=()):
        if not budget.on_weights and not layer_budgets:
            return {p: table.candidates[p][-1] for p in searched}
        solve_start = time.perf_counter()
        try:
            return solve_policy({p: table.values[p] for p in searched},
                                {p: table.params[p] for p in searched},
                                weight_bits_budget=budget.weight_bits,
                                size_budget_bytes=None if costs is not None else
                                budget.size_bytes, fixed_bytes=fixed_bytes(report, searched),
                                pinned_params=pinned_params,
                                pinned_bit_params=pinned_bit_params,
                                layer_budgets=layer_budgets)
        finally:
            solve_seconds[0] += time.perf_counter() - solve_start

    def build(policy):
        final = options.build(model, data, {p: {"weight_bits": b} for p, b in policy.items()},
                              config)
        memory["bytes"] = fit_memory(final, budget.memory_bytes,
                                     options.candidate_activation_bits, data, options.observer,
                                     options.num_samples, history)
        return final

    def solved(policy):
        history.append({"step": "solve", "seconds": round(solve_seconds[0], 4),
                        "predicted_distortion": table.start_distortion + sum(
                            table.values[p][b] for p, b in policy.items())})

    if costs is None:
        policy = solve()
        solved(policy)
        final = build(policy)
    else:
        if costs.info:
            history.append({"step": "litert latency", **costs.info,
                            "start_latency_ms": costs.start_ms})
        policy, final, _ = solve_checked(costs, budget, solve, build, history)
        solved(policy)
    memory = memory["bytes"]
    return search_result(final, history, "sensitivity", start, memory, budget, table,
                         options.activation_bits)
