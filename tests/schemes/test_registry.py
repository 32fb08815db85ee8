"""Contract tests run over every registered scheme: config, validation, layers, fit, saving."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from autoqnn.layers import ActivationQuantizer, QuantConv2D, QuantDense, QuantDepthwiseConv2D
from autoqnn.schemes import (
    GRANULARITIES,
    get_scheme,
    list_schemes,
    serialize_scheme,
)
from autoqnn.schemes.base import _REGISTRY

ALL = list_schemes()
WEIGHT = list_schemes("weight")
ACTIVATION = list_schemes("activation")
PER_TENSOR_ONLY = {"pact"}

# Non-default options per scheme: the config round trip must keep them.
OPTIONS = {
    "acd": {"bits": 3, "upper_decay": 1e-3, "lower_decay": 0.0},
    "apot": {"bits": 5, "base_bits": 3},
    "asd": {"bits": 6, "digits": 1},
    "esb": {"bits": 6, "exponent_bits": 3, "mean_shift": False},
    "lsq": {"bits": 3, "signed": False},
    "minifloat": {"exponent_bits": 5, "mantissa_bits": 2},
    "pact": {"bits": 3, "initial_alpha": 4.0},
    "ternary": {"threshold_ratio": 0.5},
    "uniform": {"bits": 6, "symmetric": False},
}


def test_expected_schemes_are_registered():
    expected = {"pot", "apot", "asd", "binary", "ternary", "vecq", "ml2q", "zoomq", "clipq"}
    expected |= {"resq", "esb", "lsq", "pact", "minifloat", "uniform", "acd"}
    assert expected <= set(ALL)
    assert set(ACTIVATION) == {"acd", "lsq", "minifloat", "pact", "uniform"}
    assert "pact" not in WEIGHT


@pytest.mark.parametrize("name", ALL)
def test_config_round_trip(name):
    granularity = "per_tensor" if name in PER_TENSOR_ONLY else "per_channel"
    for kwargs in ({}, {"granularity": granularity, **OPTIONS.get(name, {})}):
        scheme = get_scheme(name, **kwargs)
        config = serialize_scheme(scheme)
        assert config["name"] == name
        assert get_scheme(config) == scheme
        assert get_scheme(dict(config)) == scheme  # no mutation of the input
        assert type(scheme).from_config(scheme.get_config()) == scheme
        serialized = keras.saving.serialize_keras_object(scheme)
        assert keras.saving.deserialize_keras_object(serialized) == scheme
        assert repr(scheme).startswith(type(scheme).__name__)


@pytest.mark.parametrize("name", ALL)
def test_bit_range_is_documented_and_enforced(name):
    cls = _REGISTRY[name]
    assert cls.min_bits <= cls.default_bits <= cls.max_bits
    assert get_scheme(name).bits == cls.default_bits
    for bad in (cls.min_bits - 1, cls.max_bits + 1):
        with pytest.raises(ValueError, match=rf"bits must be in .*got {bad}"):
            get_scheme(name, bits=bad)
    with pytest.raises(TypeError, match=r"bits must be an integer, got 2\.5"):
        get_scheme(name, bits=2.5)
    with pytest.raises(ValueError, match=r"granularity must be .*got 'per_row'"):
        get_scheme(name, granularity="per_row")


@pytest.mark.parametrize("name", ALL)
def test_num_levels_and_storage_bits(name):
    cls = _REGISTRY[name]
    for bits in range(cls.min_bits, min(cls.max_bits, 8) + 1):
        scheme = get_scheme(name, bits=bits)
        assert 2 <= scheme.num_levels() <= 2**bits
        assert scheme.num_levels(bits) == scheme.num_levels()
        assert scheme.storage_bits() <= bits


@pytest.mark.parametrize("name", [n for n in ALL if n != "uniform"])
def test_bits_override_is_validated(name):
    scheme = get_scheme(name)
    x = np.linspace(-1, 1, 8, dtype="float32").reshape(2, 4)
    state = _standalone_state(scheme, x)
    with pytest.raises(ValueError, match=rf"bits must be in .*got {scheme.max_bits + 1}"):
        scheme(x, state, bits=scheme.max_bits + 1)
    if scheme.tensor_bits:  # their math takes a tensor bitwidth too
        np.testing.assert_array_equal(np.asarray(scheme(x, state, bits=tf.constant(3.0))),
                                      np.asarray(scheme(x, state, bits=3)))
        return
    with pytest.raises(TypeError, match="bits must be a Python integer"):
        scheme(x, state, bits=tf.constant(3.0))


def _standalone_state(scheme, x):
    """State for calling a scheme outside a layer (a bare layer holds the variables)."""
    holder = keras.layers.Layer()
    return scheme.build(holder, "t", x.shape, -1, role="weight")


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 6)).astype("float32"), rng.normal(size=(16, 3)).astype("float32")


@pytest.mark.parametrize("name", WEIGHT)
def test_weight_scheme_in_dense_fits_and_saves(name, tmp_path):
    x, y = _data()
    inputs = keras.Input((6,))
    layer = QuantDense(3, weight_quantizers={"kernel": {"name": name}}, name="q")
    model = keras.Model(inputs, layer(inputs))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads), [v.name for v in model.trainable_variables]
    kernel_grad = grads[[v.name for v in model.trainable_variables].index("kernel")]
    assert np.any(np.asarray(kernel_grad) != 0)
    # The forward kernel really is quantized.
    q = np.asarray(layer.quantized_weight("kernel"))
    assert len(np.unique(q)) <= layer.weight_quantizers["kernel"].scheme.num_levels()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert (loaded.get_layer("q").weight_quantizers["kernel"].get_config()
            == layer.weight_quantizers["kernel"].get_config())


@pytest.mark.parametrize("name", WEIGHT)
def test_weight_scheme_per_channel_in_conv(name):
    scheme = get_scheme(name, granularity="per_channel")
    layer = QuantConv2D(4, 3, weight_quantizers={"kernel": scheme})
    images = np.random.default_rng(1).random((2, 6, 6, 2), dtype=np.float32)
    out = layer(images)
    assert out.shape == (2, 4, 4, 4) and np.all(np.isfinite(np.asarray(out)))
    q = np.asarray(layer.quantized_weight("kernel"))
    for c in range(4):
        assert len(np.unique(q[..., c])) <= scheme.num_levels()
    # Depthwise kernels have two channel axes (input channel, multiplier).
    depthwise = QuantDepthwiseConv2D(3, depth_multiplier=2, weight_quantizers={"kernel": scheme})
    assert depthwise(images).shape == (2, 4, 4, 4)
    q = np.asarray(depthwise.quantized_weight("kernel"))
    for i in range(2):
        for m in range(2):
            assert len(np.unique(q[:, :, i, m])) <= scheme.num_levels()


@pytest.mark.parametrize("name", ACTIVATION)
def test_activation_scheme_fits_and_saves(name, tmp_path):
    x, y = _data()
    options = {"signed": False} if name == "lsq" else {}
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(3, activation="relu")(inputs)
    quantizer = ActivationQuantizer(name, bits=4, name="aq", **options)
    model = keras.Model(inputs, quantizer(hidden))
    model.compile(keras.optimizers.SGD(0.01), "mse")
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    out = model.predict(x, verbose=0)
    assert len(np.unique(out)) <= quantizer.scheme.num_levels()
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    path = tmp_path / "act.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    # (the training=True call above moved the observed range: predict again)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


@pytest.mark.parametrize("name", sorted(set(ALL) - set(WEIGHT)))
def test_activation_only_schemes_are_refused_for_weights(name):
    with pytest.raises(ValueError, match=f"scheme '{name}' cannot quantize weights"):
        QuantDense(2, weight_quantizers={"kernel": name})


@pytest.mark.parametrize("name", sorted(set(ALL) - set(ACTIVATION)))
def test_weight_only_schemes_are_refused_for_activations(name):
    with pytest.raises(ValueError, match=f"scheme '{name}' cannot quantize activations"):
        ActivationQuantizer(name, bits=get_scheme(name).default_bits)


def test_granularities_constant_is_shared():
    assert GRANULARITIES == ("per_tensor", "per_channel")
