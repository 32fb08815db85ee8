"""Golden tests of the int-grid embedding and the bit packing (exact, atol 0)."""

import numpy as np
import pytest

from autoqnn.export.bitpack import pack_bits, packed_size, unpack_bits
from autoqnn.export.codec import decode_levels, encode_levels
from autoqnn.export.grid import embed_in_int_grid, levels_per_channel


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 13, 16, 32])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 2**bits, size=1001, dtype=np.int64)
    packed = pack_bits(codes, bits)
    assert len(packed) == packed_size(1001, bits) == (1001 * bits + 7) // 8
    np.testing.assert_array_equal(unpack_bits(packed, bits, 1001), codes)


def test_pack_rejects_codes_that_do_not_fit():
    with pytest.raises(ValueError, match="codes must be in"):
        pack_bits([4], 2)
    with pytest.raises(ValueError, match="bytes"):
        unpack_bits(b"\x00", 4, 3)


def test_uniform_grid_embeds_with_its_own_step():
    step = np.float32(0.0371)
    ints = np.array([[-7, 3], [2, 7], [0, -5]])
    grid = embed_in_int_grid(ints * step, channel_axis=-1, max_int=7)
    np.testing.assert_array_equal(grid.ints, ints)
    np.testing.assert_allclose(grid.scale, [step, step], rtol=1e-6)


def test_sparse_levels_find_the_finer_step():
    # Only even multiples plus one odd one: the scale must be the step, not 2 steps.
    values = np.array([0.2, 0.4, -0.6, 0.1], np.float32)
    grid = embed_in_int_grid(values, None, 127)
    assert grid.ints.tolist() == [2, 4, -6, 1]


def test_levels_off_the_grid_do_not_embed():
    values = np.array([1.0, np.sqrt(2.0), 0.3], np.float32)
    assert embed_in_int_grid(values, None, 127) is None
    pot = np.array([2.0**-k for k in range(10)], np.float32)  # needs 2^9 > 127
    assert embed_in_int_grid(pot, None, 127) is None
    assert embed_in_int_grid(pot[:7], None, 127).max_abs == 64


def test_depthwise_channels_flatten_last():
    kernel = np.zeros((3, 3, 2, 2), np.float32)
    kernel[..., 0, 1] = 0.5
    kernel[..., 1, 0] = -0.25
    grid = embed_in_int_grid(kernel, (2, 3), 7)
    assert grid.ints.shape == (3, 3, 4)  # (input channel, multiplier) flattened last
    assert grid.scale.tolist() == [1.0, 0.5, 0.25, 1.0]  # all-zero channels: scale 1
    assert levels_per_channel(kernel, (2, 3)) == 1


@pytest.mark.parametrize("axis", [None, -1, (2, 3)])
def test_encode_decode_is_bit_exact(axis):
    rng = np.random.default_rng(0)
    values = (rng.integers(-7, 8, size=(3, 3, 4, 2)) * np.float32(0.013)).astype(np.float32)
    meta, blob = encode_levels(values, axis)
    assert meta["bits"] <= 4
    np.testing.assert_array_equal(decode_levels(meta, blob).view(np.uint32),
                                  values.view(np.uint32))
