"""APoT (Li et al., ICLR 2020): levels are sums of power-of-two terms.

Example:
    >>> from autoqnn.schemes.apot import apot_levels
    >>> [round(v * 1.5, 6) for v in apot_levels(bits=3)]   # {0, 1, 1/4, 1/8} + {0, 1/2}
    [0.0, 0.125, 0.25, 0.5, 0.625, 0.75, 1.0, 1.5]
"""

from __future__ import annotations

import functools

import numpy as np
from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import check_int, sign_nonzero, static_bits
from autoqnn.schemes.base import Scheme, register_scheme


@functools.cache
def apot_levels(bits: int, base_bits: int = 2) -> tuple[float, ...]:
    """The 2^bits sorted magnitudes of an unsigned APoT grid, normalised to max 1.

    The `bits` bits are split into `n = ceil(bits / base_bits)` additive
    terms of at most `base_bits` bits each (the first terms take the full
    `base_bits`). A term with `k` bits is either 0 or one of `2^k - 1` powers
    of two. The exponents 0, -1, -2, ... are dealt to the terms round-robin
    (term i gets `2^-i, 2^-(i+n), ...` as in the paper's
    `p_i in {0, 2^-i, 2^-(i+n), ...}`), skipping full terms. A level is a sum
    of one choice per term; since the terms use disjoint exponents every sum
    is distinct, so there are exactly 2^bits levels.

    Args:
        bits: magnitude bits (the sign bit excluded), >= 1.
        base_bits: the paper's `k`, bits per additive term.

    Returns:
        Sorted tuple of floats in [0, 1].
    """
    n_terms = -(-bits // base_bits)
    sizes = [base_bits] * (bits // base_bits) + ([bits % base_bits] if bits % base_bits else [])
    capacity = [2**k - 1 for k in sizes]
    options = [[0.0] for _ in range(n_terms)]
    exponent = 0
    while any(len(o) - 1 < c for o, c in zip(options, capacity)):
        for i in range(n_terms):
            if len(options[i]) - 1 < capacity[i]:
                options[i].append(2.0**-exponent)
                exponent += 1
    sums = np.zeros(1)
    for opts in options:
        sums = (sums[:, None] + np.asarray(opts)[None, :]).reshape(-1)
    levels = np.unique(sums)
    return tuple((levels / levels.max()).tolist())


def apot_grid(x, alpha, bits, base_bits=2):
    """Nearest signed APoT level `sign(x) * alpha * level` (no STE).

    Args:
        x: float tensor.
        alpha: positive clip value (the largest level), broadcastable to `x`.
        bits: total bits including the sign (>= 2).
        base_bits: bits per additive term.

    Returns:
        Tensor like `x`.
    """
    x = ops.convert_to_tensor(x)
    alpha = ops.cast(alpha, x.dtype)
    levels = apot_levels(bits - 1, base_bits)
    mag = qops.nearest_level(ops.minimum(ops.abs(x) / alpha, 1.0), levels)
    return ops.where(mag > 0, sign_nonzero(x) * mag * alpha, 0.0)


def apot_quantize(x, bits, channel_axis=None, base_bits=2):
    """APoT fake quantization with `alpha = max(|x|)`, identity (STE) gradient.

    Args:
        x: float tensor.
        bits: total bits (1 sign + bits - 1 magnitude bits).
        channel_axis: channel axis (or axes) for per-channel alpha, or None.
        base_bits: bits per additive term.

    Returns:
        Tensor like `x`.
    """
    alpha = qops.safe_scale(qops.abs_max(x, channel_axis))
    return qops.ste(x, apot_grid(x, alpha, bits, base_bits))


@register_scheme("apot")
class APoTScheme(Scheme):
    """Additive powers-of-two: each magnitude is a sum of `ceil((b-1)/k)` powers of two.

    Signed weights use 1 sign bit and `b - 1` magnitude bits; the magnitudes
    are `alpha * apot_levels(b - 1, k)` (0 included), so there are
    `2^b - 1` distinct values (+0 and -0 coincide). Rounding is to the
    nearest level. `k` (`base_bits`) is 2 as in the paper.

    Choices: the paper learns the clip value `alpha` (with weight
    normalisation); this scheme is stateless and uses `alpha = max(|w|)`
    (per tensor or per channel). For odd magnitude bits the paper's code
    hand-picks term sets; here the general round-robin rule of `apot_levels`
    is used (same level count, the same sets for even bits).

    Args:
        bits: 2..9 (default 4).
        granularity: "per_tensor" or "per_channel".
        base_bits: bits per additive term, 1..4 (1 gives a uniform grid; a
            `base_bits >= bits - 1` gives plain powers of two with zero).
    """

    min_bits = 2
    max_bits = 9
    default_bits = 4

    def __init__(self, bits=None, granularity="per_tensor", base_bits=2):
        super().__init__(bits, granularity)
        self.base_bits = check_int("base_bits", base_bits, 1, 4)

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        bits = static_bits(self, bits)
        return apot_quantize(x, bits, self.channel_axis(channel_axis), self.base_bits)

    def num_levels(self, bits=None):
        return 2 ** (self.bits if bits is None else bits) - 1

    def get_config(self):
        return {**super().get_config(), "base_bits": self.base_bits}
