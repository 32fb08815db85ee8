import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoqnn import ops as qops
from autoqnn.schemes import VecQScheme
from autoqnn.schemes.vecq import (
    VECQ_LAMBDAS,
    half_integer_grid,
    half_integer_index,
    table_lambda,
    vecq_quantize,
)

from .scheme_strategies import on_grid, weight_arrays

W = np.array([-2.0, -1.0, 1.0, 2.0], "float32")  # std sqrt(2.5), norm sqrt(10)


@pytest.mark.parametrize(
    "bits, x, expected",
    [
        (2, [-5.0, -0.2, 0.2, 0.9, 1.2], [-0.75, -0.25, 0.25, 0.75, 0.75]),
        (1, [-5.0, 0.0, 0.1], [-0.25, 0.25, 0.25]),
        (3, [0.5, 1.0, -1.0, 9.0], [0.75, 1.25, -1.25, 1.75]),  # ties away from 0
    ],
)
def test_half_integer_grid_golden(bits, x, expected):
    np.testing.assert_array_equal(np.asarray(half_integer_grid(np.float32(x), 0.5, bits)), expected)


def test_vecq_golden():
    # 1 bit: index ±0.5, rescaled to the norm: every value is the RMS sqrt(2.5).
    r = np.sqrt(2.5)
    np.testing.assert_allclose(np.asarray(vecq_quantize(W, 1)), [-r, -r, r, r], atol=1e-6)
    # 2 bits: alpha = 0.9957 sqrt(2.5) = 1.574 -> index [-1.5, -0.5, 0.5, 1.5], norm sqrt(5).
    expected = np.array([-1.5, -0.5, 0.5, 1.5]) * np.sqrt(10 / 5)
    np.testing.assert_allclose(np.asarray(vecq_quantize(W, 2)), expected, atol=1e-6)


def test_lambda_table_and_extension():
    assert table_lambda(VECQ_LAMBDAS, 3) == 0.5860
    assert table_lambda(VECQ_LAMBDAS, 10) == 6.0 / 1023.0


@given(w=weight_arrays(), bits=st.integers(1, 8))
def test_modulus_and_grid(w, bits):
    q = np.asarray(vecq_quantize(w, bits, channel_axis=-1))
    # modulus loss: the norm of each channel is kept (where w^2 does not
    # underflow float32: a channel of 1e-38s has a float32 norm of 0).
    ok = np.sum(np.square(w), axis=0) > 1e-30
    np.testing.assert_allclose(
        np.linalg.norm(q, axis=0)[ok], np.linalg.norm(w.astype(np.float64), axis=0)[ok], rtol=1e-5
    )
    w, q = w[:, ok], q[:, ok]
    # orientation: q is the half-integer index vector, scaled
    alpha = qops.safe_scale(table_lambda(VECQ_LAMBDAS, bits) * qops.std(w, -1))
    idx = np.asarray(half_integer_index(w, alpha, bits), np.float64)
    scale = np.linalg.norm(w.astype(np.float64), axis=0) / np.linalg.norm(idx, axis=0)
    np.testing.assert_allclose(q, idx * scale, rtol=1e-5, atol=1e-30)
    assert on_grid(idx, np.arange(-(2 ** (bits - 1)), 2 ** (bits - 1)) + 0.5)


@given(w=weight_arrays(), bits=st.integers(1, 8), alpha=st.floats(0.01, 4.0))
def test_grid_idempotent_at_fixed_step(w, bits, alpha):
    # VecQ itself is not idempotent (std and norm of q differ from those of w);
    # the rounding onto the half-integer grid with a fixed step is.
    once = np.asarray(half_integer_grid(w, alpha, bits))
    np.testing.assert_array_equal(np.asarray(half_integer_grid(once, alpha, bits)), once)


def test_bits_range():
    with pytest.raises(ValueError, match=r"bits must be in \[1, 16\] for scheme 'vecq', got 17"):
        VecQScheme(bits=17)
