"""ACD: per-channel QAT with learned clipping values and asymmetric clipping-value decay.

After Kwon (Hanyang 2022), "Ultra-low precision channel-wise QAT for
light-weight CNN models", as read in `REFERENCES.md` (abstract; the lab's
code of the same period for the details):

* **Weights**: per-channel symmetric grid whose clip α_c (`<name>_min/_max`,
  trainable, LSQ+-style gradients) starts at the SAWB value
  α = c₁·√E[w²] + c₂·E|w| per channel, (c₁, c₂) = (3.12, −2.064) at 2 bits,
  (7.509, −6.892) at 3 and (12.68, −12.80) at 4 (capped at max|w|; from
  5 bits on, max|w|).
* **Activations**: per-channel asymmetric range (lower lᶜ, upper uᶜ) learned
  as clipping values (`ActivationQuantizer(range_axis=-1)`), started from
  calibration. An input never below 0 (after ReLU) keeps lᶜ = 0.
* **Clipping-value decay**: an L2 pull of the clips toward 0 (toward
  tighter clipping), ½·λ_u·Σ uᶜ² + ½·λ_l·Σ lᶜ², against the task gradient
  that widens them. The lab code decays the clips with one coefficient (4e-3,
  best 2-bit at 5e-4); different coefficients for the upper and the lower
  bound are our reading of "asymmetric" (a reconstruction). Defaults:
  λ_u = 5e-4, λ_l = 5e-3 — the lower bound of a signed activation (after a
  residual add, say) has a thinner tail, so it is pulled in harder. The
  weight clips decay with λ_u.
* **SQNR loss**: `autoqnn.finetune(..., sqnr_weight=γ)`.

Example:
    >>> import numpy as np
    >>> from autoqnn.schemes.acd import sawb_clip
    >>> w = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    >>> clip = sawb_clip(w, bits=2, reduce_axes=(0,))
    >>> clip.shape, bool(np.all(clip < np.abs(w).max(axis=0)))
    ((4,), True)
"""

from __future__ import annotations

import numpy as np
from keras import ops

from autoqnn import ops as qops
from autoqnn.schemes._util import broadcast_channels, checked_bits
from autoqnn.schemes.base import register_scheme
from autoqnn.schemes.uniform import UniformScheme, symmetric_grid

SAWB_COEFFICIENTS = {2: (3.12, -2.064), 3: (7.509, -6.892), 4: (12.68, -12.80)}
"""(c₁, c₂) of the SAWB clip per weight bits (REFERENCES.md, ACD + SQNR)."""


def sawb_clip(w, bits, reduce_axes):
    """SAWB clip `c1 * sqrt(E[w^2]) + c2 * E|w|` over `reduce_axes` (see `sawb_from_stats`)."""
    w = np.asarray(w, "float32")
    return sawb_from_stats(np.mean(w * w, axis=reduce_axes), np.mean(np.abs(w), axis=reduce_axes),
                           np.abs(w).max(axis=reduce_axes), bits)


def sawb_from_stats(mean_square, mean_abs, abs_max, bits):
    """The SAWB clip from a weight's E[w²], E|w| and max|w| (per channel or not),
    capped to `(0, max|w|]`; max|w| where no coefficients are known (bits > 4)."""
    amax = np.asarray(abs_max, "float32")
    if bits not in SAWB_COEFFICIENTS:
        return amax
    c1, c2 = SAWB_COEFFICIENTS[bits]
    clip = c1 * np.sqrt(np.asarray(mean_square, "float32")) + c2 * np.asarray(mean_abs, "float32")
    return np.where(clip > 0, np.minimum(clip, amax), amax).astype("float32")


@register_scheme("acd")
class ACDScheme(UniformScheme):
    """Learned per-channel clipping values with asymmetric decay (see the module doc).

    Args:
        bits: 2..16.
        granularity: "per_channel" (default; per-channel activation ranges
            too) or "per_tensor".
        upper_decay: λ_u, the decay of upper clips (and of weight clips), >= 0.
        lower_decay: λ_l, the decay of lower activation clips, >= 0.
    """

    def __init__(self, bits=None, granularity="per_channel", upper_decay=5e-4,
                 lower_decay=5e-3):
        super().__init__(bits, granularity, symmetric=False, learn_range=True)
        for name, value in (("upper_decay", upper_decay), ("lower_decay", lower_decay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        self.upper_decay = float(upper_decay)
        self.lower_decay = float(lower_decay)

    def build(self, layer, name, shape, channel_axis, role="weight"):
        state = super().build(layer, name, shape, channel_axis, role=role)
        state["role"] = role
        return state

    def _symmetric(self, state):
        return (state or {}).get("role") == "weight"

    def initialize(self, state, stats):
        if state.get("role") != "weight" or "min" not in state:
            return
        amax = np.maximum(np.abs(stats["min"]), np.abs(stats["max"]))
        if "mean_square" in stats:
            clip = sawb_from_stats(stats["mean_square"], stats["mean_abs"], amax, self.bits)
        else:
            clip = amax
        clip = np.asarray(clip, "float32").reshape(state["max"].shape)
        state["min"].assign(-clip)
        state["max"].assign(clip)

    def grid_range(self, x, state=None, channel_axis=None, bits=None):
        bits = self.bits if bits is None else bits
        lo, hi = state["min"], state["max"]
        if self._symmetric(state):
            return symmetric_grid(ops.maximum(ops.abs(lo), ops.abs(hi)), bits, True, False)
        return lo, hi

    def quantize(self, x, state=None, *, channel_axis=None, bits=None, training=False):
        """Weights: symmetric narrow grid on ±max(|l|, |u|); activations: [l, u]."""
        bits = checked_bits(self, bits)
        state = state or {}
        if "min" not in state:
            raise ValueError("acd needs the range variables its build() (weights) or its "
                             f"ActivationQuantizer creates; got state keys {sorted(state)}")
        ndim = len(x.shape)
        per_channel = len(state["min"].shape) > 0
        axis = self.channel_axis(channel_axis)
        if per_channel and axis is None:
            axis = -1 if channel_axis is None else channel_axis
        lo = broadcast_channels(state["min"], ndim, axis if per_channel else None)
        hi = broadcast_channels(state["max"], ndim, axis if per_channel else None)
        symmetric = self._symmetric(state)
        return qops.learned_uniform_quantize(x, lo, hi, bits, symmetric, symmetric)

    def regularization(self, state):
        """½·λ_u·Σ upper² + ½·λ_l·Σ lower² of the clips in `state` (None without decay)."""
        if "min" not in (state or {}) or not (self.upper_decay or self.lower_decay):
            return None
        lo, hi = state["min"], state["max"]
        if state.get("role") == "weight":
            return 0.5 * self.upper_decay * ops.sum(ops.square(hi))
        return 0.5 * (self.upper_decay * ops.sum(ops.square(hi))
                      + self.lower_decay * ops.sum(ops.square(lo)))

    def num_levels(self, bits=None):
        return 2 ** (self.bits if bits is None else bits)

    def get_config(self):
        config = super().get_config()
        for key in ("symmetric", "narrow_range", "power_of_two_scale", "learn_range"):
            config.pop(key, None)
        return {**config, "upper_decay": self.upper_decay, "lower_decay": self.lower_decay}
