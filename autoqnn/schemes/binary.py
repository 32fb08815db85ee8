"""Binary weights (BWN / XNOR-Net style): `q = alpha * sign(w)`, `alpha = mean(|w|)`.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes import BinaryScheme
    >>> w = np.array([-0.5, 0.25, 1.0, -0.25], "float32")
    >>> np.asarray(BinaryScheme()(w)).tolist()
    [-0.5, 0.5, 0.5, -0.5]
"""

from __future__ import annotations

from autoqnn import ops as qops
from autoqnn.schemes._util import sign_nonzero, static_bits
from autoqnn.schemes.base import Scheme, register_scheme


def binary_quantize(x, channel_axis=None):
    """`mean(|x|) * sign(x)` per tensor or per channel, identity (STE) gradient.

    `sign(0)` is taken as +1 so that exactly two values appear per channel.

    Args:
        x: float tensor.
        channel_axis: channel axis (or axes) for per-channel scales, or None.

    Returns:
        Tensor like `x` with values in `{-alpha, +alpha}`.
    """
    alpha = qops.mean_abs(x, channel_axis)
    return qops.ste(x, alpha * sign_nonzero(x))


@register_scheme("binary")
class BinaryScheme(Scheme):
    """1-bit weights: `alpha * sign(w)` with the L1-optimal scale `alpha = mean(|w|)`.

    Follows the authors' port (GongCheng1919/autoqnn-pytorch, `quantizers/binary.py`):
    the gradient is the plain straight-through estimator. Zero weights map to
    `+alpha` (the port's `torch.sign` maps them to 0, which would make a third
    level and break the 1-bit storage claim).

    Args:
        bits: must be 1.
        granularity: "per_tensor" or "per_channel" (one alpha per output channel).
    """

    min_bits = 1
    max_bits = 1
    default_bits = 1

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        static_bits(self, bits)
        return binary_quantize(x, self.channel_axis(channel_axis))

    def num_levels(self, bits=None):
        return 2
