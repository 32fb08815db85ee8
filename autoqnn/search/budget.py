"""The exact budget solver: one candidate per layer, least total sensitivity, budget held.

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

Both may be given together (both rows hold). A budget below the smallest
policy raises a `ValueError` stating the achievable minimum.

Example:
    >>> from autoqnn.search.budget import solve_policy
    >>> values = {"a": {2: 5.0, 4: 1.0, 8: 0.0}, "b": {2: 0.1, 4: 0.05, 8: 0.0}}
    >>> params = {"a": 100, "b": 900}
    >>> solve_policy(values, params, weight_bits_budget=3.0)
    {'a': 8, 'b': 2}
"""

from __future__ import annotations

import numpy as np


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


def solve_policy(values: dict, params: dict, *, weight_bits_budget=None, size_budget_bytes=None,
                 fixed_bytes: float = 0.0, pinned_params: int = 0, pinned_bit_params: float = 0.0
                 ) -> dict:
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

    Returns:
        `{path: bits}`.

    Raises:
        ValueError: no budget, a non-positive budget, or one no policy meets.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    if weight_bits_budget is None and size_budget_bytes is None:
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
        _check_budget("weight_bits_budget", weight_bits_budget)
        if weight_bits_budget < min_bits_avg - 1e-9:
            raise ValueError(
                f"weight_bits_budget={weight_bits_budget!r} is below the smallest achievable "
                f"average of {min_bits_avg:.4f} bits (every searched layer at its smallest "
                "candidate)")
        constraints.append(LinearConstraint(
            cost_bits[None, :], -np.inf,
            weight_bits_budget * total_params - pinned_bit_params + 1e-6))
    if size_budget_bytes is not None:
        _check_budget("size_budget_bytes", size_budget_bytes)
        smallest_size = fixed_bytes + min_bytes
        if size_budget_bytes < smallest_size - 1e-6:
            raise ValueError(
                f"size_budget_bytes={size_budget_bytes!r} is below the smallest achievable size "
                f"of {smallest_size:.1f} bytes (every layer at its smallest candidate)")
        constraints.append(LinearConstraint(cost_bits[None, :] / 8.0, -np.inf,
                                            size_budget_bytes - fixed_bytes + 1e-6))
    objective = np.array([values[p][b] for _, p, b in rows], "float64")
    objective = objective + 1e-9 * np.array([b for _, _, b in rows], "float64")
    result = milp(objective, constraints=constraints, integrality=np.ones(len(rows)),
                  bounds=Bounds(0, 1))
    if not result.success:
        raise ValueError(f"no policy meets weight_bits_budget={weight_bits_budget!r} and "
                         f"size_budget_bytes={size_budget_bytes!r} together ({result.message})")
    chosen = {}
    for j, (_, path, bits) in enumerate(rows):
        if result.x[j] > 0.5:
            chosen[path] = bits
    return {p: chosen[p] for p in layers}


def _check_budget(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
