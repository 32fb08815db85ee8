"""export_report: per-layer bits, bytes and TFLite dtype."""

import pytest

import autoqnn


def test_rows_say_bits_bytes_and_dtype(cnn_w4):
    report = autoqnn.export_report(cnn_w4)
    rows = {r.name: r for r in report}
    assert rows["logits"].weight_bits == 4 and rows["logits"].tflite_dtype == "int4"
    assert rows["dw"].tflite_dtype == "int8" and "int4" in rows["dw"].note
    assert rows["conv1"].tflite_dtype == "int8" and "builtin" in rows["conv1"].note
    assert rows["image_aq"].tflite_dtype == "int8 activations"
    kernel_bytes = 6 * 128 * 4 / 8
    assert rows["logits"].packed_bytes >= kernel_bytes
    assert not report.not_exportable
    assert "logits" in str(report)
    # int4="all" moves the 4-bit convolutions into int4 tensors too: same bytes, no note.
    every = {r.name: r for r in autoqnn.export_report(cnn_w4, int4="all")}
    assert set(every) == set(rows)
    for name in ("conv1", "dw", "logits"):
        assert (every[name].tflite_dtype, every[name].note, every[name].exact) == ("int4", "", True)
        assert every[name].packed_bytes == rows[name].packed_bytes
    assert every["image_aq"].tflite_dtype == "int8 activations"


def test_uncalibrated_layers_are_not_exportable(float_cnn):
    with pytest.warns(UserWarning):
        qmodel = autoqnn.quantize(float_cnn)
    report = autoqnn.export_report(qmodel)
    assert "image_aq" in report.not_exportable
