"""Integer grids of quantized weights: which int grid a tensor's levels embed in.

Every exporter starts from the values a quantized layer actually uses (its
fake-quantized weights) and asks: is there a scale `s` per channel (or per
tensor) such that each value is `k * s` with a small integer `k`? For a b-bit
uniform scheme the answer is its own step; for power-of-two, ternary and
binary levels it is the smallest level (or a fraction of it). The search is
scheme-agnostic, so new schemes export without code here.

Example:
    >>> import numpy as np
    >>> from autoqnn.export.grid import embed_in_int_grid
    >>> w = np.array([[0.5, -0.25], [0.125, 0.0]], "float32")   # power-of-two levels
    >>> grid = embed_in_int_grid(w, channel_axis=None, max_int=127)
    >>> grid.scale.tolist(), grid.ints.tolist()
    ([0.125], [[4, -2], [1, 0]])
"""

from __future__ import annotations

import dataclasses

import numpy as np

INT8_MAX = 127  # narrow-range symmetric int8 (TFLite weights)
INT4_MAX = 7  # narrow-range symmetric int4
_TOL = 1e-3  # |v/s - round(v/s)| allowed: float32 noise, far below half a step


@dataclasses.dataclass
class IntGrid:
    """`values == ints * scale` (scale broadcast along `channel_axis`).

    Attributes:
        ints: int32 array shaped like the weight.
        scale: float32 scales, one per channel (shape `(channels,)`) or `(1,)`.
        channel_axis: the channel axis of `ints` (after moving channels last
            for multi-axis channels, see `channels_last`), or None.
        max_abs: largest |int| used.
    """

    ints: np.ndarray
    scale: np.ndarray
    channel_axis: int | None
    max_abs: int


def channels_last(value: np.ndarray, channel_axis) -> tuple[np.ndarray, int | None]:
    """Moves the channel axis (or axes, flattened) of `value` last.

    Args:
        value: the array.
        channel_axis: int, tuple of ints (e.g. `(2, 3)` for depthwise
            kernels: input channel x multiplier) or None.

    Returns:
        `(array, channel_axis)` with the channels on the last axis
        (`channel_axis` is then -1), or the array unchanged and None.
    """
    if channel_axis is None:
        return value, None
    axes = [a % value.ndim for a in np.atleast_1d(channel_axis).tolist()]
    rest = [a for a in range(value.ndim) if a not in axes]
    moved = np.transpose(value, rest + axes)
    return moved.reshape(moved.shape[: len(rest)] + (-1,)), -1


def _group_scale(values: np.ndarray, max_int: int) -> float | None:
    """The largest `s` with `values / s` integers in `[-max_int, max_int]`, or None.

    Candidates are the smallest magnitude divided by 1, 2, ...; a candidate
    that rounds every value to a near-integer is refined by least squares
    (the levels carry float32 noise of the fake-quant arithmetic, largest
    relative to the smallest level) and accepted when every value is within
    `_TOL` of a step from its integer.
    """
    mags = np.unique(np.abs(values[values != 0]).astype(np.float64))
    if mags.size == 0:
        return 1.0
    smallest = mags[0]
    for divisor in range(1, max_int + 1):
        ratios = mags / (smallest / divisor)
        if ratios[-1] > max_int + 0.5:
            return None
        ints = np.round(ratios)
        if np.abs(ratios - ints).max() > 0.1:
            continue
        scale = float(np.dot(ints, mags) / np.dot(ints, ints))
        if np.abs(mags / scale - ints).max() <= _TOL and ints[-1] <= max_int:
            return scale
    return None


def embed_in_int_grid(values, channel_axis=None, max_int: int = INT8_MAX) -> IntGrid | None:
    """Finds per-channel (or per-tensor) scales putting `values` on `[-max_int, max_int]`.

    Args:
        values: the quantized (fake-quant) weight values.
        channel_axis: channel axis (or axes) for per-channel scales; None for
            one scale for the whole tensor.
        max_int: the largest integer allowed (127 for int8, 7 for int4).

    Returns:
        An `IntGrid` (with channels moved last when `channel_axis` is a
        tuple), or None when the levels do not embed exactly.
    """
    values = np.asarray(values, dtype=np.float32)
    moved, axis = channels_last(values, channel_axis)
    groups = [moved] if axis is None else [moved[..., c] for c in range(moved.shape[-1])]
    scales = []
    for group in groups:
        scale = _group_scale(group.ravel(), max_int)
        if scale is None:
            return None
        scales.append(scale)
    scale = np.asarray(scales, dtype=np.float64)
    ints = np.round(moved.astype(np.float64) / scale).astype(np.int32)
    return IntGrid(ints, scale.astype(np.float32), axis, int(np.abs(ints).max(initial=0)))


def levels_per_channel(values, channel_axis=None) -> int:
    """The largest number of distinct values in one channel (or in the tensor)."""
    moved, axis = channels_last(np.asarray(values), channel_axis)
    if axis is None:
        return int(np.unique(moved).size)
    flat = moved.reshape(-1, moved.shape[-1])
    return max(int(np.unique(flat[:, c]).size) for c in range(flat.shape[1]))
