"""The geometry measures of frtrain-analyze equal independent computations on planted embeddings with known shape."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from frtrain.evaluation import geometry as G


def _classes(spread: float, n_ids=6, per=5, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:n_ids]
    x = np.concatenate([c + rng.normal(0, spread, (per, d)) for c in centres])
    return G.unit(x), np.repeat(np.arange(n_ids), per)


@pytest.mark.parametrize("spread", [0.05, 0.6])
def test_pair_sets_equal_a_loop_over_every_pair(spread):
    emb, labels = _classes(spread)
    got = G.pair_sets(emb, labels, batch_size=8, batches=50, seed=3)
    gen, imp = [], []
    for a, b in itertools.combinations(range(len(emb)), 2):
        s = sum(float(emb[a, k] * emb[b, k]) for k in range(emb.shape[1]))
        (gen if labels[a] == labels[b] else imp).append(s)
    gen, imp = np.array(gen), np.array(imp)
    assert got["genuine_pairs"] == len(gen) == 6 * 10 and got["impostor_pairs"] == len(imp)
    assert got["genuine_mean"] == pytest.approx(gen.mean(), abs=1e-12)
    assert got["impostor_std"] == pytest.approx(math.sqrt(((imp - imp.mean()) ** 2).mean()), abs=1e-12)
    d_prime = abs(gen.mean() - imp.mean()) / math.sqrt((gen.var() + imp.var()) / 2)
    assert got["d_prime"] == pytest.approx(d_prime, rel=1e-12)
    edges = np.linspace(-1, 1, G.BINS + 1)
    pg = np.histogram(gen, edges)[0] / len(gen)
    pi = np.histogram(imp, edges)[0] / len(imp)
    assert got["overlap"] == pytest.approx(sum(min(a, b) for a, b in zip(pg, pi)), abs=1e-12)
    separated = 0
    for c in range(6):
        own = [i for i in range(len(emb)) if labels[i] == c]
        other = [i for i in range(len(emb)) if labels[i] != c]
        lo = min(emb[a] @ emb[b] for a, b in itertools.combinations(own, 2))
        hi = max(emb[a] @ emb[b] for a in own for b in other)
        separated += lo > hi
    assert got["identities_separated"] == separated / 6
    rng, good, counted = np.random.default_rng(3), 0, 0
    for _ in range(50):
        idx = rng.choice(len(emb), size=8, replace=False)
        same = [emb[a] @ emb[b] for a, b in itertools.combinations(idx, 2) if labels[a] == labels[b]]
        diff = [emb[a] @ emb[b] for a, b in itertools.combinations(idx, 2) if labels[a] != labels[b]]
        if same:
            counted += 1
            good += min(same) > max(diff)
    assert got["batches_with_pairs"] == counted and got["batches_separated"] == pytest.approx(good / counted)
    if spread == 0.05:  # separated identities: every identity and batch separates, the histograms do not overlap
        assert got["identities_separated"] == 1.0 and got["batches_separated"] == 1.0 and got["overlap"] == 0.0
    else:
        assert got["identities_separated"] < 1.0 and got["overlap"] > 0.0


def test_sampled_impostors_are_different_identity_pairs_of_distinct_images():
    emb, labels = _classes(0.3, n_ids=20, per=10, d=24)
    got = G.impostor_cosines(emb, labels, max_impostors=500, seed=1)
    rng = np.random.default_rng(1)
    i, j = rng.integers(0, 200, 500), rng.integers(0, 199, 500)
    j = j + (j >= i)
    expected = [emb[a] @ emb[b] for a, b in zip(i, j) if labels[a] != labels[b]]
    assert np.allclose(got, expected, atol=1e-12) and len(got) < 500


def test_separation_reads_nearest_neighbour_angles():
    v = G.unit(np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1.0]]))
    got = G.separation(v)
    # e1, e2 and their bisector are 45 degrees apart; e3 is 90 degrees from all
    assert got["min"] == pytest.approx(45.0) and got["median"] == pytest.approx(45.0)
    assert got["mean"] == pytest.approx((45 * 3 + 90) / 4)
    rng = np.random.default_rng(0)
    w = G.unit(rng.normal(size=(30, 5)))
    nearest = [min(math.degrees(math.acos(max(-1.0, min(1.0, float(w[a] @ w[b]))))) for b in range(30) if b != a)
               for a in range(30)]
    got = G.separation(w)
    assert got["min"] == pytest.approx(min(nearest), abs=1e-9) and got["p5"] == pytest.approx(np.percentile(nearest, 5))


@pytest.mark.parametrize("n", [4, 40])  # fewer and more images than dimensions
def test_class_spectrum_equals_the_covariance_eigenvalues(n):
    x = G.unit(np.random.default_rng(n).normal(size=(n, 12)) + 3 * np.eye(12)[0])
    full = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, ddof=1)))[::-1][:min(n - 1, 12)]
    assert np.allclose(G.class_spectrum(x), full, atol=1e-12)


def test_intra_shape_tells_elongated_from_isotropic_classes():
    rng = np.random.default_rng(0)
    d, per = 16, 60
    centres = np.eye(d)[:4] * 10

    def shape(scales):
        x = np.concatenate([c + rng.normal(0, 1, (per, d)) * scales for c in centres])
        return G.unit(x), np.repeat(np.arange(4), per)

    iso = G.intra_shape(*shape(np.ones(d)))
    long_axis = np.ones(d)
    long_axis[8] = 6.0  # every class stretched along one direction orthogonal to the centres
    elong = G.intra_shape(*shape(long_axis))
    assert iso["identities"] == elong["identities"] == 4
    assert elong["anisotropy_median"] > 4 * iso["anisotropy_median"]
    assert elong["effective_rank_median"] < iso["effective_rank_median"] / 2
    emb, labels = shape(np.ones(d))
    x = emb[labels == 0]
    lam = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1][:d]
    p = lam / lam.sum()
    c = x.mean(0) / np.linalg.norm(x.mean(0))
    one = G.intra_shape(x, np.zeros(len(x), dtype=int))
    assert one["anisotropy_median"] == pytest.approx(lam[0] / lam.mean(), rel=1e-9)
    assert one["effective_rank_median"] == pytest.approx(math.exp(-sum(q * math.log(q) for q in p if q > 0)), rel=1e-9)
    assert one["angle_to_centre_mean"] == pytest.approx(np.degrees(np.arccos(np.clip(x @ c, -1, 1))).mean(), rel=1e-12)


def test_margins_are_the_angle_to_the_nearest_other_centre_minus_the_own():
    centres = np.eye(3)
    ten = math.radians(10)
    emb = np.array([[math.cos(ten), math.sin(ten), 0], [math.sin(ten), math.cos(ten), 0], [0.6, 0.8, 0]])
    got = G.margins(emb, np.array([0, 1, 0]), centres, np.array([0, 1, 2]), target_degrees=math.degrees(0.5))
    # 10 from its own, 80 from e2; the same for the second; the third: 53.13 from e1, 36.87 from e2 -> -16.26
    third = math.degrees(math.acos(0.8)) - math.degrees(math.acos(0.6))
    assert got["images"] == 3 and got["mean"] == pytest.approx((70 + 70 + third) / 3)
    assert got["below_zero"] == pytest.approx(1 / 3) and got["below_target"] == pytest.approx(1 / 3)


def test_norm_quality_is_spearman_with_an_identity_interval_and_sharpness_orders_blur():
    from scipy.ndimage import uniform_filter
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    quality = rng.uniform(0, 1, 200)
    norms = 20 + 10 * quality + rng.normal(0, 2, 200)
    labels = np.repeat(np.arange(40), 5)
    got = G.norm_quality(norms, quality, labels, resamples=200)
    assert got["spearman"] == pytest.approx(spearmanr(norms, quality).statistic, abs=1e-12)
    assert got["low"] < got["spearman"] < got["high"] and got["low"] > 0.5
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    blurred = [uniform_filter(image.astype(float), size=(k, k, 1)) for k in (1, 2, 3, 5, 7)]
    sharp = [G.sharpness(b) for b in blurred]
    assert sharp == sorted(sharp, reverse=True)
    grey = image.astype(float) @ [0.299, 0.587, 0.114]
    lap = [grey[i - 1, j] + grey[i + 1, j] + grey[i, j - 1] + grey[i, j + 1] - 4 * grey[i, j]
           for i in range(1, 31) for j in range(1, 31)]
    assert G.sharpness(image) == pytest.approx(np.var(lap), rel=1e-12)
