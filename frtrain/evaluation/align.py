"""Face alignment from 5 landmarks: the similarity transform onto the ArcFace 112x112 template, then a warp.

The template (eyes, nose tip, mouth corners, in that order) is insightface's ``arcface_dst``; the transform is the
least-squares similarity (rotation, uniform scale, translation; no reflection, no shear) of Umeyama (1991), which
``skimage.transform.SimilarityTransform.estimate`` computes for insightface's ``norm_crop``. Pixels the warp does not
reach are 0 (black), as there.
"""

from __future__ import annotations

import os

import numpy as np

from frtrain.errors import DataError

#: insightface's ArcFace template for a 112x112 crop: left eye, right eye, nose tip, left and right mouth corner
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def similarity_transform(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE, where: str = "landmarks") -> np.ndarray:
    """The 2x3 matrix M of the similarity mapping ``src`` (5, 2) onto ``dst`` (5, 2) in least squares (Umeyama).

    Degenerate landmarks (all points equal, or on one line of zero spread) are a :class:`DataError` naming
    ``where``, not a matrix that would warp to NaN.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise DataError(f"{where}: expected {dst.shape[0]} (x, y) landmarks, got {src.shape[0]}")
    if not np.isfinite(src).all():
        raise DataError(f"{where}: landmarks are not finite numbers: {src.ravel().tolist()}")
    n = src.shape[0]
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = (src_c ** 2).sum() / n
    if src_var < 1e-12:
        raise DataError(f"{where}: the landmarks are degenerate (all at {src_mean.tolist()}); a face needs 5 distinct points")
    cov = dst_c.T @ src_c / n
    u, sigma, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # a reflection: flip the smallest singular direction
        d[-1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (sigma * d).sum() / src_var
    if not np.isfinite(scale) or scale <= 0:
        raise DataError(f"{where}: the landmarks are degenerate (no similarity maps them onto the template)")
    m = np.zeros((2, 3))
    m[:, :2] = scale * rotation
    m[:, 2] = dst_mean - scale * rotation @ src_mean
    return m


def align_face(image: np.ndarray, landmarks, size: int = 112, where: str = "landmarks") -> np.ndarray:
    """(size, size, 3) uint8: ``image`` (H, W, 3) warped so that its 5 ``landmarks`` land on the ArcFace template
    (scaled from 112 to ``size``)."""
    import cv2

    m = similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / 112.0), where)
    return cv2.warpAffine(image, m, (size, size), borderValue=0.0)


def read_landmark_file(path: str) -> list[tuple[str, np.ndarray, float | None]]:
    """Lines ``<image> x1 y1 ... x5 y5 [score]`` (IJB's ``*_name_5pts_score.txt`` layout) -> (image, (5, 2), score).

    Blank lines and ``#`` comments are skipped; anything else that is not 10 or 11 numbers after the name is a
    :class:`DataError` naming the file and line.
    """
    out = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read the landmark file ({e.strerror})") from None
    with f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                values = []
            if len(values) not in (10, 11):
                raise DataError(f"{path}:{lineno}: expected '<image> x1 y1 ... x5 y5 [score]' (10 or 11 numbers after "
                                f"the name), got {line.strip()!r}")
            out.append((fields[0], np.asarray(values[:10]).reshape(5, 2), values[10] if len(values) == 11 else None))
    return out


def landmarks_for(entries: dict[str, np.ndarray], image_path: str, where: str) -> np.ndarray:
    """The landmarks of ``image_path`` in a landmark file's ``entries`` (name -> (5, 2)): the entry named by the path
    as given, by its absolute path, or else by the longest path suffix (``loose_crop/1.jpg`` matches
    ``/data/IJBC/loose_crop/1.jpg``), as frtrain.tools.align reads them; a suffix two entries share is ambiguous."""
    for key in (image_path, os.path.abspath(image_path)):
        if key in entries:
            return entries[key]
    parts = os.path.abspath(image_path).split(os.sep)
    for n in range(1, len(parts)):
        suffix = os.sep.join(parts[-n:])
        found = [k for k in entries if os.path.normpath(k).endswith(suffix)
                 and (os.path.normpath(k) == suffix or os.path.normpath(k).endswith(os.sep + suffix))]
        exact = [k for k in found if os.path.normpath(k) == suffix or os.path.normpath(k).lstrip(os.sep) == suffix]
        if len(exact) == 1:
            return entries[exact[0]]
        if len(found) == 1 and n > 1:
            return entries[found[0]]
        if not found:
            break
    raise DataError(f"{image_path}: no landmarks for this image in {where} (looked for its path, its absolute path "
                    "and its path's endings)")
