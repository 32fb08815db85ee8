"""Minifloat: floating-point fake quantization (E4M3 / E5M2 style) of weights and feature maps.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.minifloat import float_grid
    >>> y = np.array([0.3, 1.3, 2.6, 5.0, 9.0], "float32")
    >>> np.asarray(float_grid(y, -2, 2, mantissa_bits=1)).tolist()   # E2M1-like (x4)
    [0.25, 1.5, 3.0, 4.0, 6.0]
"""

from __future__ import annotations

from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import check_int, static_bits
from autoqnn.schemes.base import Scheme, register_scheme

_DEFAULT_EXPONENT_BITS = {2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 7: 4, 8: 4}


def default_exponent_bits(bits: int) -> int:
    """Exponent bits used when only `bits` is given: E1M0/E1M1, E2M1 (4 bits),
    E2M2, E3M2, E4M2, E4M3 (8 bits), E5 beyond (E5M10 = float16 at 16 bits)."""
    return _DEFAULT_EXPONENT_BITS.get(bits, 5)


def float_grid(y, exponent_min, exponent_max, mantissa_bits):
    """Rounds `y` to the nearest float with `m` mantissa bits and exponents in a range (no STE).

    Magnitudes in `[2^e, 2^(e+1))` use the step `2^(e - m)` for
    `exponent_min <= e <= exponent_max`; below `2^exponent_min` the step stays
    `2^(exponent_min - m)` (subnormals, 0 included); above, values saturate at
    the largest finite `(2 - 2^-m) * 2^exponent_max`. Rounding is half to
    even on the magnitude, so the grid is sign-symmetric.

    Args:
        y: float tensor.
        exponent_min, exponent_max: Python ints, the normal exponent range.
        mantissa_bits: Python int >= 0.

    Returns:
        Tensor like `y`.
    """
    y = ops.convert_to_tensor(y)
    mag = ops.abs(y)
    largest = (2.0 - 2.0**-mantissa_bits) * 2.0**exponent_max
    tiny = 2.0 ** max(exponent_min, -126)
    e = ops.clip(qops.floor_log2(ops.maximum(mag, tiny)), float(exponent_min), float(exponent_max))
    step = ops.power(2.0, e - float(mantissa_bits))
    q = ops.minimum(ops.round(mag / step) * step, largest)
    return ops.where(y < 0, -q, q)


def minifloat_grid(x, amax, exponent_bits, mantissa_bits):
    """Scales `x` so that `amax` maps to the format's largest value, rounds, scales back.

    The format has `2^e` exponent codes, all finite (no inf/NaN): the normal
    exponents span `2^e - 1` binades below the top one, plus subnormals.
    In units of the top binade the grid is `float_grid(., -(2^e - 2), 0, m)`.

    Args:
        x: float tensor.
        amax: positive value mapped to the largest magnitude, broadcastable.
        exponent_bits, mantissa_bits: Python ints.

    Returns:
        Tensor like `x` (no STE).
    """
    x = ops.convert_to_tensor(x)
    scale = qops.safe_scale(ops.cast(amax, x.dtype)) / (2.0 - 2.0**-mantissa_bits)
    return float_grid(x / scale, -(2**exponent_bits - 2), 0, mantissa_bits) * scale


def minifloat_quantize(x, exponent_bits, mantissa_bits, channel_axis=None, amax=None):
    """Minifloat fake quantization, identity (STE) gradient inside `[-amax, amax]`.

    Args:
        x: float tensor.
        exponent_bits, mantissa_bits: the format.
        channel_axis: channel axis (or axes) for per-channel scaling, or None.
        amax: the value mapped to the format's max; default `max(|x|)`.
            Values beyond it saturate and get no gradient.

    Returns:
        Tensor like `x`.
    """
    if amax is None:
        amax = qops.abs_max(ops.stop_gradient(x), channel_axis)
    amax = ops.cast(amax, x.dtype)
    clipped = ops.clip(x, -amax, amax)
    q = minifloat_grid(ops.stop_gradient(clipped), amax, exponent_bits, mantissa_bits)
    return qops.ste(clipped, q)


@register_scheme("minifloat")
class MiniFloatScheme(Scheme):
    """Floating-point quantization: 1 sign, `e` exponent and `m` mantissa bits.

    `bits = 1 + e + m`. Give `bits` and optionally `exponent_bits` (the rest
    is mantissa), or `exponent_bits` and `mantissa_bits`. The tensor is
    scaled so that its max magnitude (per tensor or per channel; for
    activations the observed range `max(|min|, |max|)` from
    `ActivationQuantizer`) maps to the format's largest value, then rounded
    to nearest-even in the format, with subnormals.

    Choice: every exponent code is finite (no inf/NaN codes, as in the ESB
    formats), so E4M3 here tops at `1.875 * 2^emax` (OCP E4M3FN reserves one
    code for NaN and tops at `1.75 * 2^8`; E5M2 reserves a whole binade).
    The exponent bias drops out because of the scaling. `2^b - 1` distinct
    values (+0 = -0).

    Args:
        bits: 2..16 (default 8); must equal `1 + exponent_bits + mantissa_bits`
            when both are given.
        granularity: "per_tensor" or "per_channel" (weights; activations use
            the layer's per-tensor range).
        exponent_bits: 1..5 (default from `default_exponent_bits`).
        mantissa_bits: 0..14 (default `bits - 1 - exponent_bits`).
    """

    min_bits = 2
    max_bits = 16
    default_bits = 8
    supports_activations = True
    needs_range = True

    def __init__(self, bits=None, granularity="per_tensor", exponent_bits=None, mantissa_bits=None):
        if bits is None and exponent_bits is not None and mantissa_bits is not None:
            bits = (
                1
                + check_int("exponent_bits", exponent_bits, 1, 5)
                + check_int("mantissa_bits", mantissa_bits, 0, 14)
            )
        super().__init__(bits, granularity)
        if exponent_bits is None:
            exponent_bits = (
                default_exponent_bits(self.bits)
                if mantissa_bits is None
                else self.bits - 1 - check_int("mantissa_bits", mantissa_bits, 0, 14)
            )
        self.exponent_bits = check_int("exponent_bits", exponent_bits, 1, 5)
        if mantissa_bits is None:
            mantissa_bits = self.bits - 1 - self.exponent_bits
        self.mantissa_bits = check_int("mantissa_bits", mantissa_bits, 0, 14)
        if 1 + self.exponent_bits + self.mantissa_bits != self.bits:
            raise ValueError(
                f"bits must equal 1 + exponent_bits + mantissa_bits, got bits={self.bits}, "
                f"exponent_bits={self.exponent_bits}, mantissa_bits={self.mantissa_bits}"
            )

    def _format(self, bits):
        if bits is None or bits == self.bits:
            return self.exponent_bits, self.mantissa_bits
        bits = static_bits(self, bits)
        exponent_bits = min(self.exponent_bits, bits - 1)
        return exponent_bits, bits - 1 - exponent_bits

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        exponent_bits, mantissa_bits = self._format(bits)
        state = state or {}
        amax = None
        if "max" in state:
            amax = ops.maximum(ops.abs(state["min"]), ops.abs(state["max"]))
        return minifloat_quantize(
            x, exponent_bits, mantissa_bits, self.channel_axis(channel_axis), amax
        )

    def num_levels(self, bits=None):
        return 2 ** (self.bits if bits is None else bits) - 1

    def get_config(self):
        return {
            **super().get_config(),
            "exponent_bits": self.exponent_bits,
            "mantissa_bits": self.mantissa_bits,
        }
