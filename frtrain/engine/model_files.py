"""Opening a model file for scoring, exporting or verifying: a frtrain checkpoint, a run directory, an ONNX file or
a plain backbone state dict (insightface's ``backbone.pth``) -> an embedding model and its record.

Checkpoints are read through :mod:`frtrain.engine.checkpoint` (allow-listed record, checked fields); plain state
dicts through :mod:`frtrain.engine.insightface`.
"""

from __future__ import annotations

import logging
import os

import torch

from frtrain.engine.checkpoint import (FORMAT, checked_checkpoint, load_checkpoint, load_file,  # noqa: F401
                                       load_state_checked, resolve_checkpoint)
from frtrain.engine.model_record import rebuild_backbone
from frtrain.errors import CheckpointError

log = logging.getLogger("frtrain")


def load_backbone(path: str, ckpt: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """(backbone in eval mode, checkpoint meta) from a frtrain checkpoint."""
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    meta = ckpt.get("meta") or {}
    if "backbone" not in meta:
        raise CheckpointError(f"{path}: has no record of its backbone (meta.backbone); was it written by frtrain?")
    backbone = rebuild_backbone(meta["backbone"], path, ckpt["model"])
    load_state_checked(backbone, ckpt["model"], path, "backbone")
    meta = dict(meta, head_state=ckpt.get("head"))  # closed-set protocols score with its class vectors
    return backbone.eval(), meta


def load_model(path: str, backbone_cfg=None, onnx_input=None):
    """(embedding model, meta) from a frtrain checkpoint, an ``.onnx`` file, or a plain backbone state
    dict (insightface's ``backbone.pth``), which needs ``backbone_cfg`` to say what network it is.

    ``onnx_input``: the input convention of an ONNX model without frtrain's metadata (see
    :class:`frtrain.evaluation.onnx_model.OnnxEmbedder`).
    """
    if str(path).endswith(".onnx"):
        from omegaconf import OmegaConf

        from frtrain.evaluation.onnx_model import OnnxEmbedder

        convention = OmegaConf.to_container(onnx_input, resolve=True) if OmegaConf.is_config(onnx_input) else onnx_input
        model = OnnxEmbedder(path, convention)
        return model, {"backbone": model.meta.get("backbone") or {}, "format": "onnx"}
    obj = load_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return load_backbone(path, checked_checkpoint(obj, path))
    if backbone_cfg is None:
        kind = ("a plain state dict (insightface's backbone.pth layout)"
                if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values())
                else "not a frtrain checkpoint")
        raise CheckpointError(f"{path}: {kind}; say which network it is with backbone=<name> "
                              "(e.g. backbone=iresnet50; the names are the files of configs/backbone)")
    from frtrain.engine.insightface import load_backbone_file

    return load_backbone_file(path, backbone_cfg)


def embedder_for(cfg, **overrides):
    """(Embedder, model record) for a command's ``model`` (checkpoint, run directory, ONNX file or plain state dict
    with ``backbone``), its ``device``, ``precision`` and ``eval`` settings; ``overrides`` replace Embedder options
    (e.g. ``flip="none"``)."""
    import torch

    from frtrain.engine.build import embed_options
    from frtrain.evaluation.embed import Embedder
    from frtrain.runtime import resolve_device, resolve_precision

    path = resolve_checkpoint(cfg.model)
    model, meta = load_model(path, cfg.get("backbone"), cfg.get("input"))
    device = resolve_device("cpu" if path.endswith(".onnx") else str(cfg.device))
    if isinstance(model, torch.nn.Module):
        model = model.to(device)
    options = dict(embed_options(cfg.eval), **overrides)
    return Embedder(model, device, autocast_dtype=resolve_precision(str(cfg.precision), device), progress=True,
                    **options), dict(meta, path=path)
