"""Calibration: observe activation ranges on data and set them on the quantizers.

Observers are pluggable: `register_observer("name", cls)` adds a method usable
as `autoqnn.calibrate(model, data, method="name")`. An observer sees the
numpy values reaching one `ActivationQuantizer`, batch by batch, and returns
the `(min, max)` range for the quantizer's bits.

Example:
    >>> import numpy as np, keras, autoqnn
    >>> inputs = keras.Input((4,)); model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> x = np.random.rand(16, 4).astype("float32")
    >>> qmodel = autoqnn.quantize(model, calibration_data=x[:1], verbose=0)
    >>> autoqnn.calibrate(qmodel, x, method="max")   # calibrate again, on more data
    >>> all(layer.is_calibrated for layer in autoqnn.activation_quantizers(qmodel))
    True
"""

from __future__ import annotations

import abc

import keras
import numpy as np

from autoqnn.data import iterate_batches
from autoqnn.layers.activation import (
    ActivationQuantizer,
    observing_inputs,
    reset_compiled_functions,
)
from autoqnn.walk import iter_layers, iter_sublayers

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


class TensorStatistics:
    """What calibration collects for one activation quantizer: its observer(s)
    (one per channel for per-channel ranges) and the mean of |x|."""

    def __init__(self, quantizer: ActivationQuantizer, method: str, options: dict):
        bits = quantizer.quantizer.candidates[0].bits
        symmetric = getattr(quantizer.scheme, "symmetric", False)
        self.per_channel = quantizer.range_axis is not None
        channels = int(quantizer.range_min.shape[0]) if (
            self.per_channel and quantizer.needs_range) else 1
        self.observers = [_OBSERVERS[method](bits, symmetric, **options) for _ in range(channels)]
        self.abs_sum = np.zeros(channels if self.per_channel else (), "float64")
        self.min = np.full(channels if self.per_channel else (), np.inf)
        self.count = 0

    def update(self, values: np.ndarray):
        values = np.asarray(values, "float32")
        if not values.size:
            return
        if self.per_channel:
            flat = values.reshape(-1, values.shape[-1])
            for c, observer in enumerate(self.observers):
                observer.update(flat[:, c])
            self.abs_sum = self.abs_sum + np.abs(flat).sum(axis=0)
            self.min = np.minimum(self.min, flat.min(axis=0))
            self.count += flat.shape[0]
        else:
            self.observers[0].update(values)
            self.abs_sum = self.abs_sum + float(np.abs(values).sum())
            self.min = min(float(self.min), float(values.min()))
            self.count += values.size

    def result(self) -> dict:
        ranges = [observer.compute_range() for observer in self.observers]
        lo = np.array([r[0] for r in ranges], "float32")
        hi = np.array([r[1] for r in ranges], "float32")
        if not self.per_channel:
            lo, hi = lo[0], hi[0]
        return {"min": lo, "max": hi, "mean_abs": (self.abs_sum / max(self.count, 1)),
                "data_min": self.min}


def _graph_nodes(model):
    """`(layer, input tensors)` of each call in `model`'s own graph, in depth order."""
    by_depth = getattr(model, "_nodes_by_depth", None)
    if by_depth is None:  # not a graph network
        return []
    nodes = [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]
    return [(node.operation, list(node.input_tensors)) for node in nodes]


def observe(model, batches, statistics: dict):
    """One calibration pass: feeds `batches` through `model` and hands the values
    reaching each activation quantizer of `statistics` (`{id(layer): TensorStatistics}`)
    to its statistics. Probe models output those values, nested models are
    observed with the values reaching them, quantizers inside composite layers
    (not graph nodes) while the probe runs eagerly; no layer is modified."""
    targets, nested, internal = [], [], []
    for layer, inputs in _graph_nodes(model):
        if isinstance(layer, ActivationQuantizer) and id(layer) in statistics:
            targets.append((layer, inputs[0]))
        elif isinstance(layer, keras.Model) and any(
                id(q) in statistics for q in activation_quantizers(layer)):
            nested.append((layer, inputs))
        elif isinstance(layer, keras.layers.Layer):
            internal += [q for _, q in iter_sublayers(layer, "")
                         if isinstance(q, ActivationQuantizer) and id(q) in statistics]
    outputs = [t for _, t in targets] + [t for _, ts in nested for t in ts]
    if internal:  # run the whole model, so every composite layer is called
        outputs += list(model.outputs)
    if not outputs:
        return
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, outputs)
    nested_values = [[] for _ in nested]
    with observing_inputs({id(q): statistics[id(q)].update for q in internal}):
        for batch in batches:
            values = probe(batch, training=False)
            values = [values] if len(outputs) == 1 else list(values)
            for (layer, _), v in zip(targets, values[:len(targets)]):
                statistics[id(layer)].update(keras.ops.convert_to_numpy(v))
            rest = values[len(targets):]
            for i, (_, tensors) in enumerate(nested):
                taken, rest = rest[:len(tensors)], rest[len(tensors):]
                nested_values[i].append([keras.ops.convert_to_numpy(v) for v in taken])
    for (inner, _), recorded in zip(nested, nested_values):
        inner_batches = [b[0] if len(b) == 1 else b for b in recorded]
        observe(inner, inner_batches, statistics)


def calibrate(model, data, method: str = "max", num_samples: int | None = None,
              batch_size: int = 64, verbose: int = 0, observer_options: dict | None = None):
    """Sets the range (and learned-step / clip initial values) of every activation
    quantizer from data.

    A calibration pass: the values reaching each quantizer are observed on
    `data` (quantizers upstream as they are now), then each quantizer gets
    its range from the observer (`initialize`): uniform / minifloat ranges,
    LSQ steps and signedness, PACT clips. The model's layers are not hooked.

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
    quantizers = activation_quantizers(model)
    if not quantizers:
        return
    options = dict(observer_options or {})
    statistics = {id(q): TensorStatistics(q, method, options) for q in quantizers}
    batches = list(iterate_batches(model, data, batch_size, num_samples, "calibration_data",
                                   verbose=verbose))
    if not batches:
        raise ValueError("calibration_data is empty: no batch to calibrate on")
    observe(model, batches, statistics)
    for q in quantizers:
        stats = statistics[id(q)]
        if stats.count:
            q.initialize(stats.result())
    reset_compiled_functions(model)
