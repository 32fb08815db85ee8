"""Override selectors that select no layer are reported (issue 23, trip point 4)."""

import keras
import pytest

from autoqnn.config import QuantizationConfig


def _model():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(2, 3, name="conv1_1")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x), name="tiny")


def test_an_override_that_selects_nothing_warns_with_the_layer_names():
    config = QuantizationConfig(overrides={"conv2d_1": {"scheme": "ternary"},
                                           "dense_.*": {"weight_bits": 8},
                                           "conv1_.*": {"weight_bits": 4}, "Dense": None})
    with pytest.warns(UserWarning, match=r"'conv2d_1', 'dense_\.\*' match\(es\) no layer of "
                                         r"model 'tiny'.*its layers: .*conv1_1.*logits"):
        assert config.warn_unmatched(_model()) == ["conv2d_1", "dense_.*"]


def test_selectors_that_all_match_stay_quiet(recwarn):
    config = QuantizationConfig(overrides={keras.layers.Conv2D: None, "logits": None})
    assert config.warn_unmatched(_model()) == []
    assert not [w for w in recwarn if "match(es) no layer" in str(w.message)]
