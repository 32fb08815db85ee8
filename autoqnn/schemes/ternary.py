"""Ternary weights (TWN, Li & Liu 2016): `{-alpha, 0, +alpha}` with threshold `0.7 * mean(|w|)`.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes import TernaryScheme
    >>> w = np.array([-1.0, 0.1, 0.5, -0.2], "float32")   # mean|w| = 0.45, delta = 0.315
    >>> np.asarray(TernaryScheme()(w)).tolist()           # alpha = mean(1.0, 0.5)
    [-0.75, 0.0, 0.75, 0.0]
"""

from __future__ import annotations

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import check_positive, per_channel_sum, static_bits
from autoqnn.schemes.base import Scheme, register_scheme


def ternary_quantize(x, channel_axis=None, threshold_ratio=0.7):
    """TWN ternarisation, identity (STE) gradient.

    `delta = threshold_ratio * mean(|x|)`; `t = sign(x)` where `|x| > delta`,
    else 0; `alpha = mean(|x|)` over the kept entries (0 when none are kept).

    Args:
        x: float tensor.
        channel_axis: channel axis (or axes) for per-channel statistics, or None.
        threshold_ratio: the 0.7 of TWN.

    Returns:
        Tensor like `x` with values in `{-alpha, 0, alpha}`.
    """
    mag = ops.abs(x)
    delta = threshold_ratio * qops.mean_abs(x, channel_axis)
    kept = ops.cast(mag > delta, x.dtype)
    count = per_channel_sum(kept, channel_axis)
    alpha = per_channel_sum(mag * kept, channel_axis) / ops.maximum(count, 1.0)
    return qops.ste(x, ops.where(kept > 0, alpha * ops.sign(x), 0.0))


@register_scheme("ternary")
class TernaryScheme(Scheme):
    """2-bit ternary weights (Ternary Weight Networks).

    `delta = 0.7 * mean(|w|)` (the TWN approximation of the optimal threshold
    for Gaussian weights); `alpha` is the mean magnitude of the weights above
    it. Same rule as the authors' port (`quantizers/ternary.py`, which writes
    it as `round(clip(w / (1.4 mean|w|), -1, 1))`).

    Args:
        bits: must be 2.
        granularity: "per_tensor" or "per_channel".
        threshold_ratio: the multiplier of `mean(|w|)` giving `delta` (> 0).
    """

    min_bits = 2
    max_bits = 2
    default_bits = 2

    def __init__(self, bits=None, granularity="per_tensor", threshold_ratio=0.7):
        super().__init__(bits, granularity)
        self.threshold_ratio = check_positive("threshold_ratio", threshold_ratio)

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        static_bits(self, bits)
        return ternary_quantize(x, self.channel_axis(channel_axis), self.threshold_ratio)

    def num_levels(self, bits=None):
        return 3

    def get_config(self):
        return {**super().get_config(), "threshold_ratio": self.threshold_ratio}
