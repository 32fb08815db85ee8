"""Bit packing: unsigned integer codes stored at exactly `bits` bits each.

Codes are written least-significant bit first into a little-endian bit
stream, so `n` codes of `b` bits take `ceil(n * b / 8)` bytes.

Example:
    >>> import numpy as np
    >>> from autoqnn.export.bitpack import pack_bits, unpack_bits
    >>> codes = np.array([0, 1, 2, 3, 3, 0, 1], dtype=np.uint32)
    >>> packed = pack_bits(codes, bits=2)
    >>> len(packed), unpack_bits(packed, bits=2, count=7).tolist()
    (2, [0, 1, 2, 3, 3, 0, 1])
"""

from __future__ import annotations

import numpy as np


def packed_size(count: int, bits: int) -> int:
    """Bytes taken by `count` codes of `bits` bits."""
    return (count * bits + 7) // 8


def pack_bits(codes, bits: int) -> bytes:
    """Packs unsigned integer `codes` (each < 2**bits) at `bits` bits each.

    Args:
        codes: array of non-negative integers.
        bits: 0..32 (0: all codes are 0, nothing is stored).

    Returns:
        The packed bytes.

    Raises:
        ValueError: a code does not fit in `bits` bits.
    """
    if not 0 <= bits <= 32:
        raise ValueError(f"bits must be in [0, 32], got {bits}")
    codes = np.asarray(codes, dtype=np.int64).ravel()
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise ValueError(f"codes must be in [0, 2**{bits}), got [{codes.min()}, {codes.max()}]")
    if bits == 0 or codes.size == 0:
        return b""
    planes = ((codes[:, None] >> np.arange(bits, dtype=np.int64)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of `pack_bits`: `count` codes of `bits` bits as uint32.

    Raises:
        ValueError: `data` is shorter than `count * bits` bits.
    """
    if bits == 0:
        return np.zeros(count, dtype=np.uint32)
    need = packed_size(count, bits)
    if len(data) < need:
        raise ValueError(f"packed data has {len(data)} bytes, {need} needed")
    planes = np.unpackbits(np.frombuffer(data, np.uint8, count=need), count=count * bits,
                           bitorder="little").reshape(count, bits).astype(np.uint64)
    return (planes << np.arange(bits, dtype=np.uint64)).sum(axis=1).astype(np.uint32)
