"""Checkpoints: one ``.pt`` file per save, written atomically, read with ``weights_only=True``.

Keys (constant, pinned by a test): ``format`` (``frtrain-checkpoint``), ``version``, ``meta`` (the
backbone and head configs, num_classes, embedding and input size, normalisation: enough to rebuild the
model without the run's config), ``model`` (backbone state dict), ``head``, ``optimizer``,
``lr_scheduler``, ``grad_scaler``, ``train_state`` (step, epoch, batch within the epoch, best score),
``rng`` (a list: each rank's torch, CUDA, numpy and Python generator states). The head's class rows and
their optimiser state are whole (all C rows, gathered from every rank), so a checkpoint resumes on any
number of ranks (:mod:`frtrain.engine.sharded_state`).

A checkpoint is data: its ``meta.backbone`` record is rebuilt only through an allow-list of frtrain's own
backbone classes with plain keyword values (:func:`rebuild_backbone`); :func:`load_checkpoint` refuses a
file whose record names anything else, so no command that reads checkpoints can be made to run code.

Opening a model file for scoring (a checkpoint, a run directory, an ONNX file, insightface's ``backbone.pth``) is
:mod:`frtrain.engine.model_files`.
"""

from __future__ import annotations

import errno
import glob
import inspect
import logging
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

from frtrain.engine import checkpoint_fields as fields
from frtrain.errors import CheckpointError, first_line

log = logging.getLogger("frtrain")

FORMAT = "frtrain-checkpoint"
VERSION = 1
CHECKPOINT_KEYS = ("format", "version", "meta", "model", "head", "optimizer", "lr_scheduler", "grad_scaler",
                   "train_state", "rng")
_STEP_FILE = re.compile(r"step-(\d+)\.pt$")


#: the temporary file a save writes before renaming it over the checkpoint (``<name>.tmp<pid>``)
_TEMPORARY = re.compile(r"\.tmp\d+$")


def _tensor_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) checkpoint object: what writing it needs, roughly."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same directory, then rename over ``path``.

    The previous file at ``path`` stays intact when writing fails; a full disk is one line naming the directory,
    the space needed and the space free (not torch's inline_container traceback).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's writer reports a failed write as RuntimeError (inline_container)
        needed = _tensor_bytes(obj) / 2**20
        free = shutil.disk_usage(directory).free / 2**20
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < needed + 1 or \
                "file write failed" in str(e):
            raise CheckpointError(f"no space left on {directory} to write {os.path.basename(path)} (needed ~{needed:,.0f} "
                                  f"MB, {free:,.0f} MB free); the previous checkpoint is intact") from None
        raise CheckpointError(f"{path}: cannot be written ({first_line(e)})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(directory: str) -> list[str]:
    """Delete the ``*.tmp<pid>`` files a save that was killed (``kill -9``, power loss) left in ``directory``;
    returns their paths. Call it only while holding the run's lock (no other save can be in flight)."""
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if _TEMPORARY.search(name) and os.path.isfile(path):
            try:
                os.remove(path)
                removed.append(path)
            except OSError:
                pass
    if removed:
        log.warning("removed %d unfinished checkpoint file%s left by an interrupted save: %s", len(removed),
                    "" if len(removed) == 1 else "s", ", ".join(os.path.basename(p) for p in removed))
    return removed


def load_file(path: str, map_location="cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file.

    ``mmap=True`` maps the tensors from the file instead of reading them, so each rank of a resumed run
    reads only its slice of a large head.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # unpickling refused or corrupt file
        raise CheckpointError(f"{path}: cannot be loaded with weights_only=True ({first_line(e)})") from None


def load_checkpoint(path: str, map_location="cpu", mmap: bool = False) -> dict:
    """A frtrain checkpoint (see module docstring); anything else raises :class:`CheckpointError`.

    The backbone record is checked against the allow-list (:func:`check_backbone_record`) here, so every
    reader of checkpoints refuses a crafted one.
    """
    return checked_checkpoint(load_file(path, map_location, mmap), path)


def checked_checkpoint(ckpt, path: str) -> dict:
    """``ckpt`` (a loaded file) if it is a frtrain checkpoint with an allowed backbone record, a well-typed
    ``meta`` and ``model`` weights (the training fields are checked when a run resumes from it)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a frtrain checkpoint (no 'format': '{FORMAT}' entry)")
    meta = ckpt.get("meta")
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: has no 'meta' record of its model")
    fields.check_meta(meta, path)
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: has no 'model' field (the backbone's weights)")
    fields.tensor_mapping(ckpt["model"], path, "model", allow_empty=False)
    if ckpt.get("head") is not None:
        fields.tensor_mapping(ckpt["head"], path, "head")
    if meta.get("backbone") is not None:
        check_backbone_record(meta["backbone"], path)
    return ckpt


# -- rebuilding a model from a file's record: an allow-list, never instantiate() ----------------------
def _allowed_backbones() -> dict[str, type]:
    from frtrain.backbones import IResNet, MobileFaceNet, TimmBackbone

    allowed = {}
    for cls in (IResNet, MobileFaceNet, TimmBackbone):
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
    allowed = _allowed_backbones()
    if target not in allowed:
        names = sorted({f"frtrain.backbones.{c.__name__}" for c in allowed.values()})
        raise CheckpointError(f"{path}: refused: its backbone record names {target!r}, which is not one of "
                              f"frtrain's backbones ({', '.join(names)}); a checkpoint cannot choose code to run")
    cls = allowed[target]
    kwargs = {k: v for k, v in record.items() if k != "_target_"}
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


def step_checkpoints(directory: str) -> list[tuple[int, str]]:
    """(step, path) of the ``step-N.pt`` files in ``directory``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "step-*.pt")):
        m = _STEP_FILE.search(path)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest ``checkpoints/step-N.pt`` of a run directory (or of a checkpoints directory)."""
    for d in (os.path.join(run_dir, "checkpoints"), run_dir):
        found = step_checkpoints(d)
        if found:
            return found[-1][1]
    return None


def prune(directory: str, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` step checkpoints (``best.pt`` is never touched)."""
    if keep_last <= 0:
        return
    for _, path in step_checkpoints(directory)[:-keep_last]:
        os.remove(path)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def describe_mismatch(result, path: str, what: str) -> str | None:
    """One line for a ``load_state_dict(strict=False)`` result with missing or unexpected keys."""
    missing, unexpected = result.missing_keys, result.unexpected_keys
    more = lambda keys: f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""  # noqa: E731
    if missing and unexpected:
        return (f"{path}: the {what} weights lack key {missing[0]!r}{more(missing)} and have unexpected key "
                f"{unexpected[0]!r}{more(unexpected)}")
    if missing:
        return f"{path}: the {what} weights lack key {missing[0]!r}{more(missing)}"
    if unexpected:
        return f"{path}: the {what} weights have unexpected key {unexpected[0]!r}{more(unexpected)}"
    return None


def load_state_checked(module: torch.nn.Module, state: dict, path: str, what: str) -> None:
    """Load ``state`` into ``module`` strictly; a missing, unexpected or mis-shaped key is named in one line."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"{path}: {what} key {key!r} has shape {tuple(value.shape)}, this model expects {tuple(own[key].shape)}"
            )
    result = module.load_state_dict(state, strict=False)
    problem = describe_mismatch(result, path, what)
    if problem:
        raise CheckpointError(problem)
