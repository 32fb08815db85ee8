"""SearchSpace: validation, enumeration order, one-hot encoding, neighbours."""

import numpy as np
import pytest

from autoqnn.tune import DEFAULT_SPACE, SearchSpace


def test_default_space_is_quantune_like():
    space = SearchSpace()
    assert len(space) == 72 == np.prod([len(v) for v in DEFAULT_SPACE.values()])
    assert space.encode_all().shape == (72, 12)
    assert np.all(space.encode_all().sum(axis=1) == 4)


def test_enumeration_and_index_round_trip():
    space = SearchSpace({"grid": ["symmetric", "asymmetric"], "keep_layers": [(), ("last",)]},
                        fixed={"weight_bits": 4})
    configs = space.configs()
    assert [c["keep_layers"] for c in configs] == ["none", "last", "none", "last"]
    assert all(c["weight_bits"] == 4 for c in configs)
    for i, config in enumerate(configs):
        assert space.index_of(config) == i
        assert space.from_digits(space.digits(i)) == i
    assert space.index_of({**configs[0], "weight_bits": 8}) is None
    assert sorted(space.neighbours(0)) == [1, 2]
    assert space.ptq_config(1).keep_layers == ("last",)


@pytest.mark.parametrize("options, fixed, message", [
    ({}, None, "space must be a non-empty dict"),
    ({"calibration_method": []}, None, "space\\['calibration_method'\\] must be a non-empty list"),
    ({"calibration_method": "max"}, None, "must be a non-empty list of values, got 'max'"),
    ({"bits": [4]}, None, "unknown option 'bits'"),
    ({"calibration_method": ["max", "entropy"]}, None, "invalid value 'entropy'"),
    ({"weight_bits": [4, 5, 4]}, None, "duplicate values"),
    ({"granularity": ["per_tensor"]}, {"granularity": "per_channel"}, "both searched and fixed"),
    ({"granularity": ["per_tensor"]}, {"weight_bits": 1}, "weight_bits must be an int"),
])
def test_bad_spaces(options, fixed, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(options, fixed)
