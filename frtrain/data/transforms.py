"""Training-time augmentation (albumentations) and the on-device normalisation.

Images travel as uint8 (B, 3, H, W) tensors, a quarter of the bytes of float32, and are normalised
on the device as ``(x/255 - mean)/std`` with the backbone's mean and std.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from frtrain.errors import ConfigError, first_line


def build_augment(augment: Sequence[Any] | Mapping[str, Any] | None):
    """An albumentations pipeline from transform configs or objects: a mapping name -> config (``data.augment``,
    applied in order; a None value is switched off) or a list. None or empty: no augmentation.

    Each item is a ``{_target_: albumentations.X, ...}`` config (or a transform object). The pipeline is
    seeded per sample by the dataset so that augmentation is reproducible and resumable.
    """
    if not augment:
        return None
    import albumentations as A  # 0.6 s to import: only when a pipeline is built

    if isinstance(augment, (Mapping, DictConfig)):
        augment = {str(k): v for k, v in augment.items() if v is not None}
    else:
        augment = {str(i): v for i, v in enumerate(augment)}
    transforms = []
    for i, item in augment.items():
        if isinstance(item, (dict, DictConfig)):
            try:
                transforms.append(instantiate(item))
            except Exception as e:  # hydra wraps the constructor's TypeError
                target = OmegaConf.select(item, "_target_") if isinstance(item, DictConfig) else item.get("_target_")
                raise ConfigError(f"data.augment.{i} ({target}): {first_line(e)}") from None
        elif isinstance(item, (list, ListConfig)):
            raise ConfigError(f"data.augment.{i} must be a transform config, got a list")
        else:
            transforms.append(item)
    return A.Compose(transforms, seed=0)


def apply_augment(augment, image: np.ndarray, seed: int | None) -> np.ndarray:
    """Apply ``augment`` to an (H, W, 3) uint8 image with its random state set from ``seed``."""
    if augment is None:
        return image
    if seed is not None:
        augment.set_random_seed(int(seed))
    return augment(image=image)["image"]


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def normalize_batch(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 ``(x/255 - mean)/std`` on the tensor's device."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - mean_t).div_(std_t)
