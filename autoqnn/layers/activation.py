"""`ActivationQuantizer`: the layer QAG inserts to quantize feature maps.

It owns the observed range of its input (`range_min`, `range_max`) for
range-based schemes (uniform, minifloat): the range is set by calibration
(`autoqnn.calibrate`, pluggable observers) and, while training, follows an
exponential moving average of the batch min/max. Until a range is observed the
layer passes its input through unchanged and `is_calibrated` is False; the
quantization report says so.

Example:
    >>> import numpy as np
    >>> from autoqnn.layers import ActivationQuantizer
    >>> aq = ActivationQuantizer(scheme="uniform", bits=4, symmetric=False)
    >>> _ = aq(np.zeros((1, 3), "float32"))          # builds
    >>> aq.set_range(0.0, 1.5)
    >>> np.asarray(aq(np.array([[0.1, 0.7, 9.0]], "float32")), "float64").round(2).tolist()
    [[0.1, 0.7, 1.5]]
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from autoqnn.schemes import get_scheme, serialize_scheme


@keras.saving.register_keras_serializable(package="autoqnn")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a feature map with an activation-capable scheme.

    Args:
        scheme: scheme name, config dict or `Scheme` (must support activations).
        bits: bit width (default: the scheme's default; ignored when `scheme`
            is an instance).
        momentum: EMA momentum of the range while training.
        **kwargs: scheme options when `scheme` is a name (e.g. symmetric=False),
            plus standard layer keyword arguments (name, dtype).
    """

    def __init__(self, scheme="uniform", bits=None, momentum=0.99, **kwargs):
        layer_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in ("name", "dtype", "trainable")
        }
        super().__init__(**layer_kwargs)
        if isinstance(scheme, str):
            if scheme == "uniform":
                kwargs.setdefault("symmetric", False)
            scheme = get_scheme(scheme, bits=bits, **kwargs)
        else:
            scheme = get_scheme(scheme)
        if not scheme.supports_activations:
            raise ValueError(
                f"scheme {scheme.name!r} cannot quantize activations; activation schemes: "
                f"{_activation_schemes()}"
            )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.scheme = scheme
        self.momentum = float(momentum)
        self._observer = None
        self._calibrated = False
        self.supports_masking = True

    @property
    def bits(self):
        return self.scheme.bits

    def build(self, input_shape):
        if self.scheme.needs_range:
            self.range_min = self.add_weight(
                name="range_min", shape=(), initializer="zeros", trainable=False
            )
            self.range_max = self.add_weight(
                name="range_max", shape=(), initializer="zeros", trainable=False
            )
            self.range_observed = self.add_weight(
                name="range_observed", shape=(), initializer="zeros", trainable=False
            )
        self.state = self.scheme.build(
            self, "activation", tuple(input_shape[1:]), None, role="activation"
        )

    @property
    def is_calibrated(self) -> bool:
        """True once a range was observed (always True for range-free schemes)."""
        return (not self.scheme.needs_range) or self._calibrated

    def set_range(self, min_value: float, max_value: float):
        """Sets the quantization range (the calibration result).

        Compiled predict/evaluate functions traced before calibration still
        pass activations through: `autoqnn.calibrate` resets them; when
        calling this directly on a model that already ran, reset them with
        `autoqnn.layers.reset_compiled_functions(model)`.
        """
        if not self.built:
            raise ValueError(f"layer {self.name!r} is not built; call it on data first")
        if not self.scheme.needs_range:
            raise ValueError(f"scheme {self.scheme.name!r} of layer {self.name!r} has no range")
        lo, hi = float(min(min_value, 0.0)), float(max(max_value, 0.0))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"range of {self.name!r} must be finite, got [{lo}, {hi}]")
        self.range_min.assign(lo)
        self.range_max.assign(hi)
        self.range_observed.assign(1.0)
        self._calibrated = True

    def get_range(self):
        """`(min, max)` as floats, or None when not calibrated."""
        if not self.scheme.needs_range or not self.is_calibrated:
            return None
        return float(ops.convert_to_numpy(self.range_min)), float(
            ops.convert_to_numpy(self.range_max)
        )

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.scheme.needs_range:
            self._calibrated = float(ops.convert_to_numpy(self.range_observed)) > 0

    def call(self, inputs, training=False):
        if self._observer is not None:
            self._observer.update(ops.convert_to_numpy(inputs))
        if not self.scheme.needs_range:
            return self.scheme.quantize(inputs, self.state, training=training)
        if training:
            # The range follows the batches from the first training step on;
            # the Python flag keeps the inference graph free of branches.
            self._update_range(inputs)
            self._calibrated = True
        elif not self._calibrated:
            return inputs
        state = {**self.state, "min": self.range_min, "max": self.range_max}
        return self.scheme.quantize(inputs, state, training=training)

    def _update_range(self, inputs):
        x = ops.stop_gradient(inputs)
        lo = ops.minimum(ops.min(x), 0.0)
        hi = ops.maximum(ops.max(x), 0.0)
        seen = self.range_observed > 0
        m = self.momentum
        self.range_min.assign(ops.where(seen, m * self.range_min + (1 - m) * lo, lo))
        self.range_max.assign(ops.where(seen, m * self.range_max + (1 - m) * hi, hi))
        self.range_observed.assign(1.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "scheme": serialize_scheme(self.scheme),
            "momentum": self.momentum,
        }


def _activation_schemes():
    from autoqnn.schemes import list_schemes

    return list_schemes("activation")


def reset_compiled_functions(model):
    """Drops a model's cached train/test/predict functions so they are retraced."""
    for attr in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)
