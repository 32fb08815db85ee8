"""export_packed / load_packed: true-bitwidth storage, exact round trips, damaged files."""

import struct

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.export import ExportError, PackedFormatError
from autoqnn.export.packed import FORMAT_VERSION


def test_round_trip_is_exact_and_packed_at_true_bits(cnn_w4, data, tmp_path):
    info = autoqnn.export_packed(cnn_w4, tmp_path / "m.aqnn")
    kernels = {t["path"]: t for t in info.tensors if t["path"].endswith("kernel")}
    assert kernels["logits/kernel"]["bits"] == kernels["conv1/kernel"]["bits"] == 4
    assert kernels["logits/kernel"]["encoding"] == "affine"  # ints + one scale per channel
    restored = autoqnn.load_packed(tmp_path / "m.aqnn")
    np.testing.assert_array_equal(restored.predict(data, verbose=0),
                                  cnn_w4.predict(data, verbose=0))
    # Σ params·bits/8 plus the header (config) and per-channel scales.
    assert info.ideal_bytes < info.size_bytes < info.ideal_bytes + 4096
    # The restored model is a normal quantized model: it saves and reloads as .keras.
    restored.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.predict(data, verbose=0),
                                  cnn_w4.predict(data, verbose=0))


def _bits_for(name):
    cls = type(autoqnn.get_scheme(name, bits=autoqnn.get_scheme(name).min_bits))
    return min(max(cls.min_bits, 3), cls.max_bits)


@pytest.mark.parametrize("name", autoqnn.list_schemes("weight"))
def test_every_registered_scheme_round_trips(name, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((8, 64), dtype=np.float32)
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dense(16, name="fc")(inputs))
    qmodel = autoqnn.quantize(model, scheme=name, weight_bits=_bits_for(name),
                              calibration_data=x)
    info = autoqnn.export_packed(qmodel, tmp_path / "m.aqnn")
    kernel = next(t for t in info.tensors if t["path"].endswith("kernel"))
    # Levels, not float32: indices into a codebook or an integer grid (the
    # smallest encoding wins, so a shared codebook may beat per-channel
    # tables at a bit or two more per index).
    assert kernel["encoding"] != "raw" and kernel["bytes"] < 64 * 16 * 4 / 2, kernel
    restored = autoqnn.load_packed(tmp_path / "m.aqnn")
    np.testing.assert_array_equal(restored.predict(x, verbose=0), qmodel.predict(x, verbose=0))


@pytest.fixture
def packed_bytes(cnn_w8, tmp_path):
    autoqnn.export_packed(cnn_w8, tmp_path / "ok.aqnn")
    return (tmp_path / "ok.aqnn").read_bytes()


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:-10], "truncated"),
    (lambda b: b[:20], "truncated"),
    (lambda b: b + b"\0", "longer"),
    (lambda b: b"NOTAQNN!" + b[8:], "not an autoqnn packed file"),
    (lambda b: b[:8] + struct.pack("<H", FORMAT_VERSION + 1) + b[10:], "version"),
    (lambda b: b[:-100] + bytes([b[-100] ^ 0x01]) + b[-99:], "checksum"),
    (lambda b: b[:40] + bytes([b[40] ^ 0x80]) + b[41:], "checksum"),
])
def test_damaged_files_raise_clear_errors(packed_bytes, tmp_path, damage, message):
    path = tmp_path / "bad.aqnn"
    path.write_bytes(damage(packed_bytes))
    with pytest.raises(PackedFormatError, match=message):
        autoqnn.load_packed(path)


def test_missing_file_and_bad_inputs(float_cnn, cnn_w8, tmp_path):
    with pytest.raises(FileNotFoundError):
        autoqnn.load_packed(tmp_path / "missing.aqnn")
    with pytest.raises(ExportError, match="no quantized weights"):
        autoqnn.export_packed(float_cnn, tmp_path / "f.aqnn")
    with pytest.raises(ExportError, match="nowhere"):
        autoqnn.export_packed(cnn_w8, tmp_path / "nowhere" / "m.aqnn")
