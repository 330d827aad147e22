"""IJB-B/C: a synthetic release in insightface's layout, scored by frtrain and by an independent numpy computation
written here (template aggregation, ROC, both FAR rules, identification); alignment; the options; bad files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frtrain.data.synthetic import draw_image
from frtrain.errors import DataError
from frtrain.evaluation.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from frtrain.evaluation.ijb import (embed_images, embedding_file, identification_rates, ijb_benchmark, pair_scores,
                                   score_templates, template_features)

SUBJECTS, LOOSE = 12, 64


def _write_release(root: Path, protocol: str = "ijbc", seed: int = 0) -> dict:
    """A small IJB release: 12 subjects, 3 templates each of 1-3 medias of 1-3 images; all template pairs; G1/G2
    galleries (one template per subject, half the subjects each) and the other templates as probes."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    lmk_lines, tid_lines, rows = [], [], []
    template, media, image = 0, 0, 0
    subject_of = {}
    for s in range(SUBJECTS):
        for _ in range(3):
            template += 1
            subject_of[template] = s
            for _ in range(int(rng.integers(1, 4))):
                media += 1
                for _ in range(int(rng.integers(1, 4))):
                    image += 1
                    name = f"{image}.jpg"
                    (root / "loose_crop" / name).write_bytes(draw_image(seed, 1, s, image, LOOSE))
                    lmk = ARCFACE_TEMPLATE * (LOOSE / 112) + rng.normal(0, 0.8, (5, 2))
                    score = rng.uniform(0.4, 1.0)
                    lmk_lines.append(name + " " + " ".join(f"{v:.3f}" for v in lmk.ravel()) + f" {score:.4f}")
                    tid_lines.append(f"{name} {template} {media}")
                    rows.append((template, s, name, media))
    templates = sorted(subject_of)
    pairs = [(a, b, int(subject_of[a] == subject_of[b])) for i, a in enumerate(templates) for b in templates[i + 1:]]
    (root / "meta" / f"{protocol}_name_5pts_score.txt").write_text("\n".join(lmk_lines) + "\n")
    (root / "meta" / f"{protocol}_face_tid_mid.txt").write_text("\n".join(tid_lines) + "\n")
    (root / "meta" / f"{protocol}_template_pair_label.txt").write_text("\n".join(f"{a} {b} {y}" for a, b, y in pairs) + "\n")
    galleries = {"G1": set(range(0, SUBJECTS, 2)), "G2": set(range(1, SUBJECTS, 2))}
    first_template = {s: min(t for t in templates if subject_of[t] == s) for s in range(SUBJECTS)}
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n"
    for g, subjects in galleries.items():
        keep = [r for r in rows if r[1] in subjects and r[0] == first_template[r[1]]]
        (root / "meta" / f"{protocol}_1N_gal_{g}.csv").write_text(header + "".join(f"{t},{s},img/{n},{m}\n" for t, s, n, m in keep))
    probes = [r for r in rows if r[0] != first_template[r[1]]]
    (root / "meta" / f"{protocol}_1N_probe_mixed.csv").write_text(header + "".join(f"{t},{s},img/{n},{m}\n" for t, s, n, m in probes))
    return {"subject_of": subject_of, "pairs": pairs}


class _TinyModel(torch.nn.Module):
    """A fixed random projection of the pixels: deterministic embeddings for the protocol's arithmetic."""

    input_size, mean, std, embedding_size = (32, 32), (0.5,) * 3, (0.5,) * 3, 16

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3 * 32 * 32, 16)
        torch.nn.init.normal_(self.proj.weight, 0, 0.02, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        return self.proj(x.flatten(1))


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("IJBC")
    truth = _write_release(root)
    return root, truth


# -- the independent computation -------------------------------------------------------------------------------------
def _reference(raw, scores, templates, medias, flip="sum", normalize=False, weight=True):
    feats = {"sum": raw[:, 0] + raw[:, 1], "none": raw[:, 0], "concat": raw.reshape(len(raw), -1)}[flip].astype(np.float64)
    if normalize:
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    if weight:
        feats = feats * scores[:, None]
    out = {}
    for t in np.unique(templates):
        total = 0
        for m in np.unique(medias[templates == t]):
            total = total + feats[(templates == t) & (medias == m)].mean(axis=0)
        out[int(t)] = total / np.linalg.norm(total)
    return out


def _roc(labels, scores):
    """Every threshold's (FPR, TPR), then sklearn's drop of collinear points (what insightface's curve has)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps, fps = np.cumsum(y)[distinct], np.cumsum(1 - y)[distinct]
    keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
    tps, fps = np.r_[0, tps[keep]], np.r_[0, fps[keep]]
    return fps / fps[-1], tps / tps[-1]


def test_the_protocol_equals_an_independent_numpy_computation(release, tmp_path):
    root, truth = release
    bench = ijb_benchmark(str(root), "ijbc", cache_dir=str(tmp_path))
    model = _TinyModel().eval()
    result = score_templates(bench, model, model.input_size, model.mean, model.std, torch.device("cpu"), 7, 0,
                             model_key="tiny")
    raw = np.asarray(np.memmap(embedding_file(bench, "tiny", 16), dtype=np.float32, mode="r",
                               shape=(bench.num_images, 2, 16)))
    ref = _reference(raw, bench.scores, bench.templates, bench.medias)
    labels = np.array([y for _, _, y in truth["pairs"]])
    scores = np.array([ref[a] @ ref[b] for a, b, _ in truth["pairs"]])
    fpr, tpr = _roc(labels, scores)
    for far in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
        nearest = tpr[int(np.argmin(np.abs(fpr - far)))]
        strict = tpr[fpr <= far].max()
        assert result.tar_at_far[f"{far:g}"] == pytest.approx(nearest, abs=1e-6)
        assert result.tar_at_far_strict[f"{far:g}"] == pytest.approx(strict, abs=1e-6)
    auc = np.mean([(g > i) + 0.5 * (g == i) for g in scores[labels == 1] for i in scores[labels == 0]])
    assert result.auc == pytest.approx(auc, abs=1e-6)
    assert result.num_templates == 3 * SUBJECTS and result.num_pairs == len(truth["pairs"])
    # 1:N, per gallery: rank of the mate among the gallery templates, and the open-set rule
    for g in ("G1", "G2"):
        gal = bench.identification[g]
        probe = bench.identification["probe"]
        g_ref = _reference(raw[gal["images"]], bench.scores[gal["images"]], gal["templates"], gal["medias"])
        p_ref = _reference(raw[probe["images"]], bench.scores[probe["images"]], probe["templates"], probe["medias"])
        g_ids = sorted(g_ref)
        g_sub = {t: truth["subject_of"][t] for t in g_ids}
        ranks, best_scores, best_correct, mated = [], [], [], []
        for t, f in sorted(p_ref.items()):
            sims = np.array([f @ g_ref[u] for u in g_ids])
            order = np.argsort(-sims, kind="stable")
            subj = truth["subject_of"][t]
            is_mated = subj in g_sub.values()
            mated.append(is_mated)
            ranks.append(next((r + 1 for r, i in enumerate(order) if g_sub[g_ids[i]] == subj), 10**9))
            best_scores.append(sims.max())
            best_correct.append(g_sub[g_ids[order[0]]] == subj)
        mated, ranks = np.array(mated), np.array(ranks)
        got = result.identification[g]
        for k in (1, 5, 10):
            assert got[f"top{k}"] == pytest.approx(np.mean(ranks[mated] <= k), abs=1e-6)
        non = sorted((s for s, m in zip(best_scores, mated) if not m), reverse=True)
        for fpir in (0.01, 0.1):
            k = int(np.floor(fpir * len(non)))
            threshold = np.nextafter(non[k], np.inf)
            want = np.mean([c and s >= threshold for c, s, m in zip(best_correct, best_scores, mated) if m])
            assert got[f"tpir@fpir={fpir:g}"] == pytest.approx(want, abs=1e-6)
    assert result.settings["flip"] == "sum" and result.settings["score_weighting"] is True


def test_an_interrupted_embedding_resumes_where_it_stopped(release, tmp_path):
    root, _ = release
    bench = ijb_benchmark(str(root), "ijbc", cache_dir=str(tmp_path))
    model = _TinyModel().eval()
    path = embedding_file(bench, "m", 16)
    full = np.array(embed_images(bench, model, (32, 32), model.mean, model.std, torch.device("cpu"), 8, 0, path))
    path.with_suffix(".done").write_text("20")  # as if killed after 20 images
    m = np.memmap(path, dtype=np.float32, mode="r+", shape=full.shape)
    m[20:] = 0
    m.flush()
    del m
    calls = []
    real = model.forward
    model.forward = lambda x: (calls.append(len(x)), real(x))[1]
    again = np.array(embed_images(bench, model, (32, 32), model.mean, model.std, torch.device("cpu"), 8, 0, path))
    assert np.array_equal(again, full) and sum(calls) == 2 * (bench.num_images - 20)  # only the rest, with flips


def test_alignment_maps_a_known_similarity_back_to_the_template_within_half_a_pixel():
    canvas = np.zeros((112, 112, 3), np.uint8)
    for x, y in ARCFACE_TEMPLATE:
        yy, xx = np.mgrid[:112, :112]
        canvas[(xx - x) ** 2 + (yy - y) ** 2 <= 4] = 255
    angle, scale, shift = np.deg2rad(23.0), 1.4, np.array([31.0, 17.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    import cv2

    moved = cv2.warpAffine(canvas, np.c_[rot, shift], (220, 220))
    landmarks = ARCFACE_TEMPLATE @ rot.T + shift
    m = similarity_transform(landmarks)
    assert np.abs(landmarks @ m[:, :2].T + m[:, 2] - ARCFACE_TEMPLATE).max() < 1e-9
    aligned = align_face(moved, landmarks)[:, :, 0].astype(float)
    for x, y in ARCFACE_TEMPLATE:
        yy, xx = np.mgrid[:112, :112]
        near = ((xx - x) ** 2 + (yy - y) ** 2 <= 25) * aligned
        cx, cy = (near * xx).sum() / near.sum(), (near * yy).sum() / near.sum()
        assert abs(cx - x) < 0.5 and abs(cy - y) < 0.5, (cx, cy, x, y)


def test_degenerate_landmarks_are_a_clear_error_not_a_nan_image():
    with pytest.raises(DataError, match=r"face.jpg landmarks: the landmarks are degenerate \(all at \[10.0, 10.0\]\)"):
        align_face(np.zeros((50, 50, 3), np.uint8), np.full((5, 2), 10.0), where="face.jpg landmarks")
    with pytest.raises(DataError, match="not finite"):
        similarity_transform(np.full((5, 2), np.nan))


# -- each option moves the result the way it should, on a case built for it ---------------------------------------
def _two_templates(raw_a, raw_b, scores_a=None, scores_b=None, **options):
    raw = np.concatenate([raw_a, raw_b]).astype(np.float32)
    n_a = len(raw_a)
    scores = np.r_[scores_a if scores_a is not None else np.ones(n_a), scores_b if scores_b is not None else np.ones(len(raw_b))]
    templates = np.r_[np.ones(n_a, int), np.full(len(raw_b), 2)]
    medias = np.arange(len(raw))  # every image its own media
    ids, feats = template_features(raw, scores, np.arange(len(raw)), templates, medias, **options)
    return float(pair_scores(ids, feats, np.array([[1, 2]]))[0])


def test_score_weighting_lowers_a_junk_image_s_pull():
    u, v = np.eye(4)[0], np.eye(4)[1]
    a = np.stack([np.stack([u, u]), np.stack([v, v])])  # a good image (u) and junk (v) with a low detector score
    b = np.stack([np.stack([u, u])])
    common = dict(flip="sum", normalize=True)
    assert _two_templates(a, b, np.array([1.0, 0.1]), **common, score_weighting=True) > \
        _two_templates(a, b, np.array([1.0, 0.1]), **common, score_weighting=False)


def test_normalising_images_stops_a_high_norm_image_dominating():
    u, v = np.eye(4)[0], np.eye(4)[1]
    a = np.stack([np.stack([10 * u, 10 * u]), np.stack([v, v])])
    b = np.stack([np.stack([v, v])])
    common = dict(flip="sum", score_weighting=False)
    assert _two_templates(a, b, **common, normalize=True) > _two_templates(a, b, **common, normalize=False)


def test_the_flip_sum_uses_what_the_flipped_image_adds():
    u, noise = np.eye(4)[0], np.eye(4)[2]
    a = np.stack([np.stack([noise, 3 * u])])  # the plain view is off, the flipped one carries the identity
    b = np.stack([np.stack([u, u])])
    common = dict(normalize=False, score_weighting=False)
    assert _two_templates(a, b, flip="sum", **common) > _two_templates(a, b, flip="none", **common)


def test_identification_rates_on_a_hand_made_case():
    g = np.eye(3)
    probes = np.array([[1, 0.1, 0], [0, 0.2, 1], [0.5, 0.5, 0.7]])
    rates = identification_rates(probes, np.array([0, 2, 9]), g, np.array([0, 1, 2]))
    assert rates["mated_probes"] == 2 and rates["top1"] == 1.0  # subject 9 is not in the gallery


# -- malformed files name the file and the line ----------------------------------------------------------------------
@pytest.mark.parametrize("edit, match", [
    (lambda m: (m / "ijbc_face_tid_mid.txt").write_text("1.jpg 1\n"), r"ijbc_face_tid_mid.txt:1: expected '<image> <template id> <media id>': 3 fields, got 2"),
    (lambda m: (m / "ijbc_template_pair_label.txt").write_text("1 2 1\n1 999 0\n"), r"ijbc_template_pair_label.txt:2: template 999 has no image"),
    (lambda m: (m / "ijbc_template_pair_label.txt").write_text("1 2 x\n"), r"ijbc_template_pair_label.txt:1: expected two template ids and a 0/1 label as integers"),
    (lambda m: (m / "ijbc_name_5pts_score.txt").write_text(
        (m / "ijbc_name_5pts_score.txt").read_text().replace(" ", " a", 1)), r"ijbc_name_5pts_score.txt:1: expected 11 numbers"),
    (lambda m: (m.parent / "loose_crop" / "3.jpg").unlink(), r"loose_crop/3.jpg: no such image \(listed in .*ijbc_name_5pts_score.txt\)"),
    (lambda m: (m / "ijbc_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,1,img/nope.jpg\n"),
     r"ijbc_1N_probe_mixed.csv:2: image 'nope.jpg' is not in the landmark list"),
])
def test_malformed_meta_files_fail_with_file_and_line(tmp_path, edit, match):
    _write_release(tmp_path / "IJBC")
    edit(tmp_path / "IJBC" / "meta")
    with pytest.raises(DataError, match=match):
        ijb_benchmark(str(tmp_path / "IJBC"), "ijbc")


def _sklearn_rules(labels, scores, fars, roc_points):
    """The rules on scikit-learn's whole ``roc_curve``, thinned the documented way: the reference."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    nearest = {f"{f:g}": float(tpr[int(np.argmin(np.abs(fpr - f)))]) for f in fars}
    strict = {f"{f:g}": float(tpr[fpr <= f].max()) for f in fars}
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    if len(fpr) > roc_points:
        smallest = float(fpr[fpr > 0].min())
        keep = np.searchsorted(fpr, np.logspace(np.log10(smallest), 0, roc_points))
        keep = np.unique(np.r_[0, np.clip(keep, 0, len(fpr) - 1), len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return nearest, strict, {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, auc


@pytest.mark.parametrize("decimals", [0, 1, 2])  # 0: all distinct; 1, 2: many ties, within and across labels
@pytest.mark.parametrize("chunk", [1, 3, 64, 1 << 20])
def test_the_chunked_roc_is_scikit_learns_curve(decimals, chunk):
    from frtrain.evaluation.ijb import FARS, tar_at_far_rules

    rng = np.random.default_rng(decimals * 10 + chunk % 7)
    for _ in range(20):
        n = int(rng.integers(3, 1500))
        labels = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(int)
        labels[:2] = [0, 1]
        scores = (rng.normal(size=n) + 1.5 * labels).astype(np.float32)
        if decimals:
            scores = np.round(scores, decimals).astype(np.float32)
        for roc_points in (10, 2000):
            got = tar_at_far_rules(labels, scores, roc_points=roc_points, chunk=chunk)
            want = _sklearn_rules(labels, scores, FARS, roc_points)
            assert got[0] == want[0] and got[1] == want[1] and got[2] == want[2]
            assert got[3] == pytest.approx(want[3], abs=1e-12)
    with pytest.raises(DataError, match="0 genuine, 3 impostor"):
        tar_at_far_rules(np.zeros(3, dtype=int), np.ones(3, dtype=np.float32))
