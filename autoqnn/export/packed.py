"""The `.aqnn` format: a quantized model with weights bit-packed at their true bitwidth.

`export_packed` writes, `load_packed` reads back a Keras quantized model whose
outputs are identical to the original's. Layout (little endian)::

    magic    8 bytes  b"AQNNPACK"
    version  uint16   FORMAT_VERSION
    flags    uint16   0
    header   uint32   length of the zlib-compressed JSON header
    payload  uint64   length of the payload
    crc32    uint32   zlib.crc32 of header + payload
    header   JSON: {"model": Keras config, "variables": [...]}
    payload  the variables' blobs, in header order

Each quantized weight is stored as its levels, in the cheapest exact form: a
codebook for the tensor, a codebook per channel, or an integer grid with one
`(scale, offset)` per channel; indices are packed at `ceil(log2(levels))`
bits. Other variables (biases, ranges, clip ratios) are raw float32. A wrong
magic, a newer version, a length that does not match the file or a checksum
mismatch raises `PackedFormatError`: a damaged file never loads as a model.

Example:
    >>> import os, tempfile, keras, numpy as np, autoqnn
    >>> inputs = keras.Input((8,))
    >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    >>> x = np.random.default_rng(0).random((16, 8), dtype=np.float32)
    >>> qmodel = autoqnn.quantize(model, weight_bits=3, calibration_data=x, verbose=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.aqnn")
    >>> _ = autoqnn.export_packed(qmodel, path)
    >>> restored = autoqnn.load_packed(path)
    >>> bool(np.array_equal(restored.predict(x, verbose=0), qmodel.predict(x, verbose=0)))
    True
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zlib
from pathlib import Path

import keras
import numpy as np

from autoqnn.export.codec import PackedFormatError, blob_size, decode_levels, encodings
from autoqnn.export.lowering import ExportError, iter_layers
from autoqnn.export.tflite import check_writable
from autoqnn.layers.activation import ActivationQuantizer
from autoqnn.layers.quantized import QuantizedWeightsMixin

MAGIC = b"AQNNPACK"
FORMAT_VERSION = 1
_FIXED = struct.Struct("<8sHHIQI")


@dataclasses.dataclass
class PackedExport:
    """What `export_packed` wrote.

    Attributes:
        path: the file.
        size_bytes: its size.
        ideal_bytes: Σ params · bits / 8 (quantized weights at their storage
            bits, every other variable at 32 bits).
        tensors: per variable: path, encoding, bits, bytes, note.
    """

    path: str
    size_bytes: int
    ideal_bytes: float
    tensors: list

    @property
    def overhead(self) -> float:
        """`size_bytes / ideal_bytes - 1`."""
        return self.size_bytes / self.ideal_bytes - 1.0 if self.ideal_bytes else 0.0


def _quantized_values(layer, attr, scheme):
    """`(values, state overrides, frozen)` for one quantized weight.

    When re-quantizing the levels reproduces them (uniform grids, possibly
    with clip = 1) the loaded layer keeps quantizing as usual; otherwise
    (scales that are statistics of the weights) it is loaded with the weight
    in `frozen_weights`, which uses the stored levels as they are.
    """
    values = keras.ops.convert_to_numpy(layer.quantized_weight(attr)).astype(np.float32)
    state = layer.quantizer_state.get(attr, {})
    candidates = [{}]
    if "clip" in state:  # a clipped grid re-derived from its own levels needs clip = 1
        candidates.append({"clip": np.ones(tuple(state["clip"].shape), np.float32)})
    for override in candidates:
        trial = {**state, **{k: keras.ops.convert_to_tensor(v) for k, v in override.items()}}
        again = scheme.quantize(keras.ops.convert_to_tensor(values), trial,
                                channel_axis=layer.weight_channel_axes[attr], training=False)
        if np.array_equal(keras.ops.convert_to_numpy(again), values):
            return values, {id(state[k]): v for k, v in override.items()}, trial
    return values, {}, None


def _choose_encoding(layer, attr, scheme, values, state):
    """The smallest encoding whose decoded values the layer re-quantizes to `values`."""
    axis = layer.weight_channel_axes[attr] if scheme.per_channel else None
    for meta, blob, exact in encodings(values, axis):
        if exact:
            return meta, blob
        if state is None:
            continue
        decoded = keras.ops.convert_to_tensor(decode_levels(meta, blob))
        again = scheme.quantize(decoded, state, channel_axis=layer.weight_channel_axes[attr],
                                training=False)
        if np.array_equal(keras.ops.convert_to_numpy(again), values):
            return meta, blob
    raise AssertionError("the codebook encoding is always exact")


def export_packed(model, path) -> PackedExport:
    """Writes `model` with its quantized weights bit-packed (see the module docstring).

    Args:
        model: a quantized Keras model (float layers are stored at 32 bits).
        path: the `.aqnn` file.

    Returns:
        A `PackedExport` with sizes per tensor.

    Raises:
        ExportError: not a Keras model, no quantized layer, unwritable path.
    """
    path = check_writable(path)
    if not isinstance(model, keras.Model):
        raise ExportError(f"model must be a keras.Model, got {type(model).__name__}")
    quantized = {}  # id(variable) -> (layer path, attr, scheme, layer)
    for lpath, layer in iter_layers(model):
        if isinstance(layer, QuantizedWeightsMixin):
            for attr, quantizer in layer.weight_quantizers.items():
                if not quantizer.is_final:
                    raise ExportError(
                        f"layer {lpath!r} has trainable bits or a scheme mixture; fix it "
                        "first with model = autoqnn.finalize(model)")
                quantized[id(getattr(layer, attr))] = (lpath, attr, quantizer.scheme, layer)
    if not quantized:
        raise ExportError(f"model {model.name!r} has no quantized weights; quantize it first "
                          "(autoqnn.quantize) or save a float model with model.save")
    encoded, overrides, frozen = {}, {}, {}
    for key, (lpath, attr, scheme, layer) in quantized.items():
        values, extra, state = _quantized_values(layer, attr, scheme)
        meta, blob = _choose_encoding(layer, attr, scheme, values, state)
        if state is None:
            frozen.setdefault(lpath, []).append(attr)
            meta["note"] = "levels frozen on load (the scheme's scale is a weight statistic)"
        encoded[key] = (meta, blob)
        overrides.update(extra)
    entries, blobs, tensors, ideal = [], [], [], 0.0
    for variable in model.weights:
        value = np.asarray(keras.ops.convert_to_numpy(variable))
        key = id(variable)
        if key in overrides:
            value = overrides[key]
        count = int(value.size)
        if key in encoded and encoded[key][1] is not None:
            meta, blob = encoded[key]
            ideal += count * quantized[key][2].storage_bits() / 8
        else:
            meta = {**(encoded[key][0] if key in encoded else {"encoding": "raw", "bits": 32}),
                    "shape": list(value.shape), "dtype": str(value.dtype)}
            if value.dtype != np.float32:
                raise ExportError(f"variable {variable.path!r} has dtype {value.dtype}; only "
                                  "float32 models can be packed")
            blob = np.ascontiguousarray(value, "<f4").tobytes()
            ideal += count * (quantized[key][2].storage_bits() / 8 if key in quantized else 4)
        entries.append({"path": variable.path, **meta})
        blobs.append(blob)
        tensors.append({"path": variable.path, "encoding": meta["encoding"],
                        "bits": meta["bits"], "bytes": len(blob), "note": meta.get("note", "")})
    header = {"model": keras.saving.serialize_keras_object(model), "variables": entries,
              "frozen_weights": frozen, "keras_version": keras.__version__}
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    payload = b"".join(blobs)
    crc = zlib.crc32(payload, zlib.crc32(header_bytes))
    data = _FIXED.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes), len(payload), crc)
    try:
        path.write_bytes(data + header_bytes + payload)
    except OSError as err:
        raise ExportError(f"cannot write {str(path)!r}: {err.strerror or err}") from None
    size = _FIXED.size + len(header_bytes) + len(payload)
    return PackedExport(str(path), size, ideal, tensors)


def read_header(data: bytes) -> tuple[dict, bytes]:
    """Validates a `.aqnn` byte string; returns `(header, payload)`.

    Raises:
        PackedFormatError: see the module docstring.
    """
    if len(data) < _FIXED.size:
        raise PackedFormatError(f"file is truncated: {len(data)} bytes, the fixed header alone "
                                f"is {_FIXED.size}")
    magic, version, _flags, header_len, payload_len, crc = _FIXED.unpack_from(data)
    if magic != MAGIC:
        raise PackedFormatError(f"not an autoqnn packed file (magic {magic!r}, expected {MAGIC!r})")
    if version > FORMAT_VERSION or version < 1:
        raise PackedFormatError(f"format version {version} is not supported (this autoqnn reads "
                                f"versions 1..{FORMAT_VERSION}); upgrade autoqnn")
    expected = _FIXED.size + header_len + payload_len
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise PackedFormatError(f"file is {what}: {len(data)} bytes, expected {expected}")
    header_bytes = data[_FIXED.size:_FIXED.size + header_len]
    payload = data[_FIXED.size + header_len:]
    if zlib.crc32(payload, zlib.crc32(header_bytes)) != crc:
        raise PackedFormatError("checksum mismatch: the file is corrupt")
    try:
        header = json.loads(zlib.decompress(header_bytes))
    except (zlib.error, ValueError) as err:
        raise PackedFormatError(f"header is unreadable: {err}") from None
    return header, payload


def load_packed(path) -> keras.Model:
    """Reads a `.aqnn` file back into a Keras quantized model (identical outputs).

    Args:
        path: the file written by `export_packed`.

    Returns:
        The quantized `keras.Model` (trainable, savable as `.keras`).

    Raises:
        FileNotFoundError: no such file.
        PackedFormatError: not a packed file, corrupt, truncated or too new.
    """
    data = Path(os.fspath(path)).read_bytes()
    header, payload = read_header(data)
    try:
        model = keras.saving.deserialize_keras_object(header["model"])
        entries = header["variables"]
    except (KeyError, TypeError, ValueError) as err:
        raise PackedFormatError(
            f"{os.fspath(path)!r}: model config cannot be rebuilt: {err}") from None
    variables = model.weights
    if len(variables) != len(entries):
        raise PackedFormatError(f"{os.fspath(path)!r}: {len(entries)} stored variables, the "
                                f"rebuilt model has {len(variables)}")
    offset = 0
    for variable, meta in zip(variables, entries):
        size = blob_size(meta)
        if offset + size > len(payload) or list(variable.shape) != list(meta["shape"]):
            raise PackedFormatError(f"{os.fspath(path)!r}: variable {meta.get('path')!r} does not "
                                    f"match the model ({variable.path}, {variable.shape})")
        variable.assign(decode_levels(meta, payload[offset:offset + size]))
        offset += size
    if offset != len(payload):
        raise PackedFormatError(
            f"{os.fspath(path)!r}: {len(payload) - offset} unread payload bytes")
    frozen = header.get("frozen_weights", {})
    for lpath, layer in iter_layers(model):
        if lpath in frozen and isinstance(layer, QuantizedWeightsMixin):
            layer.frozen_weights = sorted(set(layer.frozen_weights) | set(frozen[lpath]))
        if isinstance(layer, ActivationQuantizer) and layer.needs_range:
            if float(keras.ops.convert_to_numpy(layer.range_observed)) > 0:
                layer.set_range(*[keras.ops.convert_to_numpy(v)
                                  for v in (layer.range_min, layer.range_max)])
    return model
