"""Fast forward passes for a sweep of per-layer bit changes (the sensitivity table).

A sensitivity sweep runs the whole quantized model once per (layer, bits) probe, and
only one layer's weights change between two probes. Run eagerly, every probe
re-quantizes every weight of the model and dispatches each op from Python: on
keras.applications MobileNetV2 that was over 90 % of the search's time. `WeightProbe`
instead writes each searchable layer's *fake-quantized* weights into that layer's weight
variables (marked `frozen_weights`, so the layer uses them as they are), traces one forward
function, and on each change re-quantizes only the layer that changed. On leaving, every
float weight and `frozen_weights` list is restored, whatever happened inside.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> from autoqnn.mixed.probe import WeightProbe
    >>> inputs = keras.Input((8,))
    >>> x = keras.layers.Dense(16, activation="relu", name="a")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(4, name="b")(x))
    >>> data = np.random.default_rng(0).random((32, 8), dtype=np.float32)
    >>> qmodel = autoqnn.quantize(model, weight_bits=8, calibration_data=data, verbose=0)
    >>> eager = np.asarray(qmodel(data))
    >>> layer = qmodel.get_layer("a")
    >>> with WeightProbe(qmodel, [layer]) as probe:
    ...     fast = probe.outputs([data])
    ...     with probe.changing(layer):
    ...         autoqnn.set_bits(qmodel, {"a": 2}, update_report=False)
    ...     low = probe.outputs([data])
    >>> bool(np.allclose(fast, eager, atol=1e-5)), bool(np.allclose(low, eager, atol=1e-3))
    (True, False)
    >>> bool(np.allclose(np.asarray(qmodel(data)), low, atol=1e-5))  # weights restored
    True
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import tensorflow as tf


class WeightProbe:
    """Context manager: `layers`' weights held fake-quantized, one traced forward pass.

    Args:
        model: the quantized model (the search's own copy: its weights are changed in
            place while inside, and restored on leaving).
        layers: its searchable weighted layers (`QuantizedWeightsMixin` with quantizers).
    """

    def __init__(self, model, layers):
        self.model, self.layers = model, list(layers)
        self._float = {}
        self._frozen = {}
        self._forward = None

    def __enter__(self):
        try:
            for layer in self.layers:
                self._frozen[id(layer)] = list(layer.frozen_weights)
                for attr in self._attrs(layer):
                    self._float[(id(layer), attr)] = keras.ops.convert_to_numpy(
                        getattr(layer, attr))
                self._quantize(layer)
        except BaseException:
            self._restore()
            raise
        model = self.model
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                    autograph=False)
        return self

    def __exit__(self, *exc):
        self._restore()
        return False

    def _attrs(self, layer):
        """The weights of `layer` the probe holds quantized (those the user did not freeze)."""
        return [a for a in layer.weight_quantizers if a not in self._frozen[id(layer)]]

    def _quantize(self, layer):
        """Writes `layer`'s fake-quantized weights (at its current bits) into its variables
        and marks them frozen, so the traced pass reads them as they are."""
        attrs = self._attrs(layer)
        values = {a: layer.quantized_weight(a) for a in attrs}
        for attr, value in values.items():
            getattr(layer, attr).assign(value)
        layer.frozen_weights = self._frozen[id(layer)] + attrs

    def _unquantize(self, layer):
        """Puts `layer`'s float weights back and unfreezes them."""
        frozen = self._frozen[id(layer)]
        for attr in layer.weight_quantizers:
            key = (id(layer), attr)
            if key in self._float:
                getattr(layer, attr).assign(self._float[key])
        layer.frozen_weights = list(frozen)

    def _restore(self):
        for layer in self.layers:
            if id(layer) in self._frozen:
                self._unquantize(layer)

    @contextlib.contextmanager
    def changing(self, layer):
        """Inside, `layer` holds its float weights (change its bits, refine its clip);
        on leaving, its weights are quantized again at its new bits."""
        self._unquantize(layer)
        try:
            yield layer
        finally:
            self._quantize(layer)

    def outputs(self, batches) -> np.ndarray:
        """The model's outputs on `batches`, concatenated (numpy)."""
        parts = [keras.ops.convert_to_numpy(self._forward(b)) for b in batches]
        return np.concatenate(parts, axis=0)
