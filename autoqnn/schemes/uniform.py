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

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import broadcast_channels, channel_shape
from autoqnn.schemes.base import Scheme, register_scheme


def uniform_range(x, bits, symmetric, narrow_range, power_of_two_scale, channel_axis, clip=None):
    """`(min, max)` of the uniform grid for `x` from its own statistics.

    Args:
        x: the tensor (weights).
        bits: Python int.
        symmetric: grid centred on 0 (zero point 0).
        narrow_range: symmetric grid `[-(2^(b-1)-1), 2^(b-1)-1]`.
        power_of_two_scale: round the step size up to a power of two.
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
        qmax = 2.0 ** (bits - 1) - 1.0
        qmin = qmax if narrow_range else qmax + 1.0
        scale = qops.safe_scale(amax / max(qmax, 1.0))
        if power_of_two_scale:
            scale = ops.power(2.0, qops.ceil_log2(scale))
        return -qmin * scale, qmax * scale
    lo = ops.minimum(ops.min(x, axis=axes, keepdims=True), 0.0)
    hi = ops.maximum(ops.max(x, axis=axes, keepdims=True), 0.0)
    if clip is not None:
        c = broadcast_channels(clip, len(x.shape), channel_axis)
        lo, hi = lo * c, hi * c
    if power_of_two_scale:
        levels = 2.0**bits - 1.0
        scale = ops.power(2.0, qops.ceil_log2(qops.safe_scale((hi - lo) / levels)))
        zero = ops.round(-lo / scale)
        lo = -zero * scale
        hi = lo + levels * scale
    return lo, hi


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
        power_of_two_scale: step size rounded up to a power of two (the
            "fixed point" scheme; shifts instead of multiplies).
    """

    min_bits = 2
    max_bits = 16
    supports_activations = True
    needs_range = True
    is_uniform = True

    def __init__(
        self,
        bits=None,
        granularity="per_tensor",
        symmetric=True,
        narrow_range=None,
        power_of_two_scale=False,
    ):
        super().__init__(bits, granularity)
        self.symmetric = bool(symmetric)
        self.narrow_range = self.symmetric if narrow_range is None else bool(narrow_range)
        self.power_of_two_scale = bool(power_of_two_scale)

    def build(self, layer, name, shape, channel_axis, role="weight"):
        if role != "weight":
            return {}
        clip = layer.add_weight(
            name=f"{name}_clip",
            shape=channel_shape(shape, self.channel_axis(channel_axis)),
            initializer="ones",
            trainable=False,
        )
        return {"clip": clip}

    def grid_range(self, x, state=None, channel_axis=None, bits=None):
        """`(min, max)` of the grid used for `x` (weights) or the state's range."""
        state = state or {}
        bits = self.bits if bits is None else bits
        if "min" in state:
            lo, hi = state["min"], state["max"]
            if self.symmetric:
                amax = ops.maximum(ops.abs(lo), ops.abs(hi))
                qmax = 2.0 ** (bits - 1) - 1.0
                qmin = qmax if self.narrow_range else qmax + 1.0
                scale = qops.safe_scale(amax / qmax)
                if self.power_of_two_scale:
                    scale = ops.power(2.0, qops.ceil_log2(scale))
                return -qmin * scale, qmax * scale
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
        lo, hi = self.grid_range(x, state, channel_axis, bits)
        axis = self.channel_axis(channel_axis)
        if isinstance(axis, tuple):  # several channel axes: the math path broadcasts
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
        }
