"""Identity-folder training data: ``root/<identity>/<image>`` (CASIA-WebFace, MS1M image-folder layout).

Labels are the positions of the identity folder names in sorted order. The file list is cached
(``<cache_dir>/index/<hash of root>.npz``) and reused while no identity folder changes, so that a
5.8M-image tree is not rescanned at every start. Paths are kept in numpy byte arrays, not Python
lists, so DataLoader workers share them without copy-on-write growth.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np

from frtrain.data.base import ImageDataset
from frtrain.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, read_image, resize_to
from frtrain.errors import ConfigError, DataError, first_line

log = logging.getLogger(__name__)

_INDEX_VERSION = 1


def _visible_entries(path: str):
    with os.scandir(path) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)


def _is(entry: os.DirEntry, kind: str, unreadable: list[str]) -> bool:
    """``entry.is_dir()`` / ``entry.is_file()``; an entry that cannot be followed (a symlink loop, a dangling or
    unreadable link) is noted in ``unreadable`` and counts as neither."""
    try:
        return entry.is_dir() if kind == "dir" else entry.is_file()
    except OSError as e:
        unreadable.append(f"{entry.path} ({e.strerror or first_line(e)})")
        return False


def _mtime(entry: os.DirEntry) -> int:
    try:
        return entry.stat().st_mtime_ns
    except OSError:
        return entry.stat(follow_symlinks=False).st_mtime_ns


def _fingerprint(root: str, identity_dirs: list[os.DirEntry]) -> str:
    h = hashlib.sha1(f"{_INDEX_VERSION}:{root}".encode())
    for e in identity_dirs:
        h.update(f"{e.name}\0{_mtime(e)}\n".encode())
    return h.hexdigest()


def _report_unreadable(unreadable: list[str], first: int = 5) -> None:
    if unreadable:
        more = f" and {len(unreadable) - first} more" if len(unreadable) > first else ""
        log.warning("skipped %d entr%s that cannot be followed: %s%s", len(unreadable),
                    "y" if len(unreadable) == 1 else "ies", ", ".join(unreadable[:first]), more)


def scan_identity_folders(root: str) -> tuple[list[str], np.ndarray, np.ndarray, list[os.DirEntry]]:
    """Scan ``root`` for identity folders and their images.

    Returns ``(classes, paths, labels, identity_dirs)``: class names in label order, (N,) byte paths
    relative to root, (N,) int64 labels. Raises :class:`DataError` naming the path when the root is
    missing, empty, has no identity folders, or an identity folder has no image file.
    """
    if not os.path.exists(root):
        raise DataError(f"data.root {root}: no such directory")
    if not os.path.isdir(root):
        raise DataError(f"data.root {root}: is a file, expected a directory of identity folders")
    entries = _visible_entries(root)
    if not entries:
        raise DataError(f"data.root {root}: is empty, expected one folder per identity (root/<identity>/<image>)")
    unreadable: list[str] = []
    identity_dirs = [e for e in entries if _is(e, "dir", unreadable)]
    if not identity_dirs:
        loose = sum(1 for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS))
        what = f"{loose} loose image files" if loose else "no folders"
        raise DataError(
            f"data.root {root}: holds {what} but no identity folders; expected root/<identity>/<image>"
        )
    classes, rel_paths, labels = [], [], []
    for d in identity_dirs:
        try:
            listed = _visible_entries(d.path)
        except OSError as e:
            unreadable.append(f"{d.path} ({e.strerror or first_line(e)})")
            continue
        files = [e.name for e in listed if e.name.lower().endswith(IMAGE_EXTENSIONS) and _is(e, "file", unreadable)]
        if not files:
            raise DataError(
                f"identity folder {d.path}: has no image files (looked for {', '.join(IMAGE_EXTENSIONS)})"
            )
        classes.append(d.name)
        rel_paths.extend(f"{d.name}/{f}" for f in files)
        labels.extend([len(classes) - 1] * len(files))
    _report_unreadable(unreadable)
    if not classes:
        raise DataError(f"data.root {root}: none of its identity folders can be read")
    return classes, np.array([p.encode() for p in rel_paths]), np.asarray(labels, dtype=np.int64), identity_dirs


def load_index(root: str, cache_dir: str | None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The (classes, paths, labels) index of ``root``, from the cache when it is still valid."""
    root = os.path.abspath(os.path.expanduser(root))
    if cache_dir is None:
        classes, paths, labels, _ = scan_identity_folders(root)
        return classes, paths, labels
    cache = Path(os.path.expanduser(cache_dir)) / "index" / (hashlib.sha1(root.encode()).hexdigest()[:16] + ".npz")
    if os.path.isdir(root):
        identity_dirs = [e for e in _visible_entries(root) if _is(e, "dir", [])]
        fingerprint = _fingerprint(root, identity_dirs)
        if cache.is_file():
            try:
                with np.load(cache, allow_pickle=False) as z:
                    if str(z["fingerprint"]) == fingerprint:
                        log.info("file index of %s read from %s", root, cache)
                        return [str(c) for c in z["classes"]], z["paths"], z["labels"]
            except (OSError, KeyError, ValueError) as e:
                log.warning("ignoring unreadable index cache %s (%s)", cache, e)
    classes, paths, labels, identity_dirs = scan_identity_folders(root)
    fingerprint = _fingerprint(root, identity_dirs)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, fingerprint=np.array(fingerprint), classes=np.array(classes), paths=paths, labels=labels)
        os.replace(tmp, cache)
    except OSError as e:
        log.warning("could not write the index cache %s (%s)", cache, e)
    return classes, paths, labels


def read_identity_list(identities, key: str = "data.identities") -> tuple[list[str], str]:
    """Names, and where they came from, of ``identities``: a list of names, a text file (one per line, blank lines
    and ``#`` comments ignored), or ``{lfw_pairs: PATH, sets: [...]}``: the people of those pairs sets (1-based) of
    an LFW ``pairs.txt``."""
    if isinstance(identities, Mapping):
        unknown = set(identities) - {"lfw_pairs", "sets"}
        if unknown or "lfw_pairs" not in identities or not identities.get("sets"):
            raise ConfigError(f"{key}: expected {{lfw_pairs: <pairs.txt>, sets: [1, ...]}}, got {dict(identities)}")
        from frtrain.data.lfw_pairs import lfw_people

        path = os.path.abspath(os.path.expanduser(str(identities["lfw_pairs"])))
        sets = [int(s) for s in identities["sets"]]
        return lfw_people(path, sets), f"{key} (people of sets {sets} of {path})"
    if isinstance(identities, str):
        path = os.path.abspath(os.path.expanduser(identities))
        if not os.path.isfile(path):
            raise DataError(f"{key} {path}: no such file (expected one identity folder name per line)")
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        return names, path
    return [str(n) for n in identities], key


def select_identities(root: str, classes: list[str], paths: np.ndarray, labels: np.ndarray,
                      identities, min_images: int, exclude=None):
    """Keep the images of the chosen identities (all when None), less the ``exclude`` ones, with at least
    ``min_images`` each; relabel 0..K-1."""
    keep = np.ones(len(classes), dtype=bool)
    known = set(classes)
    for chosen, key in ((identities, "data.identities"), (exclude, "data.exclude_identities")):
        if chosen is None:
            continue
        names, source = read_identity_list(chosen, key)
        missing = [n for n in names if n not in known]
        if missing:
            raise DataError(f"{source}: {len(missing)} of {len(names)} identities have no folder in {root}, "
                            f"e.g. {', '.join(missing[:3])}")
        named = np.isin(np.array(classes, dtype=object), np.array(names, dtype=object))
        keep &= named if key == "data.identities" else ~named
    counts = np.bincount(labels, minlength=len(classes))
    keep &= counts >= min_images
    if not keep.any():
        raise DataError(f"data.root {root}: no identity is left after data.identities / data.exclude_identities / "
                        f"data.min_images_per_identity={min_images}")
    new_label = np.cumsum(keep) - 1
    rows = keep[labels]
    return [c for c, k in zip(classes, keep) if k], paths[rows], new_label[labels[rows]].astype(np.int64)


def holdout_mask(root: str, paths: np.ndarray, labels: np.ndarray, fraction: float = 0.0, seed: int = 0,
                 holdout_list: str | None = None) -> np.ndarray:
    """(N,) bool: the images held out of training (closed-set evaluation). Per class, ``round(fraction x n)`` images
    (at least one when the fraction is positive and the class has two, never all) by a permutation seeded with
    (seed, class); or the relative paths listed in ``holdout_list`` (one a line)."""
    if holdout_list:
        path = os.path.abspath(os.path.expanduser(str(holdout_list)))
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (a list of held-out images, one relative path a line)")
        with open(path, encoding="utf-8") as f:
            listed = {line.strip() for line in f if line.strip() and not line.startswith("#")}
        names = np.array([p.decode() for p in paths])
        mask = np.isin(names, np.array(sorted(listed)))
        unknown = len(listed) - int(mask.sum())
        if unknown:
            raise DataError(f"{path}: {unknown} listed images are not in {root}")
        return mask
    if not 0.0 <= float(fraction) < 1.0:
        raise ConfigError(f"holdout_fraction={fraction}: expected a fraction in [0, 1)")
    mask = np.zeros(len(labels), bool)
    if fraction <= 0:
        return mask
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
        if k > 0:
            order = np.random.default_rng((int(seed), int(c))).permutation(len(idx))
            mask[idx[order[:k]]] = True
    return mask


class FaceFolder(ImageDataset):
    """Training images from identity folders (samples as :class:`frtrain.data.base.ImageDataset` says).

    Args:
        root: the directory of identity folders.
        input_size, augment, on_corrupt, max_image_pixels, max_image_bytes: see
            :class:`~frtrain.data.base.ImageDataset`.
        index_cache: reuse a cached file index (under ``cache_dir``) while the tree is unchanged.
        cache_dir: where the index cache lives.
        identities: train only on these identity folders: a list of names, the path of a text file with one
            name per line, or ``{lfw_pairs: <pairs.txt>, sets: [...]}`` (the people of some LFW pairs sets);
            labels follow their sorted order.
        exclude_identities: leave these out (same forms): e.g. the people a benchmark scores.
        min_images_per_identity: drop identities with fewer images (after the two above).
        holdout_fraction, holdout_seed, holdout_list: images held out of training for closed-set evaluation
            (:func:`holdout_mask`; the ``closed_set`` benchmark reads the same split).
    """

    def __init__(
        self,
        root: str,
        input_size: Sequence[int] = (112, 112),
        augment: Sequence[Any] | Mapping[str, Any] | None = None,
        on_corrupt: str = "skip",
        index_cache: bool = True,
        cache_dir: str | None = None,
        identities: str | Sequence[str] | Mapping[str, Any] | None = None,
        min_images_per_identity: int = 1,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        exclude_identities: str | Sequence[str] | Mapping[str, Any] | None = None,
        max_image_bytes: int = DEFAULT_MAX_BYTES,
        holdout_fraction: float = 0.0,
        holdout_seed: int = 0,
        holdout_list: str | None = None,
    ):
        super().__init__(input_size, augment, on_corrupt, max_image_pixels, max_image_bytes)
        if root is None or str(root) in ("", "???"):
            raise ConfigError("data.root is not set: give the directory of identity folders, e.g. data.root=/data/casia")
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.classes, self.paths, self.labels = load_index(self.root, cache_dir if index_cache else None)
        if holdout_fraction or holdout_list:  # on the whole tree, so the closed_set benchmark finds the same split
            keep = ~holdout_mask(self.root, self.paths, self.labels, holdout_fraction, holdout_seed, holdout_list)
            self.paths, self.labels = self.paths[keep], self.labels[keep]
        if identities is not None or exclude_identities is not None or min_images_per_identity > 1:
            self.classes, self.paths, self.labels = select_identities(
                self.root, self.classes, self.paths, self.labels, identities, int(min_images_per_identity),
                exclude_identities)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> str:
        return os.path.join(self.root, self.paths[index].decode())

    def load(self, index: int) -> np.ndarray:
        """The decoded (H, W, 3) uint8 image at ``index``, resized to ``input_size``."""
        return resize_to(read_image(self.path(index), self.max_image_pixels, self.max_image_bytes), self.input_size)

    def sample(self, index: int) -> tuple[np.ndarray, int]:
        return self.load(index), int(self.labels[index])
