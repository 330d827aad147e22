"""insightface RecordIO read without mxnet: files from an independent writer in the test, record for record."""

from __future__ import annotations

import re
import struct

import numpy as np
import pytest

from frtrain.data.images import CorruptImageError, decode_image
from frtrain.data.recordio import RecordFaces, RecordFile
from frtrain.data.synthetic import draw_image
from frtrain.errors import DataError

MAGIC = 0xCED7230A


def _frame(payload: bytes) -> bytes:
    """dmlc framing written independently: split at every 4-aligned magic word (cflag 1/2/3), pad to 4."""
    magic = struct.pack("<I", MAGIC)
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i:i + 4] == magic]
    pieces, start = [], 0
    for c in cuts:
        pieces.append(payload[start:c])
        start = c + 4
    pieces.append(payload[start:])
    out = b""
    for i, piece in enumerate(pieces):
        flag = 0 if len(pieces) == 1 else 1 if i == 0 else 3 if i == len(pieces) - 1 else 2
        out += struct.pack("<II", MAGIC, (flag << 29) | len(piece)) + piece + b"\x00" * ((4 - len(piece) % 4) % 4)
    return out


def _payload(flag: int, label: float, labels: list[float], image: bytes) -> bytes:
    return struct.pack("<IfQQ", flag, label, 7, 0) + b"".join(struct.pack("<f", v) for v in labels) + image


def _write(tmp_path, images, labels, header0=True, float_arrays=False):
    rec, idx, offset, lines = b"", [], 0, []
    entries = []
    if header0:
        n = len(images) + 1
        entries.append((0, _payload(2, 0.0, [float(n), float(n + max(labels) + 1)], b"")))
    for k, (img, lab) in enumerate(zip(images, labels), 1 if header0 else 0):
        entries.append((k, _payload(2, 0.0, [float(lab), 0.5], img) if float_arrays else _payload(0, float(lab), [], img)))
    for key, payload in entries:
        lines.append(f"{key}\t{len(rec)}")
        rec += _frame(payload)
    (tmp_path / "train.rec").write_bytes(rec)
    (tmp_path / "train.idx").write_text("\n".join(lines) + "\n")
    return tmp_path


def _images(n):
    return [draw_image(0, 0, i % 3, i, 24) for i in range(n)]


@pytest.mark.parametrize("header0, float_arrays", [(True, False), (True, True), (False, False)])
def test_records_are_read_back_image_for_image_and_label_for_label(tmp_path, header0, float_arrays):
    images, labels = _images(7), [0, 1, 2, 0, 1, 2, 2]
    _write(tmp_path, images, labels, header0, float_arrays)
    f = RecordFile(str(tmp_path / "train.rec"))
    assert f.image_keys.tolist() == (list(range(1, 8)) if header0 else list(range(7)))
    for k, img, lab in zip(f.image_keys, images, labels):
        got_labels, got_img = f.record(k)
        assert got_img == img and int(got_labels[0]) == lab
        if float_arrays:
            assert got_labels.tolist() == [float(lab), 0.5]
    data = RecordFaces(str(tmp_path), input_size=(24, 24), augment=[])
    assert len(data) == 7 and data.num_classes == 3
    image, label, skipped = data[4]
    assert label == labels[4] and skipped == ()
    assert np.array_equal(image.numpy().transpose(1, 2, 0), decode_image(images[4], "x"))


def test_a_payload_holding_the_magic_word_is_split_and_joined(tmp_path):
    evil = b"\xff\xd8" + b"ab" + struct.pack("<I", MAGIC) + b"cdef" + struct.pack("<I", MAGIC) + b"xyz"
    # 24-byte header + 4 bytes: the magic words sit at 4-aligned payload positions 28 and 36
    _write(tmp_path, [evil], [0], header0=False)
    raw = (tmp_path / "train.rec").read_bytes()
    assert [(struct.unpack_from("<I", raw, o + 4)[0] >> 29) for o in (0, 36, 48)] == [1, 2, 3]
    assert RecordFile(str(tmp_path / "train.rec")).record(0)[1] == evil


def test_bad_files_fail_with_the_offset_or_the_record(tmp_path):
    _write(tmp_path, _images(3), [0, 1, 1], header0=False)
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    second = int((tmp_path / "train.idx").read_text().splitlines()[1].split()[1])
    raw[second:second + 4] = b"\0\0\0\0"
    (tmp_path / "train.rec").write_bytes(bytes(raw))
    f = RecordFile(str(tmp_path / "train.rec"))
    with pytest.raises(DataError, match=rf"train.rec: bad magic 0x00000000 at byte offset {second}"):
        f.record(1)
    (tmp_path / "train.idx").write_text(f"0\t0\n1\t{len(raw) + 100}\n")
    with pytest.raises(DataError, match=rf"train.idx: record 1 points to byte offset {len(raw) + 100}, past the end"):
        RecordFile(str(tmp_path / "train.rec"))


def test_folder2rec_then_rec2folder_round_trip_and_the_data_config(tmp_path):
    from frtrain.tools import folder2rec, rec2folder

    from frtrain.engine.build import build

    from conftest import compose_train

    src = tmp_path / "faces"
    for person in ("alice", "bob"):
        for k in range(3):
            (src / person).mkdir(parents=True, exist_ok=True)
            (src / person / f"{k}.jpg").write_bytes(draw_image(0, 0, len(person), k, 24))
    assert folder2rec.main([str(src), str(tmp_path / "rec")]) == 0
    cfg = compose_train(["data=rec", f"data.root={tmp_path / 'rec'}", "data/augment=none"])
    data = build("data", cfg.data, exclude=("loader",), input_size=(24, 24))
    assert len(data) == 6 and data.num_classes == 2 and [data[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert rec2folder.main([str(tmp_path / "rec"), str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "000001" / "4.jpg").read_bytes() == (src / "bob" / "0.jpg").read_bytes()


def test_the_conversion_scripts_fail_in_one_line_naming_the_file(tmp_path, capsys):
    from frtrain.tools import rec2folder

    bad = tmp_path / "train.rec"
    bad.write_bytes(b"\0" * 64)
    (tmp_path / "train.idx").write_text("1\t0\n")
    with pytest.raises(SystemExit) as stop:
        rec2folder.main([str(bad), str(tmp_path / "out")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1:] == [f"rec2folder: error: {bad}: bad magic 0x00000000 at byte offset 0 (expected 0xced7230a); "
                   "is this a RecordIO .rec, and does the .idx belong to it?"]


def test_rec2folder_names_each_payload_by_its_format(tmp_path):
    import io
    import numpy as np
    from PIL import Image

    from frtrain.data.recordio import pack, write_record

    from frtrain.tools import rec2folder

    payloads = {}
    for fmt, ext in (("PPM", ".ppm"), ("PNG", ".png"), ("JPEG", ".jpg"), ("BMP", ".bmp")):
        buf = io.BytesIO()
        Image.fromarray(np.full((6, 6), 80, np.uint8), "L").save(buf, format=fmt if fmt != "PPM" else "PPM")
        payloads[ext if fmt != "PPM" else ".pgm"] = buf.getvalue()  # a greyscale PPM file is written as P5 (PGM)
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    with open(rec, "wb") as f, open(idx, "w") as g:
        for key, data in enumerate(payloads.values()):
            g.write(f"{key}\t{write_record(f, pack(0, data))}\n")
    assert rec2folder.main([str(rec), str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out" / "000000").iterdir())
    assert written == sorted(f"{k}{ext}" for k, ext in enumerate(payloads))


# -- hostile files: sizes are checked against the index before anything of their size is made -----------------
def _label_at(tmp_path, key: int, value: float) -> None:
    """Set the IfQQ label of record ``key`` to ``value`` in place."""
    offset = dict(line.split() for line in (tmp_path / "train.idx").read_text().splitlines())[str(key)]
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    raw[int(offset) + 12:int(offset) + 16] = struct.pack("<f", value)
    (tmp_path / "train.rec").write_bytes(bytes(raw))


@pytest.mark.parametrize("value, shown", [(1e9, "1e+09"), (float("nan"), "nan"), (-1.0, "-1"), (2.5, "2.5")])
def test_a_label_that_is_no_class_number_is_refused_in_one_line_without_building_that_many_classes(tmp_path, value,
                                                                                                   shown):
    """Before: one label of 1e9 made the reader build 10^9 class-name strings."""
    _write(tmp_path, _images(5), [0, 1, 2, 1, 0], header0=False)
    _label_at(tmp_path, 3, value)
    with pytest.raises(DataError, match=rf"train.rec record 3: label {re.escape(shown)} is not a class number 0..4 \(the file "
                                        r"holds 5 images\)"):
        RecordFaces(str(tmp_path), input_size=(24, 24), augment=[])


@pytest.mark.parametrize("first, end, message", [
    (1e9, 1e9 + 3, r"header says images are keys 1..999999999, the index .* has 6 records"),
    (float("nan"), 9.0, r"header labels nan, 9.0 are not whole numbers"),
    (6.0, 1e9, r"header says 999,999,994 identities for 5 images"),
])
def test_a_header_range_is_checked_against_the_index_before_it_is_allocated(tmp_path, first, end, message):
    _write(tmp_path, _images(5), [0, 1, 2, 1, 0], header0=True)
    offset = int((tmp_path / "train.idx").read_text().splitlines()[0].split()[1])
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    raw[offset + 32:offset + 40] = struct.pack("<ff", first, end)  # the header's two float labels
    (tmp_path / "train.rec").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=message):
        RecordFaces(str(tmp_path), input_size=(24, 24), augment=[])


def test_a_bad_record_in_the_middle_is_a_skipped_sample_not_the_end_of_the_run(tmp_path):
    _write(tmp_path, _images(6), [0, 1, 2, 1, 0, 2], header0=True)
    lines = (tmp_path / "train.idx").read_text().splitlines()
    raw = bytearray((tmp_path / "train.rec").read_bytes())
    bad_magic = int(lines[2].split()[1])  # record 2: its magic word overwritten
    raw[bad_magic:bad_magic + 4] = b"\0\0\0\0"
    huge = int(lines[4].split()[1])  # record 4: its length says 512 MB
    raw[huge + 4:huge + 8] = struct.pack("<I", (1 << 29) - 1)
    (tmp_path / "train.rec").write_bytes(bytes(raw))
    _label_at(tmp_path, 5, 7.0)  # record 5: a label outside the 3 classes
    data = RecordFaces(str(tmp_path), input_size=(24, 24), augment=[])
    for index, key in ((1, 2), (3, 4), (4, 5)):
        image, label, skipped = data[(index, 0)]
        assert index in skipped and image.shape == (3, 24, 24)
    with pytest.raises(CorruptImageError, match="declares more than"):  # refused before 512 MB are read
        data.sample(3)
