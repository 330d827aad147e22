"""insightface .bin files: round trip, Python 2 style pickles, and refusal of anything but bytes and bools."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from frtrain.data.images import encode_jpeg
from frtrain.errors import DataError
from frtrain.evaluation.benchmarks import bin_benchmark
from frtrain.evaluation.binfile import read_bin, write_bin


def _images(n):
    rng = np.random.default_rng(0)
    return [encode_jpeg(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]


def test_round_trip_and_benchmark_pairs(tmp_path):
    imgs = _images(20)
    issame = [True, False] * 5
    write_bin(tmp_path / "x.bin", imgs, issame)
    got_imgs, got_same = read_bin(tmp_path / "x.bin")
    assert got_imgs == imgs and got_same == issame
    bench = bin_benchmark(str(tmp_path / "x.bin"))
    assert bench.name == "x" and bench.num_pairs == 10 and bench.num_images == 20
    assert bench.load(bench.pairs[3, 1]).shape == (20, 20, 3)
    assert np.array_equal(bench.folds, np.arange(10))


def test_repeated_images_are_decoded_once(tmp_path):
    a, b, c = _images(3)
    write_bin(tmp_path / "r.bin", [a, b, a, c, b, c] * 4, [True, False, True] * 4)
    bench = bin_benchmark(str(tmp_path / "r.bin"))
    assert bench.num_images == 3
    assert bench.pairs.tolist() == [[0, 1], [0, 2], [1, 2]] * 4


def test_fewer_pairs_than_folds_is_an_error_naming_the_file(tmp_path):
    write_bin(tmp_path / "few.bin", _images(6), [True, False, True])
    with pytest.raises(DataError, match="few.bin: 3 pairs cannot be split into 10 folds"):
        bin_benchmark(str(tmp_path / "few.bin"))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_reads_the_pickle_protocols_insightface_files_use(tmp_path, protocol):
    imgs = _images(4)
    with open(tmp_path / "p.bin", "wb") as f:  # protocol 2 from Python 3 rebuilds bytes with _codecs.encode
        pickle.dump((imgs, [True, False]), f, protocol=protocol)
    assert read_bin(tmp_path / "p.bin") == (imgs, [True, False])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize("payload, match", [
    ((_Evil(), [True]), "refused, the pickle asks for builtins.print"),
    ((np.zeros(4), [True, False]), "refused, the pickle asks for numpy"),
    (([b"a", b"b"], [1]), r"issame\[0\] is a int"),
    (([b"a", "b"], [True]), "image 1 is a str"),
    (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
    ({"a": 1}, "expected a pickled pair"),
])
def test_anything_but_bytes_and_bools_is_refused_naming_the_file(tmp_path, payload, match):
    path = tmp_path / "bad.bin"
    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)
    with pytest.raises(DataError, match=match) as err:
        read_bin(path)
    assert str(path) in str(err.value)


def test_truncated_and_missing_files(tmp_path):
    write_bin(tmp_path / "t.bin", _images(2), [True])
    data = (tmp_path / "t.bin").read_bytes()
    (tmp_path / "t.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not an insightface .bin"):
        read_bin(tmp_path / "t.bin")
    with pytest.raises(DataError, match="cannot read benchmark file"):
        read_bin(tmp_path / "missing.bin")
