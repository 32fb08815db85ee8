"""Power-of-two (logarithmic) weights: `q = sign(w) * alpha * 2^k`, multiplier-free.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.pot import pot_grid
    >>> w = np.array([-3.0, 0.1, 1.4, 5.0, 100.0], "float32")
    >>> np.asarray(pot_grid(w, 1.0, bits=3)).tolist()   # exponents 0..3
    [-4.0, 1.0, 1.0, 4.0, 8.0]
"""

from __future__ import annotations

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import checked_bits, is_static, sign_nonzero
from autoqnn.schemes.base import Scheme, register_scheme

POT_LAMBDAS = (1.0, 0.9, 0.4, 0.03)
"""`alpha = lambda_b * std(w)` for b = 1..4 (the authors' port, `quantizers/potq.py`)."""

_POT_MAX_STD = 4.0
MAX_EXPONENTS = 64
"""Cap on the number of magnitudes: 2^(b-1) up to 7 bits, 64 at 8 bits (the
scale `alpha = 4 std / 2^63` must stay a normal float32)."""


def pot_exponents(bits: int) -> int:
    """Number of magnitudes `alpha * 2^k`: `min(2^(b-1), MAX_EXPONENTS)`."""
    return min(2 ** (bits - 1), MAX_EXPONENTS)


def pot_lambda(bits: int) -> float:
    """The `lambda_b` of `alpha = lambda_b * std(w)`.

    b = 1..4 use `POT_LAMBDAS`; beyond, `lambda_b = 4 / 2^(E - 1)` with E the
    number of magnitudes, so the largest magnitude `alpha * 2^(E-1)` stays at 4
    standard deviations (the b = 3, 4 entries of the table put it at 3.2 and 3.84).
    """
    if bits <= len(POT_LAMBDAS):
        return POT_LAMBDAS[bits - 1]
    return _POT_MAX_STD / 2.0 ** (pot_exponents(bits) - 1)


def _per_bits(fn, bits, dtype="float32"):
    """`fn(bits)`; for a scalar int tensor (a trainable bitwidth) the lookup of `fn` over
    the scheme's 1..8 bits."""
    if is_static(bits):
        return fn(bits)
    table = ops.convert_to_tensor([fn(b) for b in range(1, PowerOfTwoScheme.max_bits + 1)],
                                  dtype)
    return ops.take(table, ops.cast(bits, "int32") - 1)


def pot_grid(x, alpha, bits):
    """Rounds `x` onto `sign(x) * alpha * 2^k`, `k = 0 .. E - 1` (no STE).

    The exponent is `clip(round(log2(|x| / alpha)), 0, 2^(b-1) - 1)`, i.e.
    rounding in the log domain; 0 maps to `+alpha`.

    Args:
        x: float tensor.
        alpha: positive scale, broadcastable to `x`.
        bits: Python int (or scalar int tensor) in [1, 8]; E = `pot_exponents(bits)`
            magnitudes, 2E levels.

    Returns:
        Tensor like `x` on the grid.
    """
    x = ops.convert_to_tensor(x)
    alpha = ops.cast(alpha, x.dtype)
    max_exp = _per_bits(lambda b: float(pot_exponents(b) - 1), bits, x.dtype)
    ratio = ops.maximum(ops.abs(x) / alpha, 2.0**-126)
    k = ops.clip(ops.round(ops.log2(ratio)), 0.0, max_exp)
    return sign_nonzero(x) * alpha * ops.power(2.0, k)


def pot_quantize(x, bits, channel_axis=None):
    """Power-of-two fake quantization with `alpha = lambda_b * std(x)`, STE gradient.

    Args:
        x: float tensor.
        bits: Python int (or scalar int tensor) in [1, 8].
        channel_axis: channel axis (or axes) for per-channel scales, or None.

    Returns:
        Tensor like `x`.
    """
    alpha = qops.safe_scale(_per_bits(pot_lambda, bits) * qops.std(x, channel_axis))
    return qops.ste(x, pot_grid(x, alpha, bits))


@register_scheme("pot")
class PowerOfTwoScheme(Scheme):
    """Power-of-two weights: every weight is `±alpha * 2^k`, a shift of a shared scale.

    `alpha = lambda_b * std(w)` with `lambda = 1, 0.9, 0.4, 0.03` for b = 1..4
    (REFERENCES.md, the authors' port `quantizers/potq.py`) and
    `4 / 2^(2^(b-1)-1)` beyond (largest level at 4 std); the exponent is
    `clip(round(log2(|w| / alpha)), 0, 2^(b-1) - 1)`, so there are 2^(b-1)
    magnitudes and 2^b levels (1 sign bit + b-1 exponent bits), no zero.
    At 8 bits the 128 exponents would span more than float32 can hold, so the
    count is capped at 64 magnitudes (`pot_exponents`): 128 levels, which
    `num_levels` (and so the storage report) states.

    Choice: the port maps exponent 0 to `alpha / 2`, which leaves the level
    `alpha` unused and a gap `[alpha/2, 2 alpha]`; here exponent 0 is `alpha`,
    so the magnitudes are the contiguous powers `alpha * {1, 2, 4, ...}`.
    Zero weights map to `+alpha`.

    Args:
        bits: 1..8 (default 4).
        granularity: "per_tensor" or "per_channel" (one alpha per channel).
    """

    min_bits = 1
    max_bits = 8
    default_bits = 4
    tensor_bits = True

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        return pot_quantize(x, checked_bits(self, bits), self.channel_axis(channel_axis))

    def num_levels(self, bits=None):
        return 2 * pot_exponents(self.bits if bits is None else bits)
