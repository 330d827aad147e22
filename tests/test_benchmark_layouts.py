"""CFP (FF/FP), YTF and CSV pair lists in their exact file layouts: pairs, folds, video averaging, errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from frtrain.data.images import center_crop, read_image, resize_to
from frtrain.data.synthetic import draw_image
from frtrain.errors import DataError
from frtrain.evaluation.cfp import cfp_benchmark
from frtrain.evaluation.benchmarks import verification_scores
from frtrain.evaluation.pairlist import csv_benchmark
from frtrain.evaluation.embed import Embedder
from frtrain.evaluation.ytf import evenly_spaced, ytf_benchmark

SIZE = 24


def _write(path: Path, identity: int, k: int, size: int = SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(draw_image(0, 0, identity, k, size))


# ---------------------------------------------------------------- CFP

@pytest.fixture()
def cfp(tmp_path) -> Path:
    """4 people, 3 frontal + 2 profile images each; 10 splits of 2 same + 2 diff pairs, FF and FP."""
    root = tmp_path / "cfp-dataset"
    f_lines, p_lines = [], []
    for person in range(1, 5):
        for k in range(1, 4):
            _write(root / "Data" / "Images" / f"{person:03d}" / "frontal" / f"{k:02d}.jpg", person, k)
            f_lines.append(f"{len(f_lines) + 1} ../Data/Images/{person:03d}/frontal/{k:02d}.jpg")
        for k in range(1, 3):
            _write(root / "Data" / "Images" / f"{person:03d}" / "profile" / f"{k:02d}.jpg", person, 10 + k)
            p_lines.append(f"{len(p_lines) + 1} ../Data/Images/{person:03d}/profile/{k:02d}.jpg")
    (root / "Protocol").mkdir()
    (root / "Protocol" / "Pair_list_F.txt").write_text("\n".join(f_lines) + "\n")
    (root / "Protocol" / "Pair_list_P.txt").write_text("\n".join(p_lines) + "\n")
    for proto in ("FF", "FP"):
        for split in range(1, 11):
            d = root / "Protocol" / "Split" / proto / f"{split:02d}"
            d.mkdir(parents=True)
            person = split % 4  # 0-based person of this split's matched pairs
            if proto == "FF":
                same = [(3 * person + 1, 3 * person + 2), (3 * person + 1, 3 * person + 3)]
                diff = [(3 * person + 1, 3 * ((person + 1) % 4) + 1), (3 * person + 2, 3 * ((person + 2) % 4) + 2)]
            else:
                same = [(3 * person + 1, 2 * person + 1), (3 * person + 2, 2 * person + 2)]
                diff = [(3 * person + 1, 2 * ((person + 1) % 4) + 1), (3 * person + 3, 2 * ((person + 3) % 4) + 2)]
            (d / "same.txt").write_text("".join(f"{i},{j}\n" for i, j in same))
            (d / "diff.txt").write_text("".join(f"{i},{j}\n" for i, j in diff))
    return root


def _paths(bench, k):
    return [os.path.relpath(bench.load.paths[i], bench.source + "/../../..") for i in bench.pairs[k]]


def test_cfp_fp_pairs_folds_and_relative_paths(cfp):
    bench = cfp_benchmark(str(cfp), "FP")
    assert bench.name == "cfp_fp" and bench.num_pairs == 40
    assert np.array_equal(bench.folds, np.repeat(np.arange(10), 4))
    assert np.array_equal(bench.issame, np.tile([True, True, False, False], 10))  # same lines, then diff
    # split 01: person 1 (0-based) -> frontal index 4 is 002/frontal/01, profile index 3 is 002/profile/01
    assert _paths(bench, 0) == ["Data/Images/002/frontal/01.jpg", "Data/Images/002/profile/01.jpg"]
    assert _paths(bench, 3) == ["Data/Images/002/frontal/03.jpg", "Data/Images/001/profile/02.jpg"]
    assert bench.load(bench.pairs[0][1]).shape == (SIZE, SIZE, 3)


def test_cfp_ff_uses_the_frontal_list_for_both_sides(cfp):
    bench = cfp_benchmark(str(cfp), "FF")
    assert bench.name == "cfp_ff" and bench.num_pairs == 40
    assert _paths(bench, 1) == ["Data/Images/002/frontal/01.jpg", "Data/Images/002/frontal/03.jpg"]
    assert all("frontal" in p for k in range(40) for p in _paths(bench, k))


def test_cfp_errors_name_the_file_and_line(cfp):
    fp = cfp / "Protocol" / "Split" / "FP"
    (fp / "03" / "diff.txt").write_text("1,2\n5;7\n")
    with pytest.raises(DataError, match=r"FP/03/diff.txt:2: expected '<i>,<j>'"):
        cfp_benchmark(str(cfp), "FP")
    (fp / "03" / "diff.txt").write_text("1,99\n")
    with pytest.raises(DataError, match=r"FP/03/diff.txt:1: index 99 is not in Pair_list_P.txt \(8 images\)"):
        cfp_benchmark(str(cfp), "FP")
    os.rename(fp / "07", cfp / "moved")
    with pytest.raises(DataError, match=r"expected 10 split folders 01..10, found 9"):
        cfp_benchmark(str(cfp), "FP")
    with pytest.raises(DataError, match=r"Pair_list_F.txt:3: expected '<index> <relative image path>'"):
        (cfp / "Protocol" / "Pair_list_F.txt").write_text("1 ../a.jpg\n2 ../b.jpg\nthree ../c.jpg\n")
        cfp_benchmark(str(cfp), "FF")


def test_cfp_missing_image_fails_or_is_skipped_and_counted(cfp):
    os.remove(cfp / "Data" / "Images" / "002" / "profile" / "01.jpg")
    with pytest.raises(DataError, match=r"002/profile/01.jpg: no such image \(.*FP/01/same.txt:1\)"):
        cfp_benchmark(str(cfp), "FP")
    bench = cfp_benchmark(str(cfp), "FP", skip_missing=True)
    # profile 002/01 is in split 01 same line 1, split 05 same line 1, split 09 same line 1 (person 1)
    # and in diff line 1 of splits 04, 08 (person 0 + 1)
    assert bench.skipped_pairs == 5 and bench.num_pairs == 35 and "5 pairs skipped" in bench.notes[0]


# ---------------------------------------------------------------- YTF

FRAMES = {0: 5, 1: 12, 2: 3}  # frames per video index


@pytest.fixture()
def ytf(tmp_path) -> Path:
    """6 people with 3 videos each (5, 12 and 3 frames); splits.txt with the real, space-padded header."""
    root = tmp_path / "ytf"
    for p in range(6):
        for v, n in FRAMES.items():
            for frame in range(1, n + 1):  # frame numbers 1..12: numeric, not lexical, order matters
                _write(root / "aligned_images_DB" / f"Person_{p}" / str(v) / f"aligned_detect_{v}.{frame}.jpg",
                       p, 100 * v + frame, 40)
    lines = ["split number, pair number, first name, second name, is physically the same, is the same"]
    for split in range(1, 11):
        p, q = split % 6, (split + 1) % 6
        lines.append(f"{split}, {2 * split - 1}, Person_{p}/0, Person_{p}/1, 1, 1")
        lines.append(f"{split}, {2 * split}, Person_{p}/2, Person_{q}/1, 0, 0")
    (root / "splits.txt").write_text("\n".join(lines) + "\n")
    return root


def test_ytf_reads_columns_by_header_and_picks_evenly_spaced_frames(ytf):
    bench = ytf_benchmark(str(ytf), frames_per_video=3, crop=None)
    assert bench.num_pairs == 20 and np.array_equal(bench.folds, np.repeat(np.arange(10), 2))
    assert np.array_equal(bench.issame, np.tile([True, False], 10))
    assert evenly_spaced(12, 3) == [0, 6, 11] and evenly_spaced(5, 3) == [0, 2, 4] and evenly_spaced(2, 3) == [0, 1]
    video = bench.pairs[1][1]  # Person_2/1 (12 frames): frames 1, 7, 12 in numeric order
    frames = [os.path.basename(bench.load.paths[i]) for i in np.flatnonzero(bench.item_of_image == video)]
    assert frames == ["aligned_detect_1.1.jpg", "aligned_detect_1.7.jpg", "aligned_detect_1.12.jpg"]
    all_frames = ytf_benchmark(str(ytf), frames_per_video=None, crop=None)
    assert np.sum(all_frames.item_of_image == all_frames.pairs[1][1]) == 12


def _pool_model(x: torch.Tensor) -> torch.Tensor:
    """A fixed 'backbone': 4x4 average pooling, flattened (B, 3, H, W) -> (B, 48)."""
    return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) + 0.1


def test_ytf_video_embedding_is_the_mean_of_normalised_frame_embeddings(ytf):
    crop = (0.3, 0.2, 0.3, 0.2)
    bench = ytf_benchmark(str(ytf), frames_per_video=4, crop=crop)
    got = bench.score(Embedder(_pool_model, torch.device("cpu"), batch_size=5, input_size=(16, 16), mean=(0.5,) * 3,
                               std=(0.5,) * 3))

    def frame_embedding(path):  # independent: crop, resize, normalise, flip-sum, L2-normalise
        img = resize_to(center_crop(read_image(path), crop), (16, 16))
        x = (torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.5
        e = (_pool_model(x) + _pool_model(torch.flip(x, dims=[3])))[0].double()
        return e / e.norm()

    videos = {}
    for i, path in enumerate(bench.load.paths):
        videos.setdefault(int(bench.item_of_image[i]), []).append(frame_embedding(path))
    emb = {v: torch.stack(es).mean(0) / torch.stack(es).mean(0).norm() for v, es in videos.items()}
    e1 = torch.stack([emb[int(a)] for a in bench.pairs[:, 0]]).numpy()
    e2 = torch.stack([emb[int(b)] for b in bench.pairs[:, 1]]).numpy()
    want = verification_scores("ytf", e1, e2, bench.issame, bench.folds)
    assert got.accuracy == pytest.approx(want.accuracy, abs=1e-12)
    assert got.auc == pytest.approx(want.auc, abs=1e-9) and got.eer == pytest.approx(want.eer, abs=1e-9)


def test_ytf_errors(ytf):
    text = (ytf / "splits.txt").read_text().splitlines()
    (ytf / "splits.txt").write_text("\n".join([text[0]] + [t for t in text[1:] if not t.startswith("10,")]) + "\n")
    with pytest.raises(DataError, match=r"splits.txt: expected 10 split numbers \(folds\), found 9"):
        ytf_benchmark(str(ytf))
    (ytf / "splits.txt").write_text("split number, first name, second name\n1, A/0, A/1\n")
    with pytest.raises(DataError, match=r"splits.txt:1: the header lacks the column\(s\) \['same'\]"):
        ytf_benchmark(str(ytf))
    (ytf / "splits.txt").write_text("\n".join(text[:3] + ["2, 3, Person_1/0, Person_1/1, 1, maybe"]) + "\n")
    with pytest.raises(DataError, match=r"splits.txt:4: expected a split number"):
        ytf_benchmark(str(ytf))
    (ytf / "splits.txt").write_text("\n".join(text) + "\n")
    import shutil

    shutil.rmtree(ytf / "aligned_images_DB" / "Person_3" / "0")
    with pytest.raises(DataError, match=r"Person_3/0: no such video directory.*splits.txt:6"):
        ytf_benchmark(str(ytf))
    bench = ytf_benchmark(str(ytf), skip_missing=True)
    assert bench.skipped_pairs == 2 and bench.num_pairs == 18


# ---------------------------------------------------------------- CSV pair lists

@pytest.fixture()
def images(tmp_path) -> Path:
    for p in range(4):
        for k in range(2):
            _write(tmp_path / "faces" / f"p{p}" / f"{k}.jpg", p, k)
    return tmp_path


def test_csv_with_header_and_fold_column(images):
    rows = ["path1,path2,is_same,fold"]
    for fold in range(10):
        p = fold % 4
        rows += [f"faces/p{p}/0.jpg,faces/p{p}/1.jpg,1,f{fold}", f"faces/p{p}/0.jpg,faces/p{(p + 1) % 4}/1.jpg,false,f{fold}"]
    (images / "pairs.csv").write_text("\n".join(rows) + "\n")
    bench = csv_benchmark(str(images / "pairs.csv"))
    assert bench.name == "pairs" and bench.num_pairs == 20 and bench.num_images == 8
    assert np.array_equal(bench.folds, np.repeat(np.arange(10), 2))
    assert np.array_equal(bench.issame, np.tile([True, False], 10))
    assert bench.load.paths[bench.pairs[0][0]] == str(images / "faces" / "p0" / "0.jpg")


def test_csv_without_folds_gets_consecutive_chunks_and_absolute_paths(images):
    rows = [f"{images}/faces/p{i % 4}/0.jpg,{images}/faces/p{(i + i % 2) % 4}/1.jpg,{1 - i % 2}" for i in range(23)]
    (images / "sub").mkdir()
    (images / "sub" / "mine.csv").write_text("\n".join(rows) + "\n")
    bench = csv_benchmark(str(images / "sub" / "mine.csv"))
    assert bench.num_pairs == 23 and np.bincount(bench.folds).tolist() == [3, 3, 3] + [2] * 7


def test_csv_errors_name_file_line_and_expectation(images):
    path = images / "bad.csv"
    path.write_text("faces/p0/0.jpg,faces/p0/1.jpg,1\nfaces/p0/0.jpg,faces/p1/1.jpg,perhaps\n")
    with pytest.raises(DataError, match=r"bad.csv:2: is_same must be 1/0"):
        csv_benchmark(str(path))
    path.write_text("faces/p0/0.jpg,faces/p0/1.jpg,1,a\nfaces/p0/0.jpg,faces/p1/1.jpg,0\n")
    with pytest.raises(DataError, match=r"bad.csv:2: expected 4 fields"):
        csv_benchmark(str(path))
    path.write_text("".join(f"faces/p0/0.jpg,faces/p{i % 2}/1.jpg,{1 - i % 2},{i % 3}\n" for i in range(12)))
    with pytest.raises(DataError, match=r"bad.csv: the fold column has 3 distinct values .* expected num_folds=10"):
        csv_benchmark(str(path))
    assert csv_benchmark(str(path), num_folds=3).num_pairs == 12
    path.write_text("".join(f"faces/p0/0.jpg,faces/p9/{i}.jpg,{i % 2}\n" for i in range(10)))
    with pytest.raises(DataError, match=r"p9/0.jpg: no such image \(.*bad.csv:1\)"):
        csv_benchmark(str(path))
