"""Verification metrics against an independent re-implementation of insightface's k-fold procedure."""

from __future__ import annotations

import numpy as np
import pytest

from frtrain.evaluation.metrics import equal_error_rate, kfold_accuracy, kfold_ids, pair_distances, verification_scores


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


def test_equal_error_rate_of_a_known_curve():
    fpr = np.array([0.0, 0.1, 0.2, 0.4, 1.0])
    tpr = np.array([0.0, 0.6, 0.8, 0.9, 1.0])
    # fnr = 1, .4, .2, .1, 0 -> crossing between (0.1, 0.4) and (0.2, 0.2): fpr - fnr goes -0.3 -> 0
    assert equal_error_rate(fpr, tpr) == pytest.approx(0.2)


def test_kfold_ids_match_sklearn_chunks():
    ids = kfold_ids(23, 10)
    assert list(np.bincount(ids)) == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert np.all(np.diff(ids) >= 0)
