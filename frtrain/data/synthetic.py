"""The embedded default data set: procedurally drawn face-like images, generated on first use.

Each identity is a vector of shape and colour parameters (face outline, jaw, skin, hair colour, style
and hairline, eye spacing/size/iris colour, brows, nose, mouth, ears, beard). Each image draws that
identity under nuisances that vary per image: position, scale, in-plane rotation, yaw-like shift of
the inner features, expression (mouth curve, eye openness), background, clothing, glasses, lighting
direction and colour, blur, sensor noise, partial occlusion and JPEG quality. Raw pixels are dominated
by the nuisances, so verification starts near chance; identity is learnable, so it rises with training.

Generation is deterministic: the same arguments give the same bytes. The training split is written as an
identity folder; the verification split (identities disjoint from training) as an insightface ``.bin``
with 10 identity-disjoint folds of matched and mismatched pairs, like LFW's pairs.txt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from frtrain import distributed as D
from frtrain.data.folder import FaceFolder
from frtrain.data.images import encode_jpeg
from frtrain.errors import ConfigError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
_TRAIN, _VERIFY = 1, 2  # seed-stream codes that keep the two splits' identities disjoint

_SKIN = np.array([[255, 224, 196], [234, 192, 158], [198, 148, 112], [160, 112, 80], [112, 76, 52]], float)
_HAIR = np.array([[30, 24, 20], [80, 52, 30], [150, 100, 50], [220, 190, 120], [150, 150, 150], [120, 40, 20]], float)


def identity_params(rng: np.random.Generator) -> dict[str, Any]:
    """One identity: shape and colour parameters (units: fractions of the image half-size, RGB 0..255)."""
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.9, 1.08, 3)
    hair = _HAIR[rng.integers(len(_HAIR))] * rng.uniform(0.75, 1.25, 3)
    return {
        "face_w": rng.uniform(0.46, 0.62), "face_h": rng.uniform(0.62, 0.80), "jaw": rng.uniform(0.0, 0.45),
        "skin": np.clip(skin, 0, 255), "hair": np.clip(hair, 0, 255),
        "hairline": rng.uniform(-0.62, -0.30), "hair_volume": rng.uniform(1.02, 1.22),
        "hair_style": int(rng.integers(3)), "hair_tilt": rng.uniform(-0.25, 0.25),
        "eye_dx": rng.uniform(0.15, 0.26), "eye_y": rng.uniform(-0.16, 0.0), "eye_size": rng.uniform(0.045, 0.085),
        "iris": rng.uniform([20, 20, 10], [140, 160, 200]),
        "brow_thick": rng.uniform(0.015, 0.045), "brow_tilt": rng.uniform(-0.35, 0.35), "brow_gap": rng.uniform(0.07, 0.14),
        "nose_len": rng.uniform(0.10, 0.24), "nose_w": rng.uniform(0.04, 0.10),
        "mouth_w": rng.uniform(0.10, 0.22), "mouth_y": rng.uniform(0.26, 0.42), "mouth_curve": rng.uniform(-0.05, 0.05),
        "lips": np.clip(skin * rng.uniform([0.55, 0.3, 0.3], [0.85, 0.6, 0.6]), 0, 255),
        "ear": rng.uniform(0.06, 0.12), "beard": bool(rng.random() < 0.25), "mole": rng.uniform(-0.3, 0.3, 2) if rng.random() < 0.3 else None,
    }


def _soft(d: np.ndarray, px: float) -> np.ndarray:
    """Coverage in [0, 1] from a signed distance (negative inside), with a one-pixel soft edge."""
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _ellipse(x, y, cx, cy, a, b, px):
    r = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    return _soft((r - 1.0) * min(a, b), px)


def _paint(canvas: np.ndarray, mask: np.ndarray, color) -> None:
    canvas *= 1.0 - mask[..., None]
    canvas += mask[..., None] * np.asarray(color, float)


def render_face(p: dict[str, Any], rng: np.random.Generator, size: int) -> np.ndarray:
    """Draw identity ``p`` under nuisances drawn from ``rng``: (size, size, 3) uint8 RGB."""
    px = 2.0 / size
    lin = (np.arange(size) + 0.5) * px - 1.0
    gx, gy = np.meshgrid(lin, lin)
    # nuisance geometry: inverse similarity transform of the sampling grid
    scale = rng.uniform(0.85, 1.12)
    rot = rng.uniform(-0.22, 0.22)
    tx, ty = rng.uniform(-0.12, 0.12, 2)
    c, s = np.cos(rot), np.sin(rot)
    x = (c * (gx - tx) + s * (gy - ty)) / scale
    y = (-s * (gx - tx) + c * (gy - ty)) / scale
    yaw = rng.uniform(-0.5, 0.5)  # shifts the inner features and narrows the far side
    expr = rng.uniform(-1.0, 1.0)

    # background and clothing
    bg = rng.uniform(0, 255, 3)
    grad = rng.uniform(-80, 80, 3)
    ang = rng.uniform(0, 2 * np.pi)
    canvas = bg + grad * (np.cos(ang) * gx + np.sin(ang) * gy)[..., None]
    for _ in range(int(rng.integers(0, 4))):
        _paint(canvas, 0.6 * _ellipse(gx, gy, *rng.uniform(-1, 1, 2), *rng.uniform(0.1, 0.5, 2), px), rng.uniform(0, 255, 3))
    _paint(canvas, _ellipse(x, y, 0.0, 1.25, 0.95, 0.45, px), rng.uniform(0, 255, 3))  # shoulders
    _paint(canvas, _soft(np.maximum(np.abs(x) - 0.16, -(y - 0.5)), px) * (y < 1.0), p["skin"] * 0.85)  # neck

    fw, fh = p["face_w"], p["face_h"]
    # hair behind the head
    if p["hair_style"] != 2:
        _paint(canvas, _ellipse(x, y, 0.0, -0.12, fw * p["hair_volume"], fh * 0.95, px), p["hair"])
    # ears, face (jaw tapers the lower half)
    ear = p["ear"]
    for side in (-1, 1):
        _paint(canvas, _ellipse(x, y, side * fw * (1 - 0.15 * side * yaw), 0.0, ear * 0.7, ear * 1.4, px), p["skin"] * 0.92)
    xf = (x - 0.04 * yaw) / (1.0 - p["jaw"] * np.clip(y / fh, 0, 1) ** 2)
    face = _ellipse(xf, y, 0.0, 0.0, fw, fh, px)
    _paint(canvas, face, p["skin"])
    # fringe: hair above the hairline inside the face
    line = p["hairline"] + p["hair_tilt"] * x + (0.12 * x**2 if p["hair_style"] == 1 else 0.0)
    _paint(canvas, face * _soft(y - line, px), p["hair"])
    if p["beard"]:
        _paint(canvas, face * _soft(p["mouth_y"] - 0.06 - y, px) * 0.85, p["hair"] * 0.8)

    # inner features, shifted by yaw and squeezed on the far side
    xi = x - 0.16 * yaw
    squeeze = 1.0 - 0.25 * np.abs(yaw)
    ey, er = p["eye_y"], p["eye_size"]
    openness = np.clip(0.75 + 0.35 * rng.standard_normal(), 0.15, 1.1)
    gaze = rng.uniform(-0.3, 0.3) * er
    for side in (-1, 1):
        ex = side * p["eye_dx"] * squeeze
        _paint(canvas, _ellipse(xi, y, ex, ey, er * 1.3, er * 0.8 * openness, px), (245, 245, 240))
        _paint(canvas, _ellipse(xi, y, ex + gaze, ey, er * 0.6, er * 0.6 * min(openness, 1.0), px), p["iris"])
        _paint(canvas, _ellipse(xi, y, ex + gaze, ey, er * 0.25, er * 0.25 * min(openness, 1.0), px), (10, 10, 10))
        # eyebrow: a rotated thin ellipse
        bx, by = ex, ey - p["brow_gap"] - 0.02 * expr
        t = side * p["brow_tilt"]
        u = np.cos(t) * (xi - bx) + np.sin(t) * (y - by)
        v = -np.sin(t) * (xi - bx) + np.cos(t) * (y - by)
        _paint(canvas, _ellipse(u, v, 0, 0, er * 1.6, p["brow_thick"], px), p["hair"] * 0.7)
    # nose: a shaded ridge and two nostrils
    nl, nw = p["nose_len"], p["nose_w"]
    ridge = _soft(np.maximum(np.abs(xi - 0.02 * yaw) - nw * 0.25, np.abs(y - (ey + nl / 2 + 0.03)) - nl / 2), px)
    _paint(canvas, ridge * 0.35, p["skin"] * 0.6)
    for side in (-1, 1):
        _paint(canvas, _ellipse(xi, y, side * nw * 0.45, ey + nl + 0.04, nw * 0.3, nw * 0.18, px) * 0.8, p["skin"] * 0.45)
    # mouth: a curved band whose bend mixes identity and expression
    mw, my = p["mouth_w"] * squeeze, p["mouth_y"]
    curve = p["mouth_curve"] + 0.06 * expr
    band = y - (my - curve * (1 - (xi / mw) ** 2))
    lip = _soft(np.maximum(np.abs(band) - 0.025 - 0.02 * max(expr, 0), np.abs(xi) - mw), px)
    _paint(canvas, lip, p["lips"])
    if p["mole"] is not None:
        _paint(canvas, _ellipse(xi, y, p["mole"][0] * fw, p["mole"][1] * fh + 0.1, 0.022, 0.022, px), p["skin"] * 0.4)
    # accessories and occlusion
    if rng.random() < 0.15:  # glasses
        for side in (-1, 1):
            r = _ellipse(xi, y, side * p["eye_dx"] * squeeze, ey, er * 2.2, er * 1.8, px)
            inner = _ellipse(xi, y, side * p["eye_dx"] * squeeze, ey, er * 1.9, er * 1.5, px)
            _paint(canvas, np.clip(r - inner, 0, 1), (20, 20, 20))
            if rng.random() < 0.5:
                _paint(canvas, inner * 0.7, (30, 30, 40))
    if rng.random() < 0.3:
        kind = rng.integers(3)
        if kind == 0:  # a block
            cx, cy = rng.uniform(-0.6, 0.6, 2)
            hw, hh = rng.uniform(0.15, 0.35, 2)
            _paint(canvas, _soft(np.maximum(np.abs(gx - cx) - hw, np.abs(gy - cy) - hh), px), rng.uniform(0, 255, 3))
        elif kind == 1:  # a face mask over mouth and nose
            _paint(canvas, face * _soft(ey + nl * 0.8 - y, px), rng.uniform(60, 255, 3))
        else:  # a hand-like blob from a side
            side = rng.choice([-1, 1])
            _paint(canvas, _ellipse(gx, gy, side * rng.uniform(0.5, 0.9), rng.uniform(-0.3, 0.6), 0.35, 0.25, px), p["skin"] * rng.uniform(0.8, 1.1))

    # lighting: ambient, a directional gradient and a colour cast
    ambient = rng.uniform(0.55, 1.25)
    light_ang = rng.uniform(0, 2 * np.pi)
    light = ambient * (1.0 + rng.uniform(0.0, 0.6) * (np.cos(light_ang) * gx + np.sin(light_ang) * gy))
    canvas = canvas * light[..., None] * rng.uniform(0.8, 1.2, 3)
    img = np.clip(canvas, 0, 255).astype(np.float32)
    sigma = rng.uniform(0.0, 1.1)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(0, 10), img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _identity_rng(seed: int, split: int, identity: int) -> np.random.Generator:
    return np.random.default_rng([GENERATOR_VERSION, seed, split, identity])


def _image_rng(seed: int, split: int, identity: int, image: int) -> np.random.Generator:
    return np.random.default_rng([GENERATOR_VERSION, seed, split, identity, image + 1])


def draw_image(seed: int, split: int, identity: int, image: int, size: int) -> bytes:
    """JPEG bytes of image ``image`` of identity ``identity`` of a split (deterministic)."""
    params = identity_params(_identity_rng(seed, split, identity))
    rng = _image_rng(seed, split, identity, image)
    pixels = render_face(params, rng, size)
    return encode_jpeg(pixels, quality=int(rng.integers(70, 96)))


def _spec_key(**spec) -> str:
    return hashlib.sha1(json.dumps({"v": GENERATOR_VERSION, **spec}, sort_keys=True).encode()).hexdigest()[:12]


def generate_identity_folder(root: str | os.PathLike, num_identities: int, images_per_identity: int,
                             image_size: int, seed: int) -> Path:
    """Write the training split as ``root/id_XXXXX/XXX.jpg``; a ``DONE`` marker makes it idempotent."""
    root = Path(root)
    if (root / "DONE").is_file():
        return root
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for identity in tqdm(range(num_identities), desc=f"generating synthetic faces in {root}", unit="id", leave=False,
                         disable=not D.is_main()):
        d = tmp / f"id_{identity:05d}"
        d.mkdir(exist_ok=True)
        for image in range(images_per_identity):
            (d / f"{image:03d}.jpg").write_bytes(draw_image(seed, _TRAIN, identity, image, image_size))
    (tmp / "DONE").write_text("synthetic faces, frtrain generator v%d\n" % GENERATOR_VERSION)
    try:
        os.replace(tmp, root)
    except OSError:  # another process finished first
        if not (root / "DONE").is_file():
            raise
    return root


def make_verification_pairs(num_identities: int, images_per_identity: int, num_pairs: int, seed: int):
    """Pairs ``((identity, image), (identity, image), is_same)`` in 10 identity-disjoint folds.

    Fold f uses identities with ``identity % 10 == f``; each fold holds num_pairs/20 matched pairs then
    as many mismatched pairs, like LFW's sets.
    """
    if num_pairs % 20 or num_identities < 20 or images_per_identity < 2:
        raise ConfigError(
            "synthetic verification needs num_pairs divisible by 20, at least 20 identities and 2 images each, "
            f"got num_pairs={num_pairs}, num_identities={num_identities}, images_per_identity={images_per_identity}"
        )
    rng = np.random.default_rng([GENERATOR_VERSION, seed, _VERIFY, 10**6])
    per_kind = num_pairs // 20
    pairs = []
    for fold in range(10):
        ids = np.arange(fold, num_identities, 10)
        for _ in range(per_kind):
            i = int(rng.choice(ids))
            a, b = rng.choice(images_per_identity, 2, replace=False)
            pairs.append(((i, int(a)), (i, int(b)), True))
        for _ in range(per_kind):
            i, j = rng.choice(ids, 2, replace=False)
            pairs.append(((int(i), int(rng.integers(images_per_identity))), (int(j), int(rng.integers(images_per_identity))), False))
    return pairs


def generate_verification_bin(path: str | os.PathLike, num_identities: int, images_per_identity: int,
                              num_pairs: int, image_size: int, seed: int) -> Path:
    """Write the verification split as an insightface ``.bin``: pickle of (list of 2N JPEG bytes, N bools)."""
    path = Path(path)
    if path.is_file():
        return path
    pairs = make_verification_pairs(num_identities, images_per_identity, num_pairs, seed)
    cache: dict[tuple[int, int], bytes] = {}
    bins, issame = [], []
    for a, b, same in tqdm(pairs, desc=f"generating synthetic verification pairs {path.name}", unit="pair", leave=False,
                        disable=not D.is_main()):
        for key in (a, b):
            if key not in cache:
                cache[key] = draw_image(seed, _VERIFY, key[0], key[1], image_size)
            bins.append(cache[key])
        issame.append(same)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump((bins, issame), f, protocol=4)
    os.replace(tmp, path)
    return path


def synthetic_dir(cache_dir: str, **spec) -> Path:
    return Path(os.path.expanduser(cache_dir)) / "synthetic" / _spec_key(**spec)


def synthetic_verification_bin(cache_dir: str, num_identities: int = 200, images_per_identity: int = 8,
                               num_pairs: int = 3000, image_size: int = 56, seed: int = 0) -> Path:
    """Path of the synthetic verification ``.bin``, generated on first use."""
    spec = dict(split="verify", num_identities=num_identities, images_per_identity=images_per_identity,
                num_pairs=num_pairs, image_size=image_size, seed=seed)
    path = synthetic_dir(cache_dir, **spec) / "verification.bin"
    return generate_verification_bin(path, num_identities, images_per_identity, num_pairs, image_size, seed)


class SyntheticFaces(FaceFolder):
    """The synthetic training split as a :class:`FaceFolder`, generated into ``cache_dir`` on first use.

    Args:
        num_identities, images_per_identity: size of the training split.
        image_size: side of the generated square images in pixels.
        seed: generator seed; the same arguments give the same bytes.
        Other arguments as :class:`FaceFolder`.
    """

    def __init__(self, cache_dir: str, num_identities: int = 200, images_per_identity: int = 40,
                 image_size: int = 56, seed: int = 0, input_size: Sequence[int] = (112, 112),
                 augment: Sequence[Any] | Mapping[str, Any] | None = None, on_corrupt: str = "skip", index_cache: bool = False):
        if num_identities < 2 or images_per_identity < 1 or image_size < 16:
            raise ConfigError(
                "data: synthetic faces need num_identities >= 2, images_per_identity >= 1, image_size >= 16, got "
                f"{num_identities}, {images_per_identity}, {image_size}"
            )
        spec = dict(split="train", num_identities=num_identities, images_per_identity=images_per_identity,
                    image_size=image_size, seed=seed)
        root = synthetic_dir(cache_dir, **spec) / "train"
        generate_identity_folder(root, num_identities, images_per_identity, image_size, seed)
        super().__init__(str(root), input_size=input_size, augment=augment, on_corrupt=on_corrupt,
                         index_cache=index_cache, cache_dir=cache_dir)
