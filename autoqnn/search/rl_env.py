"""The environment of the "rl" strategy (`autoqnn.search.rl`): each layer's state
features, the action-to-bits mapping, HAQ's budget rule and the reward.

Example:
    >>> from autoqnn.search.rl_env import action_index, enforce_budget
    >>> [action_index(a, 4) for a in (0.0, 0.3, 1.0)]
    [0, 1, 3]
    >>> enforce_budget([2, 2], lambda idx: sum(idx) <= 2)
    [1, 1]
"""

from __future__ import annotations

import math

import numpy as np

STATE_FEATURES = ("index", "conv", "depthwise", "in_channels", "out_channels", "kernel",
                  "stride", "input_size", "params", "params_share", "previous_action")


def layer_features(layers) -> np.ndarray:
    """Raw `(L, 10)` state features of `[(path, layer)]` (`STATE_FEATURES` less the action)."""
    rows = []
    for index, (_, layer) in enumerate(layers):
        attr = next(iter(layer.weight_quantizers))
        shape = tuple(getattr(layer, attr).shape)
        depthwise = "Depthwise" in type(layer).__name__ or attr == "depthwise_kernel"
        c_in = shape[-2] if len(shape) >= 2 else 1
        c_out = shape[-1]
        if depthwise:
            c_out = shape[-2] * shape[-1]
            if hasattr(layer, "pointwise_kernel"):
                c_out = layer.pointwise_kernel.shape[-1]
        conv = len(shape) >= 3
        kernel = int(np.prod(shape[:-2])) if conv else 1
        stride = max(getattr(layer, "strides", (1,)) or (1,)) if conv else 1
        try:
            in_shape = tuple(layer.input.shape)
            size = int(np.prod(in_shape[1:-1])) if conv and None not in in_shape[1:-1] else 1
        except (AttributeError, ValueError):  # a layer called more than once
            size = 0
        params = sum(int(np.prod(getattr(layer, a).shape)) for a in layer.weight_quantizers)
        rows.append([index, float(conv), float(depthwise), c_in, c_out, kernel, stride, size,
                     params, 0.0])
    features = np.array(rows, "float64")
    features[:, 9] = features[:, 8] / max(features[:, 8].sum(), 1.0)
    return features


def normalise(features: np.ndarray) -> np.ndarray:
    """Min-max normalises each column over the layers (a constant column becomes 0)."""
    low, high = features.min(axis=0), features.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return ((features - low) / span).astype("float32")


def action_index(action: float, count: int) -> int:
    """The candidate index of an action in [0, 1]: `min(floor(a * K), K - 1)`."""
    return int(min(max(math.floor(float(action) * count), 0), count - 1))


def enforce_budget(indices, fits) -> list:
    """HAQ's rule: lower one candidate at a time from the last layer backwards
    (repeating the walk) until `fits(indices)`; the all-smallest policy must fit."""
    indices = list(indices)
    while not fits(indices):
        lowered = False
        for layer in reversed(range(len(indices))):
            if indices[layer] > 0:
                indices[layer] -= 1
                lowered = True
                if fits(indices):
                    return indices
        if not lowered:
            raise ValueError("no policy fits the budget")  # the caller checked this first
    return indices


def reward(accuracy, float_accuracy, policy, params, bits_range, bits_weight) -> float:
    """`0.1 * (acc - acc_float)` in percent, less `bits_weight` times the parameter-weighted
    average bits of `policy` scaled to [0, 1] over `bits_range` (the module docstring)."""
    average = sum(params[p] * b for p, b in policy.items()) / sum(params[p] for p in policy)
    low, high = bits_range
    term = (average - low) / (high - low) if high > low else 0.0
    return 0.1 * 100.0 * (accuracy - float_accuracy) - bits_weight * term
