"""Verification metrics: insightface's 10-fold accuracy, ROC, TAR@FAR, AUC, EER.

Conventions (insightface's ``verification.py``): embeddings are L2-normalised in float64 (as sklearn's
``normalize`` does in insightface), the pair distance is ``d = ||e1 - e2||^2 = 2 - 2 cos`` and a pair
is predicted "same" when ``d < threshold``. For each fold the threshold maximising accuracy on the other
folds (the first, i.e. smallest, of equal bests) is applied to the held-out fold. With the default grid
``np.arange(0, 4, 0.01)`` this is insightface's ``calculate_roc`` exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

FARS = (1e-3, 1e-4)
#: false accept rates at which the report states a deployable cosine threshold
THRESHOLD_FARS = (1e-3, 1e-4, 1e-5)


def kfold_ids(num_pairs: int, num_folds: int = 10) -> np.ndarray:
    """Fold id of each pair for consecutive equal chunks, as ``KFold(n_splits, shuffle=False)``."""
    folds = np.empty(num_pairs, dtype=np.int64)
    for f, (_, test) in enumerate(KFold(n_splits=num_folds, shuffle=False).split(np.arange(num_pairs))):
        folds[test] = f
    return folds


def pair_distances(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Squared L2 distance of the normalised rows (float64): (N, d), (N, d) -> (N,) in [0, 4]."""
    e1 = normalize(np.asarray(emb1, dtype=np.float64))
    e2 = normalize(np.asarray(emb2, dtype=np.float64))
    return np.sum(np.square(np.subtract(e1, e2)), 1)


def _accuracies(dist: np.ndarray, issame: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of ``dist < t`` for every threshold t: (T,)."""
    pred = dist[None, :] < thresholds[:, None]
    return (pred == issame[None, :]).sum(axis=1) / dist.size


def _best_exact_threshold(dist: np.ndarray, issame: np.ndarray) -> float:
    """Threshold maximising accuracy over all cuts between distinct sorted distances (first best)."""
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], issame[order]
    # cut k: the k smallest are predicted same; correct = same among them + different among the rest
    correct = np.concatenate([[0], np.cumsum(s)]) + (np.sum(~s) - np.concatenate([[0], np.cumsum(~s)]))
    valid = np.ones(d.size + 1, dtype=bool)
    valid[1:-1] = d[1:] > d[:-1]
    k = int(np.argmax(np.where(valid, correct, -1)))
    if k == 0:
        return float(d[0])
    if k == d.size:
        return float(np.nextafter(d[-1], np.inf))
    return float((d[k - 1] + d[k]) / 2.0)


def kfold_accuracy(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray,
                   thresholds: np.ndarray | str = "grid") -> tuple[np.ndarray, np.ndarray]:
    """Held-out accuracy and chosen threshold of each fold: two (F,) arrays.

    ``thresholds``: ``grid`` (insightface's ``np.arange(0, 4, 0.01)``), ``exact`` (every cut between
    distinct training distances), or an explicit array of thresholds.
    """
    dist, issame = np.asarray(dist, dtype=np.float64), np.asarray(issame, dtype=bool)
    grid = np.arange(0, 4, 0.01) if isinstance(thresholds, str) and thresholds == "grid" else thresholds
    fold_values = np.unique(folds)
    accs, chosen = np.zeros(len(fold_values)), np.zeros(len(fold_values))
    for i, f in enumerate(fold_values):
        train, test = folds != f, folds == f
        if isinstance(grid, str):
            if grid != "exact":
                raise ValueError(f"thresholds must be 'grid', 'exact' or an array, got {grid!r}")
            t = _best_exact_threshold(dist[train], issame[train])
        else:
            t = grid[int(np.argmax(_accuracies(dist[train], issame[train], grid)))]
        chosen[i] = t
        accs[i] = float(np.sum((dist[test] < t) == issame[test])) / np.sum(test)
    return accs, chosen


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float, num_negatives: int) -> float | None:
    """Largest TAR with FAR <= far, or None when there are fewer than 1/far negative pairs."""
    if num_negatives < 1.0 / far:
        return None
    ok = fpr <= far
    return float(np.max(tpr[ok])) if ok.any() else 0.0


def threshold_at_far(impostor_scores: np.ndarray, far: float) -> dict:
    """The cosine threshold t at which at most ``far`` of the impostor pairs score ``>= t``.

    ``impostor_scores``: (N,) cosine similarities of different-person pairs. Returns ``{"cosine": t,
    "far": the achieved FAR, "impostors": N, "reliable": N * far >= 10}``: with fewer than 10 impostors
    accepted at that rate the threshold rests on a handful of pairs.
    """
    scores = np.sort(np.asarray(impostor_scores, dtype=np.float64))[::-1]
    n = scores.size
    k = int(np.floor(far * n))  # impostors that may be accepted
    t = float(np.nextafter(scores[k], np.inf)) if k < n else float(scores[-1])
    return {"cosine": t, "far": float(np.sum(scores >= t)) / n, "impostors": n, "reliable": n * far >= 10}


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """EER: the error where the false accept rate equals the false reject rate (linear interpolation)."""
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increases along the ROC
    i = int(np.searchsorted(diff, 0.0))
    if i == 0:
        return float((fpr[0] + fnr[0]) / 2)
    if i >= diff.size:
        return float((fpr[-1] + fnr[-1]) / 2)
    w = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


@dataclass
class VerificationResult:
    """Scores of one benchmark. Accuracies are fractions (0..1); thresholds are distances d = 2 - 2cos."""

    name: str
    num_pairs: int
    accuracy: float
    accuracy_std: float
    fold_accuracies: list[float]
    threshold: float
    tar_at_far: dict[str, float | None]
    auc: float
    eer: float
    xnorm: float | None = None
    num_impostors: int = 0
    far_thresholds: dict[str, dict] = field(default_factory=dict)
    skipped_pairs: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    roc: dict[str, list[float]] = field(default_factory=dict, repr=False)
    #: per-pair arrays (N,): ``score`` (cosine), ``issame``, ``fold``, ``correct`` (at its fold's threshold)
    per_pair: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self, with_roc: bool = False) -> dict:
        d = asdict(self)
        d.pop("per_pair")
        if not with_roc:
            d.pop("roc")
        return d

    def scalars(self) -> dict[str, float]:
        """What TensorBoard gets: the summary numbers by name."""
        out = {"accuracy": self.accuracy, "accuracy_std": self.accuracy_std, "auc": self.auc, "eer": self.eer,
               "threshold": self.threshold}
        if self.xnorm is not None:
            out["xnorm"] = self.xnorm
        out.update({f"tar@far={k}": v for k, v in self.tar_at_far.items() if v is not None})
        return out

    def headline(self) -> str:
        return f"accuracy {100 * self.accuracy:.2f}% ± {100 * self.accuracy_std:.2f}"


def verification_scores(name: str, emb1: np.ndarray, emb2: np.ndarray, issame, folds: np.ndarray,
                        thresholds: str = "grid", xnorm: float | None = None) -> VerificationResult:
    """All metrics of one benchmark from the two embeddings of each pair (any scale; normalised here)."""
    issame = np.asarray(issame, dtype=bool)
    dist = pair_distances(emb1, emb2)
    accs, chosen = kfold_accuracy(dist, issame, np.asarray(folds), thresholds)
    notes = []
    if issame.all() or not issame.any():
        raise ValueError(f"{name}: needs both matched and mismatched pairs to score")
    score = 1.0 - dist / 2.0  # cosine similarity
    fpr, tpr, _ = roc_curve(issame, score)
    num_neg = int(np.sum(~issame))
    tars = {}
    for far in FARS:
        tars[f"{far:g}"] = tar_at_far(fpr, tpr, far, num_neg)
        if tars[f"{far:g}"] is None:
            notes.append(f"TAR@FAR={far:g} needs at least {int(1 / far)} negative pairs, there are {num_neg}")
    return VerificationResult(
        name=name, num_pairs=int(issame.size), accuracy=float(np.mean(accs)), accuracy_std=float(np.std(accs)),
        fold_accuracies=[float(a) for a in accs], threshold=float(np.mean(chosen)), tar_at_far=tars,
        auc=float(roc_auc_score(issame, score)), eer=equal_error_rate(fpr, tpr), xnorm=xnorm, notes=notes,
        num_impostors=num_neg, far_thresholds={f"{far:g}": threshold_at_far(score[~issame], far) for far in THRESHOLD_FARS},
        roc={"fpr": fpr.tolist(), "tpr": tpr.tolist()},
        per_pair=per_pair_outcomes(dist, issame, np.asarray(folds), chosen),
    )


def per_pair_outcomes(dist: np.ndarray, issame: np.ndarray, folds: np.ndarray, chosen: np.ndarray) -> dict:
    """Each pair's cosine, label, fold and whether its fold's threshold (``chosen``, one per sorted fold value)
    classifies it correctly: what paired comparisons of two models need (frtrain-compare)."""
    fold_values = np.unique(folds)
    threshold = np.asarray(chosen)[np.searchsorted(fold_values, folds)]
    return {"score": (1.0 - dist / 2.0).astype(np.float32), "issame": issame.astype(bool),
            "fold": folds.astype(np.int16), "correct": (dist < threshold) == issame}
