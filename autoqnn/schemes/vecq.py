"""VecQ (Gong et al., 2020): half-integer grid, scale chosen by the vector loss.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.vecq import half_integer_grid
    >>> x = np.array([-5.0, -0.2, 0.2, 0.9, 1.2], "float32")
    >>> np.asarray(half_integer_grid(x, 0.5, bits=2)).tolist()  # levels ±0.25, ±0.75
    [-0.75, -0.25, 0.25, 0.75, 0.75]
"""

from __future__ import annotations

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import per_channel_sum, static_bits
from autoqnn.schemes.base import Scheme, register_scheme

VECQ_LAMBDAS = (1.0, 0.9957, 0.5860, 0.3352, 0.1881, 0.1041, 0.0569, 0.0308)
"""Step `alpha = lambda_b * std(w)` for b = 1..8 (VecQ; the authors' port `quantizers/vecq.py`)."""


def table_lambda(table, bits: int) -> float:
    """`table[b-1]` for b within the table, `6 / (2^b - 1)` beyond (the port's rule:
    2^b steps then span about 6 standard deviations)."""
    if bits <= len(table):
        return table[bits - 1]
    return 6.0 / (2.0**bits - 1.0)


def half_integer_index(x, alpha, bits):
    """`clip(round(x / alpha - 0.5), -2^(b-1), 2^(b-1) - 1) + 0.5` (the grid index).

    Ties are broken away from zero symmetrically (`round` on `|x|`), so the
    grid is exactly sign-symmetric.
    """
    x = ops.convert_to_tensor(x)
    half = 2.0 ** (bits - 1)
    mag = ops.abs(x) / ops.cast(alpha, x.dtype)
    # On |x|: floor(|x|/alpha) + 0.5 is the nearest half-integer (>= 0.5).
    idx = ops.minimum(ops.floor(mag), half - 1.0) + 0.5
    return ops.where(x >= 0, idx, -idx)


def half_integer_grid(x, alpha, bits):
    """Maps `x` to the nearest of the 2^b levels `alpha * (k + 0.5)`, k in [-2^(b-1), 2^(b-1)).

    Args:
        x: float tensor.
        alpha: positive step, broadcastable to `x`.
        bits: Python int.

    Returns:
        Tensor like `x` on the grid (no gradient handling).
    """
    return half_integer_index(x, alpha, bits) * ops.cast(alpha, ops.convert_to_tensor(x).dtype)


def vecq_quantize(x, bits, channel_axis=None, lambdas=VECQ_LAMBDAS):
    """VecQ fake quantization, identity (STE) gradient.

    `alpha = lambda_b * std(x)` places the half-integer grid (orientation
    loss); the result is then rescaled by `||x||_2 / ||index||_2` so that its
    modulus matches `x` (modulus loss).

    Args:
        x: float tensor.
        bits: Python int.
        channel_axis: channel axis (or axes) for per-channel statistics, or None.
        lambdas: the lambda table.

    Returns:
        Tensor like `x`.
    """
    alpha = qops.safe_scale(table_lambda(lambdas, bits) * qops.std(x, channel_axis))
    idx = half_integer_index(x, alpha, bits)
    modulus = ops.sqrt(per_channel_sum(ops.square(x), channel_axis))
    idx_modulus = ops.sqrt(per_channel_sum(ops.square(idx), channel_axis))
    return qops.ste(x, idx * (modulus / idx_modulus))


@register_scheme("vecq")
class VecQScheme(Scheme):
    """VecQ: vectorised quantization with orientation + modulus losses.

    The integer grid index is `clip(round(w / alpha - 0.5), -2^(b-1), 2^(b-1)-1) + 0.5`
    with `alpha = lambda_b * std(w)` (table `VECQ_LAMBDAS`, b = 1..8,
    `6 / (2^b - 1)` beyond, as the authors' port `quantizers/vecq.py`); the
    quantized vector is the index vector rescaled so that its L2 norm equals
    `||w||_2` (per tensor or per channel). 2^b levels, symmetric, no zero.

    Choice: `round(v - 0.5) + 0.5` rounds exact grid midpoints to even in the
    port; here they go away from zero on both sides (`floor(|v|) + 0.5`), so
    that `q(-w) = -q(w)` holds exactly.

    Args:
        bits: 1..16 (default 4).
        granularity: "per_tensor" or "per_channel".
    """

    min_bits = 1
    max_bits = 16
    default_bits = 4

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        return vecq_quantize(x, static_bits(self, bits), self.channel_axis(channel_axis))
