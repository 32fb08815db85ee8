"""ClipQ: the VecQ half-integer grid applied to the clipped input (zero gradient outside).

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.clipq import clipq_grid
    >>> x = np.array([-9.0, -0.3, 0.6, 9.0], "float32")
    >>> np.asarray(clipq_grid(x, 1.0, bits=2)).tolist()   # clip to [-1.5, 1.5] first
    [-1.5, -0.5, 0.5, 1.5]
"""

from __future__ import annotations

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import static_bits
from autoqnn.schemes.base import Scheme, register_scheme
from autoqnn.schemes.vecq import VECQ_LAMBDAS, half_integer_grid, table_lambda


def clipq_grid(x, alpha, bits):
    """Clips `x` to the outermost levels `±alpha * (2^(b-1) - 0.5)`, then rounds
    onto the half-integer grid. Gradient: 1 inside the clip range, 0 outside."""
    x = ops.convert_to_tensor(x)
    alpha = ops.cast(alpha, x.dtype)
    limit = alpha * (2.0 ** (bits - 1) - 0.5)
    clipped = ops.clip(x, -limit, limit)
    q = half_integer_grid(ops.stop_gradient(clipped), alpha, bits)
    return ops.stop_gradient(q) + (clipped - ops.stop_gradient(clipped))


def clipq_quantize(x, bits, channel_axis=None, lambdas=VECQ_LAMBDAS):
    """ClipQ fake quantization with `alpha = lambda_b * std(x)` (VecQ table).

    Args:
        x: float tensor.
        bits: Python int.
        channel_axis: channel axis (or axes) for per-channel scales, or None.
        lambdas: the lambda table.

    Returns:
        Tensor like `x`.
    """
    spread = qops.std(ops.stop_gradient(x), channel_axis)
    alpha = qops.safe_scale(table_lambda(lambdas, bits) * spread)
    return clipq_grid(x, alpha, bits)


@register_scheme("clipq")
class ClipQScheme(Scheme):
    """ClipQ: half-integer grid `alpha * (k + 0.5)` with a clipped STE.

    `alpha = lambda_b * std(w)` (the VecQ table, `6 / (2^b - 1)` beyond 8
    bits); weights beyond the outermost levels `±alpha (2^(b-1) - 0.5)` are
    clipped and get no gradient, the ones inside get the identity gradient.
    No modulus rescaling (that is VecQ). Same rule as the authors' port
    (`quantizers/clipq.py`), whose clip bounds use the previous call's alpha;
    here they use the current one, so the function is stateless.

    Args:
        bits: 1..16 (default 4).
        granularity: "per_tensor" or "per_channel".
    """

    min_bits = 1
    max_bits = 16
    default_bits = 4

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        return clipq_quantize(x, static_bits(self, bits), self.channel_axis(channel_axis))
