"""AdaRound: learned up-or-down rounding of uniform weight grids (Nagel et al. 2020).

Nearest rounding minimises each weight's own error, not the layer's output
error. AdaRound keeps the grid (step and zero point of the layer's uniform
scheme, MSE clip ratio included) and learns, per weight, whether to round
down or up. With `u = (w - offset) / step` the weight in grid units, the
soft weight is `offset + step * clip(floor(u) + h(V), k_min, k_max)` with
the rectified sigmoid `h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`
(`zeta = 1.1`, `gamma = -0.1`), `V` initialised so that `h(V)` is the
fractional part of `u` (the soft weight starts at the float weight). Adam
minimises, on random batches of 32 of the layer's inputs,

    mean over samples and positions of sum over output channels of (W_soft x - W x)^2
      + lambda * sum(1 - |2 h(V) - 1|^beta)

with `lambda = 0.01`, no regulariser for the first 20 % of the iterations,
then `beta` annealed linearly from 20 to 2 (the paper's defaults). The
rounding is then hardened (`h(V) >= 0.5` rounds up). The learning rate is
1e-2, not the paper's 1e-3, which goes with 10-20k iterations: at the
default 500 (`PTQConfig.adaround_iterations`), 1e-3 barely moves `V` (the
output error to float did not drop below nearest rounding's) while 1e-2 does. `x`
are the inputs the layer receives in the *quantized* model: layers are rounded one at a
time in graph order, and each layer's inputs are collected after every
layer before it was rounded (activation quantizers as calibrated). If the
hardened rounding has a higher loss than nearest rounding on the collected
inputs, the layer keeps nearest rounding.

Storage (exact, the model stays a plain Keras model): the hardened values
are written back into the float kernel. The scheme derives its grid from
statistics of the kernel (`max|w|` per channel if symmetric, `min(w, 0)` and
`max(w, 0)` if asymmetric, times the clip ratio), so the weights that set
those statistics (the channel's extremes) keep their float values (and
nearest rounding), every other weight is replaced by its grid value clipped
into the channel's `[low, high]` statistic range, and the levels a weight
may take are bounded by the lowest and highest nearest levels of its
channel. The statistics are then bit-identical, so the grid is too, and
each written value quantizes to its hardened level; this is verified after
writing (a layer that would not be exact keeps its float weights). The
cost: the extremes (one or two weights per channel) are not learned, and
bias correction afterwards cannot compare with the original float weights,
so with `bias_correction=True` it is done here, per layer, right after
hardening, against the original weights.

Cost: one forward pass of the model prefix per rounded layer plus
`iterations` small steps (seconds per layer on a CPU); the inputs of one layer
(`num_samples` of them) are held in memory.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> from autoqnn.ptq.adaround import adaround
    >>> keras.utils.set_random_seed(0); rng = np.random.default_rng(0)
    >>> # Correlated inputs: on white ones the output error is the weight error, which
    >>> # nearest rounding already minimises.
    >>> x = (rng.normal(size=(256, 4)) @ rng.normal(size=(4, 16))).astype("float32")
    >>> inputs = keras.Input((16,))
    >>> model = keras.Model(inputs, keras.layers.Dense(8, name="fc")(inputs))
    >>> qmodel = autoqnn.quantize(model, weight_bits=3, activation_bits=None)
    >>> stats = adaround(qmodel, x, iterations=200)
    >>> stats["fc"]["kept"], stats["fc"]["loss_adaround"] < stats["fc"]["loss_nearest"]
    ('adaround', True)
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from autoqnn import ops as qops
from autoqnn.data import iterate_batches
from autoqnn.layers.quantized import (
    QuantConv1D,
    QuantConv2D,
    QuantConv3D,
    QuantDense,
    QuantDepthwiseConv2D,
)
from autoqnn.ptq.config import DEFAULT_ADAROUND_ITERATIONS

ZETA, GAMMA = 1.1, -0.1
DEFAULT_SAMPLES = 1024
BATCH_SIZE = 32
REGULARIZATION = 0.01
BETA_START, BETA_END = 20.0, 2.0
WARMUP = 0.2
LEARNING_RATE = 1e-2


def rectified_sigmoid(v):
    """`h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`."""
    return ops.clip(ops.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _kernel_op(layer):
    """The layer's linear map `(inputs, kernel) -> pre-bias outputs`, or None."""
    if isinstance(layer, QuantDepthwiseConv2D):
        return lambda x, k: ops.depthwise_conv(
            x, k, strides=layer.strides, padding=layer.padding,
            dilation_rate=layer.dilation_rate, data_format=layer.data_format)
    if isinstance(layer, (QuantConv1D, QuantConv2D, QuantConv3D)):
        return layer.convolution_op
    if isinstance(layer, QuantDense):
        return ops.matmul
    return None


def roundable_layers(model) -> list:
    """Top-level layers AdaRound handles: Conv1D/2D/3D, DepthwiseConv2D and Dense with
    a fixed-bits uniform kernel grid (no learned range) and a single call site."""
    found = []
    for layer in model.layers:
        quantizer = getattr(layer, "weight_quantizers", {}).get("kernel")
        if _kernel_op(layer) is None or quantizer is None or not quantizer.is_final:
            continue
        scheme = quantizer.scheme
        if (scheme.name == "uniform" and not scheme.learn_range
                and "kernel" not in layer.frozen_weights and len(layer._inbound_nodes) == 1):
            found.append(layer)
    return found


def weight_grid(layer) -> dict:
    """The kernel's grid in numpy: `offset`, `step` (broadcastable to the kernel),
    `nearest` levels, per-channel level bounds `k_min`/`k_max`, the statistic range
    `low`/`high` written values must stay in, and the `pinned` extremes."""
    quantizer = layer.weight_quantizers["kernel"]
    scheme = quantizer.scheme
    w = keras.ops.convert_to_numpy(layer.kernel).astype("float32")
    lo, hi = scheme.grid_range(ops.convert_to_tensor(w), quantizer.state,
                               channel_axis=layer.weight_channel_axes["kernel"])
    lo = np.minimum(keras.ops.convert_to_numpy(lo), 0.0).astype("float32")
    hi = np.maximum(keras.ops.convert_to_numpy(hi), 0.0).astype("float32")
    q_min = np.float32(1.0 if scheme.narrow_range else 0.0)
    q_max = np.float32(2.0**scheme.bits - 1.0)
    step = np.maximum((hi - lo) / (q_max - q_min), np.float32(1e-12)).astype("float32")
    zero = np.clip(np.floor(q_min - lo / step + np.float32(0.5)), q_min, q_max)
    offset = ((q_min - zero) * step).astype("float32")
    axis = scheme.channel_axis(layer.weight_channel_axes["kernel"])
    axes = qops.reduce_axes(w.ndim, axis)
    if scheme.symmetric:
        high = np.abs(w).max(axis=axes, keepdims=True)
        low = -high
        pinned = (np.abs(w) == high) & (high > 0)
    else:
        low = np.minimum(w.min(axis=axes, keepdims=True), 0.0)
        high = np.maximum(w.max(axis=axes, keepdims=True), 0.0)
        pinned = ((w == low) & (low < 0)) | ((w == high) & (high > 0))
    pinned |= np.broadcast_to(hi - lo <= 0, w.shape)
    q = keras.ops.convert_to_numpy(layer.quantized_weight("kernel"))
    nearest = np.round((q - offset) / step)
    fallback = np.clip(np.floor((np.clip(w, offset + q_min * step, offset + q_max * step)
                                 - offset) / step + 0.5), q_min, q_max)
    nearest = np.where(np.isfinite(nearest), nearest, fallback).astype("float32")
    return {"w": w, "offset": offset, "step": step, "nearest": nearest, "pinned": pinned,
            "k_min": nearest.min(axis=axes, keepdims=True),
            "k_max": nearest.max(axis=axes, keepdims=True),
            "low": low.astype("float32"), "high": high.astype("float32")}


def _layer_inputs(model, layer, data, num_samples):
    """The inputs `layer` receives in `model` (as it is now) on the calibration data."""
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    extractor = keras.Model(inputs, layer.input)
    chunks = [keras.ops.convert_to_numpy(extractor(batch, training=False))
              for batch in iterate_batches(model, data, 256, num_samples, "calibration_data")]
    if not chunks:
        raise ValueError("calibration_data is empty: no batch for adaround")
    return np.concatenate(chunks)


class _Rounding:
    """The soft-rounding problem of one layer: the variable `V` and the losses."""

    def __init__(self, layer, grid):
        self.op = _kernel_op(layer)
        self.channel_axis = 1 if getattr(layer, "data_format", "") == "channels_first" else -1
        g = {k: tf.constant(v) for k, v in grid.items() if k != "pinned"}
        self.g = g
        self.pinned = tf.constant(grid["pinned"])
        self.free = tf.constant((~grid["pinned"]).astype("float32"))
        u = (grid["w"] - grid["offset"]) / grid["step"]
        self.base = tf.constant(np.floor(u))
        rest = np.clip(u - np.floor(u), 0.0, 1.0)
        p = np.clip((rest - GAMMA) / (ZETA - GAMMA), 1e-6, 1 - 1e-6)
        self.v = keras.Variable(np.log(p / (1 - p)).astype("float32"), name="adaround_v")

    def weight(self, levels):
        levels = tf.where(self.pinned, self.g["nearest"],
                          tf.clip_by_value(levels, self.g["k_min"], self.g["k_max"]))
        return self.g["offset"] + self.g["step"] * levels

    def soft_weight(self):
        return self.weight(self.base + rectified_sigmoid(self.v.value))

    def hard_levels(self):
        up = tf.cast(self.v.value >= 0.0, "float32")  # h(V) >= 0.5 <=> V >= 0
        return tf.where(self.pinned, self.g["nearest"],
                        tf.clip_by_value(self.base + up, self.g["k_min"], self.g["k_max"]))

    def reconstruction(self, x, kernel):
        """Mean over samples and positions of the per-output sum of squared errors."""
        err = self.op(x, kernel - self.g["w"])
        return tf.reduce_mean(tf.square(err)) * tf.cast(tf.shape(err)[self.channel_axis],
                                                        err.dtype)

    def regularizer(self, beta):
        h = rectified_sigmoid(self.v.value)
        return tf.reduce_sum(self.free * (1.0 - tf.pow(tf.abs(2.0 * h - 1.0), beta)))


def _evaluate(problem, x, kernel, batch_size=256):
    total = 0.0
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        total += float(problem.reconstruction(tf.constant(chunk), kernel)) * len(chunk)
    return total / max(len(x), 1)


def _mean_shift(problem, x, kernel, batch_size=256):
    """Per-output-channel mean of `(kernel - W) x` over samples and positions."""
    total, count = 0.0, 0
    for start in range(0, len(x), batch_size):
        err = keras.ops.convert_to_numpy(problem.op(tf.constant(x[start:start + batch_size]),
                                                    kernel - problem.g["w"]))
        err = np.moveaxis(err, problem.channel_axis, -1)
        err = err.reshape(-1, err.shape[-1])
        total, count = total + err.sum(axis=0), count + err.shape[0]
    return (total / max(count, 1)).astype("float32")


def round_layer(layer, x, iterations, learning_rate=LEARNING_RATE, bias_correction=False,
                seed=0, verbose=0) -> dict:
    """Learns and hardens the rounding of one layer on its inputs `x` (numpy), writes it
    back (see the module doc) and returns its statistics."""
    start_time = time.perf_counter()
    grid = weight_grid(layer)
    problem = _Rounding(layer, grid)
    optimizer = keras.optimizers.Adam(learning_rate)
    optimizer.build([problem.v])

    @tf.function
    def step(batch, beta, weight):
        with tf.GradientTape() as tape:
            loss = (problem.reconstruction(batch, problem.soft_weight())
                    + weight * problem.regularizer(beta))
        optimizer.apply([tape.gradient(loss, problem.v.value)], [problem.v])
        return loss

    rng = np.random.default_rng(seed)
    size = min(BATCH_SIZE, len(x))
    warmup = int(WARMUP * iterations)
    progbar = keras.utils.Progbar(iterations, unit_name="step") if verbose else None
    for t in range(iterations):
        if t < warmup:
            beta, weight = BETA_END, 0.0
        else:
            done = (t - warmup) / max(iterations - warmup - 1, 1)
            beta, weight = BETA_START + (BETA_END - BETA_START) * done, REGULARIZATION
        batch = x[rng.choice(len(x), size, replace=False)]
        loss = step(tf.constant(batch), tf.constant(beta, "float32"),
                    tf.constant(weight, "float32"))
        if progbar is not None:
            progbar.update(t + 1, [("loss", float(loss))])
    hard = problem.hard_levels()
    nearest_kernel = problem.weight(problem.g["nearest"])
    loss_nearest = _evaluate(problem, x, nearest_kernel)
    loss_adaround = _evaluate(problem, x, problem.weight(hard))
    kept = "adaround"
    if loss_adaround > loss_nearest:
        hard, kept = problem.g["nearest"], "nearest"
    hard = keras.ops.convert_to_numpy(hard)
    exact = _write_back(layer, grid, hard)
    free = ~grid["pinned"]
    stats = {
        "loss_nearest": loss_nearest,
        "loss_adaround": loss_adaround if kept == "adaround" else loss_nearest,
        "loss_learned": loss_adaround,
        "kept": kept if exact else "float weights (write-back not exact)",
        "rounded_up": float(np.mean((hard > problem.base.numpy())[free])) if free.any() else 0.0,
        "changed": float(np.mean((hard != grid["nearest"])[free])) if free.any() else 0.0,
        "pinned": int(grid["pinned"].sum()),
        "weights": int(grid["w"].size),
    }
    if bias_correction and exact and getattr(layer, "bias", None) is not None:
        shift = _mean_shift(problem, x, problem.weight(tf.constant(hard)))
        bias = keras.ops.convert_to_numpy(layer.bias)
        if shift.shape == bias.shape and np.all(np.isfinite(shift)):
            layer.bias.assign(bias - shift)
            stats["bias_shift"] = shift
    stats["seconds"] = time.perf_counter() - start_time
    return stats


def _write_back(layer, grid, levels) -> bool:
    """Writes the levels' values into the float kernel, the extremes kept; True if the
    layer's quantizer then gives exactly those levels (else the float kernel is restored)."""
    values = np.clip(grid["offset"] + grid["step"] * levels, grid["low"], grid["high"])
    written = np.where(grid["pinned"], grid["w"], values).astype("float32")
    layer.kernel.assign(written)
    q = keras.ops.convert_to_numpy(layer.quantized_weight("kernel"))
    got = np.round((q - grid["offset"]) / grid["step"])
    if np.array_equal(got, levels):
        return True
    layer.kernel.assign(grid["w"])
    return False


def adaround(qmodel, calibration_data, iterations: int = DEFAULT_ADAROUND_ITERATIONS,
             num_samples: int | None = DEFAULT_SAMPLES, learning_rate: float = LEARNING_RATE,
             bias_correction: bool = False, seed: int = 0, verbose: int = 0) -> dict:
    """Learns the rounding of every roundable layer of a quantized model, in place.

    Layers are rounded in graph order, each on its inputs in the quantized
    model with the layers before it already rounded (see the module doc).
    Layers inside nested models, and kernels that are not a fixed-bits
    uniform grid, keep nearest rounding.

    Args:
        qmodel: a quantized model (from `autoqnn.quantize`), calibrated if its
            activations are quantized.
        calibration_data: inputs, as accepted by `autoqnn.calibrate`.
        iterations: Adam steps per layer (batches of 32 inputs).
        num_samples: calibration samples whose layer inputs are used (None: all).
        learning_rate: Adam's learning rate.
        bias_correction: after hardening each layer, subtract its mean output
            error (against the original float kernel) from its bias.
        seed: seed of the batch sampling.
        verbose: 1 shows a progress bar per layer.

    Returns:
        `{layer name: {"loss_nearest", "loss_adaround" (the loss of the rounding
        kept), "loss_learned", "kept" ("adaround" or "nearest"), "rounded_up"
        and "changed" (fractions of the learned weights rounded up, and
        rounded differently from nearest), "pinned", "weights", "seconds"}}`
        (plus "bias_shift" when corrected).

    Raises:
        ValueError: invalid `iterations`, or empty calibration data.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    if calibration_data is None:
        raise ValueError("adaround needs calibration_data, got None")
    results = {}
    for layer in roundable_layers(qmodel):
        x = _layer_inputs(qmodel, layer, calibration_data, num_samples)
        if verbose:
            print(f"adaround {layer.name} ({x.shape[0]} inputs)")
        results[layer.name] = round_layer(layer, x, iterations, learning_rate=learning_rate,
                                          bias_correction=bias_correction, seed=seed,
                                          verbose=verbose)
    return results
