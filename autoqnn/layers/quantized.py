"""Quantized twins of Keras' weighted layers.

Each class subclasses the Keras layer it replaces (so `get_config`, shapes,
masking and `fit` behave the same) and adds `weight_quantizers`: a mapping
from weight name ("kernel", "depthwise_kernel", ...) to a `Quantizer` (one
scheme with fixed or trainable bits, or a mixture of schemes). The float
weights stay the trainable variables (QAT updates them through the STE); the
forward pass uses their fake-quantized values. Quantizer state (clip ratios,
learned steps and ranges, bits, mixture logits) is created on the layer, so
it is saved with the model.

Example:
    >>> import numpy as np
    >>> from autoqnn.layers import QuantDense
    >>> layer = QuantDense(4, weight_quantizers={"kernel": {"name": "binary"}})
    >>> y = layer(np.ones((2, 3), "float32"))
    >>> len(np.unique(np.abs(np.asarray(layer.quantized_weight("kernel")))))
    1
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from autoqnn import ops as qops
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.quantizer import Quantizer

QUANTIZED_LAYERS: dict[type, type] = {}
"""Keras layer class -> its quantized subclass (filled by `_quantized`)."""


def _quantized(keras_cls):
    def decorator(cls):
        QUANTIZED_LAYERS[keras_cls] = cls
        return keras.saving.register_keras_serializable(package="autoqnn")(cls)

    return decorator


class QuantizedWeightsMixin:
    """Adds per-weight quantizers to a Keras layer (put it first in the bases).

    Subclasses list their quantizable weights and the channel axis of each in
    `weight_channel_axes`.

    Args:
        weight_quantizers: dict weight name -> `Quantizer`, its config dict
            (`{"scheme": ..., "trainable_bits": ...}`), or a scheme (name,
            `{"name": ...}` dict or `Scheme`: fixed bits). Weights not listed
            stay float (e.g. biases).
        frozen_weights: names of quantized weights whose variable already
            holds the quantized levels and is used as is (set by
            `autoqnn.load_packed` for schemes whose scale is a statistic of
            the weights, e.g. pot, so re-quantizing the levels would move
            them). Empty by default; clear it to re-quantize on each call.
        input_quantizer: None, or the `ActivationQuantizer` arguments of a
            quantizer applied to the layer's first input (a sublayer named
            "input_aq"). QAG gives one to the quantized sublayers of
            composite layers (`autoqnn.layers.composite`), whose inputs are
            not graph edges it could quantize; top-level layers get their
            inputs quantized by the graph instead.
        **kwargs: the Keras layer's own arguments.
    """

    weight_channel_axes: dict = {"kernel": -1}

    def __init__(self, *args, weight_quantizers=None, frozen_weights=(), input_quantizer=None,
                 output_quantizer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_quantizer = _sublayer_quantizer("input_quantizer", input_quantizer, "input_aq")
        self.output_quantizer = _sublayer_quantizer("output_quantizer", output_quantizer,
                                                    "output_aq")
        self.frozen_weights = [str(name) for name in frozen_weights]
        weight_quantizers = dict(weight_quantizers or {})
        unknown = set(weight_quantizers) - set(self.weight_channel_axes)
        if unknown:
            raise ValueError(
                f"weight_quantizers of {type(self).__name__} may name "
                f"{sorted(self.weight_channel_axes)}, got {sorted(unknown)}"
            )
        self.weight_quantizers = {k: Quantizer.from_spec(v) for k, v in weight_quantizers.items()}
        for attr, quantizer in self.weight_quantizers.items():
            for scheme in quantizer.candidates:
                if not scheme.supports_weights:
                    raise ValueError(
                        f"scheme {scheme.name!r} cannot quantize weights ({attr} of "
                        f"{self.name!r})"
                    )

    def build(self, input_shape):
        super().build(input_shape)
        for attr, quantizer in self.weight_quantizers.items():
            var = getattr(self, attr)
            quantizer.build(self, attr, tuple(var.shape), self.weight_channel_axes[attr])
        if self.input_quantizer is not None and not self.input_quantizer.built:
            self.input_quantizer.build(input_shape)
        if self.output_quantizer is not None and not self.output_quantizer.built:
            self.output_quantizer.build(self.compute_output_shape(input_shape))

    def __call__(self, *args, **kwargs):
        if self.input_quantizer is not None:
            if args:
                args = (self.input_quantizer(args[0]),) + args[1:]
            elif "inputs" in kwargs:
                kwargs["inputs"] = self.input_quantizer(kwargs["inputs"])
        outputs = super().__call__(*args, **kwargs)
        if getattr(self, "output_quantizer", None) is not None:
            outputs = self.output_quantizer(outputs)
        return outputs

    @property
    def quantizer_state(self) -> dict:
        """`{weight name: state dict of its (chosen) scheme}`."""
        return {attr: q.state for attr, q in self.weight_quantizers.items()}

    def initialize_quantizers(self):
        """Sets the quantizers' data-dependent state from the current weights
        (LSQ steps, learned ranges). The rewrite calls it after copying the weights."""
        for attr, quantizer in self.weight_quantizers.items():
            w = keras.ops.convert_to_numpy(getattr(self, attr))
            for scheme, state in zip(quantizer.candidates, quantizer.states):
                scheme.initialize(state, weight_statistics(w, self.weight_channel_axes[attr],
                                                           scheme))

    def quantized_weight(self, attr: str, training=False):
        """The fake-quantized value of weight `attr` (the float weight if unquantized)."""
        weight = getattr(self, attr)
        quantizer = self.weight_quantizers.get(attr)
        if quantizer is None or attr in self.frozen_weights:
            return weight
        q = quantizer(weight, training=bool(training))
        if training:
            if quantizer.sqnr_weight:
                self.add_loss(quantizer.noise_loss(weight, q))
            decay = quantizer.regularization_loss()
            if decay is not None:
                self.add_loss(decay)
        return q

    def _bias_and_activation(self, outputs):
        if getattr(self, "bias", None) is not None:
            if getattr(self, "data_format", "channels_last") == "channels_first" and hasattr(
                self, "rank"
            ):
                bias = ops.reshape(self.bias, (1, -1) + (1,) * self.rank)
            else:
                bias = self.bias
            outputs = ops.add(outputs, bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    # Dense, EinsumDense and Embedding save only their kernel and bias (their
    # own int8 modes); the generic Layer behaviour saves every variable,
    # scheme state included.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)

    def get_config(self):
        config = super().get_config()
        config["weight_quantizers"] = {
            k: v.get_config() for k, v in self.weight_quantizers.items()
        }
        if self.frozen_weights:
            config["frozen_weights"] = list(self.frozen_weights)
        if self.input_quantizer is not None:
            aq = self.input_quantizer.get_config()
            aq.pop("name", None)
            config["input_quantizer"] = aq
        if self.output_quantizer is not None:
            aq = self.output_quantizer.get_config()
            aq.pop("name", None)
            config["output_quantizer"] = aq
        return config


@_quantized(keras.layers.Dense)
class QuantDense(QuantizedWeightsMixin, keras.layers.Dense):
    """`keras.layers.Dense` with quantized kernel."""

    def call(self, inputs, training=None):
        return self._bias_and_activation(
            ops.matmul(inputs, self.quantized_weight("kernel", training))
        )


@_quantized(keras.layers.EinsumDense)
class QuantEinsumDense(QuantizedWeightsMixin, keras.layers.EinsumDense):
    """`keras.layers.EinsumDense` with quantized kernel (channels: last kernel axis)."""

    def call(self, inputs, training=None):
        x = ops.einsum(self.equation, inputs, self.quantized_weight("kernel", training))
        return self._bias_and_activation(x)


class _QuantConvMixin(QuantizedWeightsMixin):
    def call(self, inputs, training=None):
        return self._bias_and_activation(
            self.convolution_op(inputs, self.quantized_weight("kernel", training))
        )


@_quantized(keras.layers.Conv1D)
class QuantConv1D(_QuantConvMixin, keras.layers.Conv1D):
    """`keras.layers.Conv1D` with quantized kernel (per output channel)."""


@_quantized(keras.layers.Conv2D)
class QuantConv2D(_QuantConvMixin, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with quantized kernel (per output channel)."""


@_quantized(keras.layers.Conv3D)
class QuantConv3D(_QuantConvMixin, keras.layers.Conv3D):
    """`keras.layers.Conv3D` with quantized kernel (per output channel)."""


@_quantized(keras.layers.DepthwiseConv2D)
class QuantDepthwiseConv2D(QuantizedWeightsMixin, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with quantized kernel.

    Per-channel means per (input channel, multiplier) pair: the kernel axes 2
    and 3, which together index the output channels.
    """

    weight_channel_axes = {"kernel": (2, 3)}

    def call(self, inputs, training=None):
        outputs = ops.depthwise_conv(
            inputs,
            self.quantized_weight("kernel", training),
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._bias_and_activation(outputs)


@_quantized(keras.layers.SeparableConv2D)
class QuantSeparableConv2D(QuantizedWeightsMixin, keras.layers.SeparableConv2D):
    """`keras.layers.SeparableConv2D` with quantized depthwise and pointwise kernels."""

    weight_channel_axes = {"depthwise_kernel": (2, 3), "pointwise_kernel": -1}

    def call(self, inputs, training=None):
        outputs = ops.separable_conv(
            inputs,
            self.quantized_weight("depthwise_kernel", training),
            self.quantized_weight("pointwise_kernel", training),
            strides=self.strides,
            padding=self.padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._bias_and_activation(outputs)


@_quantized(keras.layers.Conv2DTranspose)
class QuantConv2DTranspose(QuantizedWeightsMixin, keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` with quantized kernel (channels: kernel axis -2)."""

    weight_channel_axes = {"kernel": -2}

    def call(self, inputs, training=None):
        outputs = ops.conv_transpose(
            inputs,
            self.quantized_weight("kernel", training),
            strides=list(self.strides),
            padding=self.padding,
            output_padding=self.output_padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._bias_and_activation(outputs)


@_quantized(keras.layers.Embedding)
class QuantEmbedding(QuantizedWeightsMixin, keras.layers.Embedding):
    """`keras.layers.Embedding` with quantized table (per-channel: per embedding dim)."""

    weight_channel_axes = {"embeddings": -1}

    def call(self, inputs, training=None):
        if inputs.dtype not in ("int32", "int64"):
            inputs = ops.cast(inputs, "int32")
        table = self.quantized_weight("embeddings", training)
        return ops.cast(ops.take(table, inputs, axis=0), self.compute_dtype)


def _sublayer_quantizer(argument, spec, name):
    """The `ActivationQuantizer` sublayer `name` built from `spec` (None: none)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise TypeError(f"{argument} must be a dict of ActivationQuantizer arguments or None, "
                        f"got {spec!r}")
    return ActivationQuantizer(name=name, **spec)


def weight_statistics(values, channel_axis, scheme) -> dict:
    """`{"min", "max", "mean_abs", "mean_square"}` of a weight, per channel when `scheme` is."""
    axis = scheme.channel_axis(channel_axis)
    axes = qops.reduce_axes(values.ndim, axis)
    stats = {"min": values.min(axis=axes), "max": values.max(axis=axes),
             "mean_abs": np.abs(values).mean(axis=axes),
             "mean_square": np.square(values).mean(axis=axes)}
    return stats


def quantized_weight_names(layer) -> list[str]:
    """Names of the weights a quantized layer quantizes (empty for other layers)."""
    return list(getattr(layer, "weight_quantizers", {}) or {})
