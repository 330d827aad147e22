"""YouTube Faces (YTF) in its original layout: video pairs scored by the mean embedding of their frames.

    <root>/splits.txt                       CSV with a header: "split number, pair number, first name,
                                            second name, is physically the same, is the same" (space-padded)
    <root>/aligned_images_DB/<Name>/<video>/aligned_detect_<video>.<frame>.jpg

"first name" / "second name" are ``<Name>/<video>``. Folds are the split numbers. A video's embedding is
the mean of the flip-summed, normalised embeddings of up to ``frames_per_video`` evenly spaced frames,
normalised again (:meth:`frtrain.evaluation.benchmarks.PairBenchmark.embeddings` does the averaging).
"""

from __future__ import annotations

import csv
import os
import re

import numpy as np

from frtrain.data.images import IMAGE_EXTENSIONS
from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.benchmarks import FileImages, PairBenchmark
from frtrain.evaluation.intervals import dense_clusters

#: column names of splits.txt (lower-case, stripped) -> meaning; "is same" is the spec's spelling
_COLUMNS = {"split number": "split", "first name": "first", "second name": "second",
            "is the same": "same", "is same": "same"}


def read_ytf_splits(path: str) -> list[tuple[int, str, str, bool, int]]:
    """``splits.txt`` -> [(split, first video, second video, same, line number)], columns read by header name."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (YTF's splits.txt)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{path}: empty file; expected a CSV header with 'split number, first name, second name, is same'")
    header = [h.strip().lower() for h in rows[0]]
    cols = {}
    for i, h in enumerate(header):
        if h in _COLUMNS:
            cols.setdefault(_COLUMNS[h], i)
    lacking = [k for k in ("split", "first", "second", "same") if k not in cols]
    if lacking:
        raise DataError(f"{path}:1: the header lacks the column(s) {lacking} (expected 'split number', 'first name', "
                        f"'second name', 'is same' or 'is the same'); got {rows[0]}")
    out = []
    for lineno, row in enumerate(rows[1:], 2):
        if not any(x.strip() for x in row):
            continue
        try:
            values = {k: row[i].strip() for k, i in cols.items()}
            split, same = int(values["split"]), int(values["same"])
            if same not in (0, 1) or not values["first"] or not values["second"]:
                raise ValueError
        except (IndexError, ValueError):
            raise DataError(f"{path}:{lineno}: expected a split number, two '<Name>/<video>' names and an "
                            f"is-same 0/1 under the header's columns, got {','.join(row)!r}") from None
        out.append((split, values["first"], values["second"], bool(same), lineno))
    return out


def _frame_number(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)\.[^.]+$", name)
    return (int(m.group(1)) if m else -1, name)


def video_frames(directory: str) -> list[str]:
    """The image files of a video directory in frame order (the number before the extension)."""
    names = [n for n in os.listdir(directory) if n.lower().endswith(IMAGE_EXTENSIONS)]
    return [os.path.join(directory, n) for n in sorted(names, key=_frame_number)]


def evenly_spaced(count: int, k: int | None) -> list[int]:
    """Indices of up to ``k`` evenly spaced items of ``count`` (all when k is None or >= count)."""
    if k is None or k >= count:
        return list(range(count))
    return sorted({int(round(x)) for x in np.linspace(0, count - 1, k)})


def ytf_benchmark(root: str, splits: str | None = None, images: str | None = None, name: str = "ytf",
                  frames_per_video: int | None = 100, crop=(0.3, 0.2, 0.3, 0.2), num_folds: int = 10,
                  skip_missing: bool = False) -> PairBenchmark:
    """YTF video pairs.

    Args:
        root: the YTF directory; ``splits`` defaults to ``root/splits.txt``, ``images`` to
            ``root/aligned_images_DB``.
        frames_per_video: frames per video, evenly spaced (null: all frames).
        crop: fractions (left, top, right, bottom) cut off each frame; YTF's aligned frames are loose
            crops around the face. Null keeps whole frames.
        num_folds: distinct split numbers expected; a different count is an error.
        skip_missing: drop (and count) pairs whose video directory is missing or empty instead of failing.
    """
    if frames_per_video is not None and int(frames_per_video) < 1:
        raise ConfigError(f"ytf frames_per_video must be >= 1 or null (all frames), got {frames_per_video}")
    root = os.path.abspath(os.path.expanduser(str(root)))
    splits_path = splits or os.path.join(root, "splits.txt")
    image_dir = images or os.path.join(root, "aligned_images_DB")
    rows = read_ytf_splits(splits_path)
    split_ids = sorted({r[0] for r in rows})
    if len(split_ids) != num_folds:
        raise DataError(f"{splits_path}: expected {num_folds} split numbers (folds), found {len(split_ids)}: {split_ids}")
    fold_of = {s: k for k, s in enumerate(split_ids)}
    videos: dict[str, int] = {}
    frames: list[str] = []
    item_of_image: list[int] = []
    pairs, issame, folds, skipped = [], [], [], 0
    for split, first, second, same, lineno in rows:
        ids = []
        for video in (first, second):
            if video in videos:
                ids.append(videos[video])
                continue
            directory = os.path.join(image_dir, *video.split("/"))
            files = video_frames(directory) if os.path.isdir(directory) else []
            if not files:
                if not skip_missing:
                    raise DataError(f"{directory}: no such video directory, or no frames in it ({splits_path}:{lineno}); "
                                    "skip_missing=true drops such pairs")
                ids = None
                break
            videos[video] = len(videos)
            for i in evenly_spaced(len(files), frames_per_video):
                frames.append(files[i])
                item_of_image.append(videos[video])
            ids.append(videos[video])
        if ids is None:
            skipped += 1
            continue
        pairs.append(ids)
        issame.append(same)
        folds.append(fold_of[split])
    notes = [f"{skipped} pairs skipped: a video is missing or empty"] if skipped else []
    person = {v: video.split("/")[0] for video, v in videos.items()}  # '<Name>/<video>'
    clusters, count = dense_clusters([[person[a], person[b]] for a, b in pairs])
    notes.append(f"{len(videos)} videos, {len(frames)} frames (up to {frames_per_video or 'all'} per video)")
    return PairBenchmark(name=name, num_images=len(frames), load=FileImages(frames, crop),
                         pairs=np.asarray(pairs, dtype=np.int64).reshape(-1, 2), issame=np.asarray(issame, dtype=bool),
                         folds=np.asarray(folds, dtype=np.int64), source=splits_path, skipped_pairs=skipped,
                         notes=notes, item_of_image=np.asarray(item_of_image, dtype=np.int64),
                         pair_clusters=clusters, num_clusters=count, cluster_unit="people (YTF's names)")
