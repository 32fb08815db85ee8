"""Histogram observers: exact small cases, the known optimum on synthetic data, speed."""

import time

import numpy as np
import pytest

from autoqnn.ptq import list_calibration_methods
from autoqnn.ptq.observers import (
    Histogram,
    KLObserver,
    MSEObserver,
    PercentileObserver,
    quantize_centers,
)


def test_methods_registered():
    assert {"max", "percentile", "kl", "mse"} <= set(list_calibration_methods())


def test_histogram_counts_and_doubling_keep_every_value():
    rng = np.random.default_rng(0)
    h = Histogram(bins=64)
    a = rng.normal(size=1000).astype("float32")
    b = (rng.normal(size=1000) * 20).astype("float32")
    h.add(a)
    first_limit = h.limit
    h.add(b)
    assert h.limit > first_limit and h.limit >= np.abs(b).max()
    assert h.counts.sum() == 2000
    # The doubled histogram equals one built directly on the final range.
    direct = np.histogram(np.concatenate([a, b]), bins=64, range=(-h.limit, h.limit))[0]
    assert np.abs(direct - h.counts).sum() <= 4  # bin-edge rounding only


def test_quantize_centers_golden():
    centers = np.array([-1.0, -0.26, 0.0, 0.4, 1.0])
    out = quantize_centers(centers, [-1.0], [1.0], levels=3)
    np.testing.assert_allclose(out, [[-1.0, 0.0, 0.0, 0.0, 1.0]], atol=1e-12)


def test_percentile_asymmetric_relu_like():
    rng = np.random.default_rng(1)
    x = np.maximum(rng.normal(size=200_000), 0).astype("float32")
    obs = PercentileObserver(8, symmetric=False, percentile=99.0)
    obs.update(x[:100_000])
    obs.update(x[100_000:])
    lo, hi = obs.compute_range()
    assert lo == 0.0
    assert abs(hi - np.percentile(x, 99.0)) < 0.01


def test_percentile_100_is_max():
    x = np.array([-3.0, 0.5, 2.0], "float32")
    obs = PercentileObserver(8, symmetric=True, percentile=100)
    obs.update(x)
    assert obs.compute_range() == (-3.0, 3.0)


@pytest.mark.parametrize("bits, low, high", [(8, 3.0, 6.0), (4, 1.8, 3.2), (2, 0.6, 1.6)])
def test_mse_gaussian_matches_known_optimal_clipping(bits, low, high):
    # Optimal uniform clipping of N(0, 1) (Banner et al.): ~1.71 sigma at 3 bits... for
    # narrow symmetric grids here: 4 bits ~2.5, 2 bits ~1.0; 8 bits keeps the tails.
    rng = np.random.default_rng(2)
    x = rng.normal(size=300_000).astype("float32")
    obs = MSEObserver(bits, symmetric=True)
    obs.update(x)
    lo, hi = obs.compute_range()
    assert lo == -hi and low < hi < high


def test_kl_ignores_relu_zero_spike_and_clips_outliers():
    rng = np.random.default_rng(3)
    x = np.maximum(rng.normal(size=200_000), 0).astype("float32")
    x[:20] = 30.0  # rare outliers
    obs = KLObserver(8, symmetric=False)
    obs.update(x)
    lo, hi = obs.compute_range()
    assert lo == 0.0 and 2.5 < hi < 12.0


def test_observer_histogram_is_fast():
    x = np.random.default_rng(4).random((256, 28, 28, 32), dtype=np.float32)  # 6.4 M values
    for cls in (PercentileObserver, KLObserver, MSEObserver):
        obs = cls(8)
        start = time.perf_counter()
        obs.update(x)
        obs.compute_range()
        assert time.perf_counter() - start < 3.0, cls  # vectorised: ~0.1-0.3 s


def test_kl_falls_back_to_min_max_on_sparse_data():
    from autoqnn.ptq.observers import KLObserver

    observer = KLObserver(bits=8)
    observer.update(np.array([-0.5, 0.1, 0.2, 3.0, 0.05, -0.1, 0.3, 0.2, 0.15, 0.0], "float32"))
    assert observer.compute_range() == (-0.5, 3.0)
    dense = KLObserver(bits=8)
    rng = np.random.default_rng(0)
    dense.update(np.concatenate([rng.normal(size=20000), [40.0]]).astype("float32"))
    lo, hi = dense.compute_range()
    assert hi < 40.0  # enough data: the outlier is clipped
