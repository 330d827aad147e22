"""Verification metrics against an independent re-implementation of insightface's k-fold procedure."""

from __future__ import annotations

import numpy as np
import pytest

from frtrain.errors import DataError
from frtrain.evaluation.benchmarks import verification_scores
from frtrain.evaluation.metrics import FARS, kfold_accuracy, kfold_ids, pair_distances, roc, tar_at_far

from conftest import insightface_tar_table


def insightface_accuracy(embeddings: np.ndarray, issame: np.ndarray, nfolds: int = 10):
    """insightface's evaluate(): rows 2i, 2i+1 are pair i; loops written out as in verification.py."""
    norms = np.sqrt(np.sum(embeddings**2, axis=1, keepdims=True))
    emb = embeddings / norms
    e1, e2 = emb[0::2], emb[1::2]
    dist = np.sum(np.square(e1 - e2), 1)
    thresholds = np.arange(0, 4, 0.01)
    n = len(issame)
    # KFold(n_splits, shuffle=False): the first n % k folds hold one extra pair
    sizes = [n // nfolds + (1 if f < n % nfolds else 0) for f in range(nfolds)]
    bounds = np.cumsum([0] + sizes)
    accs = []
    for f in range(nfolds):
        test = np.zeros(n, bool)
        test[bounds[f] : bounds[f + 1]] = True
        train = ~test

        def acc(t, idx):
            pred = dist[idx] < t
            tp = np.sum(pred & issame[idx])
            tn = np.sum(~pred & ~issame[idx])
            return (tp + tn) / np.sum(idx)

        train_acc = [acc(t, train) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accs.append(acc(best, test))
    return np.mean(accs), np.std(accs)


@pytest.mark.parametrize("seed, n_pairs, signal", [(0, 600, 0.0), (1, 6000, 1.2), (2, 7001, 0.5), (3, 3000, 3.0)])
def test_kfold_accuracy_equals_insightface_on_random_embeddings(seed, n_pairs, signal):
    rng = np.random.default_rng(seed)
    issame = rng.random(n_pairs) < 0.5
    a = rng.standard_normal((n_pairs, 32))
    b = rng.standard_normal((n_pairs, 32)) + signal * a * issame[:, None]
    emb = np.empty((2 * n_pairs, 32))
    emb[0::2], emb[1::2] = a, b
    want_mean, want_std = insightface_accuracy(emb, issame)
    r = verification_scores("t", a, b, issame, kfold_ids(n_pairs))
    assert r.accuracy == pytest.approx(want_mean, abs=1e-12)
    assert r.accuracy_std == pytest.approx(want_std, abs=1e-12)


def test_perfect_embeddings_score_100_and_random_ones_about_50():
    rng = np.random.default_rng(0)
    n = 3000
    ids1, ids2 = rng.integers(0, 50, n), rng.integers(0, 50, n)
    ids2[: n // 2] = ids1[: n // 2]
    order = rng.permutation(n)  # matched and mismatched pairs in every fold
    ids1, ids2 = ids1[order], ids2[order]
    issame = ids1 == ids2
    centres = rng.standard_normal((50, 64))
    r = verification_scores("perfect", centres[ids1], centres[ids2], issame, kfold_ids(n))
    assert r.accuracy == 1.0 and r.auc == 1.0 and r.eer == 0.0
    r = verification_scores("random", rng.standard_normal((n, 64)), rng.standard_normal((n, 64)), issame, kfold_ids(n))
    assert 0.45 < r.accuracy < 0.56 and 0.45 < r.auc < 0.55 and 0.44 < r.eer < 0.56


def test_exact_thresholds_are_at_least_as_good_on_training_folds_and_close_to_grid():
    rng = np.random.default_rng(4)
    n = 2000
    issame = rng.random(n) < 0.5
    a = rng.standard_normal((n, 16))
    b = rng.standard_normal((n, 16)) + 0.8 * a * issame[:, None]
    dist = pair_distances(a, b)
    folds = kfold_ids(n)
    grid, _ = kfold_accuracy(dist, issame, folds, "grid")
    exact, chosen = kfold_accuracy(dist, issame, folds, "exact")
    assert abs(grid.mean() - exact.mean()) < 0.01
    for f, t in enumerate(chosen):  # the exact threshold maximises training accuracy among all cuts
        train = folds != f
        acc_t = np.mean((dist[train] < t) == issame[train])
        best_grid = max(np.mean((dist[train] < g) == issame[train]) for g in np.arange(0, 4, 0.01))
        assert acc_t >= best_grid - 1e-12


def test_tar_at_far_is_reported_only_with_enough_negatives():
    rng = np.random.default_rng(5)
    n = 3000
    issame = np.arange(n) < n // 2
    a = rng.standard_normal((n, 16))
    b = a + rng.standard_normal((n, 16)) * np.where(issame, 0.5, 10.0)[:, None]
    r = verification_scores("x", a, b, issame, kfold_ids(n))
    assert r.tar_at_far["0.001"] is not None and 0.0 <= r.tar_at_far["0.001"] <= 1.0
    assert r.tar_at_far["0.0001"] is None
    assert any("1500" in note and "10000" in note for note in r.notes)


def _reference_eer(labels, scores):
    """EER on scikit-learn's whole curve: where FPR - FNR turns non-negative, linearly interpolated."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    diff = fpr - (1 - tpr)
    i = int(np.searchsorted(diff, 0.0))
    if i >= len(diff):
        return float((fpr[-1] + 1 - tpr[-1]) / 2)
    w = -diff[i - 1] / (diff[i] - diff[i - 1])
    return float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))


@pytest.mark.parametrize("seed", range(6))
def test_equal_error_rate_equals_the_interpolated_crossing_of_the_whole_curve(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.4
    scores = np.round(rng.normal(size=500) + labels * rng.uniform(0.2, 2), seed % 3)
    assert roc(labels, scores, chunk=int(rng.integers(1, 200))).eer == pytest.approx(_reference_eer(labels, scores),
                                                                                     abs=1e-12)


def test_kfold_ids_match_sklearn_chunks():
    ids = kfold_ids(23, 10)
    assert list(np.bincount(ids)) == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.all(np.diff(ids) >= 0)


# -- the ROC walk and the two TAR@FAR rules ------------------------------------------------------------------------
def _reference_rules(labels, scores, fars, roc_points):
    """The reference: scikit-learn's whole ``roc_curve``; the insightface rule as eval_ijbc.py writes it (flipud, then
    min(zip(|fpr - x|, index))); the strict rule; the trapezoid AUC; the curve thinned the documented way."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    nearest = insightface_tar_table(labels, scores, fars)
    strict = {f"{f:g}": float(tpr[fpr <= f].max()) for f in fars}
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    if len(fpr) > roc_points:
        smallest = float(fpr[fpr > 0].min())
        keep = np.searchsorted(fpr, np.logspace(np.log10(smallest), 0, roc_points))
        keep = np.unique(np.r_[0, np.clip(keep, 0, len(fpr) - 1), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return nearest, strict, fpr.tolist(), tpr.tolist(), auc


@pytest.mark.parametrize("decimals", [0, 1, 2])  # 0: all distinct; 1, 2: many ties, within and across labels
@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_the_chunked_roc_is_scikit_learns_curve_and_its_rules_are_insightface_s(decimals, chunk):
    rng = np.random.default_rng(decimals * 10 + chunk % 7)
    for _ in range(20):
        n = int(rng.integers(3, 1500))
        labels = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(int)
        labels[:2] = [0, 1]
        scores = (rng.normal(size=n) + 1.5 * labels).astype(np.float32)
        if decimals:
            scores = np.round(scores, decimals).astype(np.float32)
        for roc_points in (10, 2000):
            got = roc(labels, scores, roc_points=roc_points, chunk=chunk)
            nearest, strict, fpr, tpr, auc = _reference_rules(labels, scores, FARS, roc_points)
            assert got.tar["insightface"] == nearest and got.tar["strict"] == strict
            assert got.fpr == fpr and got.tpr == tpr and got.auc == pytest.approx(auc, abs=1e-12)
    with pytest.raises(DataError, match="0 genuine, 3 impostor"):
        roc(np.zeros(3, dtype=int), np.ones(3, dtype=np.float32))


def test_the_insightface_rule_takes_the_larger_tpr_among_points_at_the_nearest_fpr():
    """A curve with a vertical run at the target FPR: the old first-point pick gave its bottom, insightface its top."""
    # 10 impostors; 10 genuine pairs: 4 above every impostor, 3 between the top impostor and the next (the curve
    # climbs from (0.1, 0.4) to (0.1, 0.7) at FPR 0.1), 3 low
    impostor = np.r_[0.9, np.linspace(0.1, 0.5, 9)]
    genuine = np.r_[0.95, 0.96, 0.97, 0.98, 0.8, 0.75, 0.7, 0.2, 0.2, 0.2]
    labels = np.r_[np.zeros(10, int), np.ones(10, int)]
    scores = np.r_[impostor, genuine]
    got = tar_at_far(labels, scores, (0.1,), rule="insightface")["0.1"]
    nearest, _, _, _, _ = _reference_rules(labels, scores, (0.1,), 2000)
    assert got == nearest["0.1"] == 0.7  # the top of the run, (0.1, 0.7), not its first point (0.1, 0.4)
    assert tar_at_far(labels, scores, (1e-3,), rule="strict", measurable_only=True)["0.001"] is None
    assert tar_at_far(labels, scores, (0.1,), rule="strict")["0.1"] == 0.7
