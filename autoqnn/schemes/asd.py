"""ASD, approximate signed digits (Choi, KAIST 2020): few non-zero signed digits per weight.

Each level is an integer whose canonical signed-digit (non-adjacent form)
representation has at most `digits` non-zero digits, so with the default 2 a
weight is `alpha * (s1 * 2^k1 + s2 * 2^k2)`: two shifts and one add, no multiplier.

Example:
    >>> from autoqnn.schemes.asd import asd_levels, naf_weight
    >>> naf_weight(7), naf_weight(11)          # 7 = 8 - 1; 11 = 16 - 4 - 1
    (2, 3)
    >>> asd_levels(bits=5)                      # 0..15 minus 11 and 13
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15)
"""

from __future__ import annotations

import functools

import numpy as np
from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import check_int, sign_nonzero, static_bits
from autoqnn.schemes.base import Scheme, register_scheme


def naf_weight(n: int) -> int:
    """Number of non-zero digits of the non-adjacent form of the integer `n`.

    The NAF is the signed-digit form with the fewest non-zero digits (digits
    in {-1, 0, 1}, no two adjacent non-zeros).
    """
    n = abs(int(n))
    count = 0
    while n:
        if n & 1:
            digit = 2 - (n & 3)  # +1 if n % 4 == 1, -1 if n % 4 == 3
            n -= digit
            count += 1
        n >>= 1
    return count


@functools.cache
def asd_levels(bits: int, digits: int = 2) -> tuple[int, ...]:
    """Non-negative integers `<= 2^(b-1) - 1` with at most `digits` non-zero NAF digits.

    Args:
        bits: total bits of the signed grid (>= 2).
        digits: the non-zero digit budget (>= 1).

    Returns:
        Sorted tuple of ints, 0 first.
    """
    top = 2 ** (bits - 1) - 1
    return tuple(n for n in range(top + 1) if naf_weight(n) <= digits)


def asd_grid(x, alpha, bits, digits=2):
    """Nearest `sign(x) * alpha * level` with `level` in `asd_levels(bits, digits)` (no STE).

    Args:
        x: float tensor.
        alpha: positive step (value of the integer 1), broadcastable to `x`.
        bits: total bits (>= 2).
        digits: non-zero signed digits allowed per level.

    Returns:
        Tensor like `x`.
    """
    x = ops.convert_to_tensor(x)
    alpha = ops.cast(alpha, x.dtype)
    levels = np.asarray(asd_levels(bits, digits), dtype="float32")
    mag = qops.nearest_level(ops.abs(x) / alpha, levels)
    return ops.where(mag > 0, sign_nonzero(x) * mag * alpha, 0.0)


def asd_quantize(x, bits, channel_axis=None, digits=2):
    """ASD fake quantization with `alpha = max(|x|) / max(level)`, identity (STE) gradient.

    Args:
        x: float tensor.
        bits: total bits.
        channel_axis: channel axis (or axes) for per-channel scales, or None.
        digits: non-zero signed digits allowed per level.

    Returns:
        Tensor like `x`.
    """
    top = float(asd_levels(bits, digits)[-1])
    alpha = qops.safe_scale(qops.abs_max(x, channel_axis) / top)
    return qops.ste(x, asd_grid(x, alpha, bits, digits))


@register_scheme("asd")
class ASDScheme(Scheme):
    """Approximate signed digits: symmetric integer grid restricted to few-digit CSD numbers.

    Levels are `alpha * n`, `n` in [-(2^(b-1) - 1), 2^(b-1) - 1] whose
    non-adjacent form has at most `digits` non-zero digits; `alpha =
    max(|w|) / max(n)` (per tensor or per channel), rounding to the nearest
    allowed level. With `digits >= 2` and b <= 4 every integer qualifies (the
    grid is the narrow-range uniform one); from 5 bits on the grid thins
    out where integers need three or more digits (11 = 16 - 4 - 1, ...).

    Args:
        bits: 2..16 (default 5).
        granularity: "per_tensor" or "per_channel".
        digits: non-zero signed digits allowed per weight, 1..8 (default 2;
            1 gives signed powers of two with zero).
    """

    min_bits = 2
    max_bits = 16
    default_bits = 5

    def __init__(self, bits=None, granularity="per_tensor", digits=2):
        super().__init__(bits, granularity)
        self.digits = check_int("digits", digits, 1, 8)

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        bits = static_bits(self, bits)
        return asd_quantize(x, bits, self.channel_axis(channel_axis), self.digits)

    def num_levels(self, bits=None):
        bits = self.bits if bits is None else bits
        return 2 * len(asd_levels(bits, self.digits)) - 1

    def get_config(self):
        return {**super().get_config(), "digits": self.digits}
