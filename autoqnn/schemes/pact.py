"""PACT, parameterised clipping activation (Choi et al., 2018): learned clip, uniform levels.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.pact import pact_quantize
    >>> x = np.array([-1.0, 0.4, 1.1, 2.9, 7.0], "float32")
    >>> np.asarray(pact_quantize(x, 3.0, bits=2)).tolist()   # levels 0, 1, 2, 3
    [0.0, 0.0, 1.0, 3.0, 3.0]
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import check_positive, checked_bits
from autoqnn.schemes.base import Scheme, register_scheme


def pact_quantize(x, alpha, bits):
    """`y = clip(x, 0, alpha)` rounded to `2^b` levels `k * alpha / (2^b - 1)`.

    Gradients (PACT, with the STE for the rounding): `dq/dx = 1` for
    `0 < x < alpha`, else 0; `dq/dalpha = 1` for `x >= alpha`, else 0.

    Args:
        x: float tensor.
        alpha: positive clip value (scalar tensor or variable).
        bits: Python int.

    Returns:
        Tensor like `x`.
    """
    x = ops.convert_to_tensor(x)
    alpha = qops.safe_scale(ops.cast(alpha, x.dtype))
    y = ops.minimum(ops.maximum(x, 0.0), alpha)
    scale = ops.stop_gradient(alpha) / (ops.power(2.0, ops.cast(bits, x.dtype)) - 1.0)
    q = ops.round(ops.stop_gradient(y) / scale) * scale
    return ops.stop_gradient(q) + (y - ops.stop_gradient(y))


@register_scheme("pact")
class PACTScheme(Scheme):
    """PACT for activations: a trainable clip `alpha` per quantizer, uniform unsigned grid.

    `alpha` is created on the layer in `build` (`<name>_alpha`, initialised
    to `initial_alpha`, 10 in the paper) and learned through the PACT
    gradient. The paper also puts an L2 penalty on `alpha`; add one with the
    optimizer's weight decay if wanted. Activations only, per tensor.

    Args:
        bits: 1..16 (default 4).
        granularity: must be "per_tensor".
        initial_alpha: starting clip value (> 0).
    """

    min_bits = 1
    max_bits = 16
    default_bits = 4
    tensor_bits = True
    supports_weights = False
    supports_activations = True

    def __init__(self, bits=None, granularity="per_tensor", initial_alpha=10.0):
        super().__init__(bits, granularity)
        if granularity != "per_tensor":
            raise ValueError(
                f"granularity must be 'per_tensor' for scheme 'pact' (one learned clip "
                f"per activation tensor), got {granularity!r}"
            )
        self.initial_alpha = check_positive("initial_alpha", initial_alpha)

    def build(self, layer, name, shape, channel_axis, role="activation"):
        alpha = layer.add_weight(
            name=f"{name}_alpha",
            shape=(),
            initializer=keras.initializers.Constant(self.initial_alpha),
            trainable=True,
        )
        return {"alpha": alpha}

    def initialize(self, state, stats):
        """Calibration sets `alpha` to the calibrated maximum (instead of `initial_alpha`)."""
        if "alpha" in state:
            top = float(np.max(stats["max"]))
            if np.isfinite(top) and top > 0:
                state["alpha"].assign(top)

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        bits = checked_bits(self, bits)
        state = state or {}
        if "alpha" not in state:
            raise ValueError(
                "scheme 'pact' needs the state created by its build() (a learned clip); "
                f"got state keys {sorted(state)}"
            )
        return pact_quantize(x, state["alpha"], bits)

    def get_config(self):
        return {**super().get_config(), "initial_alpha": self.initial_alpha}
