"""WebDataset shards: folder -> shards and .rec -> shards keep every image's bytes and label (read back with the
webdataset library), shards are bounded, and a tampered index is refused naming the file."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from frtrain.data.shards import read_index
from frtrain.data.synthetic import draw_image
from frtrain.errors import DataError
from frtrain.tools import folder2rec, folder2wds, rec2wds


def _folder(root):
    """Three people, 3-4 images each, one of them a PNG; returns [(bytes, label)] in label, file-name order."""
    expected = []
    for label, person in enumerate(("alice", "bob", "carol")):
        (root / person).mkdir(parents=True)
        for k in range(3 + (label == 1)):
            data = draw_image(0, 0, label, k, 24)
            name = f"{k}.jpg"
            if (label, k) == (2, 1):
                buf = io.BytesIO()
                Image.fromarray(np.full((20, 20, 3), 7, np.uint8)).save(buf, format="PNG")
                data, name = buf.getvalue(), "1.png"
            (root / person / name).write_bytes(data)
            expected.append((data, label))
    return expected


def _read_back(out):
    """(image bytes, label, extension) of every sample, in order, read with the webdataset library."""
    import webdataset as wds

    index = json.loads((out / "index.json").read_text())
    urls = [str(out / s["name"]) for s in index["shards"]]
    samples = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        (ext,) = [k for k in sample if k not in ("__key__", "__url__", "__local_path__", "cls")]
        samples.append((sample[ext], int(sample["cls"].decode()), ext))
    return index, samples


def test_folder_to_shards_round_trip_is_byte_identical_and_bounded(tmp_path):
    expected = _folder(tmp_path / "faces")
    out = tmp_path / "wds"
    assert folder2wds.main([str(tmp_path / "faces"), str(out), "--max-count", "4"]) == 0
    index, samples = _read_back(out)
    assert [(b, label) for b, label, _ in samples] == expected
    assert [ext for *_, ext in samples].count("png") == 1 and {ext for *_, ext in samples} == {"jpg", "png"}
    assert index["num_classes"] == 3 and index["samples"] == 10
    assert [s["samples"] for s in index["shards"]] == [4, 4, 2]
    assert sorted(os.listdir(out)) == ["000000.tar", "000001.tar", "000002.tar", "index.json"]
    assert read_index(str(out))["samples"] == 10
    assert folder2wds.main([str(tmp_path / "faces"), str(tmp_path / "again"), "--max-count", "4"]) == 0
    assert all((out / n).read_bytes() == (tmp_path / "again" / n).read_bytes() for n in ("000000.tar", "000002.tar"))
    # a byte bound: each shard closes before its images pass it (one image per shard when one fills it)
    assert folder2wds.main([str(tmp_path / "faces"), str(tmp_path / "small"), "--max-bytes", "1"]) == 0
    assert [s["samples"] for s in read_index(str(tmp_path / "small"))["shards"]] == [1] * 10


def test_rec_to_shards_keeps_each_record_image_and_label(tmp_path):
    expected = _folder(tmp_path / "faces")
    assert folder2rec.main([str(tmp_path / "faces"), str(tmp_path / "rec")]) == 0
    assert rec2wds.main([str(tmp_path / "rec"), str(tmp_path / "wds"), "--max-count", "3"]) == 0
    index, samples = _read_back(tmp_path / "wds")
    assert [(b, label) for b, label, _ in samples] == expected
    assert index["num_classes"] == 3 and len(index["shards"]) == 4


@pytest.mark.parametrize("tamper, message", [
    (lambda out: (out / "000001.tar").write_bytes((out / "000001.tar").read_bytes()[:-512]), r"000001.tar: [\d,]+ bytes, the index says [\d,]+"),
    (lambda out: (out / "000000.tar").unlink(), "lists 000000.tar, which is not in"),
    (lambda out: (out / "index.json").write_text("{"), "index.json: not valid JSON"),
    (lambda out: (out / "index.json").write_text(json.dumps({"format": "other"})), "not a frtrain shard index"),
    (lambda out: (out / "index.json").write_text(
        (out / "index.json").read_text().replace('"samples": 10', '"samples": 11')), "says 11 samples, its shards 10"),
    (lambda out: (out / "index.json").write_text(
        (out / "index.json").read_text().replace('"000000.tar"', '"../000000.tar"')), "a shard entry is not"),
])
def test_a_tampered_shard_set_is_refused_naming_the_file(tmp_path, tamper, message):
    _folder(tmp_path / "faces")
    out = tmp_path / "wds"
    assert folder2wds.main([str(tmp_path / "faces"), str(out), "--max-count", "4"]) == 0
    tamper(out)
    with pytest.raises(DataError, match=message):
        read_index(str(out))


def test_the_converters_fail_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        folder2wds.main([str(tmp_path / "missing"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("folder2wds: error: ") and "missing" in err[0]
