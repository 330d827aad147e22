"""Train/test overlap: which identities of a benchmark also occur in a training set, and the benchmark's accuracy
without them (``frtrain-audit``).

Two kinds of evidence:

- **by name**, where both layouts carry names (identity folders; LFW/CFP/CSV pair lists whose images sit in a folder
  per person): names compared after lower-casing and folding every run of non-alphanumerics to ``_``
  (``George_W_Bush`` = ``george w bush``);
- **by embedding**, with a model: each benchmark identity's mean embedding (the normalised mean of its images'
  normalised embeddings) against each training class vector (the normalised mean of up to ``images_per_class`` of its
  images, the first in the index order; or the rows of the checkpoint's classification head). An identity is flagged
  when its best cosine exceeds the threshold, read from the **impostor distribution**: the cosines between the mean
  embeddings of the benchmark's own distinct identities. The threshold at FAR ``f`` is their empirical
  ``1 - f`` quantile (numpy's ``higher``) when there are at least ``10 / f`` of them, else a normal fit to them:
  ``mean + z(1 - f) * std``. ``f`` is per comparison: about ``f * identities * classes`` clean identities are
  flagged by chance, printed beside the result.

The overlap-free subset keeps the pairs whose two people are both unflagged; both accuracies are scored with the
benchmark's own protocol and interval (:func:`frtrain.evaluation.benchmarks.verification_scores`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

MIN_SUPPORT = 10  # impostor cosines per 1/FAR for the empirical quantile


def normal_name(name: str) -> str:
    """A person's name for matching: lower case, every run of non-alphanumerics folded to one ``_``."""
    return re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")


def name_matches(bench_names: list[str], train_names: list[str]) -> dict[str, str]:
    """benchmark identity -> the training class of the same normalised name (digits-only names never match: a
    class number is not a name)."""
    by_name = {}
    for t in train_names:
        n = normal_name(t)
        if n and not n.isdigit():
            by_name.setdefault(n, t)
    return {b: by_name[normal_name(b)] for b in bench_names if normal_name(b) in by_name}


def unit_mean(rows: np.ndarray) -> np.ndarray:
    """The normalised mean of normalised rows (n, d) -> (d,)."""
    x = np.asarray(rows, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    m = x.mean(axis=0)
    return m / max(np.linalg.norm(m), 1e-12)


def identity_means(emb: np.ndarray, identity_of_image: np.ndarray, count: int) -> np.ndarray:
    """(count, d): each identity's :func:`unit_mean` of its images' embeddings (``identity_of_image`` (n,) ids)."""
    return np.stack([unit_mean(emb[identity_of_image == i]) for i in range(count)])


@dataclass
class ImpostorThreshold:
    """The cosine above which a benchmark identity is taken to be a training class, and how it was read."""

    cosine: float
    far: float
    impostors: int
    rule: str


def impostor_threshold(means: np.ndarray, far: float) -> ImpostorThreshold:
    """From the cosines between distinct identities' means (``means`` (n, d) unit rows): the empirical ``1 - far``
    quantile with at least ``10 / far`` of them, else ``mean + z * std`` of a normal fit."""
    from scipy.stats import norm

    sims = means @ means.T
    upper = sims[np.triu_indices(len(means), k=1)]
    if len(upper) < 2:
        raise ValueError("the impostor distribution needs at least three benchmark identities")
    if len(upper) >= MIN_SUPPORT / far:
        return ImpostorThreshold(float(np.quantile(upper, 1 - far, method="higher")), far, len(upper),
                                 f"empirical {1 - far:g} quantile of {len(upper):,} impostor identity cosines")
    z = float(norm.ppf(1 - far))
    cosine = float(upper.mean() + z * upper.std(ddof=1))
    return ImpostorThreshold(cosine, far, len(upper),
                             f"normal fit to {len(upper):,} impostor identity cosines (fewer than {MIN_SUPPORT}/FAR): "
                             f"mean {upper.mean():.4f} + {z:.2f} x std {upper.std(ddof=1):.4f}")


@dataclass
class Overlap:
    """The audit's findings: ``by_name`` (identity -> class), ``by_embedding`` (identity -> (class, cosine)), the
    threshold, and the comparisons made (identities x classes)."""

    by_name: dict = field(default_factory=dict)
    by_embedding: dict = field(default_factory=dict)
    threshold: ImpostorThreshold | None = None
    comparisons: int = 0

    @property
    def identities(self) -> list[str]:
        return sorted(set(self.by_name) | set(self.by_embedding))

    def expected_by_chance(self) -> float | None:
        return None if self.threshold is None else self.threshold.far * self.comparisons


def embedding_matches(bench_means: np.ndarray, bench_names: list[str], class_vectors: np.ndarray,
                      class_names: list[str], threshold: ImpostorThreshold) -> dict:
    """identity -> (best class, cosine) for every benchmark identity whose best cosine to a class vector exceeds
    the threshold. ``class_vectors``: (C, d) unit rows."""
    out = {}
    for start in range(0, len(bench_means), 1024):  # (1024, C) cosines at a time
        sims = bench_means[start:start + 1024] @ class_vectors.T
        best = sims.argmax(axis=1)
        for i, (j, s) in enumerate(zip(best, sims[np.arange(len(best)), best])):
            if s > threshold.cosine:
                out[bench_names[start + i]] = (class_names[j], float(s))
    return out


def clean_pair_mask(pair_people: np.ndarray, flagged: set) -> np.ndarray:
    """(P,) True for the pairs whose two people (``pair_people`` (P, 2) names) are both unflagged."""
    return np.array([a not in flagged and b not in flagged for a, b in pair_people], dtype=bool)


def write_pair_csv(path: str, image_paths: list[str], pairs: np.ndarray, issame: np.ndarray, folds: np.ndarray,
                   keep: np.ndarray) -> int:
    """The kept pairs as the ``pairs_csv`` benchmark reads them (``path1,path2,is_same,fold``); returns the count."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        for (a, b), same, fold in zip(pairs[keep], issame[keep], folds[keep]):
            writer.writerow([image_paths[a], image_paths[b], int(same), int(fold)])
    return int(keep.sum())
