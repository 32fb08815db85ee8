"""export_report: per-layer bits, bytes and TFLite dtype."""

import pytest

import autoqnn


def test_rows_say_bits_bytes_dtype_and_kernel(cnn_w4):
    report = autoqnn.export_report(cnn_w4)  # storage="narrow": every layer at its 4 bits
    rows = {r.name: r for r in report}
    for name, op in (("conv1", "CONV_2D"), ("dw", "DEPTHWISE_CONV_2D"),
                     ("logits", "FULLY_CONNECTED")):
        assert (rows[name].weight_bits, rows[name].tflite_dtype, rows[name].op,
                rows[name].exact) == (4, "int4", op, True)
        assert ("output steps" in rows[name].note) == (name != "logits")
    assert rows["logits"].kernel == "XNNPACK"
    assert rows["conv1"].kernel.startswith("LiteRT reference")
    assert rows["image_aq"].tflite_dtype == "int8 activations"
    kernel_bytes = 6 * 128 * 4 / 8
    assert rows["logits"].packed_bytes >= kernel_bytes
    assert not report.not_exportable
    assert "logits" in str(report) and "XNNPACK" in str(report)
    # storage="xnnpack": convolutions int8 on XNNPACK, each with the reason it is wider.
    fast = {r.name: r for r in autoqnn.export_report(cnn_w4, storage="xnnpack")}
    assert set(fast) == set(rows)
    for name in ("conv1", "dw"):
        assert (fast[name].tflite_dtype, fast[name].kernel) == ("int8", "XNNPACK")
        assert "storage='xnnpack'" in fast[name].note and "int4" in fast[name].note
        assert fast[name].packed_bytes == rows[name].packed_bytes
    assert (fast["logits"].tflite_dtype, fast["logits"].note) == ("int4", "")
    every = {r.name: r for r in autoqnn.export_report(cnn_w4, storage="int8")}
    assert {every[n].tflite_dtype for n in ("conv1", "dw", "logits")} == {"int8"}
    assert all("storage='int8'" in every[n].note for n in ("conv1", "dw", "logits"))
    with pytest.raises(ValueError, match="storage must be one of"):
        autoqnn.export_report(cnn_w4, storage="int16")


def test_uncalibrated_layers_are_not_exportable(float_cnn):
    with pytest.warns(UserWarning):
        qmodel = autoqnn.quantize(float_cnn)
    report = autoqnn.export_report(qmodel)
    assert "image_aq" in report.not_exportable
