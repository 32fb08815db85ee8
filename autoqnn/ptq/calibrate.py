"""Calibration: observe activation ranges on data and set them on the quantizers.

Observers are pluggable: `register_observer("name", cls)` adds a method usable
as `autoqnn.calibrate(model, data, method="name")`. An observer sees the
numpy values reaching one `ActivationQuantizer`, batch by batch, and returns
the `(min, max)` range for the quantizer's bits.

Example:
    >>> import numpy as np, keras, autoqnn
    >>> inputs = keras.Input((4,)); model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> x = np.random.rand(16, 4).astype("float32")
    >>> qmodel = autoqnn.quantize(model, calibration_data=x[:1])
    >>> autoqnn.calibrate(qmodel, x, method="max")   # calibrate again, on more data
    >>> all(layer.is_calibrated for layer in autoqnn.activation_quantizers(qmodel))
    True
"""

from __future__ import annotations

import abc

import numpy as np

from autoqnn.data import iterate_batches
from autoqnn.layers.activation import ActivationQuantizer, reset_compiled_functions
from autoqnn.walk import iter_layers

_OBSERVERS: dict[str, type] = {}


def register_observer(name: str):
    """Class decorator registering an observer under a calibration method name."""

    def decorator(cls):
        _OBSERVERS[name] = cls
        return cls

    return decorator


def list_calibration_methods() -> list[str]:
    """Names usable as `method` in `calibrate`."""
    return sorted(_OBSERVERS)


class Observer(abc.ABC):
    """Collects statistics of one tensor over calibration batches.

    Args:
        bits: bits of the quantizer being calibrated.
        symmetric: whether the quantizer's grid is symmetric.
    """

    def __init__(self, bits: int, symmetric: bool = False):
        self.bits = bits
        self.symmetric = symmetric
        self.count = 0

    @abc.abstractmethod
    def update(self, values: np.ndarray):
        """Adds one batch of values."""

    @abc.abstractmethod
    def compute_range(self) -> tuple[float, float]:
        """The `(min, max)` range for the quantizer."""


@register_observer("max")
class MinMaxObserver(Observer):
    """The plain min/max over all calibration data."""

    def __init__(self, bits, symmetric=False):
        super().__init__(bits, symmetric)
        self.min = np.inf
        self.max = -np.inf

    def update(self, values):
        if values.size:
            self.min = min(self.min, float(np.min(values)))
            self.max = max(self.max, float(np.max(values)))
            self.count += values.size

    def compute_range(self):
        return min(self.min, 0.0), max(self.max, 0.0)


def activation_quantizers(model) -> list[ActivationQuantizer]:
    """Every `ActivationQuantizer` of a model, nested models included."""
    return [layer for _, layer in iter_layers(model) if isinstance(layer, ActivationQuantizer)]


def calibrate(model, data, method: str = "max", num_samples: int | None = None,
              batch_size: int = 64, verbose: int = 0, observer_options: dict | None = None):
    """Sets the range of every range-based activation quantizer from data.

    Args:
        model: a quantized model (from `autoqnn.quantize`).
        data: inputs: a numpy array, a list of arrays (multi-input), an
            `(x, y)` tuple, or a `tf.data.Dataset` of batches.
        method: an observer name (`list_calibration_methods()`).
        num_samples: use at most this many samples (None: all).
        batch_size: batch size for arrays.
        verbose: 1 shows a progress bar.
        observer_options: extra keyword arguments of the observer class
            (e.g. `{"percentile": 99.9}` for "percentile").

    Raises:
        ValueError: unknown method, empty data, or data that does not fit.
    """
    if method not in _OBSERVERS:
        raise ValueError(f"method must be one of {list_calibration_methods()}, got {method!r}")
    quantizers = [q for q in activation_quantizers(model) if q.scheme.needs_range]
    if not quantizers:
        return
    options = dict(observer_options or {})
    for q in quantizers:
        q._observer = _OBSERVERS[method](q.bits, getattr(q.scheme, "symmetric", False), **options)
    try:
        seen = 0
        for batch in iterate_batches(model, data, batch_size, num_samples, "calibration_data",
                                     verbose=verbose):
            model(batch, training=False)
            seen += 1
        if seen == 0:
            raise ValueError("calibration_data is empty: no batch to calibrate on")
        for q in quantizers:
            if q._observer.count:
                q.set_range(*q._observer.compute_range())
    finally:
        for q in quantizers:
            q._observer = None
    reset_compiled_functions(model)
