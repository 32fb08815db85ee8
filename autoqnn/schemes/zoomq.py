"""ZoomQ: min–max uniform quantizer with 2^b bins and levels at the bin centres.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.zoomq import zoomq_grid
    >>> x = np.array([0.0, 0.9, 1.0, 2.6, 4.0], "float32")
    >>> np.asarray(zoomq_grid(x, 0.0, 4.0, bits=2)).tolist()   # bins of width 1
    [0.5, 0.5, 1.5, 2.5, 3.5]
"""

from __future__ import annotations

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import static_bits
from autoqnn.schemes.base import Scheme, register_scheme


def zoomq_grid(x, min_value, max_value, bits):
    """`min + (k + 0.5) * step`, `k = clip(floor((x - min) / step), 0, 2^b - 1)`,
    `step = (max - min) / 2^b` (no STE).

    Args:
        x: float tensor.
        min_value, max_value: the range, broadcastable to `x`.
        bits: Python int.

    Returns:
        Tensor like `x` on the 2^b bin centres.
    """
    x = ops.convert_to_tensor(x)
    lo = ops.cast(min_value, x.dtype)
    hi = ops.cast(max_value, x.dtype)
    n = 2.0**bits
    step = qops.safe_scale((hi - lo) / n)
    k = ops.clip(ops.floor((x - lo) / step), 0.0, n - 1.0)
    # The clip only matters for an empty range (max = min), where q = min.
    return ops.minimum(lo + (k + 0.5) * step, ops.maximum(hi, lo))


def zoomq_quantize(x, bits, channel_axis=None):
    """ZoomQ fake quantization over `[min(x), max(x)]`, identity (STE) gradient.

    Args:
        x: float tensor.
        bits: Python int.
        channel_axis: channel axis (or axes) for per-channel ranges, or None.

    Returns:
        Tensor like `x`.
    """
    axes = qops.reduce_axes(len(x.shape), channel_axis)
    lo = ops.min(x, axis=axes, keepdims=True)
    hi = ops.max(x, axis=axes, keepdims=True)
    return qops.ste(x, zoomq_grid(x, lo, hi, bits))


@register_scheme("zoomq")
class ZoomQScheme(Scheme):
    """ZoomQ: `[min(w), max(w)]` split into 2^b equal bins, each value mapped to its bin centre.

    The levels `min + (k + 0.5) (max - min) / 2^b` carry the half-step offset
    of the authors' port (`quantizers/zoomq.py`, which writes it as
    `round((w - min - s/2) / s)` with `s = (max - min) / (2^b - 1e-4)`); the
    bin form used here is the same grid without the `1e-4` fudge and makes
    `max(w)` land in the last bin exactly. 2^b levels, asymmetric, no zero;
    identity (STE) gradient.

    Args:
        bits: 1..16 (default 4).
        granularity: "per_tensor" or "per_channel" (range per channel).
    """

    min_bits = 1
    max_bits = 16
    default_bits = 4

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        return zoomq_quantize(x, static_bits(self, bits), self.channel_axis(channel_axis))
