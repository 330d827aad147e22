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
from frtrain.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, CorruptImageError, decode_image, resize_to
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


def read_record(f, offset: int, path: str, max_bytes: int | None = None) -> bytes:
    """The payload of the record at ``offset`` of the open file ``f`` (continuation parts joined); a record whose
    parts declare more than ``max_bytes`` is refused before they are read."""
    parts, total = [], 0
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
        total += length
        if max_bytes is not None and total > max_bytes:
            raise DataError(f"{path}: the record at byte offset {offset} declares more than {max_bytes:,} bytes "
                            "(data.max_image_bytes); not read")
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
            labels, _, _ = unpack(self.payload(0, 1 << 20), f"{self.path} record 0")
            if labels.size >= 2:  # insightface's header record
                self.header0 = self._checked_header(labels)
        keys = np.fromiter(self.index, dtype=np.int64, count=len(self.index))
        keys.sort()
        if self.header0:
            # checked against the index before anything of the header's size is made
            self.image_keys = np.arange(1, self.header0[0], dtype=np.int64)
            present = np.isin(self.image_keys, keys, assume_unique=True)
            if not present.all():
                raise DataError(f"{self.idx_path}: header record 0 says images are keys 1..{self.header0[0] - 1}, "
                                f"key {int(self.image_keys[~present][0])} is not in the index")
        else:
            self.image_keys = keys

    def _checked_header(self, labels: np.ndarray) -> tuple[int, int]:
        """insightface's header (first non-image key, end of the identity records), checked against the index."""
        first, end = float(labels[0]), float(labels[1])
        if not (np.isfinite(first) and np.isfinite(end) and first.is_integer() and end.is_integer()):
            raise DataError(f"{self.path} record 0: header labels {first}, {end} are not whole numbers")
        first, end = int(first), int(end)
        if not 2 <= first <= len(self.index):
            raise DataError(f"{self.path} record 0: header says images are keys 1..{first - 1}, the index "
                            f"{self.idx_path} has {len(self.index)} records" if first >= 2 else
                            f"{self.path} record 0: header says images end before key {first}; expected at least "
                            "one image (keys from 1)")
        if end > first and end - first > first - 1:
            raise DataError(f"{self.path} record 0: header says {end - first:,} identities for {first - 1:,} images; "
                            "every identity needs an image")
        return first, end

    def header_label(self, key: int) -> float:
        """The first label of record ``key``, reading only its header (not the image)."""
        f = self._file()
        offset = self.index[key]
        f.seek(offset)
        head = f.read(8 + _HEADER.size + 4)
        if len(head) < 8 + _HEADER.size:
            raise DataError(f"{self.path} record {key}: truncated at byte offset {offset}")
        magic, lrec = struct.unpack_from("<II", head)
        if magic != MAGIC or (lrec & ((1 << 29) - 1)) < _HEADER.size:
            raise DataError(f"{self.path} record {key}: no record header at byte offset {offset}")
        flag, label, _, _ = _HEADER.unpack_from(head, 8)
        if flag > 0:
            if len(head) < 8 + _HEADER.size + 4:
                raise DataError(f"{self.path} record {key}: truncated label array")
            (label,) = struct.unpack_from("<f", head, 8 + _HEADER.size)
        return float(label)

    def _file(self):
        if self._handle is None or self._pid != os.getpid():
            self._handle, self._pid = open(self.path, "rb"), os.getpid()
        return self._handle

    def payload(self, key: int, max_bytes: int | None = None) -> bytes:
        if key not in self.index:
            raise DataError(f"{self.idx_path}: no record {key}")
        return read_record(self._file(), self.index[key], self.path, max_bytes)

    def record(self, key: int, max_bytes: int | None = None) -> tuple[np.ndarray, bytes]:
        labels, _, image = unpack(self.payload(key, max_bytes), f"{self.path} record {key}")
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
        input_size, augment, on_corrupt, max_image_pixels, max_image_bytes: see
            :class:`~frtrain.data.base.ImageDataset`.
    """

    def __init__(self, root: str, input_size=(112, 112), augment=None, on_corrupt: str = "skip",
                 num_classes: int | None = None, max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 max_image_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__(input_size, augment, on_corrupt, max_image_pixels, max_image_bytes)
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
            self._num_classes = self._classes_from_labels()

    def _classes_from_labels(self) -> int:
        """The class count from the labels present (largest + 1), reading every record's header only; a label
        that is not a whole number, is negative or exceeds the number of images is refused in one line."""
        from tqdm import tqdm

        largest, n = -1, len(self.keys)
        for key in tqdm(self.keys, desc=f"labels of {os.path.basename(self.root)}", unit="record", leave=False,
                        disable=n < 100_000):
            label = self.records.header_label(int(key))
            if not (np.isfinite(label) and label.is_integer() and 0 <= label < n):
                raise DataError(f"{self.root} record {int(key)}: label {label:g} is not a class number 0..{n - 1} (the "
                                f"file holds {n:,} images); give data.num_classes if the labels are right")
            largest = max(largest, int(label))
        return largest + 1

    @property
    def classes(self) -> list[str]:
        """Class names (the label numbers as text)."""
        return [str(i) for i in range(self._num_classes)]

    @property
    def num_classes(self) -> int:
        return self._num_classes

    def __len__(self) -> int:
        return len(self.keys)

    def path(self, index: int) -> str:
        return f"{self.root} record {int(self.keys[index])}"

    def group(self, index: int) -> str:
        return self.root  # a .rec has no folders

    def sample(self, index: int):
        """A bad record (truncated, wrong magic, label outside the classes) is a corrupt sample: skipped and counted."""
        try:
            labels, image = self.records.record(int(self.keys[index]), self.max_image_bytes + 4096)
        except DataError as e:
            raise CorruptImageError(str(e)) from None
        label = float(labels[0])
        if not (np.isfinite(label) and label.is_integer() and 0 <= label < self._num_classes):
            raise CorruptImageError(f"{self.path(index)}: label {label:g} outside the classes 0..{self._num_classes - 1}")
        if len(image) > self.max_image_bytes:
            raise CorruptImageError(f"{self.path(index)}: its image is {len(image):,} bytes, more than "
                                    f"data.max_image_bytes={self.max_image_bytes:,}")
        return resize_to(decode_image(image, self.path(index), self.max_image_pixels), self.input_size), int(label)
