"""`ActivationQuantizer`: the layer QAG inserts to quantize feature maps.

Its `quantizer` (a `Quantizer`: one scheme with fixed or trainable bits, or a
mixture) does the math. The layer owns the range of its input (`range_min`,
`range_max`, per tensor or per channel) for range-based schemes (uniform,
minifloat): calibration sets it (`autoqnn.calibrate`, pluggable observers);
while training it follows an exponential moving average (EMA) of the batch
min/max, or, with `learn_range=True` on the uniform scheme, it is trained (LSQ+
gradients). Until a range is observed the layer passes its input through
unchanged and `is_calibrated` is False; the quantization report says so.
Nothing is assigned in an inference forward pass.

A range no data calibrated initialises itself in training (plain `fit` works
without `autoqnn.calibrate`): the first batch sets it, then it is the mean of
the batches seen (an EMA with momentum `k / (k + 1)` after `k` batches, the
bias-corrected start) until that momentum reaches `momentum`, from where the
plain EMA goes on. A range from the untrained network's first batch alone is
too narrow once the weights move, and a fixed range passes no gradient to the
values it clips. `range_observed` holds the state: 0 never observed, 1 set
(calibrated, learned, or past the warm-up), `k + 1` after `k` warm-up batches.

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

import contextlib

import keras
import numpy as np
from keras import ops

from autoqnn.layers.quantizer import Quantizer
from autoqnn.schemes import get_scheme, serialize_scheme


@keras.saving.register_keras_serializable(package="autoqnn")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a feature map with an activation-capable scheme.

    Args:
        scheme: scheme name, config dict or `Scheme` (must support activations).
        bits: bit width (default: the scheme's default; ignored when `scheme`
            is an instance).
        momentum: EMA momentum of the range while training (fixed ranges).
        range_axis: None for one range per tensor, or -1 for one range per
            channel (last axis). TFLite activations are per tensor.
        quantizer: a `Quantizer` or its config (trainable bits, a scheme
            mixture, ...) instead of `scheme` / `bits`.
        **kwargs: scheme options when `scheme` is a name (e.g. symmetric=False),
            plus standard layer keyword arguments (name, dtype).
    """

    def __init__(self, scheme="uniform", bits=None, momentum=0.99, range_axis=None,
                 quantizer=None, **kwargs):
        layer_kwargs = {
            k: kwargs.pop(k) for k in list(kwargs) if k in ("name", "dtype", "trainable")
        }
        super().__init__(**layer_kwargs)
        if quantizer is not None:
            if kwargs:
                raise TypeError(f"scheme options {sorted(kwargs)} cannot be combined with "
                                "quantizer=")
            quantizer = Quantizer.from_spec(quantizer)
        else:
            if isinstance(scheme, str):
                if scheme == "uniform":
                    kwargs.setdefault("symmetric", False)
                scheme = get_scheme(scheme, bits=bits, **kwargs)
            else:
                scheme = get_scheme(scheme)
            quantizer = Quantizer(scheme=scheme)
        for candidate in quantizer.candidates:
            if not candidate.supports_activations:
                raise ValueError(
                    f"scheme {candidate.name!r} cannot quantize activations; activation "
                    f"schemes: {_activation_schemes()}"
                )
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if range_axis not in (None, -1):
            raise ValueError(f"range_axis must be None (per tensor) or -1 (per channel), got "
                             f"{range_axis!r}")
        self.quantizer = quantizer
        self.momentum = float(momentum)
        self.range_axis = range_axis
        self._calibrated = False
        self.supports_masking = True

    @property
    def scheme(self):
        """The scheme (a mixture's current choice)."""
        return self.quantizer.scheme

    @property
    def bits(self):
        return self.quantizer.bits

    @property
    def state(self) -> dict:
        """The state dict of the (chosen) scheme."""
        return self.quantizer.state

    @property
    def needs_range(self) -> bool:
        return any(c.needs_range for c in self.quantizer.candidates)

    @property
    def learns_range(self) -> bool:
        return any(getattr(c, "learn_range", False) for c in self.quantizer.candidates)

    def build(self, input_shape):
        if self.needs_range:
            shape = () if self.range_axis is None else (int(input_shape[-1]),)
            trainable = self.learns_range
            self.range_min = self.add_weight(
                name="range_min", shape=shape, initializer="zeros", trainable=trainable
            )
            self.range_max = self.add_weight(
                name="range_max", shape=shape, initializer="zeros", trainable=trainable
            )
            self.range_observed = self.add_weight(
                name="range_observed", shape=(), initializer="zeros", trainable=False
            )
        self.quantizer.build(self, "activation", tuple(input_shape[1:]), self.range_axis,
                             role="activation")
        if self.needs_range:
            for candidate, state in zip(self.quantizer.candidates, self.quantizer.states):
                if candidate.needs_range:
                    state.update(min=self.range_min, max=self.range_max)

    @property
    def is_calibrated(self) -> bool:
        """True once a range was observed (and learned steps initialised)."""
        if self.needs_range and self.built:
            self._calibrated = float(ops.convert_to_numpy(self.range_observed)) > 0
            if not self._calibrated:
                return False
        return self.quantizer.is_initialized() if self.built else not self.needs_range

    def set_range(self, min_value, max_value):
        """Sets the quantization range (the calibration result): floats, or per-channel
        arrays when `range_axis=-1`.

        Compiled predict/evaluate functions traced before calibration still
        pass activations through: `autoqnn.calibrate` resets them; when
        calling this directly on a model that already ran, reset them with
        `autoqnn.layers.reset_compiled_functions(model)`.
        """
        if not self.built:
            raise ValueError(f"layer {self.name!r} is not built; call it on data first")
        if not self.needs_range:
            raise ValueError(f"scheme {self.scheme.name!r} of layer {self.name!r} has no range")
        shape = tuple(self.range_min.shape)
        lo = np.minimum(np.asarray(min_value, "float32"), 0.0)
        hi = np.maximum(np.asarray(max_value, "float32"), 0.0)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise ValueError(f"range of {self.name!r} must be finite, got [{lo}, {hi}]")
        self.range_min.assign(np.broadcast_to(lo, shape))
        self.range_max.assign(np.broadcast_to(hi, shape))
        self.range_observed.assign(1.0)
        self._calibrated = True

    def initialize(self, stats: dict):
        """Calibration result: sets the range (range schemes) and the schemes'
        data-dependent state (LSQ step and signedness, PACT clip) from
        `{"min", "max", "mean_abs"}` (per channel when `range_axis=-1`)."""
        if self.needs_range:
            self.set_range(stats["min"], stats["max"])
        self.quantizer.initialize(stats)

    def get_range(self):
        """`(min, max)` as floats (arrays per channel), or None when not calibrated."""
        if not self.needs_range or not self.is_calibrated:
            return None
        lo = ops.convert_to_numpy(self.range_min)
        hi = ops.convert_to_numpy(self.range_max)
        if self.range_axis is None:
            return float(lo), float(hi)
        return lo, hi

    def load_own_variables(self, store):
        super().load_own_variables(store)
        if self.needs_range:
            self._calibrated = float(ops.convert_to_numpy(self.range_observed)) > 0

    def call(self, inputs, training=False):
        observer = _INPUT_OBSERVERS.get(id(self)) if _INPUT_OBSERVERS else None
        if observer is not None:
            observer(ops.convert_to_numpy(inputs))
        if self.needs_range:
            if training:
                # The range follows the batches from the first training step on (a
                # learned range is only initialised from its first batch); the Python
                # flag keeps the inference graph of an observed range free of branches.
                self._update_range(inputs)
                self._calibrated = True
            elif not self._calibrated:
                # Not observed yet: pass through, and quantize once fit or calibrate has
                # observed it, also in a predict function traced now and cached.
                return ops.cond(self.range_observed > 0,
                                lambda: ops.cast(self.quantizer(inputs), inputs.dtype),
                                lambda: inputs)
        outputs = self.quantizer(inputs, training=training)
        if training:
            if self.quantizer.sqnr_weight:
                self.add_loss(self.quantizer.noise_loss(inputs, outputs))
            decay = self.quantizer.regularization_loss()
            if decay is not None:
                self.add_loss(decay)
        return outputs

    def _update_range(self, inputs):
        x = ops.stop_gradient(inputs)
        axes = tuple(range(len(x.shape))) if self.range_axis is None else tuple(
            range(len(x.shape) - 1))
        dtype = self.range_min.dtype
        lo = ops.cast(ops.minimum(ops.min(x, axis=axes), 0.0), dtype)
        hi = ops.cast(ops.maximum(ops.max(x, axis=axes), 0.0), dtype)
        state = self.range_observed
        if self.learns_range:  # the first batch initialises it, its gradients train it
            seen = state > 0
            self.range_min.assign(ops.where(seen, self.range_min, lo))
            self.range_max.assign(ops.where(seen, self.range_max, hi))
            self.range_observed.assign(1.0)
            return
        # k batches averaged so far while warming up (0: never observed); see the module
        # docstring. A set range (state 1) follows the plain EMA.
        warming = ops.not_equal(state, 1.0)
        batches = ops.maximum(state - 1.0, 0.0)
        m = ops.where(warming, ops.minimum(batches / (batches + 1.0), self.momentum),
                      self.momentum)
        self.range_min.assign(m * self.range_min + (1.0 - m) * lo)
        self.range_max.assign(m * self.range_max + (1.0 - m) * hi)
        seen = batches + 1.0
        going_on = ops.logical_and(warming, seen / (seen + 1.0) < self.momentum)
        self.range_observed.assign(ops.where(going_on, seen + 1.0, 1.0))  # else: the EMA's

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = {**super().get_config(), "momentum": self.momentum}
        if self.quantizer.is_final and not self.quantizer.sqnr_weight:
            config["scheme"] = serialize_scheme(self.quantizer.candidates[0])
        else:
            config["quantizer"] = self.quantizer.get_config()
        if self.range_axis is not None:
            config["range_axis"] = self.range_axis
        return config


_INPUT_OBSERVERS: dict = {}


@contextlib.contextmanager
def observing_inputs(observers: dict):
    """While active, each listed quantizer hands the values reaching it to its callback.

    For quantizers that are not nodes of a model's graph (those inside composite
    layers, `autoqnn.layers.composite`): calibration runs the model eagerly in
    this context to observe them. Nothing is recorded in traced (compiled) calls.

    Args:
        observers: `{id(activation quantizer): callback(numpy array)}`.
    """
    _INPUT_OBSERVERS.update(observers)
    try:
        yield
    finally:
        for key in observers:
            _INPUT_OBSERVERS.pop(key, None)


def _activation_schemes():
    from autoqnn.schemes import list_schemes

    return list_schemes("activation")


def reset_compiled_functions(model):
    """Drops a model's cached train/test/predict functions so they are retraced."""
    for attr in ("train_function", "test_function", "predict_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)
