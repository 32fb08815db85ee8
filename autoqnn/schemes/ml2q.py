"""μL2Q (Gong et al., IJCNN 2019): mean-shifted half-integer grid with an L2-optimal step.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.ml2q import ml2q_grid
    >>> w = np.array([0.0, 1.0, 2.0, 3.0], "float32")
    >>> np.asarray(ml2q_grid(w, mean=1.5, alpha=1.0, bits=2)).tolist()
    [0.0, 1.0, 2.0, 3.0]
"""

from __future__ import annotations

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import static_bits
from autoqnn.schemes.base import Scheme, register_scheme
from autoqnn.schemes.vecq import half_integer_grid, table_lambda

ML2Q_LAMBDAS = (
    1.5950161625215948,
    0.9952900854134752,
    0.5872211503939504,
    0.3358904980253396,
    0.18944224088629152,
    0.10570877041455067,
    0.057082736023857356,
    0.030482181036739827,
)
"""L2-optimal step (in std units) of the 2^b-level half-integer grid for Gaussian
data, b = 1..8 (μL2Q; the authors' port `quantizers/ul2q.py`)."""


def ml2q_grid(x, mean, alpha, bits):
    """`mean + alpha * (k + 0.5)`, the nearest of 2^b levels (no STE)."""
    x = ops.convert_to_tensor(x)
    mean = ops.cast(mean, x.dtype)
    return half_integer_grid(x - mean, alpha, bits) + mean


def ml2q_quantize(x, bits, channel_axis=None):
    """μL2Q fake quantization, identity (STE) gradient.

    `mu = mean(x)`, `alpha = lambda_b * std(x)`; `q = mu + alpha * (k + 0.5)`
    with `k = clip(round((x - mu) / alpha - 0.5), -2^(b-1), 2^(b-1) - 1)`.

    Args:
        x: float tensor.
        bits: Python int.
        channel_axis: channel axis (or axes) for per-channel statistics, or None.

    Returns:
        Tensor like `x`.
    """
    axes = qops.reduce_axes(len(x.shape), channel_axis)
    mean = ops.mean(x, axis=axes, keepdims=True)
    alpha = qops.safe_scale(table_lambda(ML2Q_LAMBDAS, bits) * qops.std(x, channel_axis))
    return qops.ste(x, ml2q_grid(x, mean, alpha, bits))


@register_scheme("ml2q")
class ML2QScheme(Scheme):
    """μL2Q: shift by the mean, then the L2-optimal uniform half-integer grid.

    The data are assumed Gaussian after removing their mean `mu`; the step
    `alpha = lambda_b * std(w)` uses the μL2Q table (`ML2Q_LAMBDAS`, b = 1..8,
    `6 / (2^b - 1)` beyond), and the levels are `mu + alpha * (k + 0.5)`,
    k in [-2^(b-1), 2^(b-1)): 2^b levels, no rescaling by the norm (unlike VecQ).

    Choice: the authors' port (`quantizers/ul2q.py`) drops the `+ 0.5` after
    rounding, which puts the levels at `mu + alpha * k` (asymmetric, and for
    1 bit at `mu - alpha, mu`); the μL2Q paper and its lambda table (1.5958 for
    1 bit gives `±0.798 std` = `E|w|`, the L2-optimal binary level) need the
    half-integer grid, which is what is used here. Exact midpoints round away
    from the mean.

    Args:
        bits: 1..16 (default 4).
        granularity: "per_tensor" or "per_channel" (mean and std per channel).
    """

    min_bits = 1
    max_bits = 16
    default_bits = 4

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        return ml2q_quantize(x, static_bits(self, bits), self.channel_axis(channel_axis))
