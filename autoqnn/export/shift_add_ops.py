"""The integer arithmetic of multiplier-less (shift-add) inference: signed-digit
decompositions and the shift-and-add accumulation `autoqnn.export.shift_add` runs.

Example:
    >>> import numpy as np
    >>> from autoqnn.export.shift_add_ops import shift_add_matmul, signed_digits
    >>> signed_digits(7)                       # 7 = 8 - 1
    [(-1, 0), (1, 3)]
    >>> shift_add_matmul(np.array([[1, 2]]), np.array([[3], [-5]])).tolist()
    [[-7]]
"""

from __future__ import annotations

import numpy as np


def signed_digits(n: int) -> list[tuple[int, int]]:
    """The non-adjacent form of `n` as `[(sign, shift), ...]`, lowest shift first.

    `n == sum(sign * 2**shift)`, every sign is -1 or +1, and the count is
    `autoqnn.schemes.asd.naf_weight(n)` (the fewest possible); 0 gives [].
    """
    n = int(n)
    mag, shift, out = abs(n), 0, []
    while mag:
        if mag & 1:
            digit = 2 - (mag & 3)  # +1 if mag % 4 == 1, -1 if mag % 4 == 3
            out.append((digit if n > 0 else -digit, shift))
            mag -= digit
        mag >>= 1
        shift += 1
    return out


def digit_planes(ints):
    """`(plus, minus, shift)`, each `(D, *ints.shape)`: digit k of each weight is
    `+(a << shift[k])` where `plus[k]`, `-(a << shift[k])` where `minus[k]`."""
    ints = np.asarray(ints, dtype=np.int64)
    table = {int(v): signed_digits(v) for v in np.unique(ints)}
    depth = max((len(d) for d in table.values()), default=0)
    plus = np.zeros((depth,) + ints.shape, bool)
    minus = np.zeros_like(plus)
    shift = np.zeros((depth,) + ints.shape, np.int64)
    for value, digits in table.items():
        where = ints == value
        for k, (sign, e) in enumerate(digits):
            (plus if sign > 0 else minus)[k][where] = True
            shift[k][where] = e
    return plus, minus, shift


def accumulate(taps, planes, shape):
    """`acc[..., c] = sum_t sum_k ±(a_t << shift[k, t, c])` by shifts and masked adds only,
    for `taps` `(t, a_t)` (`a_t` int64, broadcast to `shape`) and the `digit_planes` of
    the `(taps, channels)` weight matrix."""
    plus, minus, shift = planes
    acc = np.zeros(shape, np.int64)
    for t, a_t in taps:
        for k in range(plus.shape[0]):
            add, sub = plus[k, t], minus[k, t]
            if not (add.any() or sub.any()):
                continue
            shifted = np.left_shift(a_t, shift[k, t])
            np.add(acc, shifted, out=acc, where=add)
            np.subtract(acc, shifted, out=acc, where=sub)
    return acc


def shift_add_matmul(a_int, weight_ints):
    """`a_int @ weight_ints` computed with shifts and adds only (exact, int64).

    Args:
        a_int: integer activations `(batch, in)`.
        weight_ints: integer weights `(in, out)`.

    Returns:
        The int64 accumulator `(batch, out)`.
    """
    a_int = np.asarray(a_int, dtype=np.int64)
    weight_ints = np.asarray(weight_ints, dtype=np.int64)
    taps = ((i, a_int[:, i:i + 1]) for i in range(weight_ints.shape[0]))
    return accumulate(taps, digit_planes(weight_ints), (a_int.shape[0], weight_ints.shape[1]))
