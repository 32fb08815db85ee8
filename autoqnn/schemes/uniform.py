"""Uniform (integer-grid) quantization: symmetric or asymmetric, optional power-of-two scale.

The TFLite-friendly scheme: its fake-quant graph converts to an integer graph.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes import UniformScheme
    >>> w = np.array([[-0.8, 0.1], [0.35, 0.7]], "float32")
    >>> q = UniformScheme(bits=3, symmetric=True)(w)
    >>> np.round(np.asarray(q) / (0.8 / 3)).tolist()   # integer grid -3..3
    [[-3.0, 0.0], [1.0, 3.0]]
"""

from __future__ import annotations

import numpy as np
from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import broadcast_channels, channel_shape, is_static
from autoqnn.schemes.base import Scheme, register_scheme


def uniform_range(x, bits, symmetric, narrow_range, power_of_two_scale, channel_axis, clip=None):
    """`(min, max)` of the uniform grid for `x` from its own statistics.

    Args:
        x: the tensor (weights).
        bits: Python int.
        symmetric: grid centred on 0 (zero point 0).
        narrow_range: symmetric grid `[-(2^(b-1)-1), 2^(b-1)-1]`.
        power_of_two_scale: the step is a power of two, by the fixed-point
            rule of REFERENCES.md (`e = floor(log2 max|x|) - (b - 2)`): the
            exponent is floored, so the top of the range may saturate by up
            to one step rather than doubling the step.
        channel_axis: per-channel axis or None.
        clip: optional multiplier (per channel) of the range, <= 1 clips.

    Returns:
        Two tensors broadcastable to `x`.
    """
    axes = qops.reduce_axes(len(x.shape), channel_axis)
    if symmetric:
        amax = ops.max(ops.abs(x), axis=axes, keepdims=True)
        if clip is not None:
            amax = amax * broadcast_channels(clip, len(x.shape), channel_axis)
        return symmetric_grid(amax, bits, narrow_range, power_of_two_scale)
    lo = ops.minimum(ops.min(x, axis=axes, keepdims=True), 0.0)
    hi = ops.maximum(ops.max(x, axis=axes, keepdims=True), 0.0)
    if clip is not None:
        c = broadcast_channels(clip, len(x.shape), channel_axis)
        lo, hi = lo * c, hi * c
    if power_of_two_scale:
        # The same fixed-point rule on the span: 2^b levels cover [2^E, 2^(E+1)).
        levels = ops.power(2.0, ops.cast(bits, "float32")) - 1.0
        span = qops.safe_scale(hi - lo)
        scale = ops.power(2.0, qops.floor_log2(span) - (ops.cast(bits, span.dtype) - 1.0))
        zero = ops.round(-lo / scale)
        lo = -zero * scale
        hi = lo + levels * scale
    return lo, hi


def symmetric_grid(amax, bits, narrow_range, power_of_two_scale):
    """`(min, max)` of the symmetric grid whose top level is `amax` (or, with a
    power-of-two step, the fixed-point grid of REFERENCES.md:
    `step = 2^(floor(log2 amax) - (b - 2))`). `bits` may be a tensor."""
    bits = ops.cast(bits, "float32")
    qmax = ops.maximum(ops.power(2.0, bits - 1.0) - 1.0, 1.0)
    qmin = qmax if narrow_range else qmax + 1.0
    if power_of_two_scale:
        amax = qops.safe_scale(amax)
        scale = ops.power(2.0, qops.floor_log2(amax) - (bits - 2.0))
    else:
        scale = qops.safe_scale(amax / qmax)
    return -qmin * scale, qmax * scale


@register_scheme("uniform")
class UniformScheme(Scheme):
    """Uniform quantizer on an integer grid (the int8/int4 of TFLite).

    Weights: the range is taken from the tensor (abs-max if symmetric, min/max
    otherwise), times a calibrated clip ratio kept on the layer. Activations:
    the range is the observed `[min, max]` kept by `ActivationQuantizer`
    (calibration or moving average during training).

    Args:
        bits: 2..16.
        granularity: "per_tensor" or "per_channel".
        symmetric: zero point fixed at 0 (default for weights).
        narrow_range: symmetric grid without the most negative level
            (default: same as `symmetric`), as TFLite int8 weights.
        power_of_two_scale: power-of-two step (the "fixed point" scheme;
            shifts instead of multiplies), by the fixed-point rule above.
        learn_range: the range `(min, max)` is a trainable variable (per
            channel when per-channel) with LSQ+-style gradients
            (`autoqnn.ops.learned_uniform_quantize`): initialised from the
            weights' min/max (weights) or by calibration (activations), then
            trained with the model.
    """

    min_bits = 2
    max_bits = 16
    supports_activations = True
    needs_range = True
    is_uniform = True
    tensor_bits = True

    def __init__(
        self,
        bits=None,
        granularity="per_tensor",
        symmetric=True,
        narrow_range=None,
        power_of_two_scale=False,
        learn_range=False,
    ):
        super().__init__(bits, granularity)
        self.symmetric = bool(symmetric)
        self.narrow_range = self.symmetric if narrow_range is None else bool(narrow_range)
        self.power_of_two_scale = bool(power_of_two_scale)
        self.learn_range = bool(learn_range)
        if self.learn_range and self.power_of_two_scale:
            raise ValueError("learn_range=True cannot be combined with power_of_two_scale=True "
                             "(a power-of-two step has no gradient)")

    def build(self, layer, name, shape, channel_axis, role="weight"):
        if role != "weight":
            return {}  # activation ranges are the ActivationQuantizer's variables
        if self.learn_range:
            range_shape = channel_shape(shape, self.channel_axis(channel_axis))
            lo = layer.add_weight(name=f"{name}_min", shape=range_shape, initializer="zeros",
                                  trainable=True)
            hi = layer.add_weight(name=f"{name}_max", shape=range_shape, initializer="ones",
                                  trainable=True)
            return {"min": lo, "max": hi}
        clip = layer.add_weight(
            name=f"{name}_clip",
            shape=channel_shape(shape, self.channel_axis(channel_axis)),
            initializer="ones",
            trainable=False,
        )
        return {"clip": clip}

    def initialize(self, state, stats):
        if self.learn_range and "min" in state and "max" in state:
            state["min"].assign(np.minimum(stats["min"], 0.0).reshape(state["min"].shape))
            state["max"].assign(np.maximum(stats["max"], 0.0).reshape(state["max"].shape))

    def grid_range(self, x, state=None, channel_axis=None, bits=None):
        """`(min, max)` of the grid used for `x` (weights) or the state's range."""
        state = state or {}
        bits = self.bits if bits is None else bits
        if "min" in state:
            lo, hi = state["min"], state["max"]
            if self.symmetric:
                amax = ops.maximum(ops.abs(lo), ops.abs(hi))
                return symmetric_grid(amax, bits, self.narrow_range, self.power_of_two_scale)
            return lo, hi
        return uniform_range(
            ops.stop_gradient(x),
            bits,
            self.symmetric,
            self.narrow_range,
            self.power_of_two_scale,
            self.channel_axis(channel_axis),
            state.get("clip"),
        )

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        bits = self.bits if bits is None else bits
        axis = self.channel_axis(channel_axis)
        state = state or {}
        if "min" in state and len(state["min"].shape) == 1:  # per-channel activation range
            axis = -1 if channel_axis is None else channel_axis
        if self.learn_range:
            if "min" not in state:
                raise ValueError("uniform with learn_range=True needs the range variables its "
                                 f"build() creates; got state keys {sorted(state)}")
            ndim = len(x.shape)
            per_channel = len(state["min"].shape) > 0
            lo = broadcast_channels(state["min"], ndim, axis if per_channel else None)
            hi = broadcast_channels(state["max"], ndim, axis if per_channel else None)
            return qops.learned_uniform_quantize(x, lo, hi, bits, self.symmetric,
                                                 self.narrow_range)
        lo, hi = self.grid_range(x, state, channel_axis, bits)
        # Several channel axes, or tensor bits: the math path (TensorFlow's fake-quant op
        # takes one axis and Python-int bits).
        if isinstance(axis, tuple) or not is_static(bits):
            return qops.uniform_quantize(x, lo, hi, bits, self.narrow_range)
        return qops.fake_quant(x, lo, hi, bits, self.narrow_range, channel_axis=axis)

    def num_levels(self, bits=None):
        bits = self.bits if bits is None else bits
        return 2**bits - (1 if self.narrow_range else 0)

    def get_config(self):
        return {
            **super().get_config(),
            "symmetric": self.symmetric,
            "narrow_range": self.narrow_range,
            "power_of_two_scale": self.power_of_two_scale,
            "learn_range": self.learn_range,
        }
