"""Intervals that respect the data's structure: a cluster bootstrap over identities for every headline number.

Pairs, templates and probe trials share identities, so they are not independent draws; resampling them one by one
gives intervals that are too narrow. The rule (stated in every report, with its unit):

- the benchmark's units are C clusters (people for LFW/CFP/YTF/RFW/BFW, subjects for IJB, probe identities for
  TinyFace/SCface/MegaFace, classes for closed-set accuracy);
- a resample draws C clusters with replacement: ``rng.integers(0, C, C)`` from ``numpy.random.default_rng(seed)``,
  one call per resample in order; ``m_c`` = how often cluster c was drawn;
- every scored item is kept with weight the product of its clusters' multiplicities: a genuine pair (one person)
  ``m_a``, an impostor pair ``m_a m_b`` (both must be drawn), a probe trial ``m_probe``;
- the statistic is recomputed with these weights; the 95% interval is the 2.5th and 97.5th percentiles (numpy's
  linear quantile) of the resampled values.

The 10-fold accuracy keeps the folds: in every resample each fold's threshold is chosen again on the other folds'
weighted pairs (the first best of the grid, as insightface's verification.py), then the fold's weighted accuracy; the
mean over the folds that kept any weight. TAR at FAR on a resample reads the weighted ROC at its distinct scores by
the same rule as the number itself.

Where a benchmark names no identities (an insightface ``.bin``), the clusters are the images linked by genuine pairs
(the same image in two pairs, or two images of one person). A person whose images no genuine pair joins splits into
several clusters, so these clusters are finer than people and the interval can be somewhat narrow; the report says
which unit it used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


@dataclass
class ClusteredInterval:
    """A 95% interval of a headline number from the cluster bootstrap."""

    low: float
    high: float
    unit: str  # what was resampled: "people (LFW names)", "subjects", ...
    clusters: int
    resamples: int
    level: float = LEVEL

    def text(self, scale: float = 100.0) -> str:
        return f"[{scale * self.low:.2f}, {scale * self.high:.2f}]"

    def to_dict(self) -> dict:
        return asdict(self)


def multiplicities(num_clusters: int, resamples: int = RESAMPLES, seed: int = 0):
    """Yield, per resample, (C,) int64: how often each cluster was drawn (see the module docstring)."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, num_clusters, num_clusters), minlength=num_clusters)


def item_weights(m: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Weights (N,) of items with one cluster (N,) or two (N, 2): ``m_a``, or ``m_a m_b`` when a != b."""
    clusters = np.asarray(clusters)
    if clusters.ndim == 1:
        return m[clusters].astype(np.float64)
    a, b = clusters[:, 0], clusters[:, 1]
    return (m[a] * np.where(a == b, 1, m[b])).astype(np.float64)


def percentile_interval(values, level: float = LEVEL) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(v, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def dense_clusters(labels) -> tuple[np.ndarray, int]:
    """Any hashable labels (N,) or (N, 2) -> the same shape of ints 0..C-1, and C."""
    arr = np.asarray(labels, dtype=object)
    flat = arr.ravel()
    index: dict = {}
    out = np.array([index.setdefault(x, len(index)) for x in flat], dtype=np.int64).reshape(arr.shape)
    return out, len(index)


def linked_image_clusters(pairs: np.ndarray, issame: np.ndarray, num_images: int) -> tuple[np.ndarray, int]:
    """(P, 2) cluster of each pair's images, and C: images joined when a genuine pair links them (connected
    components); the fallback when a benchmark names no people."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    same = np.asarray(pairs)[np.asarray(issame, bool)]
    graph = coo_matrix((np.ones(len(same)), (same[:, 0], same[:, 1])), shape=(num_images, num_images))
    count, label = connected_components(graph, directed=False)
    used, dense = np.unique(label[np.asarray(pairs)], return_inverse=True)
    return dense.reshape(np.asarray(pairs).shape).astype(np.int64), len(used)


# -- 10-fold accuracy ------------------------------------------------------------------------------------------------
def fold_tables(dist, issame, folds, grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair: its fold's index (0..F-1), its bin (the number of grid thresholds <= its distance: the pair is
    called the same person at threshold k exactly when k >= bin) and the fold values."""
    fold_values, fold_index = np.unique(np.asarray(folds), return_inverse=True)
    bins = np.searchsorted(np.asarray(grid, dtype=np.float64), np.asarray(dist, dtype=np.float64), side="right")
    return fold_index, bins, fold_values


def weighted_kfold_accuracy(fold_index, bins, issame, w, num_folds: int, num_thresholds: int) -> float:
    """The 10-fold accuracy with pair weights ``w``: per fold the first threshold maximising the other folds'
    weighted correct count, then the fold's weighted accuracy; the mean over folds with weight (nan if none)."""
    size = num_thresholds + 1
    key = fold_index * size + bins
    gen = np.bincount(key[issame], weights=w[issame], minlength=num_folds * size).reshape(num_folds, size)
    imp = np.bincount(key[~issame], weights=w[~issame], minlength=num_folds * size).reshape(num_folds, size)
    cum_g, cum_i = np.cumsum(gen, axis=1), np.cumsum(imp, axis=1)  # weight with bin <= k: called same at k
    tot_i = cum_i[:, -1]
    accs = []
    for f in range(num_folds):
        train_correct = (cum_g.sum(0) - cum_g[f]) + ((tot_i.sum() - tot_i[f]) - (cum_i.sum(0) - cum_i[f]))
        k = int(np.argmax(train_correct[:num_thresholds]))
        weight = cum_g[f, -1] + tot_i[f]
        if weight > 0:
            accs.append((cum_g[f, k] + tot_i[f] - cum_i[f, k]) / weight)
    return float(np.mean(accs)) if accs else float("nan")


def kfold_accuracy_interval(dist, issame, folds, clusters, num_clusters: int, unit: str, grid=None,
                            resamples: int = RESAMPLES, seed: int = 0) -> ClusteredInterval:
    """The interval of insightface's 10-fold accuracy (``grid``: its thresholds, default ``np.arange(0, 4, 0.01)``)
    by the cluster bootstrap; ``clusters`` (P, 2) ints in 0..num_clusters-1."""
    grid = np.arange(0, 4, 0.01) if grid is None else np.asarray(grid)
    issame = np.asarray(issame, bool)
    fold_index, bins, fold_values = fold_tables(dist, issame, folds, grid)
    values = [weighted_kfold_accuracy(fold_index, bins, issame, item_weights(m, clusters), len(fold_values), len(grid))
              for m in multiplicities(num_clusters, resamples, seed)]
    return ClusteredInterval(*percentile_interval(values), unit, num_clusters, resamples)


# -- TAR at FAR ------------------------------------------------------------------------------------------------------
class WeightedRoc:
    """The ROC of fixed scores under changing item weights: sorted once, read in O(N) per resample."""

    def __init__(self, labels, scores):
        scores = np.asarray(scores, dtype=np.float64)
        self.order = np.argsort(-scores, kind="stable")
        s = scores[self.order]
        self.labels = np.asarray(labels, bool)[self.order]
        self.ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last item of each distinct score

    def tar_at_far(self, w: np.ndarray, far: float, rule: str = "insightface") -> float:
        """TAR at ``far`` with weights ``w`` (in the original order) by ``rule`` on the points at distinct scores:
        ``strict`` the best TPR with FPR <= far; ``insightface`` the TPR of the point whose FPR is nearest far (the
        later point on ties, (0, 0) a candidate)."""
        w = np.asarray(w, dtype=np.float64)[self.order]
        tp = np.cumsum(np.where(self.labels, w, 0.0))[self.ends]
        fp = np.cumsum(np.where(self.labels, 0.0, w))[self.ends]
        if tp[-1] <= 0 or fp[-1] <= 0:
            return float("nan")
        tpr, fpr = np.r_[0.0, tp / tp[-1]], np.r_[0.0, fp / fp[-1]]
        if rule == "strict":
            return float(tpr[fpr <= far].max())
        d = np.abs(fpr - far)
        return float(tpr[len(d) - 1 - int(np.argmin(d[::-1]))])


def tar_interval(labels, scores, clusters, num_clusters: int, unit: str, far: float, rule: str = "insightface",
                 resamples: int = RESAMPLES, seed: int = 0) -> ClusteredInterval:
    """The interval of TAR at ``far`` (``rule``) by the cluster bootstrap; ``clusters`` (N, 2) of each pair."""
    curve = WeightedRoc(labels, scores)
    values = [curve.tar_at_far(item_weights(m, clusters), far, rule)
              for m in multiplicities(num_clusters, resamples, seed)]
    return ClusteredInterval(*percentile_interval(values), unit, num_clusters, resamples)


# -- rates over trials (identification, classification) --------------------------------------------------------------
def rate_interval(success, clusters, num_clusters: int, unit: str, resamples: int = RESAMPLES,
                  seed: int = 0) -> ClusteredInterval:
    """The interval of a success rate over trials (N,) whose clusters (N,) are resampled (probe identities, classes)."""
    success = np.asarray(success, dtype=np.float64)
    per_cluster = np.bincount(clusters, weights=success, minlength=num_clusters)
    trials = np.bincount(clusters, minlength=num_clusters).astype(np.float64)
    values = []
    for m in multiplicities(num_clusters, resamples, seed):
        n = float(m @ trials)
        values.append(float(m @ per_cluster) / n if n > 0 else float("nan"))
    return ClusteredInterval(*percentile_interval(values), unit, num_clusters, resamples)
