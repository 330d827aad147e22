"""WebDataset shards of face images: the format frtrain writes (``frtrain.tools.folder2wds`` / ``rec2wds``).

A shard set is a directory of tar files ``000000.tar``, ``000001.tar``, ... written with the ``webdataset`` library's
:class:`webdataset.TarWriter`, each sample two members: ``<key>.<ext>`` (the image file's bytes as they were, no
re-encoding; ``ext`` from the bytes' signature: jpg, png, ...) and ``<key>.cls`` (the label as decimal text), plus
``index.json``::

    {"format": "frtrain-wds/1", "num_classes": C, "samples": N,
     "shards": [{"name": "000000.tar", "samples": n0, "bytes": b0}, ...], "source": "<what was converted>"}

A shard is closed before it would pass ``max_bytes`` (image bytes) or ``max_count`` samples. Members carry
mtime 0 and plain ustar headers, so the same data gives the same shard bytes. The index lets a
reader know every shard's sample count before reading any; :func:`read_index` checks it against the files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Callable

from frtrain.data.images import file_ending
from frtrain.errors import DataError

FORMAT = "frtrain-wds/1"
INDEX = "index.json"
#: a shard is closed before its images pass this many bytes (WebDataset's usual size: a few hundred MB to 1 GB)
MAX_BYTES = 512 * 2**20
MAX_COUNT = 10_000


def shard_name(i: int) -> str:
    return f"{i:06d}.tar"


def write_shards(samples: Iterable[tuple[bytes, int]], out: str, num_classes: int, source: str,
                 max_bytes: int = MAX_BYTES, max_count: int = MAX_COUNT,
                 progress: Callable[[int], None] | None = None) -> dict:
    """Write ``samples`` ((image bytes, label) in order) as shards in ``out``; returns the index (also written)."""
    import webdataset as wds

    if max_count < 1 or max_bytes < 1:
        raise DataError(f"shards need max_count >= 1 and max_bytes >= 1 (got {max_count}, {max_bytes})")
    os.makedirs(out, exist_ok=True)
    shards: list[dict] = []
    writer, count, size, key = None, 0, 0, 0

    def close():
        if writer is not None:
            writer.close()
            shards.append({"name": shard_name(len(shards)), "samples": count,
                           "bytes": os.path.getsize(os.path.join(out, shard_name(len(shards))))})

    for image, label in samples:
        if not 0 <= int(label) < num_classes:
            raise DataError(f"{source}: sample {key} has label {label}, outside the classes 0..{num_classes - 1}")
        if writer is None or count >= max_count or (count and size + len(image) > max_bytes):
            close()
            # a whole-number mtime: plain ustar headers (a float one adds a PAX header to every member, which costs
            # readers a second header parse per member) and the same bytes when the same data is written again
            writer = wds.TarWriter(os.path.join(out, shard_name(len(shards))), mtime=0)
            count, size = 0, 0
        ext = file_ending(image).lstrip(".") or "bin"
        writer.write({"__key__": f"{key:09d}", ext: image, "cls": str(int(label)).encode()})
        count, size, key = count + 1, size + len(image), key + 1
        if progress is not None:
            progress(1)
    close()
    index = {"format": FORMAT, "num_classes": int(num_classes), "samples": key, "shards": shards, "source": source}
    with open(os.path.join(out, INDEX + ".tmp"), "w") as f:
        json.dump(index, f, indent=1)
    os.replace(os.path.join(out, INDEX + ".tmp"), os.path.join(out, INDEX))
    return index


def read_index(root: str, check_files: bool = True) -> dict:
    """``root/index.json``, checked: its format, a positive class count, the counts adding up, and (``check_files``:
    shards read from ``root``) each file present with the size the index records."""
    path = os.path.join(root, INDEX)
    try:
        with open(path) as f:
            index = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: no shard index (write shards with python -m frtrain.tools.folder2wds or "
                        "rec2wds)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{path}: not a frtrain shard index (expected format {FORMAT!r})")
    shards = index.get("shards")
    classes = index.get("num_classes")
    if not isinstance(classes, int) or classes < 1 or not isinstance(shards, list) or not shards:
        raise DataError(f"{path}: expected a positive num_classes and a non-empty shard list")
    total = 0
    for s in shards:
        if not (isinstance(s, dict) and isinstance(s.get("name"), str) and isinstance(s.get("samples"), int)
                and isinstance(s.get("bytes"), int) and s["samples"] >= 0 and os.path.basename(s["name"]) == s["name"]):
            raise DataError(f"{path}: a shard entry is not {{name, samples, bytes}}: {str(s)[:80]}")
        file = os.path.join(root, s["name"])
        if not check_files:
            total += s["samples"]
            continue
        if not os.path.isfile(file):
            raise DataError(f"{path}: lists {s['name']}, which is not in {root}")
        if os.path.getsize(file) != s["bytes"]:
            raise DataError(f"{file}: {os.path.getsize(file):,} bytes, the index says {s['bytes']:,} (a shard "
                            "rewritten or cut short?)")
        total += s["samples"]
    if index.get("samples") != total:
        raise DataError(f"{path}: says {index.get('samples')} samples, its shards {total}")
    return index
