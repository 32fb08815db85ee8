"""Weight-side PTQ: MSE-optimal clipping of uniform weight grids and bias correction.

`search_weight_clips` picks, per channel (or per tensor), the clip ratio that
minimises the squared error of the quantized weights and writes it into the
layer's `<weight>_clip` state variable, the multiplier of the weight range
the uniform scheme reads. The search quantizes with the layer's own scheme,
so the chosen ratio is exact for the grid the model uses.

`correct_biases` removes the mean output shift that weight quantization
causes: for each quantized layer with a bias (BN-folded convolutions have
one), it feeds the layer its inputs from the quantized model, compares the
pre-activation outputs with quantized and float weights, and subtracts the
per-channel mean difference from the bias (empirical bias correction,
Nagel et al. 2019), layer by layer in graph order.

Example:
    >>> import keras, numpy as np, autoqnn
    >>> from autoqnn.ptq.weights import search_weight_clips
    >>> inputs = keras.Input((16,))
    >>> model = keras.Model(inputs, keras.layers.Dense(8, name="fc")(inputs))
    >>> qmodel = autoqnn.quantize(model, weight_bits=3, activation_bits=None)
    >>> clips = search_weight_clips(qmodel)
    >>> clips["fc/kernel"].shape, bool(np.all(clips["fc/kernel"] <= 1.0))
    ((8,), True)
"""

from __future__ import annotations

import keras
import numpy as np

from autoqnn import ops as qops
from autoqnn.data import iterate_batches
from autoqnn.layers.quantized import QUANTIZED_LAYERS, QuantizedWeightsMixin
from autoqnn.walk import iter_layers

CLIP_RATIOS = np.linspace(0.3, 1.0, 36)
_FLOAT_CLASS = {quantized: original for original, quantized in QUANTIZED_LAYERS.items()}


def quantized_layers(model) -> list:
    """Quantized layers of a model in graph order, nested models included."""
    return [layer for _, layer in iter_layers(model) if isinstance(layer, QuantizedWeightsMixin)]


def _clip_targets(layer):
    """(weight name, scheme, clip variable) of each weight with a clip state."""
    for attr, quantizer in layer.weight_quantizers.items():
        if not quantizer.is_final:
            continue
        clip = quantizer.state.get("clip")
        if clip is not None:
            yield attr, quantizer.scheme, clip


def search_weight_clips(model, ratios=CLIP_RATIOS, layers=None) -> dict:
    """Sets each uniform weight grid's clip ratio to its MSE-optimal value.

    Args:
        model: a quantized model.
        ratios: candidate ratios in (0, 1] (1 keeps the full weight range).
        layers: only these layer objects (None: every quantized layer).

    Returns:
        `{"layer/weight": chosen ratios (numpy, the clip variable's shape)}`.
    """
    ratios = np.asarray(ratios, "float32")
    if ratios.ndim != 1 or not ratios.size or np.any(ratios <= 0) or np.any(ratios > 1):
        raise ValueError(f"ratios must be a non-empty 1-D array in (0, 1], got {ratios!r}")
    chosen = {}
    for layer in quantized_layers(model) if layers is None else layers:
        for attr, scheme, clip in _clip_targets(layer):
            weight = keras.ops.convert_to_tensor(getattr(layer, attr))
            layer_axis = layer.weight_channel_axes[attr]
            axis = scheme.channel_axis(layer_axis)
            reduce = qops.reduce_axes(len(weight.shape), axis)
            w = keras.ops.convert_to_numpy(weight)
            shape = tuple(clip.shape)
            best_err = np.full(shape, np.inf)
            best = np.ones(shape, "float32")
            for ratio in ratios:
                candidate = np.full(shape, ratio, "float32")
                q = scheme.quantize(weight, {"clip": candidate}, channel_axis=layer_axis)
                err = np.sum((keras.ops.convert_to_numpy(q) - w) ** 2, axis=reduce).reshape(shape)
                better = err < best_err
                best_err = np.where(better, err, best_err)
                best = np.where(better, ratio, best)
            clip.assign(best)
            chosen[f"{layer.name}/{attr}"] = best
    return chosen


def _float_call(layer, x):
    """Pre-activation outputs of `layer` on `x` with quantized and with float weights."""
    float_cls = _FLOAT_CLASS.get(type(layer))
    activation = layer.activation
    layer.activation = keras.activations.linear
    try:
        quantized = layer.call(x)
        reference = float_cls.call(layer, x)
    finally:
        layer.activation = activation
    return keras.ops.convert_to_numpy(quantized), keras.ops.convert_to_numpy(reference)


def _bias_correctable(layer):
    return (
        getattr(layer, "bias", None) is not None
        and type(layer) in _FLOAT_CLASS
        and hasattr(layer, "activation")
        and len(layer._inbound_nodes) == 1
        and getattr(layer, "data_format", "channels_last") == "channels_last"
    )


def correct_biases(model, data, num_samples: int | None = 512, batch_size: int = 256,
                   verbose: int = 0) -> dict:
    """Empirical bias correction of the weight quantization error (see the module doc).

    Only top-level layers of a Functional model with a bias, channels-last
    outputs and a single call site are corrected; the others are left as is.
    All layers are corrected from one forward pass of the quantized model.

    Args:
        model: a quantized (and calibrated) model.
        data: inputs, as accepted by `autoqnn.calibrate`.
        num_samples: samples used (None: all).
        batch_size: batch size of the forward passes.
        verbose: 1 shows progress.

    Returns:
        `{layer name: the per-channel shift subtracted from its bias}`.
    """
    layers = [layer for layer in model.layers if isinstance(layer, QuantizedWeightsMixin)
              and _bias_correctable(layer)]
    batches = list(iterate_batches(model, data, batch_size, num_samples, "calibration_data",
                                   verbose=verbose))
    if not batches:
        raise ValueError("calibration_data is empty: no batch for bias correction")
    if not layers:
        return {}
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    extractor = keras.Model(inputs, [layer.input for layer in layers])
    totals = [0.0] * len(layers)
    count = [0] * len(layers)
    for batch in batches:
        features = extractor(batch, training=False)
        if len(layers) == 1:
            features = [features]
        for i, (layer, x) in enumerate(zip(layers, features)):
            quantized, reference = _float_call(layer, x)
            diff = (quantized - reference).reshape(-1, quantized.shape[-1])
            totals[i] = totals[i] + diff.sum(axis=0)
            count[i] += diff.shape[0]
    shifts = {}
    for layer, total, n in zip(layers, totals, count):
        shift = (total / max(n, 1)).astype("float32")
        bias = keras.ops.convert_to_numpy(layer.bias)
        if shift.shape == bias.shape and np.all(np.isfinite(shift)):
            layer.bias.assign(bias - shift)
            shifts[layer.name] = shift
    return shifts
