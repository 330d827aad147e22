"""Statistics of head comparisons: confidence intervals over seeds and the paired bootstrap over pairs and seeds.

Inputs are per-pair outcomes: for one model (a head at a seed), ``correct`` (P,) says whether each benchmark pair
was classified correctly at its fold's threshold (``pairs/<benchmark>.npz`` of a run). Two heads are compared on
the same pairs and the same seeds, so each (seed, pair) gives a paired difference in {-1, 0, 1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean of ``values`` (one per seed); low = high = mean for one."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size < 2:
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


@dataclass
class PairedDifference:
    """Head A minus head B, in accuracy (fraction), from a paired bootstrap."""

    difference: float  # observed: mean over seeds and pairs of correct_A - correct_B
    low: float  # the bootstrap interval (percentiles)
    high: float
    p_value: float  # two-sided: how often the resampled difference falls on the other side of zero (x2)
    seeds: int
    pairs: int
    resamples: int

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "A better"
        if self.high < 0:
            return "B better"
        return "not distinguishable at this size"


def bootstrap_differences(diff: np.ndarray, resamples: int = 10_000, seed: int = 0, batch: int = 500) -> np.ndarray:
    """Resampled mean differences (``resamples``,) of a (seeds, pairs) matrix of paired differences.

    Each resample draws seeds and pairs independently with replacement and takes the mean of the differences of
    the drawn (seed, pair) grid. Draws, per batch of ``batch`` resamples: ``S = rng.integers(0, seeds, (b, seeds))``
    then ``P = rng.integers(0, pairs, (b, pairs))`` from ``numpy.random.default_rng(seed)``; resample k of the
    batch is ``diff[S[k]][:, P[k]].mean()`` (computed here through counts: (counts_S @ diff) . counts_P).
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"paired differences must be a non-empty (seeds, pairs) matrix, got shape {d.shape}")
    ns, np_ = d.shape
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, batch):
        b = min(batch, resamples - start)
        s = rng.integers(0, ns, (b, ns))
        p = rng.integers(0, np_, (b, np_))
        seed_counts = np.bincount((s + ns * np.arange(b)[:, None]).ravel(), minlength=b * ns).reshape(b, ns)
        pair_counts = np.bincount((p + np_ * np.arange(b)[:, None]).ravel(), minlength=b * np_).reshape(b, np_)
        out[start:start + b] = ((seed_counts @ d) * pair_counts).sum(axis=1) / (ns * np_)
    return out


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95) -> PairedDifference:
    """Accuracy difference A - B with its bootstrap interval and p-value.

    ``correct_a``, ``correct_b``: (seeds, pairs) booleans, row s of both from the same seed, column p the same pair.
    p-value: ``min(1, 2 * (1 + #resamples on the far side of zero) / (1 + resamples))``, the two-sided test that
    inverts the percentile interval.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same (seeds, pairs) shape, got {a.shape} and {b.shape}")
    d = a - b
    boot = bootstrap_differences(d, resamples, seed)
    low, high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    observed = float(d.mean())
    far_side = np.sum(boot <= 0) if observed > 0 else np.sum(boot >= 0) if observed < 0 else resamples
    p = min(1.0, 2.0 * (1 + far_side) / (1 + resamples))
    return PairedDifference(observed, float(low), float(high), float(p), d.shape[0], d.shape[1], resamples)


__all__ = ["mean_ci", "PairedDifference", "bootstrap_differences", "paired_bootstrap"]
