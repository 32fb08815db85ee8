"""Hypothesis strategies and grid checks shared by the scheme tests."""

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

FLOATS = st.floats(min_value=-8.0, max_value=8.0, allow_nan=False, allow_subnormal=False, width=32)


def weight_arrays(min_rows=2, max_rows=6, max_cols=4, nonzero=False):
    """2-D float32 arrays (rows x channels) with values in [-8, 8]."""
    elements = FLOATS.filter(lambda v: v != 0.0) if nonzero else FLOATS
    shapes = st.tuples(st.integers(min_rows, max_rows), st.integers(1, max_cols))
    return hnp.arrays(np.float32, shapes, elements=elements)


def on_grid(values, grid, rtol=1e-6):
    """True when every value is within rtol (relative to the grid's max) of a grid point."""
    grid = np.sort(np.asarray(grid, dtype=np.float64).ravel())
    values = np.asarray(values, dtype=np.float64).ravel()
    idx = np.clip(np.searchsorted(grid, values), 1, len(grid) - 1)
    dist = np.minimum(np.abs(values - grid[idx - 1]), np.abs(values - grid[idx]))
    scale = max(np.abs(grid).max(), 1e-30)
    return bool(np.all(dist <= rtol * scale))
