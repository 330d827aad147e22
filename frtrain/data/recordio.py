"""insightface RecordIO (``train.rec`` + ``train.idx``), read in pure Python (no mxnet).

Format (dmlc-core recordio, as mxnet writes it):
    record   = uint32 magic 0xced7230a, uint32 lrec, payload, zero padding to a multiple of 4 bytes.
    lrec     = cflag << 29 | length. cflag 0: a whole record; 1, 2, 3: first, middle, last part of a record
               that was split where its payload contained the magic word (the reader puts the magic back
               between the parts).
    payload  = image header ``IfQQ`` (flag uint32, label float32, id uint64, id2 uint64), then, when
               flag > 0, ``flag`` float32 labels (which replace ``label``), then the encoded image.
    .idx     = text lines ``<key>\t<byte offset>``.
insightface's record 0 is a header: flag > 0 and labels ``[first non-image key, ...]``; the images are
keys 1 .. labels[0] - 1 (then come per-identity range records, which are not images).
"""

from __future__ import annotations

import os
import struct

import numpy as np

from frtrain.data.base import ImageDataset
from frtrain.data.images import DEFAULT_MAX_PIXELS, decode_image, resize_to
from frtrain.errors import ConfigError, DataError

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")


def read_index(path: str) -> dict[int, int]:
    """``.idx`` -> {key: byte offset}."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (a RecordIO index)")
    index = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not fields[0].isdigit() or not fields[1].isdigit():
                raise DataError(f"{path}:{lineno}: expected '<key>\\t<offset>', got {line.rstrip()!r}")
            index[int(fields[0])] = int(fields[1])
    return index


def read_record(f, offset: int, path: str) -> bytes:
    """The payload of the record at ``offset`` of the open file ``f`` (continuation parts joined)."""
    parts = []
    while True:
        f.seek(offset)
        head = f.read(8)
        if len(head) < 8:
            raise DataError(f"{path}: truncated record header at byte offset {offset}")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise DataError(f"{path}: bad magic 0x{magic:08x} at byte offset {offset} (expected 0x{MAGIC:08x}); "
                            "is this a RecordIO .rec, and does the .idx belong to it?")
        cflag, length = lrec >> 29, lrec & ((1 << 29) - 1)
        data = f.read(length)
        if len(data) < length:
            raise DataError(f"{path}: record at byte offset {offset} promises {length} bytes, the file ends first")
        parts.append(data)
        if cflag in (0, 3):
            break
        offset += 8 + length + (-length % 4)
    return _MAGIC_BYTES.join(parts)


def unpack(payload: bytes, where: str) -> tuple[np.ndarray, int, bytes]:
    """(labels float32 array, id, image bytes) of a record payload."""
    if len(payload) < _HEADER.size:
        raise DataError(f"{where}: record of {len(payload)} bytes is shorter than its image header")
    flag, label, rid, _ = _HEADER.unpack_from(payload)
    body = payload[_HEADER.size:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise DataError(f"{where}: header promises {flag} float labels, the record is too short")
        labels = np.frombuffer(body[:4 * flag], dtype="<f4").copy()
        body = body[4 * flag:]
    else:
        labels = np.array([label], dtype=np.float32)
    return labels, rid, body


class RecordFile:
    """Random access to a ``.rec`` through its ``.idx``; safe in DataLoader workers (one handle per process).

    ``record(key)`` -> (labels, image bytes). ``image_keys`` are the keys of the images: 1 .. labels[0]-1
    when record 0 is insightface's header, else every key of the index.
    """

    def __init__(self, rec_path: str, idx_path: str | None = None):
        self.path = os.path.abspath(os.path.expanduser(str(rec_path)))
        if not os.path.isfile(self.path):
            raise DataError(f"{self.path}: no such file (a RecordIO .rec)")
        self.idx_path = idx_path or os.path.splitext(self.path)[0] + ".idx"
        self.index = read_index(self.idx_path)
        self.size = os.path.getsize(self.path)
        for key, offset in self.index.items():
            if offset + 8 > self.size:
                raise DataError(f"{self.idx_path}: record {key} points to byte offset {offset}, past the end of "
                                f"{self.path} ({self.size} bytes)")
        self._handle, self._pid = None, None
        self.header0 = None
        if 0 in self.index:
            labels, _, _ = unpack(self.payload(0), f"{self.path} record 0")
            if labels.size >= 2:  # insightface's header record
                self.header0 = (int(labels[0]), int(labels[1]))
        if self.header0:
            self.image_keys = list(range(1, self.header0[0]))
            missing = [k for k in self.image_keys[:1] + self.image_keys[-1:] if k not in self.index]
            if missing:
                raise DataError(f"{self.idx_path}: header record 0 says images are keys 1..{self.header0[0] - 1}, "
                                f"key {missing[0]} is not in the index")
        else:
            self.image_keys = sorted(self.index)

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = open(self.path, "rb"), os.getpid()
        return self._handle

    def payload(self, key: int) -> bytes:
        if key not in self.index:
            raise DataError(f"{self.idx_path}: no record {key}")
        return read_record(self._file(), self.index[key], self.path)

    def record(self, key: int) -> tuple[np.ndarray, bytes]:
        labels, _, image = unpack(self.payload(key), f"{self.path} record {key}")
        return labels, image

    def __getstate__(self):  # file handles do not travel to worker processes
        state = dict(self.__dict__)
        state["_handle"], state["_pid"] = None, None
        return state


def write_record(f, payload: bytes) -> int:
    """Append one record (whole, cflag 0) to the open file ``f``; returns its byte offset.

    Used by scripts/folder2rec.py. A payload containing the aligned magic word would need splitting; such
    payloads are written split, as dmlc does.
    """
    offset = f.tell()
    chunks, start = [], 0
    for pos in range(0, len(payload) - 3, 4):
        if payload[pos:pos + 4] == _MAGIC_BYTES:
            chunks.append(payload[start:pos])
            start = pos + 4
    chunks.append(payload[start:])
    for i, chunk in enumerate(chunks):
        cflag = 0 if len(chunks) == 1 else (1 if i == 0 else (3 if i == len(chunks) - 1 else 2))
        f.write(struct.pack("<II", MAGIC, cflag << 29 | len(chunk)))
        f.write(chunk + b"\0" * (-len(chunk) % 4))
    return offset


def pack(label, image: bytes, rid: int = 0) -> bytes:
    """A record payload: the ``IfQQ`` header (float labels when ``label`` is a sequence) and the image."""
    if np.ndim(label) == 0:
        return _HEADER.pack(0, float(label), rid, 0) + image
    labels = np.asarray(label, dtype="<f4")
    return _HEADER.pack(labels.size, 0.0, rid, 0) + labels.tobytes() + image


class RecordFaces(ImageDataset):
    """Training images from an insightface ``train.rec``/``train.idx`` (MS1M, Glint360K, CASIA as distributed).

    Samples as :class:`frtrain.data.base.ImageDataset` says. The label is the record's first label. The
    class count is ``header0[1] - header0[0]`` (insightface's identity-range records) when record 0 is a
    header, else the largest label + 1, read once from every record's header.

    Args:
        root: the directory holding ``train.rec``/``train.idx`` (or the ``.rec`` path itself).
        num_classes: the class count, when the file's header does not give it.
        input_size, augment, on_corrupt, max_image_pixels: see :class:`~frtrain.data.base.ImageDataset`.
    """

    def __init__(self, root: str, input_size=(112, 112), augment=None, on_corrupt: str = "skip",
                 num_classes: int | None = None, max_image_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(input_size, augment, on_corrupt, max_image_pixels)
        if root is None or str(root) in ("", "???"):
            raise ConfigError("data.root is not set: give the directory of train.rec/train.idx")
        root = os.path.abspath(os.path.expanduser(str(root)))
        self.root = os.path.join(root, "train.rec") if os.path.isdir(root) else root
        self.records = RecordFile(self.root)
        self.keys = np.asarray(self.records.image_keys, dtype=np.int64)
        if num_classes is not None:
            self._num_classes = int(num_classes)
        elif self.records.header0 and self.records.header0[1] > self.records.header0[0]:
            self._num_classes = self.records.header0[1] - self.records.header0[0]
        else:
            self._num_classes = int(max(self.records.record(int(k))[0][0] for k in self.keys)) + 1
        self.classes = [str(i) for i in range(self._num_classes)]

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def __len__(self) -> int:
        return len(self.keys)

    def path(self, index: int) -> str:
        return f"{self.root} record {int(self.keys[index])}"

    def sample(self, index: int):
        labels, image = self.records.record(int(self.keys[index]))
        label = int(labels[0])
        if not 0 <= label < self._num_classes:
            raise DataError(f"{self.path(index)}: label {label} outside [0, {self._num_classes})")
        return resize_to(decode_image(image, self.path(index), self.max_image_pixels), self.input_size), label
