"""Verification metrics, in one place: insightface's 10-fold accuracy, the ROC, TAR at FAR by both rules, AUC, EER
and the cosine thresholds to deploy.

Conventions (insightface's ``verification.py``): embeddings are L2-normalised in float64 (as sklearn's
``normalize`` does in insightface), the pair distance is ``d = ||e1 - e2||^2 = 2 - 2 cos`` and a pair
is predicted "same" when ``d < threshold``. For each fold the threshold maximising accuracy on the other
folds (the first, i.e. smallest, of equal bests) is applied to the held-out fold. With the default grid
``np.arange(0, 4, 0.01)`` this is insightface's ``calculate_roc`` exactly.

The ROC is scikit-learn's ``roc_curve(labels, scores)`` (``drop_intermediate=True``, first point (0, 0)), walked
in chunks (:func:`roc_corners`) so that IJB-C's 15.7M pairs need one sorted copy of the impostor scores, not half a
dozen arrays of the pair count. TAR at FAR has two rules, and every report names the one behind each number:

* ``insightface`` (what papers quote on IJB): insightface's ``eval_ijbc.py`` flips the ROC and takes
  ``min(zip(|fpr - far|, index))``: the point whose FPR is nearest the target, and among equally near points the
  last of scikit-learn's order (the largest TPR at a tied FPR); the (0, 0) point is one of the candidates;
* ``strict``: the largest TPR with FPR at most the target (what the pair benchmarks and frtrain-compare report,
  there only where at least 1/FAR impostor pairs can measure the rate: :func:`enough_impostors`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold
from sklearn.preprocessing import normalize

from frtrain.errors import DataError

#: the false accept rates frtrain reports (each result keeps those its impostor pairs can measure)
FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
#: of those, the ones at which a report states a deployable cosine threshold
THRESHOLD_FARS = tuple(f for f in FARS if 1e-5 <= f <= 1e-3)
#: the two TAR@FAR rules (see the module docstring)
RULES = ("insightface", "strict")


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


def enough_impostors(num_impostors: int, far: float) -> bool:
    """Whether ``num_impostors`` pairs can measure a false accept rate of ``far`` (at least 1/far of them)."""
    return num_impostors * far >= 1 - 1e-9


def roc_corners(genuine: np.ndarray, impostor_desc: np.ndarray, chunk: int = 1 << 20):
    """The points of scikit-learn's ``roc_curve(labels, scores)`` (``drop_intermediate=True``, without its first
    (0, 0)), as ``(false accepts, true accepts)`` int64 arrays, a chunk at a time in order of falling threshold.

    ``genuine``: (P,) scores of the genuine pairs, ascending; ``impostor_desc``: (N,) impostor scores, descending.
    A point is a distinct score; it is kept unless the counts rise by the same amounts before and after it (what
    ``roc_curve`` drops). Memory: O(chunk + P), never O(N) beyond the caller's sorted impostors."""
    n = len(impostor_desc)
    carry, lead = np.empty((0, 2), dtype=np.int64), 0  # carry: [decided point,] undecided point; lead: decided ones
    start = 0
    while start < n:
        end = min(start + chunk, n)
        while end < n and impostor_desc[end] == impostor_desc[end - 1]:  # a tie stays within one chunk
            end += 1
        hi = np.inf if start == 0 else impostor_desc[start]
        lo = -np.inf if end == n else impostor_desc[end]
        part = impostor_desc[start:end]
        g_lo, g_hi = np.searchsorted(genuine, lo, side="right"), np.searchsorted(genuine, hi, side="right")
        values = np.union1d(part, genuine[g_lo:g_hi])[::-1]  # the distinct thresholds in (lo, hi], falling
        fa = start + np.searchsorted(-part, -values, side="right")  # impostors >= each threshold
        ta = len(genuine) - np.searchsorted(genuine, values, side="left")  # genuine pairs >= each threshold
        seq = np.concatenate([carry, np.stack([fa, ta], axis=1).astype(np.int64)])
        if len(seq) >= 2:
            step = np.diff(seq, axis=0)
            flags = np.r_[True, np.any(step[1:] != step[:-1], axis=1)]  # seq[:-1]: first point, or a turn
            flags[:lead] = False  # seq[0] was decided with the previous chunk
            keep = seq[:-1][flags]
            if len(keep):
                yield keep[:, 0], keep[:, 1]
            carry, lead = seq[-2:], 1
        else:
            carry, lead = seq, 0
        start = end
    if len(carry):  # the last point is always kept
        yield carry[-1:, 0], carry[-1:, 1]


@dataclass
class Roc:
    """A ROC and what is read off it. ``tar`` maps rule -> {far: TAR or None}; ``fpr``/``tpr`` are the curve kept for
    plots (at most about ``roc_points`` points); ``auc`` and ``eer`` are of the whole curve."""

    tar: dict[str, dict[str, float | None]]
    fpr: list[float]
    tpr: list[float]
    auc: float
    eer: float
    genuine: int
    impostors: int

    def tar_at(self, far: float, rule: str = "strict") -> float | None:
        return self.tar[rule].get(f"{far:g}")


def roc(labels, scores, fars=FARS, roc_points: int = 2000, chunk: int = 1 << 20) -> Roc:
    """The ROC of ``scores`` (higher: more alike) against ``labels`` (1/True: same person), TAR at each FAR by both
    rules, AUC (trapezoids) and EER (linear interpolation where FPR crosses FNR), in one chunked walk.

    The kept curve has the points at or just past ``roc_points`` FPRs log-spaced from the smallest positive one to
    1 (all points when there are fewer), with (0, 0) first and the last point last."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores)
    genuine = np.sort(scores[labels])
    impostor = scores[~labels].copy()
    if len(genuine) == 0 or len(impostor) == 0:
        raise DataError(f"a ROC needs genuine and impostor pairs: {len(genuine)} genuine, {len(impostor)} impostor")
    impostor.sort()
    impostor = impostor[::-1]
    num_g, num_i = float(len(genuine)), float(len(impostor))
    fars = list(fars)
    # the (0, 0) point of scikit-learn's curve is the first candidate of the nearest rule; later points win ties
    near_d, near_t = [abs(0.0 - f) for f in fars], [0.0] * len(fars)
    strict = [0.0] * len(fars)
    auc, last_f, last_t, count, smallest, eer = 0.0, 0.0, 0.0, 1, None, None
    kept_f, kept_t = [np.zeros(1)], [np.zeros(1)]
    for fa, ta in roc_corners(genuine, impostor, chunk):
        fpr, tpr = fa / num_i, ta / num_g
        for k, far in enumerate(fars):
            d = np.abs(fpr - far)
            i = len(d) - 1 - int(np.argmin(d[::-1]))  # the last of the nearest
            if d[i] <= near_d[k]:
                near_d[k], near_t[k] = float(d[i]), float(tpr[i])
            ok = fpr <= far
            if ok.any():
                strict[k] = max(strict[k], float(tpr[ok].max()))
        x, y = np.r_[last_f, fpr], np.r_[last_t, tpr]
        auc += float((np.diff(x) * (y[1:] + y[:-1]) / 2.0).sum())
        if eer is None:
            diff = x - (1.0 - y)  # FPR - FNR rises along the curve
            i = int(np.searchsorted(diff, 0.0))
            if i < len(diff):
                w = -diff[i - 1] / (diff[i] - diff[i - 1]) if i > 0 else 0.0
                eer = float(x[i - 1] + w * (x[i] - x[i - 1])) if i > 0 else float((x[0] + 1.0 - y[0]) / 2)
        last_f, last_t = float(fpr[-1]), float(tpr[-1])
        if smallest is None and (fpr > 0).any():
            smallest = float(fpr[fpr > 0][0])
        count += len(fpr)
        if count <= roc_points:
            kept_f.append(fpr)
            kept_t.append(tpr)
    if eer is None:
        eer = float((last_f + 1.0 - last_t) / 2)
    if count <= roc_points:
        f_all, t_all = np.concatenate(kept_f), np.concatenate(kept_t)
    else:  # a second walk picks the thinned points
        targets = np.logspace(np.log10(max(smallest or 1e-9, 1e-12)), 0, roc_points)
        f_sel, t_sel, pending = [0.0], [0.0], targets
        for fa, ta in roc_corners(genuine, impostor, chunk):
            fpr, tpr = fa / num_i, ta / num_g
            at = np.searchsorted(fpr, pending, side="left")
            hit = np.unique(at[at < len(fpr)])
            f_sel.extend(fpr[hit].tolist())
            t_sel.extend(tpr[hit].tolist())
            pending = pending[at >= len(fpr)]
        if f_sel[-1] != last_f or t_sel[-1] != last_t:  # points differ in (FA, TA): values name them
            f_sel.append(last_f)
            t_sel.append(last_t)
        f_all, t_all = np.array(f_sel), np.array(t_sel)
    tars = {"insightface": {f"{far:g}": t for far, t in zip(fars, near_t)},
            "strict": {f"{far:g}": t for far, t in zip(fars, strict)}}
    return Roc(tars, f_all.tolist(), t_all.tolist(), auc, eer, len(genuine), len(impostor))


def tar_at_far(labels, scores, fars=FARS, rule: str = "strict", measurable_only: bool = False) -> dict:
    """TAR at each FAR (keys ``f"{far:g}"``) by ``rule`` (``insightface`` or ``strict``: see the module docstring);
    with ``measurable_only``, None where fewer than 1/FAR impostor pairs cannot measure the rate."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    curve = roc(labels, scores, fars)
    return {f: (t if not measurable_only or enough_impostors(curve.impostors, float(f)) else None)
            for f, t in curve.tar[rule].items()}
