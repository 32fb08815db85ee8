"""The budget side of the differentiable search: the differentiable cost of a searchable
model (`expected_cost`) and the projection of its trainable bitwidths onto a budget
(`bit_plan`, `project_bits`); `autoqnn.search.differentiable` runs them."""

from __future__ import annotations

import numpy as np

from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.walk import iter_layers


def _layers(model):
    return [(path, layer) for path, layer in iter_layers(model)
            if isinstance(layer, QuantizedWeightsMixin) and layer.weight_quantizers]


def expected_cost(model, size: bool):
    """Differentiable `sum params * bits` (bits) or its average (size False)."""
    total, params = 0.0, 0
    for _, layer in _layers(model):
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
    for _, layer in _layers(model):
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
