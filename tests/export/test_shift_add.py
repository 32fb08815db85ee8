"""Shift-add inference of ASD layers: parity with Keras, golden accumulators, the adder report."""

import json

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.export.shift_add import adder_report, shift_add_forward
from autoqnn.export.shift_add_ops import shift_add_matmul, signed_digits
from autoqnn.layers import ActivationQuantizer, QuantDense
from autoqnn.schemes.asd import asd_levels, naf_weight


def _cnn(size, strides, padding, multiplier):
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Conv2D(4, 3, strides=strides, padding=padding, activation="relu",
                            name="conv")(inputs)
    other = "valid" if padding == "same" else "same"
    x = keras.layers.DepthwiseConv2D(3, padding=other, depth_multiplier=multiplier,
                                     name="dw")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="fc")(x))


def _check_layers(qmodel, x, names):
    """Each ASD layer's own output (before its activation quantizer) matches Keras."""
    for name in names:
        probe = keras.Model(qmodel.input, qmodel.get_layer(name).output)
        expected = np.asarray(probe(x))
        got = shift_add_forward(probe, x)
        np.testing.assert_allclose(got, expected, rtol=0,
                                   atol=1e-4 * np.abs(expected).max() + 1e-7, err_msg=name)


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("size,strides,padding,multiplier",
                         [(9, 2, "same", 1), (8, 2, "same", 2), (9, 1, "valid", 2)])
def test_matches_keras(granularity, size, strides, padding, multiplier):
    """Odd and even sizes (even + stride 2 + "same" pads asymmetrically), depth multipliers."""
    x = np.random.default_rng(0).random((8, size, size, 3), dtype=np.float32)
    qmodel = autoqnn.quantize(_cnn(size, strides, padding, multiplier), scheme="asd",
                              weight_bits=5,
                              activation_bits=8, granularity=granularity, calibration_data=x)
    y, acc = shift_add_forward(qmodel, x, return_accumulators=True)
    np.testing.assert_allclose(y, np.asarray(qmodel(x)), rtol=1e-4, atol=1e-6)
    assert sorted(acc) == ["conv", "dw", "fc"] and all(a.dtype == np.int64 for a in acc.values())
    _check_layers(qmodel, x, ["conv", "dw", "fc"])


def test_bn_fold_residual_and_relu6(small_cnn, images):
    """conv1 carries a folded BatchNorm; the Dense reads an Add output through pool/flatten."""
    qmodel = autoqnn.quantize(small_cnn, scheme="asd", weight_bits=6, calibration_data=images)
    x = images[:4]
    np.testing.assert_allclose(shift_add_forward(qmodel, x), np.asarray(qmodel(x)),
                               rtol=1e-4, atol=1e-6)
    _check_layers(qmodel, x, ["conv1", "dw", "logits"])


def test_conv1d_dilation_and_dense_on_sequences():
    inputs = keras.Input((10, 3))
    x = keras.layers.Conv1D(4, 3, padding="same", dilation_rate=2, name="c1")(inputs)
    x = keras.layers.ZeroPadding1D(1, name="pad")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(x))
    x = np.random.default_rng(2).normal(size=(4, 10, 3)).astype("float32")
    qmodel = autoqnn.quantize(model, scheme="asd", weight_bits=4, calibration_data=x)
    np.testing.assert_allclose(shift_add_forward(qmodel, x), np.asarray(qmodel(x)), rtol=1e-4,
                               atol=1e-6)
    _check_layers(qmodel, x, ["c1", "fc"])
    assert [r.output_positions for r in adder_report(qmodel).layers] == [10, 12]


def test_sequential_and_nested_models():
    aq = ActivationQuantizer(scheme="uniform", bits=8, name="aq")
    dense = QuantDense(3, weight_quantizers={"kernel": {"name": "asd", "bits": 5}}, name="fc")
    seq = keras.Sequential([keras.Input((4,)), aq, dense])
    aq.set_range(-1.0, 1.0)
    x = np.random.default_rng(1).uniform(-1, 1, (6, 4)).astype("float32")
    np.testing.assert_allclose(shift_add_forward(seq, x), np.asarray(seq(x)), rtol=1e-5,
                               atol=1e-6)

    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, keras.layers.Dense(3, name="d2")(inner_in), name="inner")
    outer_in = keras.Input((4,))
    h = keras.layers.Dense(4, activation="relu", name="d1")(outer_in)
    model = keras.Model(outer_in, inner(h))
    qmodel = autoqnn.quantize(model, scheme="asd", weight_bits=5, calibration_data=x)
    y, acc = shift_add_forward(qmodel, x, return_accumulators=True)
    assert sorted(acc) == ["d1", "inner/d2"]
    np.testing.assert_allclose(y, np.asarray(qmodel(x)), rtol=1e-4, atol=1e-6)


# --- golden values ---------------------------------------------------------------------

# Dense(2 -> 2), per tensor, 5 bits: alpha = 3.75 / 15 = 0.25, integer weights
# column 0: [15, -3] = [16 - 1, -(4 - 1)], column 1: [7, 0] = [8 - 1, 0].
GOLDEN_INTS = np.array([[15, 7], [-3, 0]])
GOLDEN_A = np.array([[1, 2], [10, 255], [0, 0], [255, 255], [3, 100]])


def _golden_model():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="fc")(inputs))
    model.get_layer("fc").set_weights([GOLDEN_INTS * 0.25, np.array([0.5, -1.0])])
    calibration = np.array([[0.0, 0.0], [255.0, 255.0]], "float32")  # step 1: x == a
    return autoqnn.quantize(model, scheme="asd", weight_bits=5, granularity="per_tensor",
                            calibration_data=calibration)


def test_shift_add_matmul_golden():
    a = GOLDEN_A
    # By hand: out0 = (a0 << 4) - a0 - (a1 << 2) + a1, out1 = (a0 << 3) - a0.
    by_hand = np.stack([(a[:, 0] << 4) - a[:, 0] - (a[:, 1] << 2) + a[:, 1],
                        (a[:, 0] << 3) - a[:, 0]], axis=1)
    acc = shift_add_matmul(a, GOLDEN_INTS)
    assert acc.dtype == np.int64
    np.testing.assert_array_equal(acc, by_hand)
    np.testing.assert_array_equal(acc, [[9, 7], [-615, 70], [0, 0], [3060, 1785], [-255, 21]])


def test_golden_model_accumulators_and_outputs():
    qmodel = _golden_model()
    x = GOLDEN_A.astype("float32")
    y, acc = shift_add_forward(qmodel, x, return_accumulators=True)
    np.testing.assert_array_equal(acc["fc"], [[9, 7], [-615, 70], [0, 0], [3060, 1785],
                                              [-255, 21]])
    np.testing.assert_array_equal(y, np.asarray(qmodel(x)))
    probe = keras.Model(qmodel.input, qmodel.get_layer("fc").output)
    np.testing.assert_array_equal(shift_add_forward(probe, x), acc["fc"] * 0.25 + [0.5, -1.0])


def test_adder_report_golden():
    report = adder_report(_golden_model())
    (row,) = report.layers
    assert (row.name, row.weights, row.nonzero_digits, row.digits_per_weight) == ("fc", 4, 6, 1.5)
    # Output 0 sums 4 shifted terms (3 adders), output 1 sums 2 (1 adder).
    assert (row.adders_per_position, row.output_positions, row.adders, row.macs) == (4, 1, 4, 4)
    assert row.weight_bytes == 3  # 4 weights x 5 bits = 20 bits
    assert row.size_bytes == 4 * 5 / 8 + 2 * 4  # kernel at 5 bits, bias at 32 bits
    totals = json.loads(json.dumps(report.to_dict()))
    assert totals["adders"] == 4 and totals["nonzero_digits"] == 6
    assert totals["model_size_bytes"] == autoqnn.quantization_report(_golden_model()).size_bytes


# --- the digit decomposition: no multiplier in the kernel ---------------------------------


@pytest.mark.parametrize("bits", range(2, 9))
def test_signed_digits_reproduce_every_level(bits):
    for level in asd_levels(bits):
        for n in (level, -level):
            digits = signed_digits(n)
            assert all(sign in (-1, 1) for sign, _ in digits)
            shifts = [shift for _, shift in digits]
            assert shifts == sorted(set(shifts)) and all(s >= 0 for s in shifts)
            assert all(b - a >= 2 for a, b in zip(shifts, shifts[1:]))  # non-adjacent
            assert sum(sign * 2**shift for sign, shift in digits) == n
            assert len(digits) == naf_weight(n) <= 2


# --- bad inputs --------------------------------------------------------------------------


def _dense_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(inputs))


def test_no_asd_layer():
    x = np.random.default_rng(0).random((4, 4), dtype=np.float32)
    qmodel = autoqnn.quantize(_dense_model(), weight_bits=4, calibration_data=x)
    with pytest.raises(ValueError, match="no asd layer"):
        shift_add_forward(qmodel, x)
    assert adder_report(qmodel).layers == []  # the report is empty, not an error


def test_trainable_bits_raises():
    x = np.random.default_rng(0).random((4, 4), dtype=np.float32)
    qmodel = autoqnn.quantize(_dense_model(), scheme="asd", weight_bits=5, calibration_data=x,
                              config={"fc": {"weight_quantizer": {"trainable_bits": True}}})
    with pytest.raises(ValueError, match="'fc'.*not final"):
        shift_add_forward(qmodel, x)
    with pytest.raises(ValueError, match="'fc'.*not final"):
        adder_report(qmodel)


def test_float_activations_raise():
    x = np.random.default_rng(0).random((4, 4), dtype=np.float32)
    qmodel = autoqnn.quantize(_dense_model(), scheme="asd", weight_bits=5, activation_bits=None)
    with pytest.raises(ValueError, match="'fc'.*not on an integer grid"):
        shift_add_forward(qmodel, x)


def test_uncalibrated_and_off_grid_inputs_raise():
    aq = ActivationQuantizer(scheme="uniform", bits=8, name="aq")
    dense = QuantDense(3, weight_quantizers={"kernel": {"name": "asd", "bits": 5}}, name="fc")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, dense(keras.layers.Dropout(0.5)(aq(inputs))))
    x = np.full((2, 4), 0.3, "float32")
    with pytest.raises(ValueError, match="'fc'.*not on an integer grid.*not calibrated"):
        shift_add_forward(model, x)
    # A grid-breaking layer between the quantizer and the ASD layer is refused.
    scaled = keras.Model(inputs, dense(keras.layers.Rescaling(0.37)(aq(inputs))))
    aq.set_range(-1.0, 1.0)
    with pytest.raises(ValueError, match="'fc'.*not on an integer grid.*Rescaling"):
        shift_add_forward(scaled, x)


def test_unsupported_layer_raises():
    inputs = keras.Input((6, 6, 2))
    model = keras.Model(inputs, keras.layers.SeparableConv2D(3, 3, name="sep")(inputs))
    x = np.random.default_rng(0).random((2, 6, 6, 2), dtype=np.float32)
    qmodel = autoqnn.quantize(model, scheme="asd", weight_bits=5, calibration_data=x)
    with pytest.raises(ValueError, match="'sep'.*SeparableConv2D"):
        shift_add_forward(qmodel, x)
