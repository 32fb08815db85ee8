"""Budget maths, all in one place: the `Budget` a search is given, what a policy costs,
the exact solver (one candidate per layer, least total sensitivity, budget held) and the
differentiable side (`expected_cost`, `project_bits`) the trained strategies use.

Choosing bits `b_l` per layer to minimise `sum_l s(l, b_l)` under
`sum_l params_l * b_l <= B` is a multiple-choice knapsack. It is solved exactly
as a 0/1 integer program with HiGHS (`scipy.optimize.milp`): variables
`x[l, c]` in {0, 1}, `sum_c x[l, c] = 1` for every layer, one `<=` row per
budget, objective `sum s(l, c) x[l, c]` (plus `1e-9 * bits`, so among equally
sensitive policies the smaller one wins). Budgets:

* `weight_bits_budget`: parameter-weighted average weight bits,
  `sum params_l b_l <= budget * sum params_l`;
* `size_budget_bytes`: the model's size as the report counts it,
  `fixed_bytes + sum params_l b_l / 8 <= budget`, `fixed_bytes` being
  everything that is not a searched weight (biases, scales, float layers).

Both may be given together (both rows hold). A target (`autoqnn.mixed.target`) adds
rows of its own per-layer costs (`LayerBudget`: the bytes of the exported file, the
LiteRT latency measured on this machine), each `fixed + sum_l cost(l, b_l) <= budget`.
A budget below the smallest policy raises a `ValueError` stating the achievable minimum.

Example:
    >>> from autoqnn.mixed.budget import solve_policy
    >>> values = {"a": {2: 5.0, 4: 1.0, 8: 0.0}, "b": {2: 0.1, 4: 0.05, 8: 0.0}}
    >>> params = {"a": 100, "b": 900}
    >>> solve_policy(values, params, weight_bits_budget=3.0)
    {'a': 8, 'b': 2}
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.walk import iter_layers


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a search must stay under; at least one is given, each a positive number.

    Attributes:
        weight_bits: parameter-weighted average weight bits (`weight_bits_budget`).
        size_bytes: the model's size as the report counts it (`size_budget_bytes`).
        memory_bytes: the largest quantized activation tensor at batch 1
            (`memory_budget_bytes`).
        latency_ms: LiteRT latency of the exported file on this machine
            (`latency_budget_ms`; only with a target, `autoqnn.mixed.target`).
    """

    weight_bits: float | None = None
    size_bytes: float | None = None
    memory_bytes: float | None = None
    latency_ms: float | None = None

    def __post_init__(self):
        if all(v is None for v in (self.weight_bits, self.size_bytes, self.memory_bytes,
                                   self.latency_ms)):
            raise ValueError("give a budget: weight_bits_budget=, size_budget_bytes=, "
                             "memory_budget_bytes= or latency_budget_ms=")
        for name, value in self.to_dict().items():
            check_budget(name, value)

    @property
    def on_weights(self) -> bool:
        """Whether a weight-side budget (average bits or size) is given."""
        return self.weight_bits is not None or self.size_bytes is not None

    def to_dict(self) -> dict:
        """`{"weight_bits_budget": ..., ...}`, the budgets given (the keyword names)."""
        named = {"weight_bits_budget": self.weight_bits, "size_budget_bytes": self.size_bytes,
                 "memory_budget_bytes": self.memory_bytes, "latency_budget_ms": self.latency_ms}
        return {k: v for k, v in named.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class LayerBudget:
    """A budget on a per-layer cost: `fixed + sum_l costs[l][b_l] <= budget`.

    Attributes:
        name: the keyword the user gave it as ("size_budget_bytes", ...).
        costs: `{path: {bits: cost}}` of every searched layer and candidate.
        budget: the user's number.
        fixed: the part of the cost no choice changes.
        unit: for messages ("bytes", "ms").
        what: what is counted, for messages ("the .tflite file", ...).
    """

    name: str
    costs: dict
    budget: float
    fixed: float = 0.0
    unit: str = ""
    what: str = ""

    def cost(self, policy: dict) -> float:
        """`fixed + sum_l costs[l][policy[l]]`."""
        return self.fixed + float(sum(self.costs[p][b] for p, b in policy.items()))

    def smallest(self) -> float:
        """The least cost any policy has."""
        return self.fixed + float(sum(min(c.values()) for c in self.costs.values()))


def _bits_rows(values, layers):
    rows = []
    for i, path in enumerate(layers):
        for bits in sorted(values[path]):
            rows.append((i, path, int(bits)))
    return rows


def policy_cost(policy: dict, params: dict) -> tuple[float, float]:
    """`(average weight bits, searched weight bytes)` of a policy."""
    total = sum(params.values())
    bits = sum(params[p] * b for p, b in policy.items())
    return (bits / total if total else 0.0), bits / 8.0


def fixed_bytes(report, paths=None) -> float:
    """The report's size less the weight bytes of the quantized layers in `paths` (None:
    every quantized layer): the part of the size a policy over those layers cannot change."""
    return report.size_bytes - sum(r.quantized_params * r.weight_bits / 8 for r in report
                                   if r.status == "quantized" and (paths is None or
                                                                   r.name in paths))


def pinned_cost(report, pinned) -> tuple[int, float]:
    """`(params, sum params * bits)` of the quantized layers in `pinned` (kept out of the
    search by the user; they count in the average)."""
    rows = [r for r in report if r.name in pinned and r.status == "quantized"]
    return (sum(r.quantized_params for r in rows),
            sum(r.quantized_params * r.weight_bits for r in rows))


def solve_policy(values: dict, params: dict, *, weight_bits_budget=None, size_budget_bytes=None,
                 fixed_bytes: float = 0.0, pinned_params: int = 0, pinned_bit_params: float = 0.0,
                 layer_budgets: tuple = ()) -> dict:
    """The least-sensitive policy `{path: bits}` within the budget(s).

    Args:
        values: `{path: {bits: sensitivity}}` (`SensitivityTable.values`).
        params: `{path: quantized parameters}`.
        weight_bits_budget: maximum parameter-weighted average bits.
        size_budget_bytes: maximum total bytes (with `fixed_bytes`).
        fixed_bytes: bytes that no choice changes (for the size budget).
        pinned_params, pinned_bit_params: quantized parameters of layers the
            search does not choose (pinned by the user), and their
            `sum params * bits`: they count in the average.
        layer_budgets: `LayerBudget`s, one row each (a target's file bytes, latency).

    Returns:
        `{path: bits}`.

    Raises:
        ValueError: no budget, a non-positive budget, or one no policy meets.
    """
    if weight_bits_budget is None and size_budget_bytes is None and not layer_budgets:
        raise ValueError("give weight_bits_budget or size_budget_bytes, got neither")
    layers = list(values)
    rows = _bits_rows(values, layers)
    total_params = sum(params[p] for p in layers) + pinned_params
    smallest = {p: min(values[p]) for p in layers}
    _, min_bytes = policy_cost(smallest, params)
    min_bits_avg = (8 * min_bytes + pinned_bit_params) / total_params if total_params else 0.0
    constraints = []
    choose = np.zeros((len(layers), len(rows)))
    for j, (i, _, _) in enumerate(rows):
        choose[i, j] = 1.0
    constraints.append(LinearConstraint(choose, 1.0, 1.0))
    cost_bits = np.array([params[p] * b for _, p, b in rows], "float64")
    if weight_bits_budget is not None:
        check_budget("weight_bits_budget", weight_bits_budget)
        if weight_bits_budget < min_bits_avg - 1e-9:
            raise ValueError(
                f"weight_bits_budget={weight_bits_budget!r} is below the smallest achievable "
                f"average of {min_bits_avg:.4f} bits (every searched layer at its smallest "
                "candidate)")
        constraints.append(LinearConstraint(
            cost_bits[None, :], -np.inf,
            weight_bits_budget * total_params - pinned_bit_params + 1e-6))
    if size_budget_bytes is not None:
        check_budget("size_budget_bytes", size_budget_bytes)
        smallest_size = fixed_bytes + min_bytes
        if size_budget_bytes < smallest_size - 1e-6:
            raise ValueError(
                f"size_budget_bytes={size_budget_bytes!r} is below the smallest achievable size "
                f"of {smallest_size:.1f} bytes (every layer at its smallest candidate)")
        constraints.append(LinearConstraint(cost_bits[None, :] / 8.0, -np.inf,
                                            size_budget_bytes - fixed_bytes + 1e-6))
    for extra in layer_budgets:
        check_budget(extra.name, extra.budget)
        smallest_cost = extra.smallest()
        if extra.budget < smallest_cost - 1e-9 * max(1.0, abs(smallest_cost)):
            raise ValueError(
                f"{extra.name}={extra.budget!r} is below the smallest achievable "
                f"{smallest_cost:.6g} {extra.unit} of {extra.what or 'any policy'} (every "
                "searched layer at its cheapest candidate)")
        constraints.append(LinearConstraint(
            np.array([extra.costs[p][b] for _, p, b in rows], "float64")[None, :], -np.inf,
            extra.budget - extra.fixed + 1e-9 * max(1.0, abs(extra.budget))))
    objective = np.array([values[p][b] for _, p, b in rows], "float64")
    objective = objective + 1e-9 * np.array([b for _, _, b in rows], "float64")
    result = milp(objective, constraints=constraints, integrality=np.ones(len(rows)),
                  bounds=Bounds(0, 1))
    if not result.success:
        given = {"weight_bits_budget": weight_bits_budget, "size_budget_bytes": size_budget_bytes,
                 **{b.name: b.budget for b in layer_budgets}}
        given = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)
        raise ValueError(f"no policy meets {given} together ({result.message})")
    chosen = {}
    for j, (_, path, bits) in enumerate(rows):
        if result.x[j] > 0.5:
            chosen[path] = bits
    return {p: chosen[p] for p in layers}


def check_budget(name, value):
    """Raises unless `value` is a positive finite number (`name` in the message)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def weighted_layers(model):
    """`(path, layer)` of the quantized weighted layers that have weight quantizers."""
    return [(path, layer) for path, layer in iter_layers(model)
            if isinstance(layer, QuantizedWeightsMixin) and layer.weight_quantizers]


def expected_cost(model, size: bool):
    """Differentiable `sum params * bits` (bits) or its average (size False)."""
    total, params = 0.0, 0
    for _, layer in weighted_layers(model):
        for attr, q in layer.weight_quantizers.items():
            n = int(np.prod(getattr(layer, attr).shape))
            total = total + n * q.expected_bits()
            params += n
    return total if size else total / max(params, 1)


def bit_plan(model):
    """What `project_bits` needs, gathered once: `(variables, fixed, total_params)` with
    `variables` the `(bits variable, params, low, high)` of the weight quantizers with
    trainable bits, `fixed` the constant cost of the others (sum of params * expected
    bits) and `total_params` all quantized weight parameters."""
    out, fixed, total = [], 0.0, 0
    for _, layer in weighted_layers(model):
        for attr, q in layer.weight_quantizers.items():
            n = int(np.prod(getattr(layer, attr).shape))
            total += n
            if q.bits_variable is not None:
                out.append((q.bits_variable, n, *q.bits_range))
            else:
                fixed += n * float(q.expected_bits())
    return out, fixed, total


def project_bits(model, budget_cost, size=False, plan=None) -> float:
    """Projects the trainable weight bitwidths onto the budget: when the expected cost is
    over it, every bitwidth moves down by one common shift (each clipped to its range),
    found by bisection, so that the cost meets the budget exactly (or every bitwidth sits at
    its minimum). Returns the shift (0.0 when the cost was already within the budget).

    The search applies it after every architecture step (with its `bit_plan`, gathered
    once), so the network trains at bits that fit the budget and the rounded policy needs
    at most a small repair.
    """
    variables, fixed, total_params = bit_plan(model) if plan is None else plan
    if not variables:
        return 0.0
    bits = np.array([float(v.numpy()) for v, *_ in variables])
    params = np.array([n for _, n, _, _ in variables], dtype=float)
    low = np.array([lo for *_, lo, _ in variables], dtype=float)
    high = np.array([hi for *_, hi in variables], dtype=float)
    target = budget_cost if size else budget_cost * total_params

    def cost(shift):
        return fixed + float(np.sum(params * np.clip(bits - shift, low, high)))

    if cost(0.0) <= target * (1 + 1e-6):  # float32 bits: within rounding
        return 0.0
    lo_shift, hi_shift = 0.0, float(np.max(bits - low))
    for _ in range(40):
        mid = 0.5 * (lo_shift + hi_shift)
        lo_shift, hi_shift = (mid, hi_shift) if cost(mid) > target else (lo_shift, mid)
    for (variable, *_), value in zip(variables, np.clip(bits - hi_shift, low, high)):
        variable.assign(float(value))
    return hi_shift
