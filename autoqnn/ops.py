"""Pure quantization math on `keras.ops` tensors.

Every scheme in `autoqnn.schemes` is a thin class around the functions here.
The functions are stateless, work on any float tensor, and use the
straight-through estimator (STE): the forward pass rounds, the backward pass
lets the gradient through as if the rounding were the identity.

Example:
    >>> import numpy as np
    >>> from autoqnn import ops
    >>> x = np.array([-1.0, -0.26, 0.0, 0.4, 1.0], "float32")
    >>> np.asarray(ops.uniform_quantize(x, -1.0, 1.0, bits=2, narrow_range=True))
    array([-1.,  0.,  0.,  0.,  1.], dtype=float32)
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

_EPS = 1e-12


def ste(x, q):
    """Returns exactly `q` in the forward pass and passes the gradient straight to `x`.

    Computed as `q + (x - x)` with the gradient stopped on `q` and the second
    `x`, so the forward value is bit-exact `q` (the common `x + (q - x)` can be
    one ulp off the level).
    """
    return ops.stop_gradient(q) + (x - ops.stop_gradient(x))


def round_ste(x):
    """`round(x)` (half to even) in the forward pass, identity gradient."""
    return ste(x, ops.round(x))


def floor_ste(x):
    """`floor(x)` in the forward pass, identity gradient."""
    return ste(x, ops.floor(x))


def floor_log2(a):
    """Exact `floor(log2(a))` for positive normal floats.

    `log2` is an ulp off near some powers of two; one correction step against
    exact powers of two (`2.0 ** k` is exact) fixes it.
    """
    e = ops.floor(ops.log2(a))
    e = ops.where(ops.power(2.0, e + 1.0) <= a, e + 1.0, e)
    return ops.where(ops.power(2.0, e) > a, e - 1.0, e)


def ceil_log2(a):
    """Exact `ceil(log2(a))` for positive normal floats."""
    e = floor_log2(a)
    return ops.where(ops.power(2.0, e) < a, e + 1.0, e)


def sign_ste(x):
    """`sign(x)` with 0 mapped to +1 and an identity gradient clipped to |x| <= 1."""
    s = ops.where(x >= 0, 1.0, -1.0)
    s = ops.cast(s, x.dtype)
    return ste(ops.clip(x, -1.0, 1.0), s)


def reduce_axes(ndim: int, channel_axis: int | tuple[int, ...] | None):
    """Axes to reduce over so that only `channel_axis` remains (None: all axes).

    Args:
        ndim: rank of the tensor.
        channel_axis: the axis (or axes) that index channels, or None for
            per-tensor statistics.

    Returns:
        A tuple of axes, suitable for `keras.ops.max(..., keepdims=True)`.
    """
    if channel_axis is None:
        return tuple(range(ndim))
    keep = {a % ndim for a in np.atleast_1d(channel_axis).tolist()}
    return tuple(a for a in range(ndim) if a not in keep)


def abs_max(x, channel_axis=None):
    """max(|x|) per channel (keepdims) or per tensor."""
    return ops.max(ops.abs(x), axis=reduce_axes(len(x.shape), channel_axis), keepdims=True)


def uniform_quantize(x, min_value, max_value, bits, narrow_range=False):
    """Fake-quantizes `x` onto `2^bits` (or `2^bits - 1`) evenly spaced levels.

    The grid spans `[min_value, max_value]`, nudged (like TensorFlow's
    `fake_quant_with_min_max_vars`) so that 0 is exactly representable. `bits`
    may be a Python int or a scalar tensor (a learnable bitwidth); values are
    clipped to the range and the gradient is the STE inside the range.

    Args:
        x: float tensor.
        min_value: broadcastable lower bound (<= 0 after nudging).
        max_value: broadcastable upper bound (>= 0 after nudging).
        bits: number of bits, >= 1.
        narrow_range: drop the lowest integer level (symmetric int grids).

    Returns:
        A tensor like `x` whose values lie on the grid.
    """
    x = ops.convert_to_tensor(x)
    dtype = x.dtype
    min_value = ops.minimum(ops.cast(min_value, dtype), 0.0)
    max_value = ops.maximum(ops.cast(max_value, dtype), 0.0)
    bits = ops.cast(bits, dtype)
    quant_min = 1.0 if narrow_range else 0.0
    quant_max = ops.power(2.0, bits) - 1.0
    scale = ops.maximum((max_value - min_value) / (quant_max - quant_min), _EPS)
    zero_point = ops.clip(ops.floor(quant_min - min_value / scale + 0.5), quant_min, quant_max)
    nudged_min = (quant_min - zero_point) * scale
    nudged_max = (quant_max - zero_point) * scale
    clipped = ops.clip(x, nudged_min, nudged_max)
    # floor(v + 0.5), as TensorFlow's kernel, so both paths agree on ties.
    q = ops.floor((clipped - nudged_min) / scale + 0.5) * scale + nudged_min
    # STE inside the range; zero gradient outside (as TF's fake-quant gradient).
    return ste(clipped, q)


def learned_uniform_quantize(x, min_value, max_value, bits, symmetric=False, narrow_range=False):
    """Uniform fake quantization with gradients to the range (LSQ+ style).

    `q = s * (round(clip(x / s + z, q_min, q_max)) - z)` with step
    `s = (max - min) / (q_max - q_min)` and integer zero point
    `z = round(q_min - min / s)`; both roundings use the STE. Unlike
    `uniform_quantize` (whose range gets no gradient inside it), the step
    then receives the LSQ gradient `round(v) - v` from every in-range value
    (Esser et al. 2020; Bhalgat et al. 2020, LSQ+), so a loss on the
    quantization error (SQNR) moves the range, and values clipped at an end
    pull that end outwards. `symmetric=True` uses `max(|min|, |max|)` for both
    ends (zero point 0). `bits` may be a tensor (a trainable bitwidth).

    Args:
        x: float tensor.
        min_value, max_value: broadcastable (trainable) range ends.
        bits: Python int or tensor, >= 1.
        symmetric: zero point fixed at 0.
        narrow_range: symmetric grid without the most negative level.

    Returns:
        A tensor like `x` on the grid.

    Example:
        >>> import numpy as np
        >>> x = np.array([-1.0, 0.2, 0.6, 3.0], "float32")
        >>> np.asarray(learned_uniform_quantize(x, 0.0, 1.5, bits=2)).tolist()
        [0.0, 0.0, 0.5, 1.5]
    """
    x = ops.convert_to_tensor(x)
    dtype = x.dtype
    bits = ops.cast(bits, dtype)
    lo = ops.minimum(ops.cast(min_value, dtype), 0.0)
    hi = ops.maximum(ops.cast(max_value, dtype), 0.0)
    if symmetric:
        amax = ops.maximum(-lo, hi)
        q_max = ops.maximum(ops.power(2.0, bits - 1.0) - 1.0, 1.0)
        q_min = -q_max if narrow_range else -q_max - 1.0
        scale = ops.maximum(amax / q_max, _EPS)
        v = ops.clip(x / scale, q_min, q_max)
        return round_ste(v) * scale
    q_max = ops.power(2.0, bits) - 1.0
    scale = ops.maximum((hi - lo) / q_max, _EPS)
    zero = ops.clip(round_ste(-lo / scale), 0.0, q_max)
    v = ops.clip(x / scale + zero, 0.0, q_max)
    return (round_ste(v) - zero) * scale


def fake_quant(x, min_value, max_value, bits, narrow_range=False, channel_axis=None):
    """Uniform fake quantization through the TFLite-convertible fake-quant op.

    On the TensorFlow backend with a Python-int `bits` in [2, 16], this calls
    `keras.quantizers.fake_quant_with_min_max_vars` (TensorFlow's
    `FakeQuantWithMinMaxVars*`), which the TFLite converter turns into an
    integer graph. Otherwise it falls back to `uniform_quantize`, which
    computes the same values.

    Args:
        x: float tensor.
        min_value: scalar or per-channel lower bound.
        max_value: scalar or per-channel upper bound.
        bits: Python int or tensor.
        narrow_range: use `[1, 2^bits - 1]` instead of `[0, 2^bits - 1]`.
        channel_axis: axis indexing channels when the bounds are per-channel.

    Returns:
        The fake-quantized tensor.
    """
    static_bits = isinstance(bits, (int, np.integer)) and 2 <= int(bits) <= 16
    if static_bits and keras.backend.backend() == "tensorflow":
        ndim = len(x.shape)
        if channel_axis is not None and ndim > 0:
            axis = channel_axis % ndim
            min_value = ops.reshape(min_value, (-1,))
            max_value = ops.reshape(max_value, (-1,))
            if axis != ndim - 1:
                x_t = ops.moveaxis(x, axis, -1)
                y = keras.quantizers.fake_quant_with_min_max_vars(
                    x_t, min_value, max_value, int(bits), narrow_range, axis=-1
                )
                return ops.moveaxis(y, -1, axis)
            return keras.quantizers.fake_quant_with_min_max_vars(
                x, min_value, max_value, int(bits), narrow_range, axis=-1
            )
        return keras.quantizers.fake_quant_with_min_max_vars(
            x, ops.reshape(min_value, ()), ops.reshape(max_value, ()), int(bits), narrow_range
        )
    return uniform_quantize(x, min_value, max_value, bits, narrow_range)


def nearest_level(x, levels):
    """Maps each element of `x` to the nearest value in the sorted 1-D `levels`.

    Uses `searchsorted` on the midpoints, so memory stays O(size of x) however
    many levels there are. No gradient (wrap with `ste`).

    Args:
        x: float tensor.
        levels: sorted 1-D array-like of candidate values.

    Returns:
        Tensor like `x` with values from `levels`.
    """
    levels = np.asarray(levels, dtype="float32")
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"levels must be a non-empty 1-D array, got shape {levels.shape}")
    if levels.size == 1:
        return ops.zeros_like(x) + levels[0]
    mids = ops.convert_to_tensor((levels[1:] + levels[:-1]) / 2.0)
    flat = ops.reshape(x, (-1,))
    idx = ops.searchsorted(mids, ops.cast(flat, "float32"), side="left")
    q = ops.take(ops.convert_to_tensor(levels), idx)
    return ops.cast(ops.reshape(q, ops.shape(x)), x.dtype)


def std(x, channel_axis=None):
    """Standard deviation per channel (keepdims) or per tensor."""
    return ops.std(x, axis=reduce_axes(len(x.shape), channel_axis), keepdims=True)


def mean_abs(x, channel_axis=None):
    """mean(|x|) per channel (keepdims) or per tensor."""
    return ops.mean(ops.abs(x), axis=reduce_axes(len(x.shape), channel_axis), keepdims=True)


def safe_scale(s):
    """Replaces zero (or tiny) scales so divisions stay finite."""
    return ops.maximum(s, _EPS)
