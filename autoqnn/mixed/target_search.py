"""The sensitivity search under `target="litert"`: the costs of a policy in the file LiteRT
runs, and the check of the searched file before it is returned.

`TargetCosts` holds, for a start model (every searched layer at its largest candidate):
the candidates LiteRT stores at their own width, the start file's bytes and, with a
latency budget, its LiteRT latency and each layer's latency per candidate. A policy's
predicted cost is the start file's less, per layer, what its candidate saves:

    bytes(policy) = bytes(start file) - sum_l [bytes_l(top) - bytes_l(b_l)]
    ms(policy)    = ms(start file)    - sum_l [ms_l(top)    - ms_l(b_l)]

`solve_checked` solves, builds the model, exports it and measures the file (its bytes;
its latency when budgeted). A file over a budget tightens that budget by the
prediction's error and solves again, up to `LiteRTTarget.checks` times; a file still
over warns with the numbers. Every check is in the search's history.
"""

from __future__ import annotations

import warnings

from autoqnn.export.latency import time_files
from autoqnn.mixed.budget import LayerBudget
from autoqnn.mixed.latency_table import layer_latencies
from autoqnn.mixed.target import stored_candidates, tflite_file


class TargetCosts:
    """What a policy costs in the `.tflite` file (see the module docstring).

    Attributes:
        target: the `LiteRTTarget`.
        stored: `{path: {bits: StoredCandidate}}`.
        start_file: the start model's `.tflite` bytes.
        latency: `{path: {bits: ms}}` (empty without a latency budget).
        start_ms: the start file's LiteRT latency (None without a latency budget).
        info: how the latencies were obtained (machine key, files timed, cached).
    """

    def __init__(self, target, start_model, float_model, layers, options, budget,
                 verbose=0):
        if options.activation_bits is None:
            raise ValueError("target='litert' searches full-integer files: activation_bits "
                             "must be set (8), got None")
        self.target = target
        self.stored = stored_candidates(start_model, layers, options.candidate_bits)
        self.start_file = tflite_file(start_model)
        self.latency, self.start_ms, self.info = {}, None, {}
        if budget.latency_ms is not None:
            granularity = options.ptq.granularity if options.ptq is not None else \
                options.granularity
            self.latency, self.info = layer_latencies(float_model, self.stored, target,
                                                      granularity, verbose)
            self.start_ms = self.time({"start": self.start_file})["start"]

    @property
    def allowed(self) -> dict:
        """`{path: candidate bits}` LiteRT stores at their own width."""
        return {p: tuple(sorted(c)) for p, c in self.stored.items()}

    def top(self) -> dict:
        """The start policy: every layer at its largest candidate."""
        return {p: max(c) for p, c in self.stored.items()}

    def time(self, files: dict) -> dict:
        """LiteRT latency (ms) of `{name: bytes}` at the target's threads and timing."""
        return time_files(files, num_threads=self.target.num_threads,
                          rounds=self.target.rounds, invokes=self.target.invokes)

    def budgets(self, budget, size_slack=0.0, latency_slack=0.0) -> list:
        """The `LayerBudget` rows of `budget`'s size (file bytes) and latency, each
        tightened by its slack (a previous check's prediction error)."""
        top = self.top()
        rows = []
        if budget.size_bytes is not None:
            costs = {p: {b: float(c.bytes) for b, c in cands.items()}
                     for p, cands in self.stored.items()}
            fixed = len(self.start_file) - sum(costs[p][b] for p, b in top.items())
            rows.append(LayerBudget("size_budget_bytes", costs, budget.size_bytes,
                                    fixed + size_slack, "bytes", "the .tflite file"))
        if budget.latency_ms is not None:
            fixed = self.start_ms - sum(self.latency[p][b] for p, b in top.items())
            rows.append(LayerBudget(
                "latency_budget_ms", self.latency, budget.latency_ms, fixed + latency_slack,
                "ms", f"the .tflite file on LiteRT ({self.info['machine']}; measured "
                f"now, varies with the machine's load)"))
        return rows

    def predict(self, policy: dict) -> dict:
        """`{"file_bytes": ..., "latency_ms": ...}` predicted for `policy` (latency only
        when timed)."""
        top = self.top()
        out = {"file_bytes": len(self.start_file) - sum(
            self.stored[p][top[p]].bytes - self.stored[p][b].bytes for p, b in policy.items())}
        if self.start_ms is not None:
            out["latency_ms"] = self.start_ms - sum(
                self.latency[p][top[p]] - self.latency[p][b] for p, b in policy.items())
        return out


def solve_checked(costs: TargetCosts, budget, solve, build, history):
    """Solves, builds, exports and measures until the file meets the budget.

    Args:
        costs: the `TargetCosts` of the start model.
        budget: the search's `Budget`.
        solve: `solve(layer_budgets) -> policy` (the search's solver).
        build: `build(policy) -> model` (quantized, calibrated, memory-fitted).
        history: the search's history; one "litert check" record per check.

    Returns:
        `(policy, model, check)`: the last check's record (file bytes and latency,
        predicted and measured).
    """
    size_slack = latency_slack = 0.0
    policy, model, check, over = None, None, {}, []
    for attempt in range(costs.target.checks):
        try:
            policy = solve(costs.budgets(budget, size_slack, latency_slack))
        except ValueError as err:
            if attempt == 0:
                raise
            warnings.warn(f"target='litert': the searched file misses its budget "
                          f"({'; '.join(over)}) and no policy is left once the budget is "
                          f"tightened by the measured error ({err}); the last policy is "
                          "returned (the latency varies with the machine's load: measure "
                          "again, or give a larger budget)", stacklevel=4)
            return policy, model, check
        model = build(policy)
        file = tflite_file(model)
        predicted = costs.predict(policy)
        check = {"step": "litert check", "attempt": attempt + 1, "policy": dict(policy),
                 "file_bytes": len(file), "predicted_file_bytes": predicted["file_bytes"],
                 "start_file_bytes": len(costs.start_file)}
        over = []
        if budget.size_bytes is not None and len(file) > budget.size_bytes:
            over.append(f"{len(file)} bytes > size_budget_bytes={budget.size_bytes!r}")
            size_slack += len(file) - predicted["file_bytes"] + 1
        if budget.latency_ms is not None:
            ms = costs.time({"start": costs.start_file, "searched": file})
            check.update(latency_ms=ms["searched"], predicted_latency_ms=predicted["latency_ms"],
                         start_latency_ms=ms["start"], machine=costs.info["machine"])
            if ms["searched"] > budget.latency_ms:
                over.append(f"{ms['searched']:.4f} ms > latency_budget_ms={budget.latency_ms!r}")
                latency_slack += max(ms["searched"] - predicted["latency_ms"],
                                     0.05 * budget.latency_ms)
        check["meets_budget"] = not over
        history.append(check)
        if not over:
            return policy, model, check
    warnings.warn(f"target='litert': after {costs.target.checks} checks the searched file "
                  f"still misses its budget ({'; '.join(over)}); the last policy is returned "
                  "(the latency varies with the machine's load: measure again, or give a "
                  "larger budget)", stacklevel=4)
    return policy, model, check

