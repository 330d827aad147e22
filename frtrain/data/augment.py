"""AdaFace's low-quality augmentation as albumentations transforms (``configs/data/augment/low_quality.yaml``).

Written after the authors' ``Augmenter`` (mk-minchul/AdaFace ``dataset/augmenter.py``), each applied with its own
probability (0.2 in their recipe) to the aligned face at the training input size:

* :class:`ZeroOutsideCrop`: a random crop box as ``RandomResizedCrop`` draws it (scale 0.2-1 of the area,
  aspect 3/4-4/3), the face kept where it is and everything outside the box set to 0: part of the face cut away,
  output size unchanged (not resized, unlike RandomResizedCrop).
* :class:`DownUpSample`: down to a square of side ``ratio`` x H (ratio drawn from 0.2-1) and back up to H x W, each
  resize with an interpolation drawn from nearest, linear, area, cubic and Lanczos.
* photometric jitter is albumentations' own ``ColorJitter`` (brightness, contrast, saturation 0.5, hue 0).

Randomness comes from albumentations' per-transform generators, which frtrain seeds per sample, so augmentation is
reproducible and a resumed run sees what an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np

#: the interpolations AdaFace draws from, for each of the two resizes
INTERPOLATIONS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)


class ZeroOutsideCrop(A.ImageOnlyTransform):
    """Zero everything outside a random box (area ``scale`` of the image, aspect ratio ``ratio``); same size out."""

    def __init__(self, scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3), p: float = 0.2):
        super().__init__(p=p)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        area = h * w
        for _ in range(10):  # torchvision's RandomResizedCrop.get_params
            target = area * self.py_random.uniform(*self.scale)
            aspect = math.exp(self.py_random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            bw, bh = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < bw <= w and 0 < bh <= h:
                return {"top": self.py_random.randint(0, h - bh), "left": self.py_random.randint(0, w - bw),
                        "height": bh, "width": bw}
        side = min(h, w)
        return {"top": (h - side) // 2, "left": (w - side) // 2, "height": side, "width": side}

    def apply(self, img: np.ndarray, top: int = 0, left: int = 0, height: int = 0, width: int = 0,
              **params) -> np.ndarray:
        out = np.zeros_like(img)
        out[top:top + height, left:left + width] = img[top:top + height, left:left + width]
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("scale", "ratio")


class DownUpSample(A.ImageOnlyTransform):
    """Down to a (side x side) square, side = int(ratio * H), ratio from ``side_ratio``, then back to H x W, with
    randomly drawn interpolations."""

    def __init__(self, side_ratio: Sequence[float] = (0.2, 1.0), p: float = 0.2):
        super().__init__(p=p)
        self.side_ratio = tuple(side_ratio)

    def get_params(self) -> dict[str, Any]:
        return {"ratio": self.py_random.uniform(*self.side_ratio), "down": self.py_random.choice(INTERPOLATIONS),
                "up": self.py_random.choice(INTERPOLATIONS)}

    def apply(self, img: np.ndarray, ratio: float = 1.0, down: int = cv2.INTER_LINEAR, up: int = cv2.INTER_LINEAR,
              **params) -> np.ndarray:
        h, w = img.shape[:2]
        side = max(1, int(ratio * h))
        small = cv2.resize(img, (side, side), interpolation=down)
        return cv2.resize(small, (w, h), interpolation=up)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("side_ratio",)
