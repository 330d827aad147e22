"""Identity-clustered intervals: each equals an independent implementation of the resampling rule on fixed seeds
(explicit loops, scikit-learn's weighted ROC); the clusters the readers name; paired comparisons on an IJB-layout
release; and a small coverage simulation (the full one: scripts/bench_coverage.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from frtrain.evaluation import metrics
from frtrain.evaluation.intervals import (fold_tables, item_weights, kfold_accuracy_interval, linked_image_clusters,
                                          rate_interval, tar_interval, weighted_kfold_accuracy)


def _data(seed=0, pairs=240, people=30):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, people, pairs)
    b = np.where(np.arange(pairs) % 2 == 0, a, (a + rng.integers(1, people, pairs)) % people)
    issame = a == b
    quality = rng.normal(0, 0.3, people)  # a person-level effect: pairs of one person move together
    dist = np.clip(np.where(issame, 0.9, 1.5) - quality[a] - quality[b] * ~issame + rng.normal(0, 0.35, pairs), 0, 3.99)
    folds = np.repeat(np.arange(10), pairs // 10)
    return dist, issame, folds, np.stack([a, b], 1)


def _independent_kfold(dist, issame, folds, clusters, people, resamples, seed):
    """The rule written out: per resample draw the people, weight each pair, choose each fold's threshold on the
    other folds' weighted pairs (the first best of the grid), weighted test accuracy, mean over folds with weight."""
    grid = np.arange(0, 4, 0.01)
    rng, values = np.random.default_rng(seed), []
    for _ in range(resamples):
        m = np.bincount(rng.integers(0, people, people), minlength=people)
        w = np.array([m[x] if x == y else m[x] * m[y] for x, y in clusters], dtype=float)
        accs = []
        for f in range(10):
            train, test = folds != f, folds == f
            best_t, best_c = None, -1.0
            for t in grid:
                c = np.sum(w[train] * ((dist[train] < t) == issame[train]))
                if c > best_c:
                    best_t, best_c = t, c
            if w[test].sum() > 0:
                accs.append(np.sum(w[test] * ((dist[test] < best_t) == issame[test])) / w[test].sum())
        values.append(np.mean(accs))
    return tuple(np.quantile(values, [0.025, 0.975]))


def test_the_kfold_accuracy_interval_equals_the_rule_written_out():
    dist, issame, folds, clusters = _data()
    got = kfold_accuracy_interval(dist, issame, folds, clusters, 30, "people", resamples=100, seed=7)
    want = _independent_kfold(dist, issame, folds, clusters, 30, 100, 7)
    assert (got.low, got.high) == pytest.approx(want, abs=1e-12)
    assert got.unit == "people" and got.clusters == 30 and got.resamples == 100
    # every weight 1: the 10-fold accuracy itself
    idx, bins, values = fold_tables(dist, issame, folds, np.arange(0, 4, 0.01))
    accs, _ = metrics.kfold_accuracy(dist, issame, folds)
    assert weighted_kfold_accuracy(idx, bins, issame, np.ones(len(dist)), 10, 400) == pytest.approx(accs.mean())


def test_the_tar_interval_equals_scikit_learns_weighted_roc_read_by_each_rule():
    rng = np.random.default_rng(2)
    n, people = 600, 40
    a = rng.integers(0, people, n)
    b = np.where(rng.random(n) < 0.3, a, (a + rng.integers(1, people, n)) % people)
    labels = a == b
    scores = np.round(np.where(labels, 0.6, 0.1) + rng.normal(0, 0.2, n), 2)  # rounded: ties
    clusters = np.stack([a, b], 1)
    for rule, far in (("insightface", 0.01), ("strict", 0.05)):
        got = tar_interval(labels, scores, clusters, people, "subjects", far, rule, resamples=150, seed=4)
        draws, values = np.random.default_rng(4), []
        for _ in range(150):
            m = np.bincount(draws.integers(0, people, people), minlength=people)
            w = np.where(a == b, m[a], m[a] * m[b]).astype(float)
            fpr, tpr, _ = roc_curve(labels, scores, sample_weight=w, drop_intermediate=False)
            if rule == "strict":
                values.append(tpr[fpr <= far].max())
            else:  # eval_ijbc.py: flipud, then the first of the nearest in the flipped order
                fpr, tpr = np.flipud(fpr), np.flipud(tpr)
                values.append(tpr[min(zip(np.abs(fpr - far), range(len(fpr))))[1]])
        assert (got.low, got.high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12), rule


def test_the_rate_interval_resamples_probe_identities():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 25, 300)
    success = rng.random(300) < 0.7
    got = rate_interval(success, ids, 25, "probe identities", resamples=200, seed=1)
    draws, values = np.random.default_rng(1), []
    for _ in range(200):
        m = np.bincount(draws.integers(0, 25, 25), minlength=25)
        values.append(np.sum(m[ids] * success) / np.sum(m[ids]))
    assert (got.low, got.high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])), abs=1e-12)
    assert item_weights(np.array([2, 0, 3]), np.array([[0, 0], [0, 2], [1, 2]])).tolist() == [2, 6, 0]


def test_a_benchmark_without_names_clusters_the_images_its_genuine_pairs_link():
    pairs = np.array([[0, 1], [1, 2], [3, 4], [0, 3], [5, 6]])
    issame = np.array([True, True, True, False, False])
    clusters, count = linked_image_clusters(pairs, issame, 7)
    assert count == 4  # {0,1,2}, {3,4}, {5}, {6}
    assert clusters[0, 0] == clusters[0, 1] == clusters[1, 1] and clusters[2, 0] == clusters[2, 1]
    assert clusters[3, 0] != clusters[3, 1] and len({clusters[4, 0], clusters[4, 1]}) == 2


def test_readers_name_the_people_they_resample(tmp_path):
    from frtrain.evaluation.benchmarks import file_pair_benchmark

    files = {}
    for person in ("Ann", "Bob", "Cid"):
        (tmp_path / person).mkdir()
        for k in (1, 2):
            files[person, k] = tmp_path / person / f"{person}_{k:04d}.jpg"
            files[person, k].write_bytes(b"x")
    pairs = [(files["Ann", 1], files["Ann", 2]), (files["Bob", 1], files["Cid", 2]), (files["Bob", 1], files["Bob", 2])]
    bench = file_pair_benchmark("t", "src", [(str(a), str(b)) for a, b in pairs], [True, False, True], [0, 1, 2],
                                ["w"] * 3)
    clusters, count, unit = bench.clusters()
    assert count == 3 and unit == "people (the images' folders)"
    assert clusters[0, 0] == clusters[0, 1] and clusters[1, 0] == clusters[2, 0] != clusters[1, 1]


# -- paired comparisons on an IJB-layout release ---------------------------------------------------------------
class _Noise(torch.nn.Module):
    """A useless model: features from a hash of the pixels (no identity in them)."""

    input_size, mean, std, embedding_size = (32, 32), (0.5,) * 3, (0.5,) * 3, 16

    def __init__(self, seed):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 32 * 32, 16, bias=False)
        torch.nn.init.normal_(self.proj.weight, 0, 1.0, generator=torch.Generator().manual_seed(seed))

    def forward(self, x):
        return torch.sin(1000 * self.proj(x.flatten(1)))


def test_a_paired_comparison_on_ijb_gives_an_interval_and_a_verdict(tmp_path):
    from test_ijb import SUBJECTS, _TinyModel, _write_release

    from frtrain.evaluation.comparison import build_report, find_runs
    from frtrain.evaluation.embed import Embedder
    from frtrain.evaluation.ijb_release import ijb_benchmark

    root = tmp_path / "IJBC"
    _write_release(root)
    bench = ijb_benchmark(str(root), "ijbc", cache_dir=str(tmp_path / "cache"))
    models = {"good": lambda s: _TinyModel().eval(), "noise": lambda s: _Noise(s).eval()}
    for head, make in models.items():
        for seed in (0, 1):
            result = bench.score(Embedder(make(seed), torch.device("cpu"), batch_size=16, interval_resamples=200))
            assert result.interval is not None and result.interval.clusters == SUBJECTS  # subjects linked by pairs
            run = tmp_path / "runs" / head / f"seed-{seed}"
            (run / "pairs").mkdir(parents=True)
            (run / "results.json").write_text(json.dumps({"final": {"ijbc": result.to_dict()}, "train_seconds": 1,
                                                          "history": {"eval": []}}))
            (run / "config.yaml").write_text(f"seed: {seed}\nhead:\n  _target_: x\n")
            (run / "compare_cell.json").write_text(json.dumps({"head": head, "split": []}))
            np.savez(run / "pairs" / "ijbc.npz", **result.per_pair)
    report = build_report(find_runs([str(tmp_path / "runs")]), baseline="noise", resamples=300)
    b = report["benchmarks"]["ijbc"]
    assert b["metric"] == "tar@far=1e-4" and b["unit"].startswith("subjects")
    (d,) = b["differences"]
    assert d["clusters"] == SUBJECTS and d["low"] <= d["difference"] <= d["high"] and d["detectable"] > 0
    assert d["verdict"] in ("A better", "B better", "not distinguishable at this size")
    per_seed = b["heads"]["good"]["per_seed"]
    assert set(per_seed) == {"0", "1"}


# -- coverage ------------------------------------------------------------------------------------------------------
def test_clustered_intervals_cover_a_planted_difference_where_pair_resampling_does_not():
    """Identity-level heterogeneity in the difference between two heads: the clustered interval covers the true
    difference about 95% of the time; resampling pairs as if independent covers it far less often."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_coverage import simulate

    clustered, naive = simulate(simulations=60, people=60, pairs_per_person=20, seeds=2, resamples=300, seed=0)
    assert 0.85 <= clustered <= 1.0
    assert naive < clustered - 0.1
