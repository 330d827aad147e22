"""Training data: identity folders (odd images, errors, cached index), synthetic faces, the batch order."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from frtrain.data.folder import FaceFolder, load_index
from frtrain.data.images import CorruptImageError, decode_image
from frtrain.data.loader import ResumableBatchSampler
from frtrain.data.synthetic import SyntheticFaces, make_verification_pairs, synthetic_verification_bin
from frtrain.errors import DataError
from frtrain.evaluation.binfile import read_bin

FLIP = [{"_target_": "albumentations.HorizontalFlip", "p": 0.5}]


def _save(path: Path, array: np.ndarray, mode=None, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, format=fmt)


@pytest.fixture()
def tree(tmp_path) -> Path:
    """alice: RGB JPEG + a corrupt file; bob: grayscale PNG, RGBA PNG, 16-bit PGM; carol: odd-size JPEG."""
    rng = np.random.default_rng(0)
    root = tmp_path / "faces"
    _save(root / "alice" / "0.jpg", rng.integers(0, 255, (112, 112, 3), dtype=np.uint8))
    (root / "alice" / "1.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    _save(root / "bob" / "gray.png", rng.integers(0, 255, (112, 112), dtype=np.uint8))
    _save(root / "bob" / "rgba.png", rng.integers(0, 255, (112, 112, 4), dtype=np.uint8))
    deep = rng.integers(0, 4096, (90, 80)).astype(">u2")  # binary 16-bit PGM: header, big-endian samples
    (root / "bob" / "deep.pgm").write_bytes(b"P5\n80 90\n4095\n" + deep.tobytes())
    _save(root / "carol" / "odd.jpg", rng.integers(0, 255, (250, 180, 3), dtype=np.uint8))
    (root / "carol" / "notes.txt").write_text("not an image, ignored")
    return root


def test_labels_follow_sorted_identity_folders_and_formats_are_converted(tree):
    ds = FaceFolder(str(tree), input_size=(112, 112), index_cache=False)
    assert ds.classes == ["alice", "bob", "carol"] and len(ds) == 6
    labels = {os.path.basename(ds.path(i)): int(ds.labels[i]) for i in range(len(ds))}
    assert labels == {"0.jpg": 0, "1.jpg": 0, "deep.pgm": 1, "gray.png": 1, "rgba.png": 1, "odd.jpg": 2}
    for i in range(len(ds)):
        if ds.path(i).endswith("1.jpg"):
            continue
        image, label, skipped = ds[i]
        assert image.shape == (3, 112, 112) and image.dtype == torch.uint8 and skipped == ()
    gray = ds[[i for i in range(len(ds)) if ds.path(i).endswith("gray.png")][0]][0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # grayscale -> equal channels
    deep = ds[[i for i in range(len(ds)) if ds.path(i).endswith("deep.pgm")][0]][0]
    assert deep.max() > 200  # 16-bit values scaled into 8 bits, not clipped to 255 or truncated to 0


def test_a_corrupt_image_is_skipped_and_named_by_its_index(tree):
    ds = FaceFolder(str(tree), input_size=(64, 64), index_cache=False)
    bad = [i for i in range(len(ds)) if ds.path(i).endswith("1.jpg")][0]
    image, label, skipped = ds[bad]
    assert skipped == (bad,) and image.shape == (3, 64, 64)
    assert label == int(ds.labels[ds.replacement(bad, None, 1)])  # the label of the image actually returned


def test_on_corrupt_raise_stops_naming_the_file(tree):
    ds = FaceFolder(str(tree), on_corrupt="raise", index_cache=False)
    bad = [i for i in range(len(ds)) if ds.path(i).endswith("1.jpg")][0]
    with pytest.raises(CorruptImageError, match="alice/1.jpg"):
        ds[bad]


def test_truncated_jpeg_is_corrupt():
    rng = np.random.default_rng(1)
    import io

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    with pytest.raises(CorruptImageError, match="x.jpg: cannot decode image"):
        decode_image(buf.getvalue()[:300], "x.jpg")


@pytest.mark.parametrize("setup, match", [
    (lambda r: None, "no such directory"),
    (lambda r: r.mkdir(), "is empty"),
    (lambda r: (r.mkdir(), (r / "a.jpg").write_bytes(b"x")), "holds 1 loose image files but no identity folders"),
    (lambda r: (r.mkdir(), (r / "id1").mkdir(), (r / "id1" / "x.txt").write_text("x")), r"identity folder .*id1: has no image files"),
])
def test_bad_roots_fail_with_one_line_naming_the_path(tmp_path, setup, match):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=match) as err:
        FaceFolder(str(root), index_cache=False)
    assert str(root) in str(err.value) and "\n" not in str(err.value)


def test_index_cache_is_reused_and_refreshed_when_an_identity_changes(tree, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_index(str(tree), str(cache))
    assert len(list((cache / "index").glob("*.npz"))) == 1
    import frtrain.data.folder as folder

    calls = []
    real_scan = folder.scan_identity_folders
    monkeypatch.setattr(folder, "scan_identity_folders", lambda root: calls.append(root) or real_scan(root))
    again = load_index(str(tree), str(cache))
    assert calls == [] and again[0] == first[0] and np.array_equal(again[1], first[1])
    _save(tree / "dave" / "0.jpg", np.zeros((10, 10, 3), np.uint8))  # a new identity: rescan
    refreshed = load_index(str(tree), str(cache))
    assert len(calls) == 1 and refreshed[0] == ["alice", "bob", "carol", "dave"]


def test_synthetic_faces_same_seed_same_bytes_other_seed_other_bytes(cache_dir, tmp_path):
    def digest(root):
        h = hashlib.sha256()
        for p in sorted(Path(root).rglob("*.jpg")):
            h.update(p.name.encode() + p.read_bytes())
        return h.hexdigest()

    a = SyntheticFaces(str(tmp_path / "a"), num_identities=4, images_per_identity=3, image_size=32, seed=7)
    b = SyntheticFaces(str(tmp_path / "b"), num_identities=4, images_per_identity=3, image_size=32, seed=7)
    c = SyntheticFaces(str(tmp_path / "c"), num_identities=4, images_per_identity=3, image_size=32, seed=8)
    assert a.num_classes == 4 and len(a) == 12
    assert digest(a.root) == digest(b.root) != digest(c.root)
    p1 = synthetic_verification_bin(str(tmp_path / "a"), num_identities=20, images_per_identity=3, num_pairs=40, image_size=32)
    p2 = synthetic_verification_bin(str(tmp_path / "b"), num_identities=20, images_per_identity=3, num_pairs=40, image_size=32)
    assert Path(p1).read_bytes() == Path(p2).read_bytes()
    images, issame = read_bin(p1)
    assert len(images) == 80 and sum(issame) == 20


def test_synthetic_verification_pairs_are_balanced_identity_disjoint_folds():
    pairs = make_verification_pairs(num_identities=40, images_per_identity=5, num_pairs=200, seed=0)
    assert len(pairs) == 200
    for fold in range(10):
        chunk = pairs[fold * 20 : (fold + 1) * 20]
        assert [p[2] for p in chunk] == [True] * 10 + [False] * 10
        ids = {p[0][0] for p in chunk} | {p[1][0] for p in chunk}
        assert all(i % 10 == fold for i in ids)  # folds share no identity
        assert all(p[0] != p[1] for p in chunk)  # a matched pair uses two different images


def test_augmentation_is_reproducible_per_sample_seed(tree):
    ds = FaceFolder(str(tree), input_size=(32, 32), augment=FLIP, index_cache=False)
    flips = {bool(torch.equal(ds[(0, s)][0], ds[(0, 0)][0].flip(2))) for s in range(1, 40)}
    assert flips == {True, False}  # both outcomes occur across seeds
    for s in range(10):
        assert torch.equal(ds[(0, s)][0], ds[(0, s)][0])


def test_sampler_shards_ranks_disjointly_and_resumes_mid_epoch():
    ranks = [ResumableBatchSampler(103, 5, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(4)
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == 103 // 10
    seen = [k for b in batches for batch in b for k in batch]
    assert len({i for i, _ in seen}) == len(seen) == 100  # no sample twice, incomplete global batch dropped
    resumed = ResumableBatchSampler(103, 5, seed=3, rank=1, world_size=2)
    resumed.set_epoch(4, start_batch=6)
    assert list(resumed) == batches[1][6:]
    other_epoch = ResumableBatchSampler(103, 5, seed=3, rank=1, world_size=2)
    other_epoch.set_epoch(5)
    assert list(other_epoch) != batches[1]


def test_identities_and_min_images_select_folders_and_relabel(tree, tmp_path):
    listing = tmp_path / "people.txt"
    listing.write_text("# chosen people\ncarol\nbob\n\n")
    ds = FaceFolder(str(tree), input_size=(56, 56), identities=str(listing))
    assert ds.classes == ["bob", "carol"] and sorted(set(ds.labels.tolist())) == [0, 1]
    assert all(p.decode().split("/")[0] == ds.classes[label] for p, label in zip(ds.paths, ds.labels))
    ds = FaceFolder(str(tree), input_size=(56, 56), min_images_per_identity=2)
    assert ds.classes == ["alice", "bob"] and len(ds) == 5
    with pytest.raises(DataError, match=r"people2.txt: no such file"):
        FaceFolder(str(tree), identities=str(tmp_path / "people2.txt"))
    with pytest.raises(DataError, match=r"data.identities: 1 of 2 identities have no folder in .*e.g. dave"):
        FaceFolder(str(tree), identities=["bob", "dave"])


def test_auto_workers_share_the_node_between_the_ranks(monkeypatch):
    from frtrain import runtime as loader

    monkeypatch.setattr(loader.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert loader.default_num_workers() == 8  # one process: 15 cores free, at most 8 workers
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert loader.default_num_workers() == 3  # 4 ranks on 16 cores: 4 cores each, one for the trainer
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert loader.default_num_workers() == 1


def test_the_low_quality_augmentation_applies_each_transform_at_its_rate_and_keeps_uint8_112(tmp_path):
    """AdaFace's recipe: crop, low resolution and photometric jitter each with probability 0.2 (and the flip)."""
    from frtrain.config import compose
    from frtrain.data.transforms import apply_augment, build_augment

    augment = compose("train", ["data/augment=low_quality"]).data.augment
    assert list(augment) == ["crop", "low_resolution", "photometric", "flip"]
    image = np.random.default_rng(0).integers(30, 220, (112, 112, 3), dtype=np.uint8)
    n = 1500
    for name in ("crop", "low_resolution", "photometric"):
        single = build_augment({name: augment[name]})
        changed = 0
        for seed in range(n):
            out = apply_augment(single, image, seed)
            assert out.shape == (112, 112, 3) and out.dtype == np.uint8
            changed += not np.array_equal(out, image)
        rate = changed / n
        assert abs(rate - 0.2) < 4 * (0.2 * 0.8 / n) ** 0.5, f"{name}: applied to {rate:.3f} of the images"
    whole = build_augment(augment)
    outs = [apply_augment(whole, image, seed) for seed in range(20)]
    assert all(o.shape == (112, 112, 3) and o.dtype == np.uint8 for o in outs)
    assert np.array_equal(apply_augment(whole, image, 5), apply_augment(whole, image, 5))  # reproducible per seed


def test_the_crop_keeps_the_box_and_blacks_out_the_rest_at_the_same_size():
    from frtrain.data.augment import DownUpSample, ZeroOutsideCrop

    image = np.full((40, 30, 3), 200, np.uint8)
    crop = ZeroOutsideCrop(p=1.0)
    out = crop.apply(image, top=5, left=3, height=20, width=10)
    assert out.shape == image.shape and out[5:25, 3:13].min() == 200 and out.sum() == 200 * 3 * 20 * 10
    small = DownUpSample(p=1.0).apply(image, ratio=0.25, down=0, up=0)
    assert small.shape == image.shape
