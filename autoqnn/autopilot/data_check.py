"""A warning when calibration data looks unlike what the model was trained on.

A model trained on inputs in [0, 1] and calibrated on uint8 images in [0, 255] quantizes
to nonsense without any error. The first BatchNormalization layer of the model remembers
the variance of its inputs in training (`moving_variance`); when the calibration inputs
give a variance two orders of magnitude away from it, the data is most likely in another
range or another preprocessing, and `check_input_range` warns naming the factor.

Example:
    >>> import keras, numpy as np, warnings
    >>> from autoqnn.autopilot.data_check import check_input_range
    >>> inputs = keras.Input((4,))
    >>> x = keras.layers.Dense(8, name="fc")(inputs)
    >>> model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(x))
    >>> images = np.random.default_rng(0).random((16, 4)).astype("float32") * 255
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     ratio = check_input_range(model, images)
    >>> ratio > 100, any("does not look like" in str(w.message) for w in caught)
    (True, True)
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

RATIO = 100.0
"""Variance ratio (either way) beyond which the data is reported."""
SAMPLES = 256


def _first_batchnorm(model):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer
    return None


def check_input_range(model, inputs) -> float | None:
    """Warns when `inputs` give the model's first top-level BatchNormalization a variance
    over `RATIO` times away from its training statistics; also when they are integers
    above 1 (e.g. uint8 images). Returns the ratio (None when not measurable)."""
    first = inputs[0] if isinstance(inputs, list) else inputs
    if np.issubdtype(np.asarray(first).dtype, np.integer) and np.max(first) > 1:
        warnings.warn(f"calibration_data holds integers up to {np.max(first)} "
                      f"({np.asarray(first).dtype}); if the model was trained on scaled "
                      "floats (e.g. 0-1), scale the data the same way", stacklevel=4)
    bn = _first_batchnorm(model)
    if bn is None or not hasattr(model, "inputs") or getattr(bn, "moving_variance", None) is None:
        return None
    try:
        probe = keras.Model(model.inputs, bn.input)
    except (ValueError, TypeError, AttributeError):
        return None
    part = [x[:SAMPLES] for x in inputs] if isinstance(inputs, list) else inputs[:SAMPLES]
    seen = np.asarray(probe.predict(part, verbose=0), "float64")
    seen = seen.reshape(-1, seen.shape[-1])
    observed = float(np.mean(np.var(seen, axis=0)))
    trained = float(np.mean(keras.ops.convert_to_numpy(bn.moving_variance)))
    if observed <= 0 or trained <= 0:
        return None
    ratio = observed / trained
    if ratio > RATIO or ratio < 1 / RATIO:
        warnings.warn(f"calibration_data does not look like the model's training data: the "
                      f"inputs of {bn.name!r} vary {ratio:.3g}x as much as in training "
                      "(BatchNorm moving variance); check the input range and preprocessing "
                      "(e.g. 0-255 against 0-1)", stacklevel=4)
    return ratio
