"""Multiplier-less inference of ASD layers: integer activations, shifts and adds only.

An `asd` weight is `alpha * n`, the integer `n` having at most `digits` non-zero
signed digits (non-adjacent form), `n = sum_k s_k * 2^e_k`, `s_k = ±1`. On an
input on a uniform grid, `x = step * a` with `a` integer, output channel `c` is
`act(alpha_c * step * acc_c + bias_c)`, `acc_c = sum_{tap t, digit k} s_tk * (a_t << e_tk)`.

`shift_add_forward` runs a quantized model so: each layer with a final
(fixed-bits, one-scheme) `asd` kernel (Dense, Conv1D, Conv2D, DepthwiseConv2D;
channels_last, any strides and dilation, "same"/"valid") accumulates in int64
by `np.left_shift` and masked `np.add`/`np.subtract` over whole (batch,
spatial) slices, one (tap, digit) at a time; the kernel loop multiplies
nothing. `alpha * step`, the bias and the activation come once at the end.
Every other layer runs as plain Keras.

The grid is that of the `ActivationQuantizer` producing the input (possibly
through max pooling, Flatten, Reshape, padding, cropping, dropout), read by
the exporter's probe `autoqnn.export.lowering.plan_activation` (one range per
tensor, <= 256 levels: up to 8 bits). 0 is one of its levels `step * a`, so
the sum runs over the zero-centred integers `a = q - z` (`q` the unsigned
code, `z = -low / step`): padding is 0 and no zero-point correction term is
needed. Inputs are checked to be on the grid (`|x / step - a| <= 1e-3`).

Example:
    >>> import keras, numpy as np, autoqnn
    >>> inputs = keras.Input((6,))
    >>> model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))
    >>> x = np.random.default_rng(0).random((8, 6), dtype=np.float32)
    >>> qmodel = autoqnn.quantize(model, scheme="asd", weight_bits=5, calibration_data=x,
    ...                           verbose=0)
    >>> bool(np.allclose(autoqnn.shift_add_forward(qmodel, x), qmodel(x), atol=1e-5))
    True
    >>> from autoqnn.export.shift_add_ops import signed_digits
    >>> signed_digits(7), signed_digits(-3)           # 7 = 8 - 1; -3 = -4 + 1
    ([(-1, 0), (1, 3)], [(1, 0), (-1, 2)])
    >>> row = autoqnn.adder_report(qmodel).layers[0]
    >>> row.name, row.weights, row.weight_bytes        # 18 weights at 5 bits
    ('fc', 18, 12)
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import tree

from autoqnn.export.bitpack import packed_size
from autoqnn.export.grid import channels_last
from autoqnn.export.lowering import ExportError, plan_activation
from autoqnn.export.shift_add_ops import accumulate, digit_planes, shift_add_matmul
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.folded import FoldedBatchNorm
from autoqnn.layers.quantized import QuantConv1D, QuantConv2D, QuantDense, QuantDepthwiseConv2D
from autoqnn.report import quantization_report
from autoqnn.schemes.asd import asd_levels, naf_weight
from autoqnn.walk import iter_layers

_ON_GRID_TOL = 1e-3  # |x/step - round(x/step)|, and |w/alpha - n|: float32 noise only
_GRID_PRESERVING = tuple(getattr(keras.layers, f"{kind}{rank}D") for rank in (1, 2, 3) for kind in (
    "MaxPooling", "GlobalMaxPooling", "ZeroPadding", "Cropping", "SpatialDropout")) + (
    keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute, keras.layers.Dropout,
    keras.layers.Identity, FoldedBatchNorm)
_SUPPORTED = (QuantDense, QuantConv1D, QuantConv2D, QuantDepthwiseConv2D)


@dataclasses.dataclass
class _AsdKernel:
    ints: np.ndarray  # the kernel's integers n, kernel shape, output channels last
    alpha: np.ndarray  # (channels,) float64
    scheme: object

    @property
    def by_channel(self) -> np.ndarray:
        """`(taps, channels)`: depthwise `(kh, kw, cin, mult)` -> `(kh*kw, cin*mult)`."""
        return self.ints.reshape(-1, self.alpha.size)


def _asd_kernel(path, layer) -> _AsdKernel | None:
    """The integer kernel of an ASD layer; None for layers that are not ASD."""
    quantizers = getattr(layer, "weight_quantizers", None) or {}
    asd = {a: q for a, q in quantizers.items() if any(c.name == "asd" for c in q.candidates)}
    if not asd:
        return None
    for attr, quantizer in asd.items():
        if not quantizer.is_final:
            raise ValueError(f"layer {path!r}: the asd quantizer of {attr!r} is not final "
                             "(trainable bits or a scheme mixture); run autoqnn.finalize first")
    if (not isinstance(layer, _SUPPORTED) or set(asd) != {"kernel"}
            or getattr(layer, "data_format", "channels_last") != "channels_last"
            or getattr(layer, "groups", 1) != 1 or getattr(layer, "padding", "") == "causal"):
        raise ValueError(f"layer {path!r} ({type(layer).__name__}): shift-add inference "
                         "supports asd kernels of Dense, Conv1D, Conv2D and DepthwiseConv2D, "
                         "channels_last, not grouped or causal")
    scheme = asd["kernel"].scheme
    values = keras.ops.convert_to_numpy(layer.quantized_weight("kernel")).astype(np.float64)
    moved, _ = channels_last(values, layer.weight_channel_axes["kernel"])
    levels = asd_levels(scheme.bits, scheme.digits)
    amax = np.abs(moved).max(axis=tuple(range(moved.ndim - 1)))
    if not scheme.per_channel:
        amax = np.full_like(amax, np.abs(values).max())
    alpha = np.where(amax > 0, amax / levels[-1], 1.0)  # the top level is alpha * levels[-1]
    ratio = moved / alpha
    ints = np.rint(ratio).astype(np.int64)
    if (np.abs(ratio - ints).max(initial=0) > _ON_GRID_TOL
            or not np.isin(np.abs(ints), levels).all()):
        raise ValueError(f"layer {path!r}: its kernel is not on the {scheme!r} grid")
    return _AsdKernel(ints, alpha, scheme)


# --- the forward pass -------------------------------------------------------------------


def _input_grid(path, tensor, plans):
    """`(quantizer name, step)` of the uniform activation grid `tensor` lies on."""
    op = tensor._keras_history.operation
    while isinstance(op, _GRID_PRESERVING):
        tensor = op._inbound_nodes[tensor._keras_history.node_index].input_tensors[0]
        op = tensor._keras_history.operation
    if not isinstance(op, ActivationQuantizer):
        raise ValueError(f"layer {path!r}: its input is not on an integer grid: it comes from "
                         f"{op.name!r} ({type(op).__name__}), not from an activation quantizer "
                         "(quantize with activation_bits set, not None)")
    if op.range_axis is not None:
        raise ValueError(f"layer {path!r}: its input is not on an integer grid: {op.name!r} "
                         "has one range per channel, shift-add needs one step per tensor")
    if id(op) not in plans:
        try:
            plans[id(op)] = plan_activation(op.name, op)
        except ExportError as err:
            raise ValueError(f"layer {path!r}: its input is not on an integer grid: {err}") \
                from err
    return op.name, plans[id(op)].step


def _windows(a, layer):
    """`((oh, ow), [window per (ky, kx)])` of a channels_last 2-D conv over `a`."""
    def two_d(v):
        return tuple(v) if len(v) == 2 else (1,) + tuple(v)  # Conv1D: height 1

    kernel, strides, dilation = (two_d(v) for v in (layer.kernel_size, layer.strides,
                                                    layer.dilation_rate))
    pads, out = [(0, 0)], []
    for size, k, s, d in zip(a.shape[1:3], kernel, strides, dilation):
        span = (k - 1) * d + 1
        n = -(-size // s) if layer.padding == "same" else (size - span) // s + 1
        total = max((n - 1) * s + span - size, 0)  # 0 for "valid"
        pads.append((total // 2, total - total // 2))
        out.append(n)
    a = np.pad(a, pads + [(0, 0)])
    (oh, ow), (sh, sw), (dh, dw) = out, strides, dilation
    return (oh, ow), [a[:, ky * dh: ky * dh + (oh - 1) * sh + 1: sh,
                        kx * dw: kx * dw + (ow - 1) * sw + 1: sw, :]
                      for ky in range(kernel[0]) for kx in range(kernel[1])]


def _run_asd(path, layer, kernel, x, grid):
    """`(output, int64 accumulator)` of one ASD layer on its float input `x`."""
    name, step = grid
    ratio = np.asarray(x, np.float64) / step
    a = np.rint(ratio).astype(np.int64)
    off = float(np.abs(ratio - a).max(initial=0))
    if off > _ON_GRID_TOL:
        raise ValueError(f"layer {path!r}: its input is not on an integer grid: values are up "
                         f"to {off:.3g} steps off the grid of {name!r} (step {step:.6g})")
    if isinstance(layer, QuantDense):
        acc = shift_add_matmul(a.reshape(-1, a.shape[-1]), kernel.ints)
        acc = acc.reshape(a.shape[:-1] + (-1,))
    else:
        one_d = isinstance(layer, QuantConv1D)
        (oh, ow), windows = _windows(a[:, None] if one_d else a, layer)
        channels, cin = kernel.alpha.size, a.shape[-1]
        if isinstance(layer, QuantDepthwiseConv2D):  # output channel c * mult + m reads c
            taps = ((i, np.repeat(w, channels // cin, axis=-1)) for i, w in enumerate(windows))
        else:  # kernel (kh, kw, cin, out) flattened: tap (ky * kw + kx) * cin + c
            taps = ((i * cin + c, w[..., c:c + 1]) for i, w in enumerate(windows)
                    for c in range(cin))
        acc = accumulate(taps, digit_planes(kernel.by_channel), (len(a), oh, ow, channels))
        acc = acc[:, 0] if one_d else acc
    y = acc.astype(np.float64) * (kernel.alpha * step)  # once per output, after the adds
    if layer.use_bias:
        y = y + keras.ops.convert_to_numpy(layer.bias)
    return keras.ops.convert_to_numpy(layer.activation(y.astype(np.float32))), acc


def _functional(model, path):
    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    if not hasattr(graph, "_nodes_by_depth"):
        raise ValueError(f"model {path!r} ({type(model).__name__}) has no layer graph: "
                         "shift_add_forward needs a Functional model or a Sequential one "
                         "built with an Input")
    return graph


def _forward(model, inputs, prefix, plans, accumulators):
    graph = _functional(model, prefix.rstrip("/") or model.name)
    values = {id(t): v for t, v in zip(graph.inputs, inputs)}
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            op = node.operation
            if not op or node.is_input:
                continue
            args, kwargs = node.arguments.fill_in(values)
            path = prefix + op.name
            kernel = _asd_kernel(path, op)
            if isinstance(op, keras.Model):
                outputs = _forward(op, tree.flatten((args, kwargs)), path + "/", plans,
                                   accumulators)
            elif kernel is not None:
                grid = _input_grid(path, node.input_tensors[0], plans)
                outputs, acc = _run_asd(path, op, kernel, keras.ops.convert_to_numpy(args[0]),
                                        grid)
                accumulators[path] = acc
            else:
                outputs = op(*args, **kwargs)
            for tensor, value in zip(node.outputs, tree.flatten(outputs)):
                values[id(tensor)] = value
    return [values[id(t)] for t in graph.outputs]


def shift_add_forward(qmodel, x, *, return_accumulators=False):
    """Runs `qmodel` on `x` with its ASD layers computed by shifts and adds only.

    See the module docstring. Nested models are walked the same way (their
    ASD layers read the input quantizers `autoqnn.quantize` puts inside them).

    Args:
        qmodel: a quantized Functional or Sequential model with at least one
            final asd layer whose input is on a uniform activation grid.
        x: numpy input (a list of arrays for several inputs).
        return_accumulators: also return `{layer path: int64 accumulator}`.

    Returns:
        Numpy outputs shaped like `qmodel.outputs` (float32); with
        `return_accumulators`, `(outputs, accumulators)`.

    Raises:
        ValueError: no asd layer (plain Keras would run: call `qmodel(x)`), or
            an asd layer not final, not supported or with an input not on an
            integer grid (the message names it).
    """
    if not any(_asd_kernel(p, layer) is not None for p, layer in iter_layers(qmodel)):
        raise ValueError(f"model {qmodel.name!r} has no asd layer to run with shifts and adds; "
                         "quantize it with scheme='asd' (or call the model itself)")
    inputs = [np.asarray(v, np.float32) for v in tree.flatten(x)]
    graph = _functional(qmodel, qmodel.name)
    if len(inputs) != len(graph.inputs):
        raise ValueError(f"model {qmodel.name!r} has {len(graph.inputs)} inputs, got "
                         f"{len(inputs)} arrays")
    accumulators = {}
    outputs = _forward(qmodel, inputs, "", {}, accumulators)
    outputs = tree.pack_sequence_as(graph.output, [keras.ops.convert_to_numpy(v)
                                                   for v in outputs])
    return (outputs, accumulators) if return_accumulators else outputs


# --- the adder report -------------------------------------------------------------------


@dataclasses.dataclass
class LayerAdders:
    """What one ASD layer costs in a multiplier-free implementation.

    Counting: shifts are wiring (free); a subtraction is one adder. Output
    channel `c` sums `P_c` shifted terms (the non-zero digits of its weights
    over all its taps), which takes `max(P_c - 1, 0)` two-input adders; the
    bias add and the final scale are the per-channel epilogue, not counted.

    Attributes:
        name, class_name: layer path and class; bits, digits, granularity: its scheme.
        weights: kernel parameters; nonzero_digits: their non-zero signed digits in
            total; digits_per_weight: the ratio.
        adders_per_position: `sum_c max(P_c - 1, 0)`, one output position.
        output_positions: per sample (1 for a Dense on vectors; None if not static).
        adders: `adders_per_position * output_positions` per sample (or None).
        macs: the multiplications a standard implementation needs per sample.
        weight_bytes: the kernel bit-packed at its storage bits (`packed_size`).
        size_bytes: the layer's `autoqnn.quantization_report` size (kernel at its
            bits, bias and other variables at 32 bits).
    """

    name: str
    class_name: str
    bits: int
    digits: int
    granularity: str
    weights: int
    nonzero_digits: int
    digits_per_weight: float
    adders_per_position: int
    output_positions: int | None
    adders: int | None
    macs: int | None
    weight_bytes: int
    size_bytes: float


@dataclasses.dataclass
class AdderReport:
    """`LayerAdders` of every ASD layer (none: an empty list) and model totals.

    Attributes:
        layers: one `LayerAdders` per ASD layer, in model order.
        model_size_bytes: the whole model, `quantization_report(model).size_bytes`.
    """

    layers: list
    model_size_bytes: float

    @property
    def adders(self) -> int | None:
        """Adders per sample over all ASD layers (None if a shape is not static)."""
        counts = [r.adders for r in self.layers]
        return None if None in counts else int(sum(counts))

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict, totals included."""
        totals = {key: sum(getattr(r, key) for r in self.layers)
                  for key in ("weights", "nonzero_digits", "weight_bytes")}
        return {"layers": [dataclasses.asdict(r) for r in self.layers], **totals,
                "adders": self.adders, "model_size_bytes": self.model_size_bytes}


def _output_positions(layer):
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return None
    dims = shape[1:-1]
    return None if any(d is None for d in dims) else int(np.prod(dims, dtype=np.int64))


def adder_report(qmodel) -> AdderReport:
    """Per ASD layer: weights, non-zero digits, adders, bytes (see `LayerAdders`).

    Args:
        qmodel: a quantized model; layers that are not ASD are skipped (a
            model without any gives an empty `layers` list).

    Raises:
        ValueError: an asd quantizer that is not final, or an unsupported layer.
    """
    sizes = quantization_report(qmodel)
    rows = []
    for path, layer in iter_layers(qmodel):
        kernel = _asd_kernel(path, layer)
        if kernel is None:
            continue
        counts = np.vectorize(naf_weight, otypes=[np.int64])(kernel.by_channel)
        per_position = int(np.maximum(counts.sum(axis=0) - 1, 0).sum())
        positions = _output_positions(layer)
        weights, scheme = int(counts.size), kernel.scheme
        rows.append(LayerAdders(
            path, type(layer).__name__, scheme.bits, scheme.digits, scheme.granularity,
            weights, int(counts.sum()), float(counts.sum() / max(weights, 1)), per_position,
            positions, None if positions is None else per_position * positions,
            None if positions is None else weights * positions,
            packed_size(weights, int(scheme.storage_bits())),
            float(sizes.get(path).size_bytes)))
    return AdderReport(rows, float(sizes.size_bytes))
