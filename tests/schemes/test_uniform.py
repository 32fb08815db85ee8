"""UniformScheme: golden grids, per-channel ranges, power-of-two scales, properties."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from autoqnn.schemes import UniformScheme, get_scheme, serialize_scheme


def test_symmetric_per_channel_golden():
    w = np.array([[1.0, -0.2], [-0.6, 0.1], [0.26, 0.05]], "float32")
    q = np.asarray(UniformScheme(bits=2, granularity="per_channel")(w, channel_axis=-1))
    # 2-bit narrow symmetric: levels {-s, 0, s} with s = max|w| per column
    np.testing.assert_allclose(q, [[1.0, -0.2], [-1.0, 0.2], [0.0, 0.0]], atol=1e-6)


def test_asymmetric_per_tensor_golden():
    w = np.array([0.0, 0.5, 1.0, 1.5], "float32")
    q = np.asarray(UniformScheme(bits=2, symmetric=False)(w))
    np.testing.assert_allclose(q, [0.0, 0.5, 1.0, 1.5], atol=1e-6)


def test_power_of_two_scale_steps_are_powers_of_two():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(50,)).astype("float32")
    q = np.asarray(UniformScheme(bits=4, power_of_two_scale=True)(w))
    steps = np.unique(np.abs(np.diff(np.unique(q))))
    assert np.allclose(np.log2(steps.min()), np.round(np.log2(steps.min())))


def test_power_of_two_step_follows_the_fixed_point_rule():
    # REFERENCES.md: e = floor(log2 max|x|) - (b - 2), step 2^e. For max|x| = 1.99 at
    # 8 bits: e = 0 - 6, step 1/64, so 1.99 saturates at 127/64 (rounding the step up
    # instead would give 1/32 and waste a bit).
    w = np.array([-1.99, -0.3, 0.0, 0.7, 1.99], "float32")
    q = np.asarray(UniformScheme(bits=8, power_of_two_scale=True)(w))
    np.testing.assert_array_equal(q, np.clip(np.round(w * 64), -127, 127) / 64)
    assert q.max() == np.float32(127 / 64)
    # At 3 bits: e = 0 - 1, step 1/2, levels -3/2 .. 3/2.
    q3 = np.asarray(UniformScheme(bits=3, power_of_two_scale=True)(w))
    np.testing.assert_array_equal(q3, [-1.5, -0.5, 0.0, 0.5, 1.5])


def test_clip_state_shrinks_range():
    class Owner:
        def add_weight(self, name, shape, initializer, trainable):
            import keras

            return keras.Variable(np.full(shape, 0.5, "float32"), name=name, trainable=trainable)

    scheme = UniformScheme(bits=8)
    state = scheme.build(Owner(), "kernel", (4,), -1)
    q = np.asarray(scheme(np.array([-2.0, -1.0, 0.5, 2.0], "float32"), state))
    assert np.abs(q).max() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("bad", [1, 17, 0])
def test_bits_out_of_range(bad):
    with pytest.raises(ValueError, match=rf"bits must be in \[2, 16\].*got {bad}"):
        UniformScheme(bits=bad)


def test_bad_granularity_and_bits_type():
    with pytest.raises(ValueError, match="granularity.*'per_row'"):
        UniformScheme(granularity="per_row")
    with pytest.raises(TypeError, match="bits must be an integer"):
        UniformScheme(bits=4.5)


def test_serialization_round_trip():
    s = UniformScheme(bits=5, granularity="per_channel", symmetric=False, power_of_two_scale=True)
    assert get_scheme(serialize_scheme(s)) == s


arrays = hnp.arrays(
    "float32",
    st.tuples(st.integers(2, 6), st.integers(1, 4)),
    elements=st.floats(-10, 10, width=32),
)


@settings(max_examples=40, deadline=None)
@given(arrays, st.integers(2, 8), st.booleans(), st.sampled_from(["per_tensor", "per_channel"]))
def test_properties(w, bits, symmetric, granularity):
    scheme = UniformScheme(bits=bits, symmetric=symmetric, granularity=granularity)
    q = np.asarray(scheme(w, channel_axis=-1))
    columns = q.T if granularity == "per_channel" else [q.ravel()]
    for col in columns:
        assert len(np.unique(col)) <= scheme.num_levels()
    # Idempotent: the range of q is the range of w (abs-max / min-max are on the grid).
    np.testing.assert_allclose(np.asarray(scheme(q, channel_axis=-1)), q, atol=1e-5)
    if symmetric:
        np.testing.assert_allclose(np.asarray(scheme(-w, channel_axis=-1)), -q, atol=1e-6)
