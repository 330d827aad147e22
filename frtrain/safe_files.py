"""Reading the small structured files frtrain writes and users hand back (``results.json``, ``report.json``,
``compare_cell.json``, ``config.yaml``, ``pairs/*.npz``): data only, bounded, and one line naming the file when
it is malformed.

* JSON and YAML larger than :data:`MAX_TEXT_BYTES` are refused unread; YAML is read with a safe loader, so a
  ``!!python/...`` tag is an error, never an object.
* ``.npz``: every member's ``.npy`` header is read first; object arrays are refused, and an array whose header
  declares more bytes than the member holds uncompressed (a zip bomb, a lying header) is refused before any
  allocation. The whole archive's uncompressed size is capped by ``max_bytes``.
"""

from __future__ import annotations

import json
import math
import os
import zipfile

import numpy as np

from frtrain.errors import DataError, first_line

#: JSON / YAML files frtrain reads back are records of a run, far below this
MAX_TEXT_BYTES = 256 * 2**20


def _text(path: str, what: str) -> str:
    path = str(path)
    try:
        size = os.path.getsize(path)
        if size > MAX_TEXT_BYTES:
            raise DataError(f"{path}: {size:,} bytes, more than a {what} can be ({MAX_TEXT_BYTES:,}); not read")
        with open(path, encoding="utf-8") as f:
            return f.read(MAX_TEXT_BYTES + 1)
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or first_line(e)})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: is not text ({first_line(e)})") from None


def read_json(path, what: str = "JSON record", expect: type = dict):
    """The JSON value in ``path`` (a ``expect`` instance), or :class:`DataError` naming the file."""
    try:
        value = json.loads(_text(path, what))
    except (ValueError, RecursionError) as e:
        raise DataError(f"{path}: is not valid JSON ({first_line(e)})") from None
    if not isinstance(value, expect):
        raise DataError(f"{path}: holds a JSON {type(value).__name__}, expected a {what}")
    return value


def read_yaml(path, what: str = "YAML config"):
    """The plain data in a YAML file (safe loader: tags that name Python objects are refused)."""
    import yaml

    from omegaconf import OmegaConf

    try:
        value = yaml.safe_load(_text(path, what))
        # through OmegaConf: interpolations stay as text; what frtrain wrote reads back as it was written
        return OmegaConf.to_container(OmegaConf.create(value)) if isinstance(value, (dict, list)) else value
    except yaml.YAMLError as e:
        raise DataError(f"{path}: is not a plain YAML {what} ({first_line(e)})") from None
    except Exception as e:  # OmegaConf refusing a value (a key that is not a string, ...)
        raise DataError(f"{path}: is not a plain YAML {what} ({first_line(e)})") from None


def read_npz(path, max_bytes: int = 4 * 2**30) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, each checked from its header before it is read (see the module docstring)."""
    path = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if sum(m.file_size for m in members) > max_bytes:
                raise DataError(f"{path}: its arrays declare more than {max_bytes:,} bytes; not read")
            arrays = {}
            for m in members:
                name = m.filename[:-4] if m.filename.endswith(".npy") else m.filename
                with archive.open(m) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise DataError(f"{path}: array {name!r} has .npy format {version}, expected 1.0 or 2.0")
                    if dtype.hasobject:
                        raise DataError(f"{path}: array {name!r} holds Python objects; only plain arrays are read")
                    count = math.prod(int(s) for s in shape)
                    if count < 0 or count * dtype.itemsize > m.file_size:
                        raise DataError(f"{path}: array {name!r} declares shape {shape} of {dtype}, more than its "
                                        f"{m.file_size:,} bytes hold")
                    data = f.read(count * dtype.itemsize)
                    if len(data) != count * dtype.itemsize:
                        raise DataError(f"{path}: array {name!r} is truncated")
                    array = np.frombuffer(data, dtype=dtype).copy()
                    arrays[name] = array.reshape(shape, order="F" if fortran else "C")
            return arrays
    except DataError:
        raise
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, KeyError, RuntimeError) as e:
        raise DataError(f"{path}: is not a readable .npz of plain arrays ({first_line(e)})") from None
