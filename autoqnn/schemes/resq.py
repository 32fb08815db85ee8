"""ResQ: residual binarisation, `q = sum_i alpha_i * sign(r_i)` over b terms.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.resq import resq_quantize
    >>> w = np.array([-3.0, -1.0, 1.0, 3.0], "float32")
    >>> np.asarray(resq_quantize(w, bits=2)).tolist()   # alpha_1 = 2, alpha_2 = 1
    [-3.0, -1.0, 1.0, 3.0]
"""

from __future__ import annotations

from autoqnn import ops as qops
from autoqnn.schemes._util import sign_nonzero, static_bits
from autoqnn.schemes.base import Scheme, register_scheme


def resq_quantize(x, bits, channel_axis=None):
    """Residual binary fake quantization, identity (STE) gradient.

    `r_0 = x`; for i = 1..b: `alpha_i = mean(|r_{i-1}|)`,
    `q_i = alpha_i * sign(r_{i-1})`, `r_i = r_{i-1} - q_i`; returns `sum q_i`.

    Args:
        x: float tensor.
        bits: Python int, the number of binary terms.
        channel_axis: channel axis (or axes) for per-channel alphas, or None.

    Returns:
        Tensor like `x`; at most 2^b distinct values per channel.
    """
    residual = x
    total = None
    for _ in range(bits):
        term = qops.mean_abs(residual, channel_axis) * sign_nonzero(residual)
        total = term if total is None else total + term
        residual = residual - term
    return qops.ste(x, total)


@register_scheme("resq")
class ResQScheme(Scheme):
    """Residual (multi-bit) binary quantization: b binary terms fitted greedily.

    Each term binarises what the previous ones left, with its own L1-optimal
    scale `mean(|residual|)` (the authors' port, `quantizers/resq.py`). A
    value is a sum `±alpha_1 ± ... ± alpha_b`, so there are at most 2^b
    levels. `sign(0)` is taken as +1 (so the count stays 2^b), which makes
    `q(-w) = -q(w)` hold except where a residual is exactly 0.

    Args:
        bits: 1..8 (default 2).
        granularity: "per_tensor" or "per_channel".
    """

    min_bits = 1
    max_bits = 8
    default_bits = 2

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        return resq_quantize(x, static_bits(self, bits), self.channel_axis(channel_axis))
