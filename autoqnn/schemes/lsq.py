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

import keras
import numpy as np
from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import broadcast_channels, channel_shape, checked_bits
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
    v = ops.clip(x / s, -ops.cast(q_neg, x.dtype), ops.cast(q_pos, x.dtype))
    return qops.round_ste(v) * s


def lsq_bounds(bits: int, signed: bool) -> tuple[int, int]:
    """`(Q_N, Q_P)`: `(2^(b-1), 2^(b-1) - 1)` signed, `(0, 2^b - 1)` unsigned."""
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


@register_scheme("lsq")
class LSQScheme(Scheme):
    """Learned step size: a trainable step per tensor (or channel), initialised from data.

    The step `s` is a trainable variable on the layer (`<name>_step`). It is
    initialised to `2 * mean(|x|) / sqrt(Q_P)` (the paper's rule) from the
    weights when the layer receives them, and for activations by calibration
    (`autoqnn.calibrate`); a non-trainable `<name>_step_initialized` flag
    records it. No variable is assigned in an inference forward pass: an
    uninitialised weight quantizer uses the rule on the current weights, an
    uninitialised activation quantizer passes its input through (the report
    says it is not calibrated), and the first *training* step initialises
    either from its batch. The step's gradient is scaled by `1 / sqrt(N * Q_P)`, N
    the number of elements one step quantizes (per sample for activations).

    Signedness: `signed=None` (the default) takes it from the data at
    initialisation (unsigned when the calibrated minimum is >= 0, e.g. after
    ReLU), so an activation after ReLU gets all `2^b` levels on `[0, 2^b-1]`.
    Set True/False to fix it.

    Args:
        bits: 2..16 (default 4).
        granularity: "per_tensor" or "per_channel" (weights).
        signed: grid `[-2^(b-1), 2^(b-1) - 1]` (True), `[0, 2^b - 1]` (False)
            or None (from the data).
    """

    min_bits = 2
    max_bits = 16
    default_bits = 4
    tensor_bits = True
    supports_activations = True

    def __init__(self, bits=None, granularity="per_tensor", signed=None):
        super().__init__(bits, granularity)
        if signed is not None and not isinstance(signed, bool):
            raise TypeError(f"signed must be a bool or None, got {signed!r}")
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
        signed = layer.add_weight(
            name=f"{name}_signed", shape=(),
            initializer="zeros" if self.signed is False else "ones", trainable=False,
        )
        sizes = [int(d) if d is not None else None for d in shape]
        per_step = None
        if None not in sizes:
            per_step = float(max(1, math.prod(sizes) // max(1, math.prod(step_shape))))
        return {"step": step, "initialized": initialized, "signed": signed,
                "elements_per_step": per_step, "role": role}

    def _bounds(self, bits, signed):
        """`(Q_N, Q_P)` as tensors of the signedness flag (1 signed, 0 unsigned)."""
        half = ops.power(2.0, ops.cast(bits, "float32") - 1.0)
        q_neg = signed * half
        q_pos = signed * (half - 1.0) + (1.0 - signed) * (2.0 * half - 1.0)
        return q_neg, q_pos

    def initialize(self, state, stats):
        if "step" not in state:
            return
        signed = state["signed"]
        if self.signed is None:
            signed.assign(1.0 if float(np.min(stats["min"])) < 0 else 0.0)
        is_signed = float(keras.ops.convert_to_numpy(signed)) > 0.5
        q_neg, q_pos = lsq_bounds(self.bits, is_signed)
        step = 2.0 * np.asarray(stats["mean_abs"], "float32") / math.sqrt(q_pos)
        step = np.maximum(step, 1e-8).reshape(state["step"].shape)
        state["step"].assign(step)
        state["initialized"].assign(1.0)

    def is_initialized(self, state):
        flag = state.get("initialized")
        return flag is None or float(keras.ops.convert_to_numpy(flag)) > 0.5

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        bits = checked_bits(self, bits)
        state = state or {}
        if "step" not in state:
            raise ValueError(
                "scheme 'lsq' needs the state created by its build() (a learned step); "
                f"got state keys {sorted(state)}"
            )
        step_var, flag = state["step"], state["initialized"]
        signed = state.get("signed")
        signed = ops.convert_to_tensor(1.0 if signed is None else signed)
        x = ops.convert_to_tensor(x)
        q_neg, q_pos = self._bounds(bits, ops.cast(signed, x.dtype))
        axis = self.channel_axis(channel_axis) if len(step_var.shape) else None
        ndim = len(x.shape)
        step = broadcast_channels(step_var, ndim, axis)
        ready = flag > 0.5
        data_step = ops.stop_gradient(2.0 * qops.mean_abs(x, axis) / ops.sqrt(q_pos))
        weights = state.get("role", "weight") == "weight"
        if training or weights:  # an uninitialised weight step is its data rule
            step = ops.where(ready, step, qops.safe_scale(data_step))
        if training:
            # The first training step initialises an uncalibrated quantizer from its batch.
            step_var.assign(ops.reshape(ops.stop_gradient(step), step_var.shape))
            flag.assign(ops.ones_like(flag))
        per_step = state.get("elements_per_step")
        if per_step is None:  # unknown at build time: every element of x counts
            per_step = ops.cast(ops.size(x), x.dtype) / float(max(1, math.prod(step_var.shape)))
        grad_factor = ops.stop_gradient(ops.rsqrt(ops.cast(per_step, x.dtype) * q_pos))
        q = lsq_quantize(x, step, q_neg, q_pos, grad_factor)
        if training or weights:
            return q
        return ops.where(ready, q, x)  # uncalibrated activations at inference: pass through

    def num_levels(self, bits=None):
        bits = self.bits if bits is None else bits
        return 2**bits

    def get_config(self):
        return {**super().get_config(), "signed": self.signed}
