"""LFW's original layout: pairs.txt parsing, folds, image lookup, errors; the real set when FRTRAIN_LFW is given."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from frtrain.data.synthetic import draw_image
from frtrain.errors import ConfigError, DataError
from frtrain.data.lfw_pairs import lfw_people, read_lfw_pairs
from frtrain.evaluation.lfw import lfw_benchmark

PER_KIND = 3


@pytest.fixture()
def lfw(tmp_path) -> Path:
    """10 sets of 3 matched + 3 mismatched pairs over identity-disjoint people (7 distinct images used per set)."""
    root = tmp_path / "lfw"
    lines = [f"10\t{PER_KIND}"]
    for s in range(10):
        people = [f"Person_{s}_{k}" for k in range(4)]
        for k, name in enumerate(people):
            for n in (1, 2):
                path = root / "images" / name / f"{name}_{n:04d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(draw_image(0, 0, s * 4 + k, n, 32))
        lines += [f"{people[k]}\t1\t2" for k in range(PER_KIND)]
        lines += [f"{people[k]}\t1\t{people[k + 1]}\t2" for k in range(PER_KIND)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def test_pairs_are_read_in_file_order_and_the_sets_are_the_folds(lfw):
    pairs, sets, per_kind = read_lfw_pairs(str(lfw / "pairs.txt"))
    assert (sets, per_kind, len(pairs)) == (10, PER_KIND, 60)
    assert pairs[0] == ("Person_0_0", 1, "Person_0_0", 2, True, 1)
    assert pairs[3] == ("Person_0_0", 1, "Person_0_1", 2, False, 1)
    bench = lfw_benchmark(str(lfw))
    assert bench.num_pairs == 60 and bench.num_images == 70 and bench.issame.sum() == 30
    assert np.array_equal(bench.folds, np.repeat(np.arange(10), 6))
    first, second = bench.pairs[3]
    assert np.array_equal(bench.load(first), bench.load(bench.pairs[0][0]))  # Person_0_0_0001 read once
    assert bench.load(second).shape == (32, 32, 3)


def test_a_subset_of_sets_gets_ten_balanced_folds_and_its_people(lfw):
    bench = lfw_benchmark(str(lfw), sets=[10, 9], name="lfw_sets")
    assert bench.num_pairs == 12 and "folds are 10 chunks" in bench.notes[0]
    for f in np.unique(bench.folds):  # each chunk keeps matched and mismatched pairs together
        assert bench.issame[bench.folds == f].any() and (~bench.issame[bench.folds == f]).any()
    assert lfw_people(str(lfw / "pairs.txt"), [10]) == [f"Person_9_{k}" for k in range(4)]
    with pytest.raises(ConfigError, match=r"lfw sets \[11\]: .*pairs.txt has sets 1..10"):
        lfw_benchmark(str(lfw), sets=[11])


def test_missing_images_fail_naming_the_file_or_are_skipped_and_counted(lfw):
    os.remove(lfw / "images" / "Person_2_1" / "Person_2_1_0002.jpg")
    with pytest.raises(DataError, match=r"Person_2_1_0002.jpg: no such image \(pair 14 of .*pairs.txt\)"):
        lfw_benchmark(str(lfw))
    bench = lfw_benchmark(str(lfw), skip_missing=True)
    assert bench.skipped_pairs == 2 and bench.num_pairs == 58 and "2 pairs skipped" in bench.notes[0]


@pytest.mark.parametrize("folder", ["lfw", "lfw-deepfunneled", "lfw_funneled", "."])
def test_lfw_as_downloaded_is_found_without_extra_keys(lfw, folder):
    """pairs.txt beside the unpacked archive's folder (lfw/<name>/<name>_NNNN.jpg), or the images in the root."""
    target = lfw if folder == "." else lfw / folder
    for person in list((lfw / "images").iterdir()):
        target.mkdir(exist_ok=True)
        person.rename(target / person.name)
    (lfw / "images").rmdir()
    bench = lfw_benchmark(str(lfw))
    assert bench.num_pairs == 60 and bench.load(0).shape == (32, 32, 3)
    assert os.path.dirname(os.path.dirname(bench.load.paths[0])) == os.path.normpath(str(target))


def test_a_wrong_root_or_an_empty_image_folder_is_one_line_not_a_traceback(lfw, tmp_path):
    with pytest.raises(DataError, match=r"no folder Person_0_0/ \(the first person of its pairs.txt\) in the root or "
                                        r"in images, lfw, lfw-deepfunneled"):
        lfw_benchmark(str(tmp_path / "elsewhere"), pairs=str(lfw / "pairs.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"pairs.txt: none of its 60 pairs has both images \(e.g. .*empty/Person_0_0/"
                                        r"Person_0_0_0001.jpg is missing\); is the image directory right\?"):
        lfw_benchmark(str(lfw), images=str(tmp_path / "empty"), skip_missing=True)


def test_the_image_folder_key_is_in_the_named_benchmark_config(lfw, tmp_path):
    from conftest import compose_eval

    cfg = compose_eval([f"model={tmp_path}/m.pt", "benchmarks=[lfw]", f"benchmarks.lfw.root={lfw}",
                        f"benchmarks.lfw.images={lfw / 'images'}"])  # no '+' needed
    assert cfg.benchmarks.lfw.images == str(lfw / "images")


@pytest.mark.parametrize("text, match", [
    ("10 300 extra\n", r"pairs.txt:1: expected the header"),
    ("1\t1\nA\t1\t2\nB\t1\n", r"pairs.txt:3: expected 'name1<TAB>n1<TAB>name2<TAB>n2' \(a mismatched pair\) of set 1, got 'B\\t1'"),
    ("1\t1\nA\t1\tB\t2\nB\t1\tC\t1\n", r"pairs.txt:2: expected 'name<TAB>n1<TAB>n2' \(a matched pair\) of set 1"),
    ("2\t1\nA\t1\t2\nA\t1\tB\t2\n", r"the header promises 2 sets .*\(4 lines\), the file has 2"),
])
def test_malformed_pairs_files_name_the_line(tmp_path, text, match):
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(DataError, match=match):
        read_lfw_pairs(str(tmp_path / "pairs.txt"))


REAL = os.environ.get("FRTRAIN_LFW")


@pytest.mark.skipif(not REAL, reason="real LFW: set FRTRAIN_LFW to a directory with pairs.txt and images/")
def test_real_lfw_view2_has_6000_pairs_in_ten_identity_disjoint_sets():
    bench = lfw_benchmark(REAL)
    assert bench.num_pairs == 6000 and bench.issame.sum() == 3000 and np.bincount(bench.folds).tolist() == [600] * 10
    people = [set(lfw_people(os.path.join(REAL, "pairs.txt"), [s])) for s in range(1, 11)]
    assert all(not (people[a] & people[b]) for a in range(10) for b in range(a + 1, 10))
    assert bench.load(0).shape == (112, 112, 3)


def test_make_bin_writes_a_bin_that_scores_exactly_like_the_lfw_layout(lfw, tmp_path):
    """scripts/make_bin.py: LFW layout -> .bin with the files' own bytes; same embeddings, same folds, same numbers."""
    import torch

    from frtrain.tools import make_bin

    from frtrain.evaluation.benchmarks import bin_benchmark
    from frtrain.evaluation.binfile import read_bin
    from frtrain.evaluation.embed import Embedder

    assert make_bin.main(["--lfw", str(lfw), "--out", str(tmp_path / "lfw.bin"), "--size", "32"]) == 0
    images, issame = read_bin(tmp_path / "lfw.bin")
    assert len(images) == 120 and issame[:6] == [True] * 3 + [False] * 3
    assert images[0] == (lfw / "images" / "Person_0_0" / "Person_0_0_0001.jpg").read_bytes()
    raw, binned = lfw_benchmark(str(lfw)), bin_benchmark(str(tmp_path / "lfw.bin"))
    assert np.array_equal(raw.folds, binned.folds) and np.array_equal(raw.issame, binned.issame)

    def model(x):  # a fixed 'backbone': 4x4 average pooling
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) + 0.05 * x.mean()

    embedder = Embedder(model, torch.device("cpu"), batch_size=16, input_size=(32, 32), mean=(0.5,) * 3,
                        std=(0.5,) * 3)
    a, b = raw.score(embedder), binned.score(embedder)
    assert a.accuracy == b.accuracy and a.fold_accuracies == b.fold_accuracies and a.auc == b.auc

    # resizing re-encodes losslessly as PNG
    assert make_bin.main(["--lfw", str(lfw), "--out", str(tmp_path / "small.bin"), "--size", "16"]) == 0
    small, _ = read_bin(tmp_path / "small.bin")
    assert small[0][:8] == b"\x89PNG\r\n\x1a\n"
