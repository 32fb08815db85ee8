"""Which integer width each quantized weight is stored at in a `.tflite` file.

LiteRT (ai-edge-litert 2.3) runs these weight types:

===================  ====================  ==========================================
op                   weight tensor types   kernel
===================  ====================  ==========================================
FULLY_CONNECTED      int8, int4, int2      XNNPACK (all three)
CONV_2D              int8, int4            XNNPACK for int8; int4: LiteRT reference
DEPTHWISE_CONV_2D    int8, int4            XNNPACK for int8; int4: LiteRT reference
anything else        int8                  as the op's kernel
===================  ====================  ==========================================

`storage=` picks, per layer, from what its op runs:

* ``"narrow"`` (default): the narrowest type that holds the layer's own
  levels exactly (a 2-bit Dense as int2, a 3- or 4-bit convolution as int4):
  the file stores the model as it was searched; int4 convolutions run on
  LiteRT's reference kernels (slower than XNNPACK's int8);
* ``"xnnpack"``: narrow only where XNNPACK has a fast kernel (fully
  connected int4 / int2), convolutions int8;
* ``"int8"``: every weight int8: the fastest file, and the closest to the
  Keras model (see `finer_grid`).

Example:
    >>> from autoqnn.export.storage import container_bits
    >>> container_bits("FULLY_CONNECTED", max_abs=1, bits=2, storage="narrow")
    (2, '')
    >>> container_bits("CONV_2D", max_abs=3, bits=3, storage="xnnpack")[0]
    8
    >>> container_bits("CONV_2D", max_abs=1, bits=2, storage="narrow")
    (4, 'LiteRT has no int2 CONV_2D: int4')
"""

from __future__ import annotations

import dataclasses

import numpy as np

STORAGES = ("narrow", "xnnpack", "int8")
QMAX = {2: 1, 4: 7, 8: 127}  # symmetric narrow-range integers of each container

# The op each quantized layer class lowers to (autoqnn.export.calls turns per-channel
# Dense and matmul-like EinsumDense kernels into FULLY_CONNECTED too).
LAYER_OPS = {"QuantDense": "FULLY_CONNECTED", "QuantEinsumDense": "FULLY_CONNECTED",
             "QuantConv2D": "CONV_2D", "QuantDepthwiseConv2D": "DEPTHWISE_CONV_2D"}
NARROW_TYPES = {"FULLY_CONNECTED": (2, 4), "CONV_2D": (4,), "DEPTHWISE_CONV_2D": (4,)}
XNNPACK_TYPES = {"FULLY_CONNECTED": (2, 4, 8), "CONV_2D": (8,), "DEPTHWISE_CONV_2D": (8,)}


def check_storage(storage: str) -> str:
    """Returns `storage` or raises `ValueError` naming the allowed values."""
    if storage not in STORAGES:
        raise ValueError(f"storage must be one of {STORAGES}, got {storage!r}")
    return storage


def storage_from_int4(int4) -> str:
    """The `storage=` equivalent of the older `int4=` option (True, "all", False)."""
    if isinstance(int4, str) and int4 == "all":
        return "narrow"
    if int4 is True or int4 is False:
        return "xnnpack" if int4 else "int8"
    raise ValueError(f"int4 must be True, False or 'all', got {int4!r}")


def layer_op(layer) -> str:
    """The TFLite op a quantized layer's weights feed ("GATHER", "CONV_2D", ...)."""
    name = type(layer).__name__
    if name in LAYER_OPS:
        return LAYER_OPS[name]
    return "GATHER" if "Embedding" in name else name.replace("Quant", "")


def kernel(op: str, bits: int) -> str:
    """Which LiteRT kernel runs `op` with `bits`-bit weights."""
    if bits in XNNPACK_TYPES.get(op, ()):
        return "XNNPACK"
    if op in XNNPACK_TYPES:
        return f"LiteRT reference (XNNPACK has no int{bits} {op})"
    return "LiteRT builtin"


def container_bits(op: str, max_abs: int, bits: int, storage: str) -> tuple[int, str]:
    """`(container bits, why it is wider than the layer's bits or "")`.

    Args:
        op: the layer's TFLite op (`layer_op`).
        max_abs: the largest |integer| of its levels on their own grid.
        bits: the layer's searched (storage) bits.
        storage: "narrow", "xnnpack" or "int8".
    """
    fits = [b for b in (2, 4) if max_abs <= QMAX[b]]
    allowed = {"narrow": NARROW_TYPES, "xnnpack": {"FULLY_CONNECTED": (2, 4)},
               "int8": {}}[storage].get(op, ())
    chosen = next((b for b in fits if b in allowed), 8)
    if chosen <= bits or not fits:
        note = "" if fits or bits >= 8 else (
            f"levels reach |{max_abs}| on their finest grid (not a symmetric {bits}-bit grid): "
            "int8")
        return chosen, note
    if storage == "int8":
        return chosen, "storage='int8': int8 container (XNNPACK's fastest kernels)"
    if op not in NARROW_TYPES:
        return chosen, f"LiteRT has no narrow {op} kernel: int{chosen}"
    if storage == "xnnpack" and op != "FULLY_CONNECTED":
        return chosen, (f"storage='xnnpack': XNNPACK has no int4 {op} (storage='narrow' "
                        "stores it int4 on LiteRT's reference kernel)")
    if chosen > fits[0]:
        return chosen, f"LiteRT has no int{fits[0]} {op}: int{chosen}"
    if bits not in QMAX:
        return chosen, f"TFLite has no {bits}-bit tensor type: the {bits}-bit levels in int{chosen}"
    return chosen, (f"levels reach |{max_abs}| on their finest grid, beyond int{bits}'s "
                    f"[-{QMAX[bits]}, {QMAX[bits]}]: int{chosen}")


def finer_grid(grid, container: int):
    """The same values on a finer integer grid: each channel's integers times the largest
    factor that keeps them within the container.

    TFLite stores a layer's int32 bias at input scale x weight scale, so a finer
    weight step makes the bias (and so the output) closer to the Keras model's
    float bias at no cost in bytes or speed. Example: 4-bit levels in an int8
    container use steps of 1/18 of the 4-bit step (7 x 18 = 126).
    """
    if container == 2:
        return grid
    ints = grid.ints
    if grid.channel_axis is None:
        peak = np.abs(ints).max(initial=0).reshape(1)
    else:
        peak = np.abs(ints).reshape(-1, ints.shape[-1]).max(axis=0)
    factor = QMAX[container] // np.maximum(peak, 1)
    if grid.channel_axis is None:
        ints = ints * int(factor[0])
    else:
        ints = ints * factor.astype(np.int32)
    return dataclasses.replace(grid, ints=ints.astype(np.int32),
                               scale=(grid.scale / factor).astype(np.float32),
                               max_abs=int(np.abs(ints).max(initial=0)))
