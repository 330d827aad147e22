"""insightface arcface_torch interop (the library part of ``frtrain-import-insightface``): its files and format.

insightface writes
    backbone.pth               the backbone's plain state dict (often float16 in the model zoo);
    checkpoint_gpu_<r>.pt      per rank r: ``state_dict_backbone``, ``state_dict_softmax_fc`` ({"weight":
                               (C_r, d)}: the rank's contiguous slice of the class vectors), optimiser, epoch.
frtrain's IResNets use insightface's parameter names (tests/assets/iresnet*_keys.txt pin them), so these
load as they are. Everything is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import glob
import os
import re

import torch

from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine.checkpoint import plain_state_dict
from frtrain.errors import CheckpointError

_RANK_FILE = re.compile(r"checkpoint_gpu_(\d+)\.pt$")


def load_backbone_file(path: str, backbone_cfg) -> tuple[torch.nn.Module, dict]:
    """(backbone in eval mode, meta) from an insightface-style ``backbone.pth`` and a backbone config
    (the user's config: a plain state dict says nothing of its network)."""
    from frtrain.engine.build import build

    state = plain_state_dict(ckpt_io.load_file(path), path)
    backbone = build("backbone", backbone_cfg)
    ckpt_io.load_state_checked(backbone, state, path, "backbone")
    from frtrain.engine.finetune import constructor_node

    return backbone.eval(), {"backbone": constructor_node(backbone_cfg), "format": "plain state dict"}


def rank_files(directory: str) -> list[str]:
    """``checkpoint_gpu_0.pt .. checkpoint_gpu_<R-1>.pt`` of an insightface output directory, in rank order."""
    found = {}
    for path in glob.glob(os.path.join(directory, "checkpoint_gpu_*.pt")):
        m = _RANK_FILE.search(path)
        if m:
            found[int(m.group(1))] = path
    if not found:
        return []
    for r in range(max(found) + 1):
        if r not in found:
            raise CheckpointError(f"{os.path.join(directory, f'checkpoint_gpu_{r}.pt')}: missing; the directory has "
                                  f"ranks {sorted(found)}, the class vectors need every rank 0..{max(found)}")
    return [found[r] for r in range(len(found))]


def import_training_dir(directory: str, backbone_cfg, num_classes: int | None = None) -> dict:
    """A frtrain checkpoint (dict) from an insightface output directory.

    The backbone comes from ``backbone.pth`` (else ``checkpoint_gpu_0.pt``'s ``state_dict_backbone``); the
    class vectors from every rank's ``state_dict_softmax_fc["weight"]``, concatenated in rank order into
    (C, d). ``num_classes`` (the dataset's) is checked against C when given.
    """
    directory = os.path.abspath(os.path.expanduser(str(directory)))
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: no such directory (an insightface output directory)")
    ranks = rank_files(directory)
    backbone_path = os.path.join(directory, "backbone.pth")
    if not os.path.isfile(backbone_path):
        if not ranks:
            raise CheckpointError(f"{directory}: has neither backbone.pth nor checkpoint_gpu_<rank>.pt files")
        backbone_path = ranks[0]  # its state_dict_backbone
    backbone, backbone_meta = load_backbone_file(backbone_path, backbone_cfg)
    d = int(backbone.embedding_size)
    slices = []
    for path in ranks:
        ckpt = ckpt_io.load_file(path)
        fc = ckpt.get("state_dict_softmax_fc") if isinstance(ckpt, dict) else None
        weight = fc.get("weight") if isinstance(fc, dict) else None
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            raise CheckpointError(f"{path}: has no state_dict_softmax_fc['weight'] (a 2-d tensor of class vectors)")
        if weight.shape[1] != d:
            raise CheckpointError(f"{path}: class vectors have width {weight.shape[1]}, the backbone's embedding "
                                  f"size is {d}")
        slices.append(weight.float())
    weight = torch.cat(slices) if slices else None
    if weight is not None and num_classes is not None and weight.shape[0] != int(num_classes):
        raise CheckpointError(f"{directory}: the ranks' class vectors hold {weight.shape[0]} classes "
                              f"({' + '.join(str(s.shape[0]) for s in slices)}), the dataset has {num_classes}")
    meta = {"backbone": backbone_meta["backbone"], "head": {"_target_": "insightface.PartialFC"},
            "num_classes": None if weight is None else int(weight.shape[0]), "embedding_size": d,
            "input_size": list(backbone.input_size), "mean": list(backbone.mean), "std": list(backbone.std),
            "imported_from": directory, "world_size": 1}
    return {"format": ckpt_io.FORMAT, "version": ckpt_io.VERSION, "meta": meta, "model": backbone.state_dict(),
            "head": {} if weight is None else {"weight": weight}}


def export_insightface(backbone: torch.nn.Module, out: str, fp16: bool = False) -> str:
    """Write the backbone as insightface's ``backbone.pth``: a plain state dict (optionally float16)."""
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu().clone()
             for k, v in backbone.state_dict().items()}
    ckpt_io.save_atomic(state, out)
    return out
