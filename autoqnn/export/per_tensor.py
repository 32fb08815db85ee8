"""Per-tensor activation ranges for TFLite: the documented approximation of per-channel ones.

TFLite quantizes each activation tensor with one scale and zero point.
A model trained with per-channel activation ranges (`activation_scheme=
"acd"`, or `range_axis=-1`) has one range per channel, so before export each
such quantizer becomes a per-tensor uniform asymmetric quantizer at the same
bits:

* without data, its range is the union of the channel ranges
  `[min_c l_c, max_c u_c]` (no value that the per-channel grid reached is
  clipped; channels with a narrow range lose resolution);
* with `calibration_data`, the range is calibrated again on the per-tensor
  grid with `method` (default "mse", which trades clipping for resolution);
  quantizers that were per-tensor already keep their ranges.

This is an approximation: the accuracy of the result is measured, not assumed
(`tools/bench_lowbit.py` reports it). Folding per-channel scales into the
neighbouring weights would be exact only where the consumer is depthwise
(input and output channel coincide) and the producer positively homogeneous
(ReLU, not ReLU6); it is not done.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> x = np.random.default_rng(0).random((32, 6)).astype("float32")
    >>> inputs = keras.Input((6,))
    >>> model = keras.Model(inputs, keras.layers.Dense(3, activation="relu")(inputs))
    >>> qmodel = autoqnn.quantize(model, weight_bits=4, activation_bits=4, scheme="acd",
    ...                           activation_scheme="acd", calibration_data=x, verbose=0)
    >>> from autoqnn.export.per_tensor import per_tensor_activations
    >>> flat = per_tensor_activations(qmodel)
    >>> [layer.range_axis for layer in autoqnn.activation_quantizers(flat)]
    [None, None]
"""

from __future__ import annotations

import numpy as np

from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.ptq.calibrate import activation_quantizers, calibrate
from autoqnn.report import float_reasons, quantization_report
from autoqnn.rewrite.clone import Change, clone_quantized
from autoqnn.schemes import get_scheme, serialize_scheme


def per_tensor_activations(model, calibration_data=None, method: str = "mse",
                           num_samples: int | None = 512, bits: int | None = None):
    """A copy of `model` whose per-channel activation ranges are per-tensor (see the module doc).

    Args:
        model: a quantized model with final (fixed-bits, one-scheme) activation quantizers.
        calibration_data: inputs to calibrate the new per-tensor ranges on
            (None: the union of the channel ranges).
        method: the calibration observer with data.
        num_samples: calibration samples.
        bits: bits of the new per-tensor quantizers (None: the same bits; 8 gives
            TFLite's own int8 activations, a finer grid than the per-channel one at
            low bits, so closer to the trained model but not the same function).

    Returns:
        A new model (the input is unchanged) with `autoqnn_report`; the
        converted quantizers' paths are in `model.per_tensor_converted`.

    Raises:
        ValueError: a per-channel quantizer that is not final or not calibrated.
    """
    if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int)
                             or not 2 <= bits <= 16):
        raise ValueError(f"bits must be an int in [2, 16] or None, got {bits!r}")
    converted, clones = [], set()

    def change(path, layer):
        if not isinstance(layer, ActivationQuantizer) or layer.range_axis is None:
            return None
        if not layer.quantizer.is_final:
            raise ValueError(f"activation quantizer {path!r} has trainable bits or a mixture; "
                             "finalize the model first (autoqnn.finalize)")
        rng = layer.get_range()
        if rng is None:
            raise ValueError(f"activation quantizer {path!r} is not calibrated")
        new_bits = int(layer.quantizer.scheme.bits) if bits is None else bits
        scheme = get_scheme("uniform", bits=new_bits, symmetric=False)
        config = layer.get_config()
        for key in ("quantizer", "scheme", "range_axis"):
            config.pop(key, None)
        config["scheme"] = serialize_scheme(scheme)
        lo, hi = float(np.min(rng[0])), float(np.max(rng[1]))
        converted.append(path)

        def after(clone, lo=lo, hi=hi):
            clone.set_range(lo, hi)
            clones.add(id(clone))

        dropped = {v.name: None for v in layer.weights}  # per-channel shapes; set in after()
        return Change(ActivationQuantizer.from_config(config), dropped, {}, after)

    flat = clone_quantized(model, change)
    if converted and calibration_data is not None:
        kept = [(q, [np.array(v) for v in q.weights]) for q in activation_quantizers(flat)
                if id(q) not in clones]
        calibrate(flat, calibration_data, method=method, num_samples=num_samples)
        for q, values in kept:
            for variable, value in zip(q.weights, values):
                variable.assign(value)
    flat.autoqnn_report = quantization_report(flat, float_reasons(model))
    flat.per_tensor_converted = converted
    return flat
