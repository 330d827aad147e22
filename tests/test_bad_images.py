"""Bad images never end a run: decompression bombs, truncated, mutated, odd formats; each bad file is counted
once and listed; the pixel limit is an option; 16-bit images are scaled by the format's range."""

from __future__ import annotations

import io
import json
import logging
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frtrain.data.base import CorruptImages
from frtrain.data.folder import FaceFolder
from frtrain.data.images import CorruptImageError, decode_image
from frtrain.data.synthetic import draw_image
from frtrain.errors import DataError

from conftest import compose_train


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A small real PNG whose IHDR says width x height (CRC fixed up, so only the size is a lie)."""
    data = bytearray(_png(np.zeros((4, 4, 3), np.uint8)))
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])) & 0xFFFFFFFF)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def tiff_declaring(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    # the first IFD's ImageWidth (256) and ImageLength (257) entries, SHORT or LONG
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257):
            data[entry + 2:entry + 4] = struct.pack("<H", 4)  # LONG
            data[entry + 8:entry + 12] = struct.pack("<I", width if tag == 256 else height)
    return bytes(data)


@pytest.mark.parametrize("make", [png_declaring, bmp_declaring, tiff_declaring])
def test_a_header_declaring_40000x40000_is_a_corrupt_image_naming_the_file_not_a_crash(make):
    with pytest.raises(CorruptImageError, match=r"bomb.png: its header declares (40000x40000 = )?1,600,000,000 pixels, "
                                                r"more than data.max_image_pixels=150,000,000"):
        decode_image(make(40000, 40000), "bomb.png")


def test_the_pixel_limit_is_an_option_tested_at_and_above_it(tmp_path):
    good = _png(np.full((50, 40, 3), 7, np.uint8))
    assert decode_image(good, "x", max_pixels=2000).shape == (50, 40, 3)  # exactly at the limit
    with pytest.raises(CorruptImageError, match=r"50 = 2,000 pixels, more than data.max_image_pixels=1,999"):
        decode_image(good, "x", max_pixels=1999)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(good)
    (tmp_path / "a" / "1.png").write_bytes(_png(np.full((40, 40, 3), 9, np.uint8)))
    ds = FaceFolder(str(tmp_path), input_size=(8, 8), index_cache=False, max_image_pixels=1999)
    _, _, skipped = ds[0]
    assert skipped == (0,)  # 0.png passed over, 1.png (1,600 pixels) used
    with pytest.raises(CorruptImageError, match=r"0.png: its header declares"):
        FaceFolder(str(tmp_path), input_size=(8, 8), index_cache=False, max_image_pixels=1999, on_corrupt="raise")[0]


def test_16_bit_images_are_scaled_by_the_formats_range_not_their_own_maximum():
    dim = np.full((8, 8), 1000, np.uint16)  # the same grey level in two images with different maxima
    bright = dim.copy()
    bright[0, 0] = 65535
    a = decode_image(_png(dim), "dim.png")[4, 4, 0]
    b = decode_image(_png(bright), "bright.png")[4, 4, 0]
    assert a == b == round(1000 * 255 / 65535)  # 4: brightness does not depend on the image


# -- the fuzz test: a folder of good and bad files trains, and reports exactly the bad ones -----------------

def _mutations(rng: np.random.Generator, good: bytes) -> list[tuple[str, bytes]]:
    """Files of every kind the issue lists; names by kind, contents deterministic for the seed."""
    out = []
    for i in range(150):  # random byte mutations (some still decode: the oracle decides)
        b = bytearray(good)
        for pos in rng.integers(0, len(b), int(rng.integers(1, 40))):
            b[pos] = int(rng.integers(0, 256))
        out.append((f"mutated_{i:03d}.jpg", bytes(b)))
    for i in range(60):
        out.append((f"truncated_{i:03d}.jpg", good[: int(len(good) * rng.uniform(0.05, 0.7))]))
    for i in range(20):
        out.append((f"zero_{i:03d}.jpg", b""))
    for i in range(20):
        out.append((f"header_{i:03d}.jpg", bytes(rng.integers(0, 256, 16, dtype=np.uint8)) + good[16:]))
    for i, make in enumerate([png_declaring, bmp_declaring, tiff_declaring] * 4):
        out.append((f"bomb_{i:03d}.{['png', 'bmp', 'tif'][i % 3]}", make(40000, 40000)))
    out += [(f"png_named_jpg_{i}.jpg", _png(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))) for i in range(5)]
    out += [(f"one_pixel_{i}.png", _png(np.full((1, 1, 3), 9 * i, np.uint8))) for i in range(5)]
    out += [(f"deep_{i}.png", _png((rng.integers(0, 65535, (20, 20))).astype(np.uint16))) for i in range(5)]
    for i in range(5):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).convert("CMYK").save(buf, format="JPEG")
        out.append((f"cmyk_{i}.jpg", buf.getvalue()))
    return out


def _decodes(data: bytes, limit: int = 150_000_000) -> bool:
    """The oracle, written with Pillow directly: opens, declares at most ``limit`` pixels, and loads."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.size[0] * img.size[1] > limit:
                return False
            img.load()
            return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def fuzz_folder(tmp_path_factory) -> tuple[Path, set[str]]:
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(2026)
    good = draw_image(0, 1, 0, 0, 24)
    files = _mutations(rng, good)
    identities = 10
    good_count = 0
    while (len(files) + good_count) % 20 or good_count < 200:  # every image is drawn in one epoch of batches of 20
        good_count += 1
    files += [(f"good_{i:03d}.jpg", draw_image(0, 1, i % identities, i, 24)) for i in range(good_count)]
    order = rng.permutation(len(files))
    bad = set()
    for k, idx in enumerate(order):
        name, data = files[idx]
        path = root / f"id_{k % identities:02d}" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        if not _decodes(data):
            bad.add(str(path))
    assert len(bad) > 200 and len(bad) < len(files) - 200  # a real mix: hundreds of bad files among good ones
    return root, bad


def test_a_run_over_hundreds_of_bad_files_trains_and_reports_exactly_the_bad_ones(fuzz_folder, tmp_path, caplog):
    from frtrain.train import train

    root, bad = fuzz_folder
    cfg = compose_train(["data=folder", f"data.root={root}", "data.index_cache=false", "data.loader.batch_size=20",
                         "data.loader.num_workers=2", "backbone.input_size=24", "trainer.epochs=2", "eval=none",
                         "trainer.progress=false", f"output_dir={tmp_path}"])
    with caplog.at_level(logging.WARNING, logger="frtrain"):
        train(cfg)
    results = json.loads((tmp_path / "results.json").read_text())
    listed = set((tmp_path / "corrupt_images.txt").read_text().split())
    assert listed == bad  # every bad file, once, and no good one
    assert results["corrupt_images_skipped"] == len(bad)  # once per file over 2 epochs, not per visit
    assert results["steps"] > 0 and all(np.isfinite(e["loss"]) for e in results["history"]["loss"])
    warnings = [r.getMessage() for r in caplog.records if "corrupt image" in r.getMessage()]
    assert 2 <= len(warnings) <= 5  # the first, a summary per epoch, the total: not one line per file
    assert any(f"{len(bad)} corrupt images were skipped" in w for w in warnings)


def test_one_folder_of_unreadable_files_does_not_stop_a_run(tmp_path):
    """A bad download of one person (64 corrupt files in a row in file order) is passed over: each of them is
    replaced by an image drawn at random from the whole set (the next file in order would be of the same folder)."""
    (tmp_path / "a_bad").mkdir()
    for i in range(64):
        (tmp_path / "a_bad" / f"{i:03d}.jpg").write_bytes(b"not an image")
    for person in ("b", "c"):
        (tmp_path / person).mkdir()
        for i in range(8):
            (tmp_path / person / f"{i}.jpg").write_bytes(draw_image(0, 1, ord(person), i, 24))
    ds = FaceFolder(str(tmp_path), input_size=(8, 8), index_cache=False)
    corrupt = CorruptImages(ds)
    for i in range(64):  # every bad file yields a good image of another folder
        image, label, skipped = ds[(i, 7)]
        assert label in (1, 2) and i in skipped and image.shape == (3, 8, 8)
        assert ds[(i, 7)][2] == skipped  # the same replacement every time (a resumed run draws the same)
        corrupt.add(skipped)
        corrupt.observe(1, len(skipped))  # about half the tries fail here: far from the stop
    assert "a_bad (64)" in corrupt.where()


def test_data_that_is_nearly_all_unreadable_stops_naming_where(tmp_path):
    (tmp_path / "a").mkdir()
    for i in range(70):
        (tmp_path / "a" / f"{i:03d}.jpg").write_bytes(b"not an image")
    ds = FaceFolder(str(tmp_path), input_size=(8, 8), index_cache=False)
    with pytest.raises(DataError, match=r"a/000.jpg: neither this image nor 256 others drawn at random can be decoded"):
        ds[0]
    corrupt = CorruptImages(ds)
    corrupt.add(range(70))
    with pytest.raises(DataError, match=r"76 of the last 80 images could not be decoded.*most in .*/a \(70\)"):
        for _ in range(20):
            corrupt.observe(1, 19)  # 95% of the tries fail



def test_an_image_file_over_the_byte_limit_is_refused_by_its_size_before_it_is_read(tmp_path):
    """Before: a 1 GiB '.jpg' was read whole (1 GiB in a worker) before anything was checked."""
    import resource

    from frtrain.data.images import DEFAULT_MAX_BYTES, read_image

    big = tmp_path / "huge.jpg"
    with open(big, "wb") as f:  # sparse: 1 GiB long, nothing on the disk
        f.write(draw_image(0, 1, 0, 0, 24))
        f.truncate(1 << 30)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CorruptImageError, match=r"huge.jpg: the file is larger than data.max_image_bytes=100,000,000"):
        read_image(str(big))
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024 < 100
    assert DEFAULT_MAX_BYTES == 100_000_000
    small = tmp_path / "ok.jpg"
    small.write_bytes(draw_image(0, 1, 0, 0, 24))
    with pytest.raises(CorruptImageError, match="larger than data.max_image_bytes=100"):
        read_image(str(small), max_bytes=100)


def test_a_symlink_loop_in_an_identity_folder_is_skipped_and_named(tmp_path, caplog):
    """Before: ELOOP from is_file() ended the run at indexing."""
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "0.jpg").write_bytes(draw_image(0, 1, 0, 0, 24))
    (tmp_path / "alice" / "loop1.jpg").symlink_to("loop2.jpg")
    (tmp_path / "alice" / "loop2.jpg").symlink_to("loop1.jpg")
    (tmp_path / "bob").symlink_to("bob")  # an identity folder that is a loop itself
    with caplog.at_level(logging.WARNING):
        ds = FaceFolder(str(tmp_path), input_size=(8, 8), index_cache=False)
    assert len(ds) == 1 and ds.classes == ["alice"]
    warning = next(r.getMessage() for r in caplog.records if "cannot be followed" in r.getMessage())
    assert "skipped 3 entries" in warning and "loop1.jpg" in warning and "Too many levels of symbolic links" in warning


def test_an_error_in_a_dataloader_worker_reaches_the_user_as_one_line(tmp_path):
    """Before: torch's 'Caught DataError in DataLoader worker process 0' and a 20-40 line traceback."""
    import subprocess
    import sys

    (tmp_path / "data" / "alice").mkdir(parents=True)
    for i in range(8):
        (tmp_path / "data" / "alice" / f"{i}.jpg").write_bytes(b"broken" if i == 3 else draw_image(0, 1, 0, i, 24))
    (tmp_path / "data" / "bob").mkdir()
    for i in range(8):
        (tmp_path / "data" / "bob" / f"{i}.jpg").write_bytes(draw_image(0, 1, 1, i, 24))
    done = subprocess.run([sys.executable, "-m", "frtrain.train", "data=folder", f"data.root={tmp_path / 'data'}",
                           "data.on_corrupt=raise", "data.loader.num_workers=1", "data.loader.batch_size=16",
                           "backbone.input_size=24", "data.index_cache=false", "eval=none", "trainer.max_steps=2",
                           "trainer.progress=false", f"output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == \
        f"frtrain-train: error: {tmp_path / 'data' / 'alice' / '3.jpg'}: cannot decode image (not an image format " \
        "Pillow reads)"
    assert "Caught" not in done.stderr and "Traceback" not in done.stderr


def test_the_dataloader_keeps_the_worker_message_and_its_traceback_for_whoever_wants_it():
    import torch
    from torch.utils.data import DataLoader, Dataset

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DataError(f"file {i}: broken")

    with pytest.raises(DataError) as e:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert str(e.value) == "file 0: broken" and "Traceback" in e.value.worker_traceback
    del torch
