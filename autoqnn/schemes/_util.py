"""Small helpers shared by the scheme modules (private: not part of the API)."""

from __future__ import annotations

import numpy as np
from keras import ops

from autoqnn.ops import reduce_axes


def is_static(bits) -> bool:
    """Whether a per-call `bits` is None or a Python / NumPy number (not a tensor)."""
    return bits is None or isinstance(bits, (int, float, np.integer, np.floating))


def checked_bits(scheme, bits):
    """`bits` for a scheme with `tensor_bits`: a tensor passes unchanged (a trainable
    bitwidth's floor), anything else is validated by `static_bits`."""
    return static_bits(scheme, bits) if is_static(bits) else bits


def static_bits(scheme, bits) -> int:
    """Validates a per-call `bits` override for schemes that need a Python int.

    Args:
        scheme: the scheme (for its name and bit range).
        bits: None (use `scheme.bits`) or an integer.

    Returns:
        The bit width as a Python int.

    Raises:
        TypeError: `bits` is a tensor or a non-integer.
        ValueError: `bits` is outside the scheme's range.
    """
    if bits is None:
        return scheme.bits
    integral = isinstance(bits, (int, float, np.integer)) and not isinstance(bits, bool)
    if not integral or int(bits) != bits:
        raise TypeError(
            f"bits must be a Python integer for scheme {scheme.name!r} (no learnable "
            f"bitwidth), got {bits!r}"
        )
    bits = int(bits)
    if not scheme.min_bits <= bits <= scheme.max_bits:
        raise ValueError(
            f"bits must be in [{scheme.min_bits}, {scheme.max_bits}] for scheme "
            f"{scheme.name!r}, got {bits}"
        )
    return bits


def check_int(name: str, value, low: int, high: int) -> int:
    """Checks that option `name` is an integer in `[low, high]` and returns it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
    return int(value)


def check_positive(name: str, value) -> float:
    """Checks that option `name` is a finite number > 0 and returns it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def as_axes(axis) -> tuple[int, ...]:
    """`axis` (int or tuple) as a tuple."""
    return (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)


def channel_shape(shape, channel_axis) -> tuple[int, ...]:
    """Shape of a per-channel variable for a tensor of `shape` (() per tensor)."""
    if channel_axis is None:
        return ()
    return tuple(int(shape[a]) for a in as_axes(channel_axis))


def broadcast_channels(value, ndim: int, channel_axis):
    """Reshapes a per-channel variable so it broadcasts against the tensor."""
    if channel_axis is None:
        return ops.reshape(value, ())
    axes = sorted(a % ndim for a in as_axes(channel_axis))
    shape = [1] * ndim
    for a, size in zip(axes, ops.shape(value)):
        shape[a] = size
    return ops.reshape(value, shape)


def sign_nonzero(x):
    """+1 where x >= 0, -1 elsewhere (never 0, so level counts stay exact)."""
    return ops.cast(ops.where(x >= 0, 1.0, -1.0), x.dtype)


def per_channel_sum(x, channel_axis):
    """sum(x) over everything but the channel axis (keepdims)."""
    return ops.sum(x, axis=reduce_axes(len(x.shape), channel_axis), keepdims=True)
