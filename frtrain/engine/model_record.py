"""A model's record: what a checkpoint says about its network (``meta``), rebuilt only through an allow-list.

A checkpoint's ``meta.backbone`` names one of frtrain's backbone classes (the registry
:data:`frtrain.backbones.BACKBONES`) with plain keyword values; :func:`rebuild_backbone` calls that class directly,
never ``instantiate`` on a ``_target_`` read from a file, after comparing the record with the file's weights on the
meta device (:func:`frtrain.engine.checkpoint_fields.check_record_against_weights`). Also here: the record a run
writes (:func:`model_meta`) and the check that a resumed checkpoint is of this run's model (:func:`check_compatible`).
"""

from __future__ import annotations

import inspect

import torch

from frtrain import __version__
from frtrain import distributed as D
from frtrain.engine import checkpoint_fields as fields
from frtrain.errors import CheckpointError, first_line


def allowed_backbones() -> dict[str, type]:
    """The classes a record may name, by both their names: the registry :data:`frtrain.backbones.BACKBONES` (one
    place: a new backbone registered there is allowed here, no edit of this module)."""
    from frtrain.backbones import BACKBONES

    allowed = {}
    for cls in BACKBONES:
        allowed[f"{cls.__module__}.{cls.__qualname__}"] = cls
        allowed[f"frtrain.backbones.{cls.__name__}"] = cls
    return allowed


#: timm keyword arguments that would make timm read a file or reach a model hub
_TIMM_FILE_KEYS = ("pretrained", "checkpoint", "file", "path", "cache_dir", "url", "hf_hub")


def _plain_value(value, where: str, path: str) -> None:
    """Refuse anything in a record but plain data; no key may start with '_' (_target_, _partial_, _args_)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _plain_value(v, f"{where}[{i}]", path)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or k.startswith("_"):
                raise CheckpointError(f"{path}: refused: its backbone record has the key {where}.{k}; a checkpoint is "
                                      "data and may not name code to run")
            _plain_value(v, f"{where}.{k}", path)
        return
    raise CheckpointError(f"{path}: refused: its backbone record holds a {type(value).__name__} at {where}; "
                          "only numbers, strings, lists and mappings are allowed")


def check_backbone_record(record, path: str) -> tuple[type, dict]:
    """(backbone class, keyword arguments) of a checkpoint's backbone record, or :class:`CheckpointError`.

    The record must name one of frtrain's backbone classes and hold only plain values that are
    arguments of that class; a timm backbone may not name a weights file or a hub (the checkpoint's own
    weights are loaded instead).
    """
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: its backbone record is a {type(record).__name__}, expected a mapping")
    target = record.get("_target_")
    allowed = allowed_backbones()
    if target not in allowed:
        names = sorted({f"frtrain.backbones.{c.__name__}" for c in allowed.values()})
        raise CheckpointError(f"{path}: refused: its backbone record names {target!r}, which is not one of "
                              f"frtrain's backbones ({', '.join(names)}); a checkpoint cannot choose code to run")
    cls = allowed[target]
    from frtrain.engine.finetune import BACKBONE_OPTIONS  # fine-tuning options (freeze, lora): not the class's

    kwargs = {k: v for k, v in record.items() if k != "_target_" and k not in BACKBONE_OPTIONS}
    _plain_value(kwargs, "backbone", path)
    params = inspect.signature(cls).parameters
    for key in kwargs:
        if key not in params:
            raise CheckpointError(f"{path}: its backbone record has {key!r}, which {target} does not take")
    if cls.__name__ == "TimmBackbone":
        file_keys = [k for k in ["pretrained_file"] + list((kwargs.get("kwargs") or {}))
                     if any(w in k for w in _TIMM_FILE_KEYS) and (k != "pretrained_file" or kwargs.get(k))]
        if file_keys:
            raise CheckpointError(f"{path}: refused: its timm backbone record names {file_keys[0]!r}; a checkpoint "
                                  "may not make timm read a file or a hub")
    return cls, kwargs


def rebuild_backbone(record, path: str, weights: dict | None = None) -> torch.nn.Module:
    """The backbone a checkpoint's record describes, built by calling the allowed class directly.

    With ``weights`` (the file's state dict), the record is first built on the meta device and compared with
    them (:func:`frtrain.engine.checkpoint_fields.check_record_against_weights`): sizes come from the weights,
    so a record asking for a giant network costs nothing before it is refused.
    """
    from frtrain.errors import FrtrainError

    cls, kwargs = check_backbone_record(record, path)
    if weights is not None:
        fields.check_record_against_weights(cls, kwargs, weights, path)
    try:
        return cls(**kwargs)
    except (FrtrainError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its backbone record cannot be built ({first_line(e)})") from None


def model_meta(backbone_cfg: dict, head_cfg: dict, backbone, num_classes: int) -> dict:
    """What a checkpoint needs to rebuild and check the model without the run's config."""
    return {
        "frtrain_version": __version__, "backbone": backbone_cfg, "head": head_cfg, "num_classes": int(num_classes),
        "embedding_size": int(backbone.embedding_size), "input_size": list(backbone.input_size),
        "mean": list(backbone.mean), "std": list(backbone.std), "world_size": D.world_size(),
    }


def check_compatible(meta: dict, current: dict, path: str) -> None:
    """Refuse to resume a checkpoint of another backbone class, head or class count, naming both; the backbone's
    parameter shapes are compared when its weights are loaded (:func:`checkpoint.load_state_checked`)."""
    for what in ("backbone", "head"):
        old, new = (meta.get(what) or {}).get("_target_"), current[what].get("_target_")
        if old != new:
            raise CheckpointError(f"{path}: was trained with {what} {old}, this run builds {new}")
    if meta.get("num_classes") != current["num_classes"]:
        raise CheckpointError(
            f"{path}: has {meta.get('num_classes')} classes, the training data has {current['num_classes']}")
