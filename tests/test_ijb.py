"""IJB-B/C: a synthetic release in insightface's layout, scored by frtrain and by an independent re-implementation of
insightface's code path written here (eval_ijbc.py's template aggregation, roc_curve, flipud and nearest-FPR pick;
ijb_1n.py's pooling of 1:N templates by the media ids of face_tid_mid.txt); alignment; the options; bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from frtrain.data.synthetic import draw_image
from frtrain.errors import DataError
from frtrain.evaluation.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from frtrain.evaluation.embed import Embedder
from frtrain.evaluation.ijb_release import ijb_benchmark
from frtrain.evaluation.templates import (embed_images, embedding_file, identification_rates, pair_scores,
                                          template_features)

from conftest import insightface_tar_table

SUBJECTS, LOOSE = 12, 64
GALLERIES_OF = {"ijbb": ("S1", "S2"), "ijbc": ("G1", "G2")}


def _write_release(root: Path, protocol: str = "ijbc", seed: int = 0, sighting: bool = False) -> dict:
    """A small IJB release: 12 subjects, 3 templates each of 1-3 medias of 1-3 images; all template pairs; G1/G2
    galleries (one template per subject, half the subjects each) and the other templates as probes. The 1:N lists
    carry a SIGHTING_ID column only with ``sighting`` (without it, insightface pools by face_tid_mid's medias)."""
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
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME" + (",SIGHTING_ID" if sighting else "") + "\n"

    def line(t, s, n, m):
        return f"{t},{s},img/{n}" + (f",{m}" if sighting else "") + "\n"

    names = GALLERIES_OF[protocol]
    for g, subjects in zip(names, galleries.values()):
        keep = [r for r in rows if r[1] in subjects and r[0] == first_template[r[1]]]
        (root / "meta" / f"{protocol}_1N_gal_{g}.csv").write_text(header + "".join(line(*r) for r in keep))
    probes = [r for r in rows if r[0] != first_template[r[1]]]
    (root / "meta" / f"{protocol}_1N_probe_mixed.csv").write_text(header + "".join(line(*r) for r in probes))
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


# -- the independent computation: insightface's code path, written out ------------------------------------------------
def _insightface_image_feats(raw, scores, flip="sum", normalize=False, weight=True):
    """eval_ijbc.py: img_input_feats from (N, 2, d) [plain, flip] embeddings: F2 (add) / concat / plain; optional
    per-image normalisation (use_norm_score False); times the detector score (use_detector_score)."""
    feats = {"sum": raw[:, 0] + raw[:, 1], "none": raw[:, 0], "concat": raw.reshape(len(raw), -1)}[flip].astype(np.float64)
    if normalize:
        feats = feats / np.sqrt(np.sum(feats ** 2, -1, keepdims=True))
    if weight:
        feats = feats * np.tile(scores[:, None], (1, feats.shape[1]))
    return feats


def _insightface_template_feats(img_feats, templates, medias, choose_templates):
    """image2template_feature of eval_ijbc.py / ijb_1n.py: for each chosen template, its images in the whole
    face_tid_mid list (np.where(templates == t)), averaged per media, summed, then L2-normalised."""
    unique_templates = np.unique(choose_templates)
    template_feats = np.zeros((len(unique_templates), img_feats.shape[1]))
    for count, uqt in enumerate(unique_templates):
        (ind_t,) = np.where(templates == uqt)
        face_feats, face_medias = img_feats[ind_t], medias[ind_t]
        unique_medias, counts = np.unique(face_medias, return_counts=True)
        media_feats = []
        for u, ct in zip(unique_medias, counts):
            (ind_m,) = np.where(face_medias == u)
            media_feats += [face_feats[ind_m]] if ct == 1 else [np.mean(face_feats[ind_m], 0, keepdims=True)]
        template_feats[count] = np.sum(np.array(media_feats), 0)
    return template_feats / np.sqrt(np.sum(template_feats ** 2, -1, keepdims=True)), unique_templates


def _strict_tar(label, score, x_labels):
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    return {f"{x:g}": float(tpr[fpr <= x].max()) for x in x_labels}


def _identification(p_feats, p_sub, g_feats, g_sub):
    """Top-k of the mated probes and TPIR at FPIR (the threshold from the non-mated probes' best scores)."""
    sims = p_feats @ g_feats.T
    order = np.argsort(-sims, axis=1, kind="stable")
    mated = np.isin(p_sub, g_sub)
    ranks = np.array([next((r + 1 for r, i in enumerate(o) if g_sub[i] == s), 10**9) for o, s in zip(order, p_sub)])
    best, best_correct = sims.max(1), g_sub[order[:, 0]] == p_sub
    out = {f"top{k}": float(np.mean(ranks[mated] <= k)) for k in (1, 5, 10)}
    non = np.sort(best[~mated])[::-1]
    for fpir in (0.01, 0.1):
        k = int(np.floor(fpir * len(non)))
        threshold = np.nextafter(non[k], np.inf)
        out[f"tpir@fpir={fpir:g}"] = float(np.mean(best_correct[mated] & (best[mated] >= threshold)))
    return out


def _read_1n(path):
    rows = [line.split(",") for line in Path(path).read_text().splitlines()[1:] if line.strip()]
    return np.array([int(r[0]) for r in rows]), np.array([int(r[1]) for r in rows])


FARS_ALL = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@pytest.mark.parametrize("sighting", [False, True])
def test_the_protocol_equals_insightface_s_code_path(tmp_path, sighting):
    root = tmp_path / "IJBC"
    truth = _write_release(root, sighting=sighting)
    bench = ijb_benchmark(str(root), "ijbc", cache_dir=str(tmp_path))
    model = _TinyModel().eval()
    result = bench.score(Embedder(model, torch.device("cpu"), batch_size=7, model_key="tiny"))
    raw = np.asarray(np.memmap(embedding_file(bench, "tiny", 16), dtype=np.float32, mode="r",
                               shape=(bench.num_images, 2, 16)))
    meta = root / "meta"
    tid = [line.split() for line in (meta / "ijbc_face_tid_mid.txt").read_text().splitlines()]
    templates, medias = np.array([int(t[1]) for t in tid]), np.array([int(t[2]) for t in tid])
    feats = _insightface_image_feats(raw, bench.scores.astype(np.float64))
    t_feats, t_ids = _insightface_template_feats(feats, templates, medias, templates)
    where = {int(t): i for i, t in enumerate(t_ids)}
    label = np.array([y for _, _, y in truth["pairs"]])
    score = np.array([t_feats[where[a]] @ t_feats[where[b]] for a, b, _ in truth["pairs"]])
    want, want_strict = insightface_tar_table(label, score, FARS_ALL), _strict_tar(label, score, FARS_ALL)
    for far in FARS_ALL:  # every FAR, both rules
        assert result.tar_at_far[f"{far:g}"] == pytest.approx(want[f"{far:g}"], abs=1e-6), far
        assert result.tar_at_far_strict[f"{far:g}"] == pytest.approx(want_strict[f"{far:g}"], abs=1e-6), far
    auc = np.mean([(g > i) + 0.5 * (g == i) for g in score[label == 1] for i in score[label == 0]])
    assert result.auc == pytest.approx(auc, abs=1e-6)
    assert result.num_templates == 3 * SUBJECTS and result.num_pairs == len(truth["pairs"])
    # 1:N as ijb_1n.py pools it: the lists' templates, their images and medias from face_tid_mid.txt
    p_tpl, p_sub = _read_1n(meta / "ijbc_1N_probe_mixed.csv")
    p_feats, p_ids = _insightface_template_feats(feats, templates, medias, p_tpl)
    p_subjects = np.array([p_sub[np.flatnonzero(p_tpl == t)[0]] for t in p_ids])
    for g in ("G1", "G2"):
        g_tpl, g_sub = _read_1n(meta / f"ijbc_1N_gal_{g}.csv")
        g_feats, g_ids = _insightface_template_feats(feats, templates, medias, g_tpl)
        g_subjects = np.array([g_sub[np.flatnonzero(g_tpl == t)[0]] for t in g_ids])
        want_1n = _identification(p_feats, p_subjects, g_feats, g_subjects)
        for key, value in want_1n.items():
            assert result.identification[g][key] == pytest.approx(value, abs=1e-6), (g, key)
    assert result.settings["flip"] == "sum" and result.settings["score_weighting"] is True
    assert "face_tid_mid" in result.settings["1:N pooling"]


def test_pooling_by_csv_rows_is_a_recorded_option_that_differs_without_sighting_ids(tmp_path):
    root = tmp_path / "IJBC"
    _write_release(root)
    model = _TinyModel().eval()
    rates = {}
    for pooling in ("insightface", "csv_rows"):
        bench = ijb_benchmark(str(root), "ijbc", cache_dir=str(tmp_path), pooling_1n=pooling)
        r = bench.score(Embedder(model, torch.device("cpu"), batch_size=7, model_key="tiny"))
        rates[pooling] = r.identification
        assert ("face_tid_mid" in r.settings["1:N pooling"]) == (pooling == "insightface")
    # every CSV row its own media: the medias of more than one image are no longer averaged first
    assert any(rates["insightface"][g] != rates["csv_rows"][g] for g in ("G1", "G2"))


def test_landmarks_are_read_as_float64(tmp_path):
    root = tmp_path / "IJBC"
    _write_release(root)
    bench = ijb_benchmark(str(root), "ijbc")
    first = (root / "meta" / "ijbc_name_5pts_score.txt").read_text().split()[1:11]
    assert bench.landmarks.dtype == np.float64 and bench.landmarks[0].ravel().tolist() == [float(v) for v in first]


def test_an_interrupted_embedding_resumes_where_it_stopped(release, tmp_path):
    root, _ = release
    bench = ijb_benchmark(str(root), "ijbc", cache_dir=str(tmp_path))
    model = _TinyModel().eval()
    path = embedding_file(bench, "m", 16)
    full = np.array(embed_images(bench, Embedder(model, torch.device("cpu"), batch_size=8), path))
    path.with_suffix(".done").write_text("20")  # as if killed after 20 images
    m = np.memmap(path, dtype=np.float32, mode="r+", shape=full.shape)
    m[20:] = 0
    m.flush()
    del m
    calls = []
    real = model.forward
    model.forward = lambda x: (calls.append(len(x)), real(x))[1]
    again = np.array(embed_images(bench, Embedder(model, torch.device("cpu"), batch_size=8), path))
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
    (lambda m: (m / "ijbc_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,1,img/1.jpg\n999,1,x\n"),
     r"ijbc_1N_probe_mixed.csv:3: template 999 has no image in ijbc_face_tid_mid.txt"),
])
def test_malformed_meta_files_fail_with_file_and_line(tmp_path, edit, match):
    _write_release(tmp_path / "IJBC")
    edit(tmp_path / "IJBC" / "meta")
    with pytest.raises(DataError, match=match):
        ijb_benchmark(str(tmp_path / "IJBC"), "ijbc")


def test_with_csv_row_pooling_a_listed_image_must_be_in_the_landmark_list(tmp_path):
    _write_release(tmp_path / "IJBC")
    (tmp_path / "IJBC" / "meta" / "ijbc_1N_probe_mixed.csv").write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n5,1,img/nope.jpg\n")
    with pytest.raises(DataError, match=r"ijbc_1N_probe_mixed.csv:2: image 'nope.jpg' is not in the landmark list"):
        ijb_benchmark(str(tmp_path / "IJBC"), "ijbc", pooling_1n="csv_rows")
