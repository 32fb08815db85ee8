"""Lowering a quantized Keras model to converter-friendly fake-quant ops.

The TFLite converter turns `FakeQuantWithMinMaxVars*` ops with constant
ranges into an integer graph. The training graph of a quantized model
computes its ranges from variables (weights, calibrated ranges, clip ratios)
and, for some schemes, quantizes with plain math ops. This module builds,
for each quantized layer, the constant-range fake-quant that computes the
*same values* on the int8 (or int4) grid:

* weights: `WeightPlan` holds the layer's fake-quantized weights and the
  integer grid they embed in (`autoqnn.export.grid`); while tracing,
  `quantized_weight` returns a constant fake-quant on that grid;
* activations: `ActivationPlan` holds the uniform grid an
  `ActivationQuantizer` produces (probed from the quantizer itself, so any
  uniform-valued scheme works) and lowers it to an 8-bit fake-quant, plus a
  clamp when the grid has fewer than 256 levels.

`lowered(model, plans)` patches the layers for the duration of a trace
(`autoqnn.export.calls` has the converter-friendly calls of single layers).
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from autoqnn.export.grid import INT8_MAX, IntGrid, channels_last, embed_in_int_grid
from autoqnn.export.storage import QMAX, check_storage, container_bits, finer_grid, layer_op
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.quantized import QuantizedWeightsMixin
from autoqnn.walk import iter_layers


class ExportError(ValueError):
    """A model, layer or path that cannot be exported; the message names it."""


@dataclasses.dataclass
class WeightPlan:
    """How one quantized weight is exported.

    Attributes:
        layer: layer path.
        attr: weight name ("kernel", ...).
        values: the fake-quantized float values the Keras model uses.
        grid: the integer grid they embed in (None: they do not).
        container_bits: 2, 4 or 8 (the TFLite tensor type).
        exact: whether TFLite stores exactly `values`.
        channel_axis: the layer's channel axis (or axes) when per-channel.
        note: why the container is wider than `bits`, or why the values were
            re-quantized.
        bits: the layer's own (searched) storage bits.
        op: the TFLite op the weight feeds.
    """

    layer: str
    attr: str
    values: np.ndarray
    grid: IntGrid | None
    container_bits: int
    exact: bool
    channel_axis: object
    note: str = ""
    bits: int = 8
    op: str = ""

    @property
    def scale(self) -> np.ndarray:
        """Per-channel (or `(1,)`) scales of the TFLite tensor."""
        if self.grid is not None:
            return self.grid.scale.astype(np.float32)
        # Inexact: the symmetric abs-max int8 grid of the values.
        moved, axis = channels_last(self.values, self.channel_axis)
        amax = np.abs(moved).max(axis=None if axis is None else tuple(range(moved.ndim - 1)))
        return np.maximum(np.atleast_1d(amax) / INT8_MAX, 1e-12).astype(np.float32)

    def _axis_for(self, ndim):
        if self.values.ndim == ndim:
            return self.channel_axis
        return -1  # reshaped keeping the (single) channel axis last

    def fake_quant(self, shape=None):
        """The constant fake-quant tensor reproducing `values` in a traced graph.

        Args:
            shape: reshape the constant first (same last axis), e.g. a Dense
                kernel `(in, out)` as a 1x1 conv kernel `(1, 1, in, out)`.
        """
        values = self.values if shape is None else self.values.reshape(shape)
        moved, axis = channels_last(values, None if self.channel_axis is None
                                    else self._axis_for(values.ndim))
        # The converter writes int4 for 2..4-bit fake-quant; int2 is packed after it
        # (autoqnn.export.flatbuffer.pack_int2), from int4 integers in [-1, 1].
        bits = max(self.container_bits, 4)
        qmax = QMAX[bits]
        scale = self.scale
        lo, hi = -qmax * scale, qmax * scale
        const = tf.constant(moved)
        if axis is None:
            out = tf.quantization.fake_quant_with_min_max_vars(
                const, float(lo[0]), float(hi[0]), num_bits=bits, narrow_range=True)
        else:
            out = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                const, lo, hi, num_bits=bits, narrow_range=True)
        if moved.shape != values.shape:  # multi-axis channels (depthwise): restore
            out = tf.reshape(out, values.shape)
        return out


def plan_weights(layer_path, layer, *, storage="narrow", inexact="error") -> list[WeightPlan]:
    """Export plans of the quantized weights of one layer.

    Args:
        layer_path: the layer's path (for messages).
        layer: a `QuantizedWeightsMixin` layer.
        storage: "narrow", "xnnpack" or "int8" (`autoqnn.export.storage`).
        inexact: "error" raises when the levels do not embed in int8;
            "requantize" re-quantizes them to int8 (≤ half an int8 step).

    Returns:
        One `WeightPlan` per quantized weight.
    """
    check_storage(storage)
    op = layer_op(layer)
    plans = []
    for attr, quantizer in layer.weight_quantizers.items():
        scheme = quantizer.scheme
        bits = int(scheme.storage_bits())
        values = keras.ops.convert_to_numpy(layer.quantized_weight(attr)).astype(np.float32)
        axis = layer.weight_channel_axes[attr] if scheme.per_channel else None
        if axis is not None and isinstance(layer, keras.layers.Embedding):
            # LiteRT's GATHER takes one scale per table (per-axis tables are invalid).
            grid = embed_in_int_grid(values, None, INT8_MAX)
            if grid is None:
                plans.append(WeightPlan(layer_path, attr, values, None, 8, False, None,
                                        "per-channel table re-quantized per-tensor to int8: "
                                        "LiteRT's GATHER takes one scale", bits, op))
                continue
            axis = None
        grid = embed_in_int_grid(values, axis, INT8_MAX)
        if grid is None:
            if inexact != "requantize":
                raise ExportError(
                    f"layer {layer_path!r}: the {scheme.name} levels of {attr!r} "
                    f"({scheme!r}) do not embed exactly in the int8 grid; export with "
                    "inexact='requantize' to re-quantize them to int8 (error <= half an int8 "
                    "step), or use a scheme whose levels are integer multiples of one step"
                )
            plans.append(WeightPlan(layer_path, attr, values, None, 8, False, axis,
                                    "levels re-quantized to int8 (not exact)", bits, op))
            continue
        container, note = container_bits(op, grid.max_abs, bits, storage)
        if axis is not None and values.size == grid.scale.size and container < 8:
            # One value per channel (a BatchNorm as a 1x1 depthwise conv): any container
            # holds it exactly; int8's 127 steps give the finest int32 bias, and LiteRT's
            # int4 DEPTHWISE_CONV_2D reference kernel was measured 4 % off here.
            container, note = 8, "one value per channel: int8 (finest bias step)"
        plans.append(WeightPlan(layer_path, attr, values, finer_grid(grid, container),
                                container, True, axis, note, bits, op))
    return plans


@dataclasses.dataclass
class ActivationPlan:
    """The uniform grid of an `ActivationQuantizer` and its int8 lowering.

    Attributes:
        layer: layer path.
        low: lowest level (a multiple of `step`; 0 is a level).
        step: distance between levels.
        levels: number of levels (<= 256).
    """

    layer: str
    low: float
    step: float
    levels: int
    top: float = 0.0  # the highest level as the model computes it

    @property
    def high(self) -> float:
        return self.low + (self.levels - 1) * self.step

    def __call__(self, x):
        """8-bit fake-quant on the grid (plus a clamp for < 256 levels)."""
        low = float(self.low)
        top = float(self.low + 255 * self.step) if self.levels < 256 else float(self.top)
        y = tf.quantization.fake_quant_with_min_max_vars(x, low, top, num_bits=8)
        if self.levels < 256:
            y = tf.minimum(y, tf.constant(self.high, y.dtype))
            y = tf.quantization.fake_quant_with_min_max_vars(y, low, top, num_bits=8)
        return y


def plan_activation(layer_path, layer: ActivationQuantizer) -> ActivationPlan:
    """Probes an activation quantizer's output levels and checks them against int8.

    The quantizer is run on a dense sweep of inputs: its outputs must be
    evenly spaced levels containing 0, at most 256 of them, reached by
    round-to-nearest. This holds for every uniform scheme (whatever its
    range parametrisation) and fails with a clear message otherwise.

    Raises:
        ExportError: uncalibrated quantizer or levels int8 cannot represent.
    """
    if not layer.is_calibrated:
        raise ExportError(f"activation quantizer {layer_path!r} is not calibrated")

    def run(x):
        x = tf.constant(np.asarray(x, np.float32))
        return np.asarray(layer.call(x, training=False), dtype=np.float64)

    where = f"activation quantizer {layer_path!r} ({layer.scheme!r})"
    ends = run([-1e6, 1e6])
    low, high = float(ends[0]), float(ends[1])
    if not (np.isfinite([low, high]).all() and abs(low) < 1e5 and abs(high) < 1e5):
        raise ExportError(f"{where}: output range is not bounded; int8 needs a finite range")
    if high - low <= 0:
        raise ExportError(f"{where}: has a single output level; nothing to export")
    pad = 0.05 * (high - low)
    sweep = run(np.linspace(low - pad, high + pad, 1 << 17))
    levels = np.unique(sweep)
    if levels.size > 256:
        raise ExportError(f"{where}: {levels.size} levels do not fit int8 (256 levels)")
    steps = np.diff(levels)
    step = float((levels[-1] - levels[0]) / (levels.size - 1))
    if np.abs(steps - step).max() > 1e-3 * step or np.abs(levels / step -
                                                            np.round(levels / step)).max() > 1e-3:
        raise ExportError(f"{where}: levels are not evenly spaced around 0, so they have no "
                          "int8 (affine) representation")
    plan = ActivationPlan(layer_path, float(levels[0]), step, int(levels.size),
                          float(levels[-1]))
    # Check round-to-nearest between levels (and saturation outside) against the lowering.
    offsets = step * (np.arange(8) / 8.0 - 0.5 + 1 / 16)
    probe = (levels[:, None] + offsets[None, :]).ravel()
    probe = np.concatenate([probe, [low - pad, high + pad]]).astype(np.float32)
    expected = run(probe)
    got = np.asarray(plan(tf.constant(probe)), dtype=np.float64)
    if np.abs(expected - got).max() > 1e-3 * step:
        raise ExportError(f"{where}: does not round to the nearest level, which int8 requires")
    return plan


def _patched_quantized_weight(plans, float_weights=False):
    def quantized_weight(attr, training=False):
        del training
        if attr not in plans:
            raise ExportError(f"internal error: no export plan for weight {attr!r}")
        if float_weights:
            return tf.constant(plans[attr].values)
        return plans[attr].fake_quant()  # a new constant in each traced graph

    return quantized_weight


@contextlib.contextmanager
def lowered(model, weight_plans: list[WeightPlan], activation_plans: list[ActivationPlan],
            float_weights: bool = False):
    """Context in which `model`'s quantized layers trace as constant fake-quant ops
    (`float_weights`: as float32 constants holding the quantized values)."""
    layers = dict(iter_layers(model))
    by_layer: dict[str, dict[str, WeightPlan]] = {}
    for plan in weight_plans:
        by_layer.setdefault(plan.layer, {})[plan.attr] = plan
    patched = []
    try:
        for path, attrs in by_layer.items():
            layer = layers[path]
            object.__setattr__(layer, "quantized_weight",
                               _patched_quantized_weight(attrs, float_weights))
            patched.append((layer, "quantized_weight"))
        for plan in activation_plans:
            layer = layers[plan.layer]
            object.__setattr__(layer, "call", _activation_call(plan))
            patched.append((layer, "call"))
        yield
    finally:
        for layer, name in patched:
            object.__delattr__(layer, name)


def _activation_call(plan):
    def call(inputs, training=False):
        del training
        return plan(inputs)

    return call


def quantized_layers(model):
    """`(weight_layers, activation_layers)`: lists of `(path, layer)`."""
    weights, acts = [], []
    for path, layer in iter_layers(model):
        if isinstance(layer, QuantizedWeightsMixin) and layer.weight_quantizers:
            weights.append((path, layer))
        elif isinstance(layer, ActivationQuantizer):
            acts.append((path, layer))
    return weights, acts
