"""LSQ, learned step size quantization (Esser et al., ICLR 2020), for weights and activations.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.lsq import lsq_quantize
    >>> x = np.array([-9.0, -0.7, 0.2, 0.8, 9.0], "float32")
    >>> np.asarray(lsq_quantize(x, 0.5, q_neg=4, q_pos=3, grad_factor=1.0)).tolist()
    [-2.0, -0.5, 0.0, 1.0, 1.5]
"""

from __future__ import annotations

import math

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import broadcast_channels, channel_shape, static_bits
from autoqnn.schemes.base import Scheme, register_scheme


def scale_gradient(x, factor):
    """Returns `x` exactly, with its gradient multiplied by `factor`."""
    scaled = x * factor
    return ops.stop_gradient(x) + (scaled - ops.stop_gradient(scaled))


def lsq_quantize(x, step, q_neg, q_pos, grad_factor):
    """`round(clip(x / s, -Q_N, Q_P)) * s` with the LSQ gradients.

    The rounding uses the STE, so autodiff yields the LSQ step gradient
    (`-x/s + round(x/s)` inside the range, `-Q_N` or `Q_P` outside), scaled by
    `grad_factor` (`1 / sqrt(N * Q_P)` in the paper); `x` gets 1 inside the
    range and 0 outside.

    Args:
        x: float tensor.
        step: positive step size, broadcastable to `x`.
        q_neg: `Q_N` (0 for unsigned data).
        q_pos: `Q_P`.
        grad_factor: gradient scale of the step.

    Returns:
        Tensor like `x`.
    """
    x = ops.convert_to_tensor(x)
    s = scale_gradient(qops.safe_scale(ops.cast(step, x.dtype)), grad_factor)
    v = ops.clip(x / s, -float(q_neg), float(q_pos))
    return qops.round_ste(v) * s


def lsq_bounds(bits: int, signed: bool) -> tuple[int, int]:
    """`(Q_N, Q_P)`: `(2^(b-1), 2^(b-1) - 1)` signed, `(0, 2^b - 1)` unsigned."""
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@register_scheme("lsq")
class LSQScheme(Scheme):
    """Learned step size: a trainable step per tensor (or channel), initialised from the data.

    The step `s` is a trainable variable on the layer (`<name>_step`); the
    first time the quantizer runs it is set to `2 * mean(|x|) / sqrt(Q_P)`
    (the paper's initialisation) and a non-trainable `<name>_step_initialized`
    flag is raised, with `where` + `assign` so it also works inside traced
    `fit`/`predict` graphs. The step's gradient is scaled by
    `1 / sqrt(N * Q_P)`, N the number of elements one step quantizes (per
    sample for activations).

    Activations (through `ActivationQuantizer`) are per tensor whatever the
    granularity; use `signed=False` for non-negative inputs (after ReLU).

    Args:
        bits: 2..16 (default 4).
        granularity: "per_tensor" or "per_channel" (weights).
        signed: grid `[-2^(b-1), 2^(b-1) - 1]` (True) or `[0, 2^b - 1]` (False).
    """

    min_bits = 2
    max_bits = 16
    default_bits = 4
    supports_activations = True

    def __init__(self, bits=None, granularity="per_tensor", signed=True):
        super().__init__(bits, granularity)
        if not isinstance(signed, bool):
            raise TypeError(f"signed must be a bool, got {signed!r}")
        self.signed = signed

    def build(self, layer, name, shape, channel_axis, role="weight"):
        axis = self.channel_axis(channel_axis) if role == "weight" else None
        step_shape = channel_shape(shape, axis)
        step = layer.add_weight(
            name=f"{name}_step", shape=step_shape, initializer="ones", trainable=True
        )
        initialized = layer.add_weight(
            name=f"{name}_step_initialized", shape=(), initializer="zeros", trainable=False
        )
        sizes = [int(d) if d is not None else None for d in shape]
        per_step = None
        if None not in sizes:
            per_step = float(max(1, math.prod(sizes) // max(1, math.prod(step_shape))))
        return {"step": step, "initialized": initialized, "elements_per_step": per_step}

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        bits = static_bits(self, bits)
        q_neg, q_pos = lsq_bounds(bits, self.signed)
        state = state or {}
        if "step" not in state:
            raise ValueError(
                "scheme 'lsq' needs the state created by its build() (a learned step); "
                f"got state keys {sorted(state)}"
            )
        step_var, flag = state["step"], state["initialized"]
        x = ops.convert_to_tensor(x)
        axis = self.channel_axis(channel_axis) if len(step_var.shape) else None
        ndim = len(x.shape)
        step = broadcast_channels(step_var, ndim, axis)
        data_step = ops.stop_gradient(2.0 * qops.mean_abs(x, axis) / math.sqrt(q_pos))
        step = ops.where(flag > 0.5, step, qops.safe_scale(data_step))
        step_var.assign(ops.reshape(ops.stop_gradient(step), step_var.shape))
        flag.assign(ops.ones_like(flag))
        per_step = state.get("elements_per_step")
        if per_step is None:  # unknown at build time: every element of x counts
            per_step = ops.cast(ops.size(x), x.dtype) / float(max(1, math.prod(step_var.shape)))
        grad_factor = ops.stop_gradient(ops.rsqrt(ops.cast(per_step, x.dtype) * float(q_pos)))
        return lsq_quantize(x, step, q_neg, q_pos, grad_factor)

    def num_levels(self, bits=None):
        bits = self.bits if bits is None else bits
        q_neg, q_pos = lsq_bounds(bits, self.signed)
        return q_neg + q_pos + 1

    def get_config(self):
        return {**super().get_config(), "signed": self.signed}
