"""Histogram observers: percentile, KL-divergence (entropy) and MSE-optimal clipping.

Each observer keeps a vectorised histogram of the values reaching one
activation quantizer: a fixed number of bins over a symmetric range `[-A, A]`
whose limit `A` is a power of two and doubles (merging bin pairs) when a batch
exceeds it, so one pass over the calibration data suffices and each batch
costs one `np.bincount`. The range search then runs on the bin centres, never
on the raw values.

Candidate ranges scale the observed `(min, max)` (asymmetric grids) or
`max|x|` (symmetric grids) by a ratio in (0, 1]:

- "percentile": the given percentile of the values (`100 - p` for the minimum).
- "kl": the ratio minimising KL(P || Q) between the clipped distribution P
  (outliers folded into the edge bins) and its quantized version Q (TensorRT's
  entropy calibration, generalised to asymmetric grids).
- "mse": the ratio minimising the expected squared quantization error,
  clipping error included.

Example:
    >>> import numpy as np
    >>> from autoqnn.ptq.observers import MSEObserver, PercentileObserver
    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([rng.normal(size=100_000), [40.0]]).astype("float32")
    >>> obs = PercentileObserver(bits=8, symmetric=True, percentile=99.9)
    >>> obs.update(x)
    >>> lo, hi = obs.compute_range()
    >>> 3.0 < hi < 3.6 and lo == -hi
    True
    >>> mse = MSEObserver(bits=4, symmetric=True); mse.update(x)
    >>> 2.0 < mse.compute_range()[1] < 5.0   # the outlier at 40 is clipped
    True
"""

from __future__ import annotations

import abc

import numpy as np

from autoqnn.ptq.calibrate import Observer, register_observer

DEFAULT_BINS = 8192


class Histogram:
    """Counts of values over `[-limit, limit]` in `bins` equal bins; the limit doubles as needed.

    Args:
        bins: number of bins (a multiple of 4).

    Example:
        >>> h = Histogram(bins=8)
        >>> h.add(np.array([0.1, 0.6, -0.9], "float32"))
        >>> h.limit, h.counts.tolist()
        (1.0, [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
        >>> h.add(np.array([1.5], "float32")); h.limit, int(h.counts.sum())
        (2.0, 4)
    """

    def __init__(self, bins: int = DEFAULT_BINS):
        if bins < 4 or bins % 4:
            raise ValueError(f"bins must be a positive multiple of 4, got {bins}")
        self.bins = bins
        self.limit = None
        self.counts = np.zeros(bins, "float64")

    def add(self, values: np.ndarray, min_value=None, max_value=None):
        """Adds values (their min/max may be passed when already known)."""
        values = np.asarray(values, "float32").ravel()
        if not values.size:
            return
        lo = float(values.min()) if min_value is None else float(min_value)
        hi = float(values.max()) if max_value is None else float(max_value)
        amax = max(-lo, hi)
        if self.limit is None:
            self.limit = float(2.0 ** np.ceil(np.log2(amax))) if amax > 0 else 1.0
        while amax > self.limit:
            self._double()
        scale = np.float32(self.bins / (2.0 * self.limit))
        scaled = np.multiply(values, scale)
        scaled += np.float32(self.bins / 2)
        index = scaled.astype(np.int32)
        np.minimum(index, self.bins - 1, out=index)  # values == limit
        np.maximum(index, 0, out=index)
        self.counts += np.bincount(index, minlength=self.bins)

    def _double(self):
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        quarter = self.bins // 4
        self.counts = np.zeros(self.bins, "float64")
        self.counts[quarter:quarter + merged.size] = merged
        self.limit *= 2.0

    @property
    def centers(self) -> np.ndarray:
        width = 2.0 * self.limit / self.bins
        return -self.limit + width * (np.arange(self.bins) + 0.5)


class HistogramObserver(Observer):
    """Base of the histogram observers: tracks min, max and a `Histogram`.

    Subclasses implement `search_range(centers, counts, lo, hi)`.

    Args:
        bits: bits of the quantizer.
        symmetric: whether its grid is symmetric (zero point 0).
        bins: histogram bins.
    """

    def __init__(self, bits, symmetric=False, bins: int = DEFAULT_BINS):
        super().__init__(bits, symmetric)
        self.histogram = Histogram(bins)
        self.min = np.inf
        self.max = -np.inf

    def update(self, values):
        values = np.asarray(values)
        if not values.size:
            return
        lo, hi = float(values.min()), float(values.max())
        self.min = min(self.min, lo)
        self.max = max(self.max, hi)
        self.histogram.add(values, lo, hi)
        self.count += values.size

    @property
    def levels(self) -> int:
        """Number of grid levels (symmetric grids use the narrow range)."""
        return 2 ** self.bits - (1 if self.symmetric else 0)

    def full_range(self) -> tuple[float, float]:
        lo, hi = min(self.min, 0.0), max(self.max, 0.0)
        if self.symmetric:
            amax = max(-lo, hi)
            return -amax, amax
        return lo, hi

    def compute_range(self):
        lo, hi = self.full_range()
        if hi - lo <= 0:
            return lo, hi
        counts = self.histogram.counts
        keep = counts > 0
        return self.search_range(self.histogram.centers[keep], counts[keep], lo, hi)

    @abc.abstractmethod
    def search_range(self, centers, counts, lo, hi):
        """The chosen `(min, max)` given the histogram's non-empty bins."""


def quantize_centers(centers, lo, hi, levels):
    """Bin centres quantized on grids `[lo_k, hi_k]` (arrays of K candidates): shape (K, bins)."""
    lo = np.asarray(lo, "float64")[:, None]
    hi = np.asarray(hi, "float64")[:, None]
    step = np.maximum((hi - lo) / (levels - 1), 1e-12)
    index = np.clip(np.round((centers[None, :] - lo) / step), 0, levels - 1)
    return lo + index * step


@register_observer("percentile")
class PercentileObserver(HistogramObserver):
    """Clips at a percentile of the values (of |x| for symmetric grids).

    Args:
        bits, symmetric, bins: see `HistogramObserver`.
        percentile: in (50, 100]; 99.99 by default.
    """

    def __init__(self, bits, symmetric=False, bins=DEFAULT_BINS, percentile: float = 99.99):
        super().__init__(bits, symmetric, bins)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def search_range(self, centers, counts, lo, hi):
        q = self.percentile / 100.0
        if q >= 1.0:
            return lo, hi
        if self.symmetric:
            magnitude = np.abs(centers)
            order = np.argsort(magnitude, kind="stable")
            amax = min(float(_quantile(magnitude[order], counts[order], q)), hi)
            return -amax, amax
        top = _quantile(centers, counts, q)
        bottom = _quantile(centers, counts, 1.0 - q)
        return max(min(float(bottom), 0.0), lo), min(max(float(top), 0.0), hi)


def _quantile(sorted_values, counts, q):
    cdf = np.cumsum(counts) / counts.sum()
    return sorted_values[min(int(np.searchsorted(cdf, q)), len(cdf) - 1)]


class _RatioSearchObserver(HistogramObserver):
    """Searches a ratio `t` of the full range; the range is `t * (lo, hi)`."""

    ratios = np.linspace(0.05, 1.0, 96)

    def search_range(self, centers, counts, lo, hi):
        losses = self.losses(centers, counts, self.ratios * lo, self.ratios * hi)
        best = float(self.ratios[int(np.argmin(losses))])
        return best * lo, best * hi

    @abc.abstractmethod
    def losses(self, centers, counts, lo, hi):
        """The loss of each candidate range `(lo[i], hi[i])`."""


@register_observer("mse")
class MSEObserver(_RatioSearchObserver):
    """The range minimising the expected squared error (rounding + clipping)."""

    def losses(self, centers, counts, lo, hi):
        quantized = quantize_centers(centers, lo, hi, self.levels)
        return ((quantized - centers[None, :]) ** 2 * counts[None, :]).sum(axis=1)


@register_observer("kl")
class KLObserver(_RatioSearchObserver):
    """The range minimising KL(P || Q) (entropy calibration).

    P is the histogram restricted to the range with the outliers added to the
    edge bins; Q spreads the mass of each grid level evenly over the non-empty
    bins of that level, as in TensorRT's calibrator.
    """

    ratios = np.linspace(1.0 / 16.0, 1.0, 64)
    min_values = 1024
    """Below this many observed values the histogram is too sparse for a
    divergence (e.g. 10 logits of one sample): the min/max range is used."""

    def compute_range(self):
        if self.count < self.min_values:
            return self.full_range()
        # The spike of exact zeros (ReLU outputs) would dominate the divergence
        # and favour tiny ranges; like NVIDIA's calibrator, give the zero bin
        # the count of its neighbour.
        histogram = self.histogram
        zero_bin = histogram.bins // 2
        saved = histogram.counts[zero_bin]
        histogram.counts[zero_bin] = histogram.counts[zero_bin + 1]
        try:
            return super().compute_range()
        finally:
            histogram.counts[zero_bin] = saved

    def losses(self, centers, counts, lo, hi):
        return np.array([self._kl(centers, counts, a, b) for a, b in zip(lo, hi)])

    def _kl(self, centers, counts, lo, hi):
        inside = (centers >= lo) & (centers <= hi)
        if not inside.any():
            return np.inf
        c, h = centers[inside], counts[inside]
        p = h.copy()
        p[0] += counts[centers < lo].sum()
        p[-1] += counts[centers > hi].sum()
        step = max((hi - lo) / (self.levels - 1), 1e-12)
        level = np.round((c - lo) / step).astype(np.int64)
        mass = np.bincount(level, weights=h)
        nonzero = np.bincount(level, weights=(h > 0).astype("float64"))
        q = np.where(h > 0, mass[level] / np.maximum(nonzero[level], 1.0), 0.0)
        p = p / p.sum()
        q_total = q.sum()
        if q_total <= 0:
            return np.inf
        q = q / q_total
        mask = p > 0
        q = np.maximum(q[mask], 1e-12)  # outliers in an empty edge bin: smoothed
        return float(np.sum(p[mask] * np.log(p[mask] / q)))
