"""Properties shared by all weight schemes: level counts, finiteness, sign symmetry."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoqnn.schemes import get_scheme, list_schemes
from autoqnn.schemes.base import _REGISTRY

from .scheme_strategies import weight_arrays

STATELESS = [n for n in list_schemes("weight") if n not in ("lsq", "acd")]  # learned state

# q(-x) = -q(x) exactly, for x without zeros (sign(0) is +1 in binary and pot).
# Left out: zoomq (its bins run from min to max, so -x swaps the bin edges and
# values on an edge round differently); lsq (signed grid [-2^(b-1), 2^(b-1)-1]);
# resq (sign(0) = +1 applies to every residual, and hypothesis finds inputs
# whose residual is exactly 0, e.g. a channel of equal values: test_resq.py
# checks symmetry on data whose residuals are non-zero). Uniform is symmetric with its
# default symmetric grid (zero point 0, round half to even).
SYMMETRIC = ["apot", "asd", "binary", "clipq", "esb", "minifloat", "ml2q", "pot", "ternary",
             "uniform"]
SYMMETRIC += ["vecq"]


def _bits(name, data):
    cls = _REGISTRY[name]
    return data.draw(st.integers(cls.min_bits, min(cls.max_bits, 6)), label="bits")


@pytest.mark.parametrize("name", STATELESS)
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel"])
@given(w=weight_arrays(), data=st.data())
def test_at_most_num_levels_per_channel(name, granularity, w, data):
    scheme = get_scheme(name, bits=_bits(name, data), granularity=granularity)
    q = np.asarray(scheme(w, channel_axis=-1))
    assert q.shape == w.shape and np.all(np.isfinite(q))
    if granularity == "per_tensor":
        assert len(np.unique(q)) <= scheme.num_levels()
    for c in range(w.shape[-1]):
        assert len(np.unique(q[:, c])) <= scheme.num_levels()


@pytest.mark.parametrize("name", SYMMETRIC)
@given(w=weight_arrays(nonzero=True), data=st.data())
def test_sign_symmetry(name, w, data):
    scheme = get_scheme(name, bits=_bits(name, data), granularity="per_channel")
    np.testing.assert_array_equal(
        np.asarray(scheme(-w, channel_axis=-1)), -np.asarray(scheme(w, channel_axis=-1))
    )


@pytest.mark.parametrize("name", STATELESS)
def test_constant_and_zero_tensors_stay_finite(name):
    scheme = get_scheme(name)
    for w in (np.zeros((3, 2), "float32"), np.full((3, 2), 0.5, "float32")):
        q = np.asarray(scheme(w, channel_axis=-1))
        assert np.all(np.isfinite(q))
