"""Encoding of quantized weight levels for the `.aqnn` format.

A tensor's levels are stored in the cheapest exact form: a codebook for the
tensor, a codebook per channel, or an integer grid with one `(scale, offset)`
per channel; indices are bit-packed at `ceil(log2(levels))` bits.

Example:
    >>> import numpy as np
    >>> from autoqnn.export.codec import decode_levels, encode_levels
    >>> values = np.array([[-0.5, 0.25], [0.0, 0.5]], "float32")
    >>> meta, blob = encode_levels(values)
    >>> bool(np.array_equal(decode_levels(meta, blob), values))
    True
"""

from __future__ import annotations

import math

import numpy as np

from autoqnn.export.bitpack import pack_bits, packed_size, unpack_bits
from autoqnn.export.grid import channels_last, embed_in_int_grid


class PackedFormatError(ValueError):
    """A `.aqnn` file that is not one, is damaged, truncated or too new."""


def _bits_for(count: int) -> int:
    return int(math.ceil(math.log2(count))) if count > 1 else 0


def _restore(moved, shape, channel_axis):
    """Inverse of `grid.channels_last` for an array of original `shape`."""
    if channel_axis is None:
        return moved.reshape(shape)
    ndim = len(shape)
    axes = [a % ndim for a in np.atleast_1d(channel_axis).tolist()]
    rest = [a for a in range(ndim) if a not in axes]
    order = rest + axes
    arr = moved.reshape([shape[a] for a in order])
    return np.transpose(arr, np.argsort(order))


def encode_levels(values, channel_axis=None) -> tuple[dict, bytes]:
    """The smallest bit-exact encoding of a quantized tensor (see the module docstring).

    Args:
        values: float32 array of quantized values.
        channel_axis: the layer's channel axis (or axes), or None.

    Returns:
        `(meta, blob)`: JSON-able description and the bytes.
    """
    return next(c for c in encodings(values, channel_axis) if c[2])[:2]


def encodings(values, channel_axis=None) -> list[tuple[dict, bytes, bool]]:
    """Candidate encodings `(meta, blob, bit_exact)`, smallest first.

    The codebooks are always bit-exact; the per-channel integer grid
    (`ints * scale`) may differ from the values by a float32 rounding, which
    a uniform quantizer re-quantizing on load removes (`export_packed`
    checks that).
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    shape = list(values.shape)
    candidates = []
    levels, codes = np.unique(values, return_inverse=True)
    bits = _bits_for(levels.size)
    candidates.append(({"encoding": "codebook", "bits": bits, "levels": int(levels.size)},
                       levels.astype("<f4").tobytes() + pack_bits(codes, bits), True))
    if channel_axis is not None and values.size:
        moved, _ = channels_last(values, channel_axis)
        flat = moved.reshape(-1, moved.shape[-1])
        per = [np.unique(flat[:, c], return_inverse=True) for c in range(flat.shape[1])]
        width = max(lv.size for lv, _ in per)
        bits_c = _bits_for(width)
        table = np.zeros((flat.shape[1], width), "<f4")
        idx = np.zeros(flat.shape, np.int64)
        for c, (lv, inv) in enumerate(per):
            table[c, : lv.size] = lv
            table[c, lv.size:] = lv[-1]
            idx[:, c] = inv
        candidates.append(({"encoding": "codebook_per_channel", "bits": bits_c,
                            "levels": width, "axis": _axis_json(channel_axis)},
                           table.tobytes() + pack_bits(idx.ravel(), bits_c), True))
        grid = embed_in_int_grid(values, channel_axis, max_int=1 << 20)
        if grid is not None:
            ints = grid.ints.reshape(-1, grid.ints.shape[-1]).astype(np.int64)
            offset = ints.min(axis=0)
            span = int((ints - offset).max(initial=0))
            scale = grid.scale.astype("<f4")
            rebuilt = (ints.astype(np.float32) * scale).reshape(moved.shape)
            bits_a = _bits_for(span + 1)
            candidates.append((
                {"encoding": "affine", "bits": bits_a, "axis": _axis_json(channel_axis)},
                scale.tobytes() + offset.astype("<i4").tobytes()
                + pack_bits((ints - offset).ravel(), bits_a),
                bool(np.array_equal(rebuilt.view(np.uint32), moved.view(np.uint32)))))
    candidates.sort(key=lambda c: len(c[1]))
    return [({**meta, "shape": shape, "dtype": "float32"}, blob, exact)
            for meta, blob, exact in candidates]


def _axis_json(axis):
    return list(np.atleast_1d(axis).tolist())


def _axis_from_json(axis):
    return None if axis is None else (axis[0] if len(axis) == 1 else tuple(axis))


def decode_levels(meta: dict, blob: bytes) -> np.ndarray:
    """Inverse of `encode_levels`."""
    shape = [int(s) for s in meta["shape"]]
    count = int(np.prod(shape)) if shape else 1
    bits = int(meta["bits"])
    kind = meta["encoding"]
    if kind == "raw":
        return np.frombuffer(blob, "<f4", count=count).reshape(shape).copy()
    if kind == "codebook":
        n = int(meta["levels"])
        levels = np.frombuffer(blob, "<f4", count=n)
        codes = unpack_bits(blob[4 * n:], bits, count)
        return levels[codes].reshape(shape)
    axis = _axis_from_json(meta["axis"])
    channels = _channels(shape, axis)
    rows = count // channels
    if kind == "codebook_per_channel":
        width = int(meta["levels"])
        table = np.frombuffer(blob, "<f4", count=channels * width).reshape(channels, width)
        codes = unpack_bits(blob[4 * channels * width:], bits, count).reshape(rows, channels)
        moved = table[np.arange(channels)[None, :], codes]
    elif kind == "affine":
        scale = np.frombuffer(blob, "<f4", count=channels)
        offset = np.frombuffer(blob[4 * channels:], "<i4", count=channels).astype(np.int64)
        codes = unpack_bits(blob[8 * channels:], bits, count).reshape(rows, channels)
        moved = (codes.astype(np.int64) + offset).astype(np.float32) * scale
    else:
        raise PackedFormatError(f"unknown tensor encoding {kind!r}")
    return _restore(moved.astype(np.float32), shape, axis)


def _channels(shape, axis):
    return int(np.prod([shape[a % len(shape)] for a in np.atleast_1d(axis).tolist()]))


def blob_size(meta: dict) -> int:
    """Bytes of a tensor's blob as described by its header entry."""
    shape = [int(s) for s in meta["shape"]]
    count = int(np.prod(shape)) if shape else 1
    bits, kind = int(meta["bits"]), meta["encoding"]
    if kind == "raw":
        return 4 * count
    if kind == "codebook":
        return 4 * int(meta["levels"]) + packed_size(count, bits)
    channels = _channels(shape, _axis_from_json(meta["axis"]))
    if kind == "codebook_per_channel":
        return 4 * channels * int(meta["levels"]) + packed_size(count, bits)
    if kind == "affine":
        return 8 * channels + packed_size(count, bits)
    raise PackedFormatError(f"unknown tensor encoding {kind!r}")
