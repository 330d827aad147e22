"""The statistics of paired comparisons (frtrain-compare): a Student-t interval over seeds, a logit interval for
proportions, and the paired cluster bootstrap of a difference between two heads with its p-value and the smallest
difference detectable at 80% power.

Resampling: seeds and identity clusters are drawn with replacement (the cluster bootstrap of
:mod:`frtrain.evaluation.intervals`: a pair counts with the product of its people's multiplicities, so pairs that share
people are not independent draws); accuracy differences are means of per-pair differences, TAR differences are
recomputed on every resample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from frtrain.evaluation.intervals import WeightedRoc


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
    """Head A minus head B (accuracy or TAR, a fraction), from a paired cluster bootstrap."""

    difference: float  # observed: mean over seeds (and pairs) of A - B
    low: float  # the bootstrap interval (percentiles)
    high: float
    p_value: float  # two-sided: how often the resampled difference falls on the other side of zero (x2)
    seeds: int
    pairs: int
    resamples: int
    clusters: int = 0  # the identity clusters resampled
    detectable: float = 0.0  # the smallest |difference| detectable at 80% power (two-sided 5%) at this size

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return "A better"
        if self.high < 0:
            return "B better"
        return "not distinguishable at this size"


#: z(0.975) + z(0.80): a difference this many standard errors away is found 80% of the time at the 5% level
POWER_80 = float(stats.norm.ppf(0.975) + stats.norm.ppf(0.80))


def _draws(rng, batch: int, seeds: int, num_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """(seed counts (b, seeds), cluster multiplicities (b, C)) of ``batch`` resamples: seeds drawn first, then
    clusters, each with replacement, as ``rng.integers`` arrays of shape (b, seeds) and (b, C)."""
    s = rng.integers(0, seeds, (batch, seeds))
    c = rng.integers(0, num_clusters, (batch, num_clusters))
    seed_counts = np.bincount((s + seeds * np.arange(batch)[:, None]).ravel(), minlength=batch * seeds)
    counts = np.bincount((c + num_clusters * np.arange(batch)[:, None]).ravel(), minlength=batch * num_clusters)
    return seed_counts.reshape(batch, seeds), counts.reshape(batch, num_clusters)


def _pair_weights(m: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """(b, P) weights of pairs for multiplicities (b, C): m_a for one person, m_a m_b for two."""
    a, b = clusters[:, 0], clusters[:, 1]
    return m[:, a] * np.where(a == b, 1, m[:, b])


def bootstrap_differences(diff: np.ndarray, clusters: np.ndarray | None = None, resamples: int = 10_000,
                          seed: int = 0, batch: int | None = None) -> np.ndarray:
    """Resampled mean differences (``resamples``,) of a (seeds, pairs) matrix of paired differences.

    Each resample draws seeds and identity clusters with replacement (:func:`_draws`, ``numpy.random.default_rng(
    seed)``, in batches); a pair's weight is its clusters' multiplicity product, a drawn seed counts as often as drawn:
    ``sum_s n_s sum_p w_p d[s, p] / (seeds * sum_p w_p)``. ``clusters`` (P, 2) ints; None: every pair its own.
    ``batch``: resamples drawn at once (default: what keeps a (batch, P) weight matrix near 4M entries); a resample
    whose drawn clusters hold no pair is dropped.
    """
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 2 or d.size == 0:
        raise ValueError(f"paired differences must be a non-empty (seeds, pairs) matrix, got shape {d.shape}")
    ns, n_pairs = d.shape
    clusters = np.repeat(np.arange(n_pairs)[:, None], 2, 1) if clusters is None else np.asarray(clusters)
    num_clusters = int(clusters.max()) + 1
    batch = batch or max(1, min(500, 4_000_000 // max(n_pairs, num_clusters)))
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, batch):
        b = min(batch, resamples - start)
        seed_counts, m = _draws(rng, b, ns, num_clusters)
        w = _pair_weights(m, clusters).astype(np.float64)
        total = w.sum(axis=1)
        out[start:start + b] = np.where(total > 0, ((seed_counts @ d) * w).sum(axis=1) / (ns * np.maximum(total, 1)),
                                        np.nan)
    return out[np.isfinite(out)]


def _summary(observed: float, boot: np.ndarray, shape, resamples: int, clusters: int,
             level: float) -> PairedDifference:
    low, high = np.quantile(boot, [0.5 - level / 2, 0.5 + level / 2])
    far_side = np.sum(boot <= 0) if observed > 0 else np.sum(boot >= 0) if observed < 0 else resamples
    p = min(1.0, 2.0 * (1 + far_side) / (1 + resamples))
    return PairedDifference(observed, float(low), float(high), float(p), shape[0], shape[1], resamples, clusters,
                            POWER_80 * float(np.std(boot, ddof=1)))


def paired_bootstrap(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int = 10_000, seed: int = 0,
                     level: float = 0.95, clusters: np.ndarray | None = None) -> PairedDifference:
    """Accuracy difference A - B with its cluster-bootstrap interval, p-value and detectable difference.

    ``correct_a``, ``correct_b``: (seeds, pairs) booleans, row s of both from the same seed, column p the same pair;
    ``clusters`` (pairs, 2): the identity clusters of each pair (None: each pair its own). p-value:
    ``min(1, 2 * (1 + #resamples on the far side of zero) / (1 + resamples))``, the two-sided test that inverts the
    percentile interval; detectable: ``(z(0.975) + z(0.8))`` x the bootstrap standard error.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same (seeds, pairs) shape, got {a.shape} and {b.shape}")
    d = a - b
    boot = bootstrap_differences(d, clusters, resamples, seed)
    count = a.shape[1] if clusters is None else int(np.asarray(clusters).max()) + 1
    return _summary(float(d.mean()), boot, d.shape, resamples, count, level)


def paired_tar_bootstrap(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray, clusters: np.ndarray,
                         far: float = 1e-4, rule: str = "insightface", resamples: int = 1000, seed: int = 0,
                         level: float = 0.95) -> PairedDifference:
    """TAR@``far`` difference A - B (template protocols), recomputed on every resample of seeds and clusters.

    ``scores_a``, ``scores_b``: (seeds, pairs) scores of the same pairs; ``labels`` (pairs,); ``clusters`` (pairs, 2).
    """
    sa, sb = np.atleast_2d(scores_a), np.atleast_2d(scores_b)
    ns = sa.shape[0]
    curves = [(WeightedRoc(labels, sa[k]), WeightedRoc(labels, sb[k])) for k in range(ns)]
    ones = np.ones(sa.shape[1])
    observed = float(np.mean([ca.tar_at_far(ones, far, rule) - cb.tar_at_far(ones, far, rule) for ca, cb in curves]))
    num_clusters = int(np.asarray(clusters).max()) + 1
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(resamples):
        seed_counts, m = _draws(rng, 1, ns, num_clusters)
        w = _pair_weights(m, np.asarray(clusters))[0].astype(np.float64)
        per_seed = [ca.tar_at_far(w, far, rule) - cb.tar_at_far(w, far, rule) if seed_counts[0, k] else 0.0
                    for k, (ca, cb) in enumerate(curves)]
        boot.append(float(np.dot(seed_counts[0], per_seed)) / ns)
    boot = np.asarray(boot)
    return _summary(observed, boot[np.isfinite(boot)], sa.shape, resamples, num_clusters, level)


def proportion_ci(values, n: int, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed proportions (a TAR: k of ``n`` genuine pairs accepted) that stays within [0, 1]:
    the Student-t interval over seeds on the logit scale, each proportion taken as (k + 0.5) / (n + 1) there (so 0
    and 1 have a logit), mapped back. The mean is the plain mean of the values; one value gives (v, v, v)."""
    v = np.asarray(values, dtype=np.float64)
    m = float(v.mean())
    if v.size < 2:
        return m, m, m
    adjusted = (v * n + 0.5) / (n + 1.0)
    logits = np.log(adjusted / (1.0 - adjusted))
    centre, low, high = mean_ci(logits, level)
    expit = lambda x: float(1.0 / (1.0 + np.exp(-x)))  # noqa: E731
    return m, min(m, expit(low)), max(m, expit(high))
