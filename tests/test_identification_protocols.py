"""Identification protocols (TinyFace, SCface, MegaFace Challenge 1): small releases written here in the real file
layouts, scored by frtrain and by an independent numpy computation of each protocol's definition."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from frtrain.data.synthetic import draw_image
from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.identification import rank_and_ap
from frtrain.evaluation.lowres import scface_benchmark, tinyface_benchmark
from frtrain.evaluation.megaface import megaface_benchmark
from frtrain.evaluation.megaface_scores import score_features

from conftest import projection_embedder, unit_features


# -- the independent definitions -----------------------------------------------------------------------------------
def _oracle_identification(p, p_ids, g, g_ids, ks=(1, 5, 10, 20)):
    """Rank of the best mate counting ties against the probe; AP over the ranked gallery with non-mates first among
    equal scores; rates and mAP over the probes with a mate."""
    sims = p @ g.T
    ranks, aps = [], []
    for s, pid in zip(sims, p_ids):
        mate = [gid == pid for gid in g_ids]
        if not any(mate):
            continue
        best = max(v for v, m in zip(s, mate) if m)
        ranks.append(1 + sum(1 for v, m in zip(s, mate) if not m and v >= best))
        order = sorted(range(len(s)), key=lambda j: (-s[j], mate[j]))
        hits, precisions = 0, []
        for position, j in enumerate(order, 1):
            if mate[j]:
                hits += 1
                precisions.append(hits / position)
        aps.append(sum(precisions) / len(precisions))
    out = {f"rank{k}": float(np.mean([r <= k for r in ranks])) for k in ks}
    out["mAP"] = float(np.mean(aps))
    out["unmated_probes"] = len(p_ids) - len(ranks)
    return out


def test_rank_and_ap_with_ties_matches_the_definition():
    rng = np.random.default_rng(3)
    directions = np.concatenate([np.eye(4), -np.eye(4)]).astype(np.float32)  # unit: cosines -1, 0, 1 exactly
    probes, gallery = directions[rng.integers(0, 8, 40)], directions[rng.integers(0, 8, 60)]  # many exact ties
    p_ids, g_ids = rng.integers(0, 8, 40), rng.integers(0, 10, 60)
    ranks, aps = rank_and_ap(probes, p_ids, gallery, g_ids, block_elements=7 * 60)  # several blocks
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    want = _oracle_identification(unit(probes.astype(np.float64)), p_ids, unit(gallery.astype(np.float64)), g_ids)
    mated = ranks > 0
    assert want["unmated_probes"] == int((~mated).sum())
    for k in (1, 5, 10, 20):
        assert np.mean(ranks[mated] <= k) == pytest.approx(want[f"rank{k}"])
    assert np.nanmean(aps) == pytest.approx(want["mAP"])
    # the rule on one case: a non-mate tied with the only mate puts the mate second; AP 1/2
    r, ap = rank_and_ap(np.array([[1.0, 0]]), np.array([0]), np.array([[1.0, 0], [1.0, 0]]), np.array([1, 0]))
    assert r.tolist() == [2] and ap.tolist() == [0.5]


# -- TinyFace ----------------------------------------------------------------------------------------------------
def _write_tinyface(root: Path) -> dict:
    """Testing_Set/{Probe,Gallery_Match,Gallery_Distractor}/ of native 20x20 JPEGs: 10 identities, 2 probes and 2
    gallery images each; identity 10's probe has no gallery image; 40 distractors whose names reuse the identities'
    prefixes (a distractor never matches, whatever its name)."""
    test = root / "Testing_Set"
    truth = {"probe": [], "match": [], "distractor": []}
    for folder in ("Probe", "Gallery_Match", "Gallery_Distractor"):
        (test / folder).mkdir(parents=True)
    for s in range(11):
        for k in range(2):
            path = test / "Probe" / f"{s + 1}_{k + 1}.jpg"
            path.write_bytes(draw_image(0, 7, s, k, 20))
            truth["probe"].append((path, s))
            if s < 10:
                path = test / "Gallery_Match" / f"{s + 1}_{k + 11}.jpg"
                path.write_bytes(draw_image(0, 7, s, 10 + k, 20))
                truth["match"].append((path, s))
    for d in range(40):
        path = test / "Gallery_Distractor" / f"{d % 10 + 1}_{100 + d}.jpg"
        path.write_bytes(draw_image(0, 8, d, 0, 20))
        truth["distractor"].append(path)
    return truth


def test_tinyface_scores_equal_the_definition_with_and_without_distractors(tmp_path):
    truth = _write_tinyface(tmp_path / "tinyface")
    bench = tinyface_benchmark(str(tmp_path / "tinyface"))
    result = bench.score(projection_embedder())
    probe = unit_features([p for p, _ in truth["probe"]])
    match = unit_features([p for p, _ in truth["match"]])
    extra = unit_features(truth["distractor"])
    p_ids = [s for _, s in truth["probe"]]
    m_ids = [s for _, s in truth["match"]]
    settings = {
        "with distractors": (np.concatenate([match, extra]), m_ids + [-1 - i for i in range(len(extra))]),
        "without distractors": (match, m_ids),
    }
    assert list(result.settings) == list(settings)
    for name, (gallery, g_ids) in settings.items():
        want = _oracle_identification(probe, p_ids, gallery, g_ids)
        got = result.settings[name]
        assert got["unmated_probes"] == want["unmated_probes"] == 2
        assert got["gallery"] == len(gallery) and got["probes"] == 22
        for key in ("rank1", "rank5", "rank10", "rank20", "mAP"):
            assert got[key] == pytest.approx(want[key], abs=1e-9), (name, key)
    assert result.accuracy == result.settings["with distractors"]["rank1"]
    assert "bilinear" in result.options["interpolation"] and result.options["distractors"] == 40
    text = "\n".join(result.details())
    assert "with distractors" in text and "ties count against the probe" in result.options["rules"]
    assert result.to_dict()["settings"]["without distractors"]["probes"] == 22
    # distractors=false: the setting without them alone
    assert list(tinyface_benchmark(str(tmp_path / "tinyface"), distractors=False).settings) == ["without distractors"]


def test_tinyface_bad_layouts_name_the_problem(tmp_path):
    with pytest.raises(DataError, match=r"Probe: no such directory"):
        tinyface_benchmark(str(tmp_path))
    truth = _write_tinyface(tmp_path / "t")
    (truth["probe"][0][0].parent / "noidentity.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=r"noidentity.jpg: a TinyFace image name is"):
        tinyface_benchmark(str(tmp_path / "t"))


# -- SCface --------------------------------------------------------------------------------------------------------
def test_scface_rank1_per_distance_from_a_list_file(tmp_path):
    lines, truth = ["# image subject role distance"], {"gallery": [], 1: [], 2: [], 3: []}
    (tmp_path / "mugshot").mkdir()
    (tmp_path / "surveillance").mkdir()
    for s in range(8):
        path = tmp_path / "mugshot" / f"{s + 1:03d}_frontal.jpg"
        path.write_bytes(draw_image(1, 0, s, 0, 24))
        lines.append(f"mugshot/{path.name} {s + 1} gallery -")
        truth["gallery"].append((path, s + 1))
        for d in (1, 2, 3):
            for cam in range(2):
                path = tmp_path / "surveillance" / f"{s + 1:03d}_cam{cam + 1}_{d}.jpg"
                path.write_bytes(draw_image(1, 0, s, 10 * d + cam, 12 + 4 * d))  # nearer, larger
                lines.append(f"surveillance/{path.name} {s + 1} probe {d}")
                truth[d].append((path, s + 1))
    (tmp_path / "scface.txt").write_text("\n".join(lines) + "\n")
    result = scface_benchmark(str(tmp_path / "scface.txt")).score(projection_embedder())
    gallery = unit_features([p for p, _ in truth["gallery"]])
    assert list(result.settings) == ["distance 1", "distance 2", "distance 3"]
    for d in (1, 2, 3):
        want = _oracle_identification(unit_features([p for p, _ in truth[d]]), [s for _, s in truth[d]], gallery,
                                      [s for _, s in truth["gallery"]], ks=(1, 5))
        got = result.settings[f"distance {d}"]
        assert got["probes"] == 16 and got["gallery"] == 8
        assert got["rank1"] == pytest.approx(want["rank1"]) and got["rank5"] == pytest.approx(want["rank5"])
    (tmp_path / "bad.txt").write_text("mugshot/001_frontal.jpg one gallery -\n")
    with pytest.raises(DataError, match=r"bad.txt:1: expected '<image> <subject id> <gallery\|probe> <distance>'"):
        scface_benchmark(str(tmp_path / "bad.txt"))
    (tmp_path / "missing.txt").write_text("nowhere.jpg 1 gallery -\n")
    with pytest.raises(DataError, match=r"missing.txt:1: .*nowhere.jpg: no such image"):
        scface_benchmark(str(tmp_path / "missing.txt"))


# -- MegaFace ------------------------------------------------------------------------------------------------------
def _write_megaface(root: Path, distractors: int = 300) -> dict:
    """insightface's test pack: facescrub_images/<name>/<name>_<k>.png, megaface_images/<a>/<b>/<file>.jpg, the two
    lists, the noise lists (two FaceScrub files by name, distractors with the tab-separated prefix the real list
    carries, one without it) and the devkit's templatelists for 10 and 100 (random subsets of megaface_lst)."""
    rng = np.random.default_rng(0)
    fs_lines, mf_lines = [], []
    for s in range(6):
        name = f"Actor_{chr(65 + s)}"
        (root / "facescrub_images" / name).mkdir(parents=True)
        for k in range(5):
            (root / "facescrub_images" / name / f"{name}_{k + 1}.png").write_bytes(draw_image(2, 0, s, k, 24))
            fs_lines.append(f"{name}/{name}_{k + 1}.png")
    for d in range(distractors):
        rel = f"{d % 7}/{d % 7}{d % 3}/{d:05d}.jpg"
        (root / "megaface_images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "megaface_images" / rel).write_bytes(draw_image(2, 1, d, 0, 24))
        mf_lines.append(rel)
    (root / "facescrub_lst").write_text("\n".join(fs_lines) + "\n")
    (root / "megaface_lst").write_text("\n".join(mf_lines) + "\n")
    (root / "facescrub_noises.txt").write_text("#noisy facescrub images\nActor_A_2.png\nActor_C_5.png\n")
    noisy = [mf_lines[3], mf_lines[17], mf_lines[40]]
    (root / "megaface_noises.txt").write_text(f"# noisy\n1\t{noisy[0]}\n2\t{noisy[1]}\n{noisy[2]}\n")
    (root / "templatelists").mkdir()
    lists = {}
    for n in (n for n in (10, 100) if n <= distractors):
        chosen = sorted(rng.choice(distractors, n, replace=False).tolist())
        lists[n] = chosen
        (root / "templatelists" / f"megaface_features_list.json_{n}_1").write_text(
            json.dumps({"id": [0] * n, "path": [mf_lines[i] for i in chosen]}))
    return {"facescrub": fs_lines, "megaface": mf_lines, "lists": lists, "noisy_fs": {"Actor_A_2.png", "Actor_C_5.png"},
            "noisy_mf": set(noisy)}


def _oracle_megaface(fs, fs_ids, mf, far):
    """The devkit's definition: each ordered (probe, other image of its identity) is one trial; rank = 1 + the
    distractors scoring at least the mate; TAR at the FAR: the best rate over thresholds accepting at most
    far x impostors (all probe x distractor scores); genuine = the same-identity pairs."""
    sims, ranks = fs @ mf.T, []
    for i in range(len(fs)):
        for j in range(len(fs)):
            if i != j and fs_ids[i] == fs_ids[j]:
                ranks.append(1 + int(np.sum(sims[i] >= float(fs[i] @ fs[j]))))
    genuine = np.array([fs[i] @ fs[j] for i in range(len(fs)) for j in range(i + 1, len(fs)) if fs_ids[i] == fs_ids[j]])
    impostors = sims.ravel()
    tar = 0.0
    for t in np.concatenate([np.unique(impostors), [np.inf]]):
        if np.mean(impostors >= t) <= far:
            tar = max(tar, float(np.mean(genuine >= t)))
    ranks = np.array(ranks)
    return {"rank1": float(np.mean(ranks == 1)), "cmc": [float(np.mean(ranks <= r)) for r in range(1, 11)],
            "tar": tar, "trials": len(ranks)}


@pytest.fixture(scope="module")
def megaface(tmp_path_factory):
    root = tmp_path_factory.mktemp("megaface")
    truth = _write_megaface(root)
    truth["fs_feats"] = unit_features([root / "facescrub_images" / p for p in truth["facescrub"]])
    truth["mf_feats"] = unit_features([root / "megaface_images" / p for p in truth["megaface"]])
    truth["fs_ids"] = [p.split("/")[0] for p in truth["facescrub"]]
    return root, truth


def test_megaface_uncleaned_equals_the_devkit_definition(megaface, tmp_path):
    root, truth = megaface
    bench = megaface_benchmark(str(root), sizes=[10, 100, 300], clean="none", cache_dir=str(tmp_path),
                               devkit_features=str(tmp_path / "devkit"))
    result = bench.score(projection_embedder(model_key="proj"))
    fs, mf = truth["fs_feats"], truth["mf_feats"]
    sets = {10: truth["lists"][10], 100: truth["lists"][100], 300: list(range(300))}  # 300: no list, the first N
    for n, idx in sets.items():
        want = _oracle_megaface(fs, truth["fs_ids"], mf[idx], 1e-6)
        got = result.sizes[n]
        assert got["trials"] == want["trials"] == 6 * 5 * 4 and got["distractors"] == n
        assert got["rank1"] == pytest.approx(want["rank1"]) and got["cmc"] == pytest.approx(want["cmc"])
        assert got["tar_at_far"] == pytest.approx(want["tar"])
        assert got["impostor_pairs"] == 30 * n and got["genuine_pairs"] == 6 * 10
    assert result.accuracy == result.sizes[300]["rank1"] and "clean: none" in result.headline()
    assert "templatelists" in result.options["distractor sets"]
    # the devkit's feature files: int32 (rows, cols, stride, type 5) then float32
    blob = (tmp_path / "devkit" / "facescrub" / f"{truth['facescrub'][0]}_frtrain.bin").read_bytes()
    header = np.frombuffer(blob[:16], np.int32)
    vec = np.frombuffer(blob[16:], np.float32)
    assert header.tolist() == [12, 1, 4, 5] and np.allclose(vec / np.linalg.norm(vec), fs[0], atol=1e-5)
    assert len(list((tmp_path / "devkit" / "megaface").rglob("*_frtrain.bin"))) == 300


def test_megaface_scores_at_a_larger_far_equal_the_definition(megaface):
    _, truth = megaface
    fs, mf = truth["fs_feats"], truth["mf_feats"]
    ids = np.unique(truth["fs_ids"], return_inverse=True)[1]
    for far in (1e-3, 1e-2):
        got = score_features(fs, ids, mf, {300: np.arange(300)}, far=far, block=37)[300]
        assert got["tar_at_far"] == pytest.approx(_oracle_megaface(fs, truth["fs_ids"], mf, far)["tar"])


def test_megaface_cleaning_follows_insightface_and_the_plain_drop(megaface, tmp_path):
    root, truth = megaface
    fs, mf = truth["fs_feats"], truth["mf_feats"]
    fs_noisy = np.array([p.split("/")[1] in truth["noisy_fs"] for p in truth["facescrub"]])
    mf_noisy = np.array([p in truth["noisy_mf"] for p in truth["megaface"]])
    ids = np.array(truth["fs_ids"])
    # insightface's remove_noises.py: a noisy FaceScrub image -> its identity's clean centre + U(-1e-3, 1e-3),
    # normalised (drawn in list order); a noisy distractor -> [v, 100] unnormalised, compared by L2 distance
    rng = np.random.default_rng(0)
    cleaned = fs.copy()
    for i in np.flatnonzero(fs_noisy):
        f = fs[(ids == ids[i]) & ~fs_noisy].sum(0) + rng.uniform(-0.001, 0.001, fs.shape[1])
        cleaned[i] = f / np.linalg.norm(f)
    ext_fs = np.concatenate([cleaned, np.zeros((len(fs), 1))], 1)
    ext_mf = np.concatenate([mf, np.where(mf_noisy, 100.0, 0.0)[:, None]], 1)
    # rank by L2 distance: the same as 1 - d^2 / 2 as a score (for the unit FaceScrub features)
    d2 = ((ext_fs[:, None, :] - ext_mf[None, :, :]) ** 2).sum(-1)
    scores_equiv = 1 - d2 / 2
    got = megaface_benchmark(str(root), sizes=[300], clean="insightface", cache_dir=str(tmp_path)).score(
        projection_embedder(model_key="proj")).sizes[300]
    trials = [(i, j) for i in range(30) for j in range(30) if i != j and ids[i] == ids[j]]
    ranks = np.array([1 + int(np.sum(scores_equiv[i] >= cleaned[i] @ cleaned[j])) for i, j in trials])
    assert got["rank1"] == pytest.approx(np.mean(ranks == 1)) and got["trials"] == len(trials)
    assert got["impostor_pairs"] == 30 * 300  # noisy distractors still count as impostors
    genuine = np.array([cleaned[i] @ cleaned[j] for i, j in trials if i < j])
    assert got["tar_at_far"] == pytest.approx(np.mean(genuine > scores_equiv.max()))  # 1e-6 x 9,000: none accepted
    # drop: noisy FaceScrub images are left out, noisy distractors never match (still counted among the impostors)
    got = megaface_benchmark(str(root), sizes=[300], clean="drop", cache_dir=str(tmp_path)).score(
        projection_embedder(model_key="proj")).sizes[300]
    keep = ~fs_noisy
    want = _oracle_megaface(fs[keep], list(ids[keep]), mf[~mf_noisy], 1e-6)
    assert got["distractors"] == 300 and got["trials"] == want["trials"] == 2 * 4 * 3 + 4 * 5 * 4
    assert got["impostor_pairs"] == 28 * 300
    assert got["rank1"] == pytest.approx(want["rank1"]) and got["tar_at_far"] == pytest.approx(want["tar"])


def test_megaface_bad_packs_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"facescrub_lst: no such file"):
        megaface_benchmark(str(tmp_path))
    root = tmp_path / "pack"
    _write_megaface(root, distractors=50)
    with pytest.raises(ConfigError, match=r"clean='sometimes': expected none, insightface, drop"):
        megaface_benchmark(str(root), clean="sometimes")
    (root / "templatelists" / "megaface_features_list.json_10_1").write_text(json.dumps({"path": ["9/99/x.jpg"]}))
    with pytest.raises(DataError, match=r"json_10_1: 9/99/x.jpg is not in megaface_lst"):
        megaface_benchmark(str(root), sizes=[10])
    with pytest.raises(DataError, match=r"lists 50 images, fewer than the smallest size 1000"):
        megaface_benchmark(str(root), sizes=[1000])


def test_megaface_scores_features_computed_elsewhere_as_the_images_do(megaface, tmp_path):
    root, truth = megaface
    embedded = megaface_benchmark(str(root), sizes=[10, 300], clean="insightface", cache_dir=str(tmp_path)).score(
        projection_embedder(model_key="proj"))
    (tmp_path / "feats").mkdir()
    np.save(tmp_path / "feats" / "facescrub.npy", truth["fs_feats"].astype(np.float32))
    np.save(tmp_path / "feats" / "megaface.npy", truth["mf_feats"].astype(np.float32))
    given = megaface_benchmark(str(root), sizes=[10, 300], clean="insightface",
                               features=str(tmp_path / "feats")).score(projection_embedder())
    for n in (10, 300):
        for key in ("rank1", "tar_at_far", "trials", "impostor_pairs"):
            assert given.sizes[n][key] == pytest.approx(embedded.sizes[n][key]), (n, key)
    assert given.options["features"] == str(tmp_path / "feats")
    np.save(tmp_path / "feats" / "megaface.npy", truth["mf_feats"][:10].astype(np.float32))
    with pytest.raises(DataError, match=r"megaface.npy: holds float32 \(10, 12\), expected \(300, d\) floats"):
        megaface_benchmark(str(root), sizes=[10], features=str(tmp_path / "feats")).score(projection_embedder())
    np.save(tmp_path / "feats" / "megaface.npy", np.array([{"a": 1}] * 300, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"megaface.npy: not a numpy array file"):
        megaface_benchmark(str(root), sizes=[10], features=str(tmp_path / "feats")).score(projection_embedder())
