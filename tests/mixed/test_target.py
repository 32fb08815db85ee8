"""`target="litert"`: candidates LiteRT stores, budgets in bytes of the `.tflite` file and in
LiteRT milliseconds, checked on real files run by ai_edge_litert."""

import keras
import numpy as np
import pytest

import autoqnn
from autoqnn.mixed.budget import LayerBudget, solve_policy
from autoqnn.mixed.target import LiteRTTarget, check_target

RNG = np.random.default_rng(0)
X = RNG.random((32, 12, 12, 4), dtype=np.float32)


@pytest.fixture(scope="module")
def net():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 4))
    # odd sizes: 195,300 fc1 weights take 48,825 bytes at int2, 48,828 in the file
    x = keras.layers.Conv2D(31, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(63, activation="relu", name="fc1")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    return LiteRTTarget(rounds=5, invokes=10, cache_dir=str(tmp_path_factory.mktemp("cache")))


def test_layer_budget_rows_and_minimum():
    values = {"a": {4: 1.0, 8: 0.0}, "b": {2: 0.5, 8: 0.0}}
    params = {"a": 10, "b": 10}
    ms = LayerBudget("latency_budget_ms", {"a": {4: 3.0, 8: 1.0}, "b": {2: 1.0, 8: 1.0}},
                     2.5, fixed=0.5, unit="ms")
    # 8 bits everywhere costs 2.5 ms and 8 average bits; 5 bits forces "b" to 2 bits
    assert solve_policy(values, params, weight_bits_budget=5.0, layer_budgets=[ms]) == \
        {"a": 8, "b": 2}
    with pytest.raises(ValueError, match=r"latency_budget_ms=2.0 is below the smallest "
                                         r"achievable 2.5 ms"):
        solve_policy(values, params, layer_budgets=[LayerBudget(
            "latency_budget_ms", ms.costs, 2.0, fixed=0.5, unit="ms")])


def test_bad_target_and_misplaced_latency_budget(net):
    with pytest.raises(ValueError, match="target must be None, 'litert' or a LiteRTTarget, "
                                         "got 'tflm'"):
        check_target("tflm")
    with pytest.raises(ValueError, match=r"LiteRTTarget.num_threads must be a positive int"):
        LiteRTTarget(num_threads=0)
    with pytest.raises(ValueError, match=r"latency_budget_ms=1.0 needs target='litert'"):
        autoqnn.search(net, calibration_data=X, latency_budget_ms=1.0, verbose=0)
    with pytest.raises(ValueError, match=r"latency_budget_ms=1.0 needs target='litert'"):
        autoqnn.quantize(net, calibration_data=X, latency_budget_ms=1.0, verbose=0)
    with pytest.raises(ValueError, match=r"target= is not a setting of strategy 'dnas'"):
        autoqnn.search(net, (X, np.zeros(32)), strategy="dnas", weight_bits_budget=3.0,
                       target="litert", verbose=0)
    with pytest.raises(ValueError, match=r"target='litert' is for a budget search"):
        autoqnn.quantize(net, calibration_data=X, target="litert", verbose=0)


def test_file_bytes_budget_and_stored_widths(net, target, tmp_path):
    uniform = autoqnn.quantize(net, weight_bits=4, calibration_data=X, verbose=0)
    w4_bytes = autoqnn.export_tflite(uniform, tmp_path / "w4.tflite").size_bytes
    budget = w4_bytes - 1000  # below uniform W4A8's file: needs an int2 fully connected layer
    qmodel = autoqnn.quantize(net, calibration_data=X, size_budget_bytes=budget, target=target,
                              calibration_samples=32, recipe="defaults",
                              verbose=0)  # the search, through quantize
    result = qmodel.autoqnn_search
    bits = result.bits()
    assert bits["conv"] in (4, 8) and {bits["fc1"], bits["logits"]} <= {2, 4, 8}
    assert 2 in bits.values()
    info = autoqnn.export_tflite(qmodel, tmp_path / "searched.tflite")
    check = [h for h in result.history if h["step"] == "litert check"][-1]
    assert info.size_bytes == check["file_bytes"] == check["predicted_file_bytes"]
    assert info.size_bytes <= budget < w4_bytes
    # every layer is stored at the width it was searched for
    assert info.weight_dtypes == {f"{layer}/kernel": f"int{b}" for layer, b in bits.items()}
    with pytest.raises(ValueError, match=r"size_budget_bytes=1000 is below the smallest "
                                         r"achievable .* bytes of the .tflite file"):
        autoqnn.search(net, calibration_data=X, size_budget_bytes=1000, target=target,
                       verbose=0, num_samples=32)


@pytest.fixture(scope="module")
def wide():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 32))
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


def test_latency_budget_met_on_litert(wide, target):
    data = RNG.random((32, 8, 8, 32), dtype=np.float32)

    def search(**budgets):
        return autoqnn.search(wide, calibration_data=data, target=target, verbose=0,
                              num_samples=32, **budgets)

    # 5 average bits take the int4 convolution (18,432 of 18,752 weights), which runs on
    # LiteRT's reference kernel: slower than the start file's int8 one on XNNPACK.
    slow = search(weight_bits_budget=5.0, latency_budget_ms=100.0)
    assert slow.bits()["conv"] == 4
    check = [h for h in slow.history if h["step"] == "litert check"][-1]
    fast_ms = check["start_latency_ms"]
    assert check["latency_ms"] > 1.3 * fast_ms  # measured on LiteRT, files interleaved
    # halfway between the int8 file and the int4 convolution's (as the search predicts it)
    budget = (fast_ms + check["predicted_latency_ms"]) / 2
    with pytest.raises(ValueError, match=r"no policy meets weight_bits_budget=5.0, "
                                         r"latency_budget_ms="):
        search(weight_bits_budget=5.0, latency_budget_ms=budget)
    # Fewer bytes than the all-int8 file, within that latency: the convolution stays int8
    # and the Dense layer narrows.
    size = check["start_file_bytes"] - 100
    timed = search(size_budget_bytes=size, latency_budget_ms=budget)
    assert timed.bits()["conv"] == 8 and timed.bits()["logits"] < 8
    check = [h for h in timed.history if h["step"] == "litert check"][-1]
    assert check["meets_budget"] and check["latency_ms"] <= budget
    assert check["file_bytes"] <= size
    with pytest.raises(ValueError, match=r"latency_budget_ms=1e-05 is below the smallest "
                                         r"achievable [0-9.]+ ms of the .tflite file on LiteRT"):
        search(weight_bits_budget=8.0, latency_budget_ms=1e-5)
