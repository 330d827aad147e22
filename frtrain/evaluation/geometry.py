"""What the seed papers say their losses do to the embedding space, measured as numbers (``frtrain-analyze``).

All in float64 on L2-normalised embeddings (except the norms), angles in degrees. Definitions (docs/analysis.md
says the same with the papers' claims beside them):

- :func:`pair_sets` (UNPG): genuine cosines (every pair of images of one identity) and impostor cosines (every pair
  of images of different identities; with more than ``max_impostors`` pairs, the different-identity ones among that
  many pairs of distinct images drawn uniformly); their means, standard deviations (ddof=0), histograms on [-1, 1] (``BINS`` bins, as probabilities), the
  overlap area sum_b min(p_genuine(b), p_impostor(b)), d' = |mu_g - mu_i| / sqrt((s_g^2 + s_i^2) / 2); the fraction
  of identities (with a genuine pair) whose smallest genuine cosine exceeds the largest cosine between one of their
  images and any other identity's image; the fraction of random mini-batches (``batch_size`` images drawn without
  replacement, ``batches`` of them; those holding a genuine pair) in which min genuine > max impostor.
- :func:`separation` (NPT, margin heads): each vector's angle to its nearest other vector (class vectors of the
  head, or identities' mean embeddings): min, 5th percentile, median, mean, histogram on [0, 180] by 2 degrees.
- :func:`intra_shape` (IntraLoss, centre loss): per identity with at least ``min_images`` images, the eigenvalues of
  the within-class covariance (ddof=1) of its normalised embeddings, the top r = min(n - 1, d) of them (the rest are
  zero): anisotropy = lambda_1 / mean(lambda_1..r), effective rank = exp(entropy of lambda / sum lambda), the mean
  angle of the images to the normalised class mean; median and mean over identities, and the mean normalised
  spectrum (lambda_k / sum lambda) of the first ``SPECTRUM`` components.
- :func:`margins` (IE loss, Margin Loss): per image, (angle to the nearest other centre) - (angle to its own
  centre); its distribution, the fraction below 0 (closer to another identity) and below the head's target margin.
- :func:`norm_quality` (AdaFace, MagFace): Spearman's rho between the raw feature norm and a quality proxy (image
  sharpness: variance of the 4-neighbour Laplacian of the grey image), with a 95% cluster-bootstrap interval over
  identities, and the norm histogram.
"""

from __future__ import annotations

import numpy as np

BINS = 100
SPECTRUM = 10
ANGLE_BINS = np.arange(0, 182, 2.0)


def unit(x: np.ndarray) -> np.ndarray:
    """(n, d) rows scaled to unit length, float64."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _degrees(cos: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def genuine_cosines(emb: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Every within-identity pair's cosine (unit ``emb`` (n, d), ``labels`` (n,))."""
    out = []
    for c in np.unique(labels):
        x = emb[labels == c]
        if len(x) > 1:
            out.append((x @ x.T)[np.triu_indices(len(x), k=1)])
    return np.concatenate(out) if out else np.zeros(0)


def impostor_cosines(emb: np.ndarray, labels: np.ndarray, max_impostors: int, seed: int = 0) -> np.ndarray:
    """Every different-identity pair's cosine, or the different-identity ones among ``max_impostors`` image pairs
    drawn uniformly (two distinct images each, with replacement between draws) when there are more pairs."""
    n = len(emb)
    if n * (n - 1) // 2 <= max_impostors:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, max_impostors)
        j = rng.integers(0, n - 1, max_impostors)
        j = j + (j >= i)
    keep = labels[i] != labels[j]
    i, j = i[keep], j[keep]
    return np.einsum("nd,nd->n", emb[i], emb[j])


def histogram(values: np.ndarray, lo: float = -1.0, hi: float = 1.0, bins: int = BINS) -> list[float]:
    counts, _ = np.histogram(values, bins=np.linspace(lo, hi, bins + 1))
    return (counts / max(counts.sum(), 1)).tolist()


def pair_sets(emb: np.ndarray, labels: np.ndarray, batch_size: int = 64, batches: int = 1000,
              max_impostors: int = 2_000_000, seed: int = 0) -> dict:
    """The UNPG measures of unit ``emb`` (n, d) with identity ``labels`` (n,); see the module docstring."""
    labels = np.asarray(labels)
    g, imp = genuine_cosines(emb, labels), impostor_cosines(emb, labels, max_impostors, seed)
    pg, pi = histogram(g), histogram(imp)
    d_prime = abs(g.mean() - imp.mean()) / np.sqrt((g.var() + imp.var()) / 2)
    separated, with_pairs = 0, 0
    for c in np.unique(labels):
        own = labels == c
        if own.sum() < 2:
            continue
        x = emb[own]
        with_pairs += 1
        min_genuine = (x @ x.T)[np.triu_indices(len(x), k=1)].min()
        max_impostor = (x @ emb[~own].T).max() if (~own).any() else -np.inf
        separated += bool(min_genuine > max_impostor)
    rng = np.random.default_rng(seed)
    good, counted = 0, 0
    size = min(batch_size, len(emb))
    for _ in range(batches):
        idx = rng.choice(len(emb), size=size, replace=False)
        lab, sims = labels[idx], emb[idx] @ emb[idx].T
        upper = np.triu(np.ones((size, size), dtype=bool), k=1)
        same = (lab[:, None] == lab[None, :]) & upper
        if not same.any():
            continue
        counted += 1
        diff = (lab[:, None] != lab[None, :]) & upper
        good += bool(sims[same].min() > (sims[diff].max() if diff.any() else -np.inf))
    return {"genuine_pairs": len(g), "impostor_pairs": len(imp),
            "genuine_mean": float(g.mean()), "genuine_std": float(g.std()),
            "impostor_mean": float(imp.mean()), "impostor_std": float(imp.std()),
            "overlap": float(np.minimum(pg, pi).sum()), "d_prime": float(d_prime),
            "identities_separated": separated / max(with_pairs, 1), "identities_with_pairs": with_pairs,
            "batches_separated": good / counted if counted else None, "batches_with_pairs": counted,
            "batch_size": size, "genuine_hist": pg, "impostor_hist": pi}


def separation(vectors: np.ndarray) -> dict:
    """Nearest-neighbour angles (degrees) among unit ``vectors`` (k, d)."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    nearest = _degrees(sims.max(axis=1))
    counts, _ = np.histogram(nearest, bins=ANGLE_BINS)
    return {"count": len(vectors), "min": float(nearest.min()), "p5": float(np.percentile(nearest, 5)),
            "median": float(np.median(nearest)), "mean": float(nearest.mean()),
            "hist": (counts / max(counts.sum(), 1)).tolist()}


def class_spectrum(x: np.ndarray) -> np.ndarray:
    """The nonzero eigenvalues (descending, r = min(n - 1, d)) of the covariance (ddof=1) of unit rows x (n, d),
    from the n x n Gram matrix of the centred rows (the same nonzero eigenvalues, cheaper when n < d)."""
    centred = x - x.mean(axis=0)
    n = len(x)
    small = centred @ centred.T if n <= x.shape[1] else centred.T @ centred
    values = np.linalg.eigvalsh(small / (n - 1))[::-1]
    return np.clip(values[:min(n - 1, x.shape[1])], 0.0, None)


def intra_shape(emb: np.ndarray, labels: np.ndarray, min_images: int = 5) -> dict:
    """The IntraLoss / centre-loss measures per identity with at least ``min_images`` images, summarised."""
    aniso, erank, angle, spectra = [], [], [], []
    for c in np.unique(labels):
        x = emb[labels == c]
        if len(x) < min_images:
            continue
        lam = class_spectrum(x)
        if lam.sum() <= 0:
            continue
        p = lam / lam.sum()
        nz = p[p > 0]
        aniso.append(lam[0] / lam.mean())
        erank.append(float(np.exp(-(nz * np.log(nz)).sum())))
        centre = x.mean(axis=0)
        angle.append(float(_degrees(x @ (centre / np.linalg.norm(centre))).mean()))
        spectra.append(np.pad(p[:SPECTRUM], (0, max(0, SPECTRUM - len(p)))))
    if not aniso:
        return {"identities": 0}
    return {"identities": len(aniso), "min_images": min_images,
            "anisotropy_median": float(np.median(aniso)), "anisotropy_mean": float(np.mean(aniso)),
            "effective_rank_median": float(np.median(erank)), "effective_rank_mean": float(np.mean(erank)),
            "angle_to_centre_median": float(np.median(angle)), "angle_to_centre_mean": float(np.mean(angle)),
            "spectrum": np.mean(spectra, axis=0).tolist()}


def margins(emb: np.ndarray, labels: np.ndarray, centres: np.ndarray, centre_labels: np.ndarray,
            target_degrees: float | None = None) -> dict:
    """Per image: (angle to the nearest other centre) - (angle to its own centre), degrees. ``centres`` (k, d) unit,
    ``centre_labels`` (k,) the identity of each; images whose identity has no centre are left out."""
    row = {int(c): i for i, c in enumerate(centre_labels)}
    keep = np.array([int(y) in row for y in labels])
    x, own = emb[keep], np.array([row[int(y)] for y in labels[keep]], dtype=np.int64)
    sims = x @ centres.T
    own_angle = _degrees(sims[np.arange(len(x)), own])
    sims[np.arange(len(x)), own] = -np.inf
    margin = _degrees(sims.max(axis=1)) - own_angle
    counts, _ = np.histogram(margin, bins=np.arange(-90, 92, 2.0))
    return {"images": int(len(x)), "median": float(np.median(margin)), "mean": float(margin.mean()),
            "below_zero": float((margin < 0).mean()),
            "target_degrees": target_degrees,
            "below_target": None if target_degrees is None else float((margin < target_degrees).mean()),
            "hist": (counts / max(counts.sum(), 1)).tolist()}


def sharpness(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image ((H, W, 3) uint8, RGB), on the 0..255 scale."""
    grey = np.asarray(image, dtype=np.float64) @ np.array([0.299, 0.587, 0.114])
    lap = (grey[1:-1, :-2] + grey[1:-1, 2:] + grey[:-2, 1:-1] + grey[2:, 1:-1] - 4 * grey[1:-1, 1:-1])
    return float(lap.var())


def norm_quality(norms: np.ndarray, quality: np.ndarray, labels: np.ndarray, resamples: int = 1000,
                 seed: int = 0) -> dict:
    """Spearman's rho between feature norms and quality, its 95% interval from resampling identities (all their
    images) with replacement, and the norm histogram."""
    from scipy.stats import spearmanr

    rho = float(spearmanr(norms, quality).statistic)
    ids = np.unique(labels)
    members = [np.flatnonzero(labels == c) for c in ids]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(ids), len(ids))])
        draws.append(spearmanr(norms[idx], quality[idx]).statistic)
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (np.nan, np.nan)
    counts, edges = np.histogram(norms, bins=50)
    return {"spearman": rho, "low": float(low), "high": float(high), "resamples": resamples,
            "unit": "identities", "norm_mean": float(np.mean(norms)), "norm_std": float(np.std(norms)),
            "norm_hist": counts.tolist(), "norm_edges": edges.tolist()}


def measure_all(raw: np.ndarray, labels: np.ndarray, measures, class_vectors: np.ndarray | None = None,
                target_degrees: float | None = None, quality: np.ndarray | None = None, batch_size: int = 64,
                batches: int = 1000, max_impostors: int = 2_000_000, min_images: int = 5,
                resamples: int = 1000) -> dict:
    """The chosen ``measures`` (pairs, separation, shape, margins, norms) of raw embeddings (n, d) with identity
    ``labels`` (n,). ``class_vectors`` (C, d): the head's rows, indexed by label; None: the identities' means are
    the centres. ``quality`` (n,): needed for norms."""
    raw = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(labels)
    emb = unit(raw)
    present = np.unique(labels)
    means = unit(np.stack([emb[labels == c].mean(axis=0) for c in present]))
    out = {}
    if "pairs" in measures:
        out["pairs"] = pair_sets(emb, labels, batch_size, batches, max_impostors)
    if "separation" in measures:
        out["separation_identities"] = separation(means)
        if class_vectors is not None:
            out["separation_classes"] = separation(unit(class_vectors))
    if "shape" in measures:
        out["shape"] = intra_shape(emb, labels, min_images)
    if "margins" in measures:
        centres, centre_labels = ((unit(class_vectors), np.arange(len(class_vectors))) if class_vectors is not None
                                  else (means, present))
        out["margins"] = margins(emb, labels, centres, centre_labels, target_degrees)
    if "norms" in measures and quality is not None:
        out["norms"] = norm_quality(np.linalg.norm(raw, axis=1), quality, labels, resamples=resamples)
    return out


#: the headline scalars of each measure (TensorBoard's geometry/<name>, frtrain-compare's geometry columns)
SCALARS = {"pairs": ("d_prime", "overlap", "identities_separated", "batches_separated"),
           "separation_classes": ("min", "median"), "separation_identities": ("min", "median"),
           "shape": ("anisotropy_median", "effective_rank_median", "angle_to_centre_median"),
           "margins": ("median", "below_zero", "below_target"), "norms": ("spearman",)}


def scalars(record: dict) -> dict[str, float]:
    """``{"pairs/d_prime": ..., ...}``: the :data:`SCALARS` present in a :func:`measure_all` record."""
    return {f"{group}/{key}": float(record[group][key]) for group, keys in SCALARS.items() if group in record
            for key in keys if record[group].get(key) is not None}
