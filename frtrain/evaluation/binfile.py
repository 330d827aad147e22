"""insightface verification ``.bin`` files, read without running code.

A ``.bin`` is a pickle of ``(bins, issame_list)``: 2N encoded images (JPEG/PNG bytes) and N booleans;
pair i is images 2i and 2i+1. A plain ``pickle.load`` of an untrusted file can run arbitrary code,
so :func:`read_bin` uses an unpickler that refuses every global: only lists, tuples, bytes and bools
(the opcodes that build them) can come out of it. The single exception is ``_codecs.encode``, which
protocol-2 pickles written by Python 3 use to rebuild ``bytes``; its result is checked to be bytes.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
import re
from typing import Sequence

from frtrain.errors import DataError


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path: str):
        super().__init__(f, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _encode_to_bytes
        raise DataError(
            f"{self.path}: refused, the pickle asks for {module}.{name}; an insightface .bin may hold only "
            "lists of bytes and bools"
        )

    def persistent_load(self, pid):
        raise DataError(f"{self.path}: refused, the pickle uses persistent ids")


def _encode_to_bytes(obj, encoding="latin1", errors="strict"):
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise pickle.UnpicklingError("_codecs.encode with non-string arguments")
    out = codecs.encode(obj, encoding, errors)
    if not isinstance(out, bytes):
        raise pickle.UnpicklingError("_codecs.encode did not produce bytes")
    return out


def _oversized_length(raw: bytes) -> str:
    """Which length field of a pickle declares more bytes than the file holds (walking its opcodes, no objects built)."""
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(raw)):
            pass
    except ValueError as e:  # "expected N bytes in a bytes8, but only M remain"
        m = re.search(r"expected (\d+) bytes in an? (\w+), but only (\d+) remain", str(e))
        if m:
            return (f"a {m.group(2)} declares {int(m.group(1)):,} bytes, the file has only {int(m.group(3)):,} left "
                    f"of its {len(raw):,}: it is truncated or corrupt")
        return f"malformed pickle: {e}"
    return f"a length field declares more memory than this machine has ({len(raw):,}-byte file)"


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], list[bool]]:
    """Read an insightface ``.bin``: ``(images, issame)`` with ``len(images) == 2 * len(issame)``.

    Raises :class:`DataError` naming the file for anything else: a missing file, a pickle that needs a
    global, or contents that are not a pair of (list of bytes, list of bools).
    """
    path = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read benchmark file ({e.strerror})") from None
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except MemoryError:  # a length field larger than memory: say which one, from the opcodes
        raise DataError(f"{path}: not an insightface .bin ({_oversized_length(raw)})") from None
    except Exception as e:  # malformed pickle of any kind
        raise DataError(f"{path}: not an insightface .bin ({type(e).__name__}: {e})") from None
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataError(f"{path}: expected a pickled pair (images, issame_list), got {type(obj).__name__}")
    images, issame = obj
    if not isinstance(images, list) or not isinstance(issame, list):
        raise DataError(f"{path}: expected lists, got images as {type(images).__name__} and issame as {type(issame).__name__}")
    for i, b in enumerate(images):
        if not isinstance(b, (bytes, bytearray)):
            raise DataError(f"{path}: image {i} is a {type(b).__name__}, expected encoded image bytes")
    for i, s in enumerate(issame):
        if not isinstance(s, bool):
            raise DataError(f"{path}: issame[{i}] is a {type(s).__name__}, expected a bool")
    if len(images) != 2 * len(issame):
        raise DataError(f"{path}: {len(images)} images for {len(issame)} pairs, expected {2 * len(issame)}")
    if not issame:
        raise DataError(f"{path}: holds no pairs")
    return [bytes(b) for b in images], list(issame)


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write an insightface ``.bin`` (pickle protocol 4) atomically."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs, expected {2 * len(issame)}")
    path = str(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        pickle.dump(([bytes(b) for b in images], [bool(s) for s in issame]), f, protocol=4)
    os.replace(tmp, path)
