"""Converter-friendly calls: how single layers trace for the TFLite converter.

`export_tflite` patches these over a layer's `call` for the duration of the
trace (on a clone; the model is never changed):

* `dense_as_conv_call`: a per-channel QuantDense as a 1x1 CONV_2D (the
  converter rejects per-channel fake-quant through FULLY_CONNECTED's kernel
  transpose);
* `einsum_as_conv_call`: an EinsumDense whose equation is a matmul in disguise
  (MultiHeadAttention's projections) as a 1x1 conv on its flattened kernel;
* `layer_norm_call`: LayerNormalization without NEG (no int8 kernel);
* `integer_layer_norm_call`: an `IntegerLayerNormalization` (quantized inner
  tensors) with its gamma and beta as the 1x1 depthwise convolution below;
* `affine_call`: a per-channel affine layer that stays float in the model
  (a BatchNormalization that follows no weighted layer, as in ConvMixer's GELU then
  BatchNorm; `Rescaling`; an adapted `Normalization`) as one DEPTHWISE_CONV_2D
  with a 1x1 kernel, whose int8 per-channel weights hold each channel's scale
  exactly. Its input and output ranges are the model's own quantizers, so the
  graph stays full-integer without calibrating the MUL/ADD pair it would
  otherwise become.

Example:
    >>> import numpy as np, keras
    >>> from autoqnn.export.calls import affine_parameters
    >>> scale, offset = affine_parameters(keras.layers.Rescaling(2.0, offset=-1.0), 3)
    >>> scale.tolist(), offset.tolist()
    ([2.0, 2.0, 2.0], [-1.0, -1.0, -1.0])
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from autoqnn.export.grid import INT8_MAX, embed_in_int_grid
from autoqnn.export.lowering import ExportError, WeightPlan


def dense_as_conv_call(layer, plan: WeightPlan):
    """`call` of a per-channel QuantDense as a 1x1 conv (int8 per-channel FC workaround)."""
    units = layer.units

    def call(inputs, training=None):
        del training
        in_dim = inputs.shape[-1]
        kernel = plan.fake_quant(shape=(1, 1, in_dim, units))
        x = tf.reshape(inputs, (-1, 1, 1, in_dim))
        # Bias and activation before the reshape back, so CONV_2D fuses them.
        y = layer._bias_and_activation(tf.nn.conv2d(x, kernel, strides=1, padding="VALID"))
        return tf.reshape(y, _lead_shape(inputs, 1) + [units])

    return call


def _lead_shape(inputs, n_trailing: int):
    """The leading dims of `inputs` (all but `n_trailing`): static with -1 for the batch
    when known (a constant RESHAPE: no SHAPE / STRIDED_SLICE / CONCATENATION ops in the
    file), else the dynamic shape tensor."""
    lead = list(inputs.shape[:len(inputs.shape) - n_trailing])
    if all(d is not None for d in lead[1:]):
        return [-1] + [int(d) for d in lead[1:]]
    return tf.unstack(tf.shape(inputs)[:len(lead)])


def einsum_as_matmul(equation: str):
    """`(free axes, contracted axes)` of the input when an EinsumDense equation is a
    matmul of the input's trailing axes with the kernel's leading ones, else None."""
    if "." in equation or "->" not in equation or equation.count(",") != 1:
        return None
    lhs, rest = equation.split(",")
    kernel, out = rest.split("->")
    contracted = [c for c in kernel if c in lhs and c not in out]
    kernel_out = [c for c in kernel if c not in lhs]
    free = [c for c in lhs if c not in kernel]
    if (kernel != "".join(contracted + kernel_out) or lhs != "".join(free + contracted)
            or out != "".join(free + kernel_out) or not contracted):
        return None
    return len(free), len(contracted)


def einsum_as_conv_call(layer, plan: WeightPlan):
    """`call` of a QuantEinsumDense as a 1x1 conv on its flattened kernel (see the doc)."""
    _free, n_contracted = einsum_as_matmul(layer.equation)
    shape = plan.values.shape
    rows, cols = int(np.prod(shape[:n_contracted])), int(np.prod(shape[n_contracted:]))
    flat = plan.values.reshape(rows, cols)
    axis = -1 if plan.channel_axis is not None else None
    flat_plan = dataclasses.replace(plan, values=flat, grid=embed_in_int_grid(flat, axis),
                                    channel_axis=axis)
    if flat_plan.grid is None and plan.grid is not None:
        raise ExportError(f"internal error: the flattened kernel of {plan.layer!r} lost its grid")

    bias = _flat_bias(layer, shape[n_contracted:])

    def call(inputs, training=None):
        del training
        kernel = flat_plan.fake_quant(shape=(1, 1, rows, cols))
        x = tf.reshape(inputs, (-1, 1, 1, rows))
        y = tf.nn.conv2d(x, kernel, strides=1, padding="VALID")
        if bias is not None:  # before the reshape back, so CONV_2D fuses it
            y = y + bias
        y = tf.reshape(y, _lead_shape(inputs, n_contracted) + list(shape[n_contracted:]))
        if bias is None:
            return layer._bias_and_activation(y)
        return y if layer.activation is None else layer.activation(y)

    return call


def _flat_bias(layer, out_shape):
    """An EinsumDense's bias broadcast to its kernel's output dims and flattened, or None
    (no bias, or one over other axes: then it is added after the reshape)."""
    if getattr(layer, "bias", None) is None:
        return None
    bias = np.asarray(keras.ops.convert_to_numpy(layer.bias), np.float32)
    try:
        return tf.constant(np.broadcast_to(bias, tuple(out_shape)).reshape(-1))
    except ValueError:
        return None


def integer_layer_norm_call(layer, path: str):
    """`call` of an `IntegerLayerNormalization`: its quantized chain (the traced
    quantizers are the constant-range ones), then gamma and beta as the 1x1 depthwise
    convolution of `affine_call`, so every op of the chain is int8."""
    channels = int(layer.gamma.shape[0] if layer.gamma is not None else layer.beta.shape[0])
    scale = (np.asarray(keras.ops.convert_to_numpy(layer.gamma), np.float64)
             if layer.gamma is not None else np.ones(channels))
    offset = (np.asarray(keras.ops.convert_to_numpy(layer.beta), np.float64)
              if layer.beta is not None else np.zeros(channels))
    affine = affine_call(layer, path, scale, offset)

    def call(inputs, *args, **kwargs):
        del args, kwargs
        return affine(layer.normalize(inputs))

    return call


def layer_norm_call(layer):
    """`call` of a LayerNormalization as `(x - mean) * rsqrt(var + eps) * gamma + beta`:
    Keras computes `x * inv - mean * inv`, whose NEG has no int8 TFLite kernel."""
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)

    def call(inputs, *args, **kwargs):
        del args, kwargs
        rank = len(inputs.shape)
        axis = sorted(a % rank for a in axes)
        shape = [1] * rank
        for a in axis:
            shape[a] = inputs.shape[a]
        centered = inputs - tf.reduce_mean(inputs, axis=axis, keepdims=True)
        variance = tf.reduce_mean(centered * centered, axis=axis, keepdims=True)
        outputs = centered * tf.math.rsqrt(variance + layer.epsilon)
        if layer.gamma is not None:
            outputs = outputs * tf.reshape(layer.gamma, shape)
        if layer.beta is not None:
            outputs = outputs + tf.reshape(layer.beta, shape)
        return outputs

    return call


def affine_parameters(layer, channels: int):
    """`(scale, offset)` per channel when `layer` computes `x * scale + offset` on its
    last axis in inference (BatchNormalization, Rescaling, Normalization), else None."""
    def per_channel(value):
        value = np.asarray(keras.ops.convert_to_numpy(value), np.float64)
        if value.size not in (1, channels):
            return None
        return np.broadcast_to(value.reshape(-1), (channels,)).copy()

    if isinstance(layer, keras.layers.BatchNormalization):
        rank = len(layer.input.shape) if hasattr(layer, "input") else None
        if rank is None or layer.axis not in (-1, rank - 1) or getattr(layer, "renorm", False):
            return None
        ones, zeros = np.ones(channels), np.zeros(channels)
        gamma = per_channel(layer.gamma) if layer.scale else ones
        beta = per_channel(layer.beta) if layer.center else zeros
        scale = gamma / np.sqrt(per_channel(layer.moving_variance) + layer.epsilon)
        return scale, beta - per_channel(layer.moving_mean) * scale
    if isinstance(layer, keras.layers.Rescaling):
        scale, offset = per_channel(layer.scale), per_channel(layer.offset)
        return None if scale is None or offset is None else (scale, offset)
    if isinstance(layer, keras.layers.Normalization):
        if layer.invert or getattr(layer, "mean", None) is None:
            return None
        axes = layer.axis if isinstance(layer.axis, tuple) else (layer.axis,)
        if axes not in ((), (-1,)) and not (len(axes) == 1 and axes[0] == len(
                layer.input.shape) - 1):
            return None
        mean, variance = per_channel(layer.mean), per_channel(layer.variance)
        if mean is None or variance is None:
            return None
        scale = 1.0 / np.maximum(np.sqrt(variance), keras.config.epsilon())
        return scale, -mean * scale
    return None


def affine_call(layer, path: str, scale, offset):
    """`call` of a per-channel affine layer as a 1x1 DEPTHWISE_CONV_2D (see the module
    docstring); inputs of any rank >= 2 are reshaped to `(-1, 1, 1, channels)`."""
    channels = scale.size
    kernel = np.where(np.abs(scale) < 1e-30, 1e-30, scale).reshape(1, 1, channels, 1)
    grid = embed_in_int_grid(kernel.astype(np.float32), (2, 3), INT8_MAX)
    if grid is None:
        raise ExportError(f"internal error: the scales of {path!r} have no int8 grid")
    # Each channel's scale as +-127 steps (not +-1): the int32 bias is stored at
    # input scale x weight scale, so a fine weight step keeps the offset exact.
    factor = INT8_MAX // max(grid.max_abs, 1)
    grid = dataclasses.replace(grid, ints=grid.ints * factor, scale=grid.scale / factor,
                               max_abs=grid.max_abs * factor)
    plan = WeightPlan(path, "scale", kernel.astype(np.float32), grid, 8, True, (2, 3))
    bias = tf.constant(offset.astype(np.float32))

    def call(inputs, *args, **kwargs):
        del args, kwargs
        shape = tf.shape(inputs)
        x = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, (-1, 1, 1, channels))
        y = tf.nn.depthwise_conv2d(x, plan.fake_quant(), strides=[1, 1, 1, 1],
                                   padding="VALID") + bias
        return y if len(inputs.shape) == 4 else tf.reshape(y, shape)

    return call
