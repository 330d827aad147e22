"""Checkpoints: one ``.pt`` file per save, written atomically, read with ``weights_only=True``.

Keys (constant, pinned by tests/test_train.py): ``format`` (``frtrain-checkpoint``), ``version``, ``meta`` (the
backbone and head configs, num_classes, embedding and input size, normalisation: enough to rebuild the
model without the run's config), ``model`` (backbone state dict), ``head``, ``optimizer``,
``lr_scheduler``, ``grad_scaler``, ``train_state`` (step, epoch, batch within the epoch, best score),
``rng`` (a list: each rank's torch, CUDA, numpy and Python generator states). The head's class rows and
their optimiser state are whole (all C rows, gathered from every rank), so a checkpoint resumes on any
number of ranks (:mod:`frtrain.engine.sharded_state`).

A checkpoint is data: its ``meta.backbone`` record is rebuilt only through an allow-list of frtrain's own
backbone classes with plain keyword values (:mod:`frtrain.engine.model_record`); :func:`load_checkpoint` refuses a
file whose record names anything else, so no command that reads checkpoints can be made to run code.

Opening a model file for scoring (a checkpoint, a run directory, an ONNX file, insightface's ``backbone.pth``) is
:mod:`frtrain.engine.model_files`.
"""

from __future__ import annotations

import errno
import glob
import logging
import os
import random
import re
import shutil
import time
from typing import Any

import numpy as np
import torch

from frtrain.engine import checkpoint_fields as fields
from frtrain.engine.model_record import check_backbone_record
from frtrain.errors import CheckpointError, first_line

log = logging.getLogger("frtrain")

FORMAT = "frtrain-checkpoint"
VERSION = 1
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


def plain_state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    """A backbone state dict from a loaded file: a plain dict of tensors (``module.`` prefixes of
    DataParallel stripped), or the ``state_dict_backbone`` of an insightface training checkpoint.
    Floating tensors are returned as float32 (model-zoo files are float16)."""
    if isinstance(obj, dict) and "state_dict_backbone" in obj:
        obj = obj["state_dict_backbone"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a backbone state dict (expected a dict of parameter name -> tensor)")
    fields.tensor_mapping(obj, path, "state dict")
    out = {}
    for key, value in obj.items():
        key = key[len("module."):] if key.startswith("module.") else key
        out[key] = value.float() if value.is_floating_point() else value
    return out


def load_checkpoint(path: str, map_location="cpu", mmap: bool = False) -> dict:
    """A frtrain checkpoint (see module docstring); anything else raises :class:`CheckpointError`.

    The backbone record is checked against the allow-list (:func:`~frtrain.engine.model_record.check_backbone_record`)
    here, so every
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
    if ckpt.get("model_adapted") is not None:  # a LoRA run's adapted backbone (frtrain.engine.finetune)
        fields.tensor_mapping(ckpt["model_adapted"], path, "model_adapted", allow_empty=False)
    if ckpt.get("head") is not None:
        fields.tensor_mapping(ckpt["head"], path, "head")
    if meta.get("backbone") is not None:
        check_backbone_record(meta["backbone"], path)
    return ckpt


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


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run directory's ``checkpoints/best.pt`` (else its newest step-N.pt, said in the log)."""
    path = os.path.abspath(os.path.expanduser(str(path)))
    if os.path.isdir(path):
        for candidate in (os.path.join(path, "checkpoints", "best.pt"), os.path.join(path, "best.pt")):
            if os.path.isfile(candidate):
                return candidate
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"{path}: a directory with no checkpoints/best.pt and no step-N.pt checkpoint")
        log.warning("%s has no best.pt (no evaluation selected one): using its newest checkpoint %s", path, latest)
        return latest
    return path


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


#: on Ctrl-C, a checkpoint is written first when the newest one is older than this (seconds)
INTERRUPT_SAVE_AFTER_S = 120.0


# -- the checkpointer: when and where a run saves, and what it starts from ---------------------------------------
class Checkpointer:
    """Saving, pruning and restoring a run's checkpoints, beside the training loop (torchtitan's habit).

    Args:
        run_dir: the run directory; checkpoints go to ``run_dir/checkpoints``.
        options: the ``trainer`` options it reads: ``checkpoint_every`` (steps), ``checkpoint_minutes`` (wall time
            since the last save), ``keep_last``, ``resume``, ``init_from``, ``init_head``, ``log_every``.
    A save is a collective: every rank calls :meth:`save` with the trainer's ``state_dict`` function.
    """

    def __init__(self, run_dir: str, options):
        self.run_dir, self.dir = run_dir, os.path.join(run_dir, "checkpoints")
        self.every, self.minutes = int(options.checkpoint_every), float(options.checkpoint_minutes or 0)
        self.keep_last, self.log_every = int(options.keep_last), int(options.log_every)
        self.resume, self.init_from, self.init_head = options.resume, options.init_from, bool(options.init_head)
        self.last_save, self.saving = time.monotonic(), False

    def due(self, step: int) -> bool:
        """Save at this step? Every ``checkpoint_every`` steps, and when ``checkpoint_minutes`` have passed since the
        last save (decided on rank 0 at logging steps and shared, so that every rank joins the same saves)."""
        from frtrain import distributed as D

        if self.every and step % self.every == 0:
            return True
        if not self.minutes or (D.is_distributed() and step % self.log_every != 0):
            return False
        return bool(D.broadcast_object(time.monotonic() - self.last_save >= 60.0 * self.minutes))

    def save(self, state_dict, step: int, name: str | None = None) -> str | None:
        """Write ``state_dict()`` (a collective; the checkpoint on rank 0, None elsewhere) as ``step-N.pt`` (or
        ``name``) atomically, prune old step files; all ranks sync. Returns the path on rank 0."""
        from frtrain import distributed as D

        path = None
        self.saving = True
        try:
            state = state_dict()
            if D.is_main():
                path = os.path.join(self.dir, name or f"step-{step:08d}.pt")
                save_atomic(state, path)
                if name is None:
                    prune(self.dir, self.keep_last)
            D.barrier()
        finally:
            self.saving = False
        if name is None:
            self.last_save = time.monotonic()
        return path

    def newest(self) -> str | None:
        return latest_checkpoint(self.run_dir)

    def save_on_interrupt(self, state_dict, step: int, consistent: bool) -> str:
        """After Ctrl-C: save when the state is at a step boundary past the last save, this is one process (a save is a
        collective the other ranks are not in), no save was in flight, and the newest checkpoint is older than
        :data:`INTERRUPT_SAVE_AFTER_S` (or there is none). Returns what to tell the user."""
        from frtrain import distributed as D

        newest = self.newest()
        if consistent and D.world_size() == 1 and not self.saving and (
                newest is None or time.monotonic() - self.last_save >= INTERRUPT_SAVE_AFTER_S):
            try:
                return f"; saved {os.path.relpath(self.save(state_dict, step), os.getcwd())}"
            except (CheckpointError, KeyboardInterrupt):
                return "; the checkpoint could not be saved"
        return f"; newest checkpoint {os.path.basename(newest)}" if newest else ""

    def resume_path(self) -> str | None:
        """The checkpoint ``trainer.resume`` names: none, ``auto`` (this run's newest), a file, or a run directory."""
        resume = self.resume
        if resume in (None, "", "null", "none", "false"):
            return None
        if resume in ("auto", "latest", "true"):
            return latest_checkpoint(self.run_dir)
        path = os.path.abspath(os.path.expanduser(str(resume)))
        if os.path.isdir(path):
            found = latest_checkpoint(path)
            if found is None:
                raise CheckpointError(f"trainer.resume={resume}: no step-N.pt checkpoint in that directory")
            return found
        if not os.path.isfile(path):
            raise CheckpointError(f"trainer.resume={resume}: no such file or directory")
        return path

    def restore(self, trainer) -> None:
        """Resume ``trainer`` (``trainer.resume``: its :meth:`load_state_dict`) or, for a fresh run, start from other
        weights (``trainer.init_from``: :meth:`init_weights`)."""
        path = self.resume_path()
        if path:
            trainer.load_state_dict(load_checkpoint(path, mmap=True), path)
            s = trainer.state
            log.info("resumed from %s at step %d (epoch %d, batch %d)", path, s.step, s.epoch, s.batch_in_epoch)
        elif self.init_from:
            self.init_weights(trainer.backbone, trainer.head, str(self.init_from))

    def init_weights(self, backbone, head, path: str) -> None:
        """Start from another model's weights (fine-tuning): ``trainer.init_from``.

        ``path``: a frtrain checkpoint or run directory (also one imported from insightface), or a plain backbone state dict
        (insightface's ``backbone.pth``, float16 allowed). The backbone must match exactly (strict load). The
        head's class vectors are taken when the checkpoint has a ``weight`` of this head's shape and
        ``trainer.init_head`` is true; a different class count is an error naming both numbers. Heads that
        keep nothing of that shape start fresh, and the log says so. Optimiser, schedule and step start anew.
        """
        path = resolve_checkpoint(path)  # a run directory: its best.pt, else its newest step-N.pt
        obj = load_file(path)
        from frtrain.engine.finetune import adapted_state_from_plain

        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            obj = checked_checkpoint(obj, path)
            load_state_checked(backbone, adapted_state_from_plain(backbone, obj["model"]), path, "backbone")
            head_state = obj.get("head") or {}
        else:
            load_state_checked(backbone, adapted_state_from_plain(backbone, plain_state_dict(obj, path)), path,
                               "backbone")
            head_state = {}
        weight = head_state.get("weight")
        own = getattr(head, "weight", None)
        if not self.init_head or weight is None or own is None:
            why = ("trainer.init_head=false" if not self.init_head else
                   "the checkpoint has no class vectors" if weight is None else "this head keeps no class vectors")
            log.info("init_from %s: backbone loaded; the head starts fresh (%s)", path, why)
            return
        if weight.ndim != 2 or weight.shape[1] != own.shape[1]:
            log.info("init_from %s: backbone loaded; the head starts fresh (its class vectors are %s, this head's "
                     "rows have width %d)", path, tuple(weight.shape), own.shape[1])
            return
        if weight.shape[0] != head.num_classes:
            raise CheckpointError(f"{path}: has class vectors for {weight.shape[0]} classes, the training data has "
                                  f"{head.num_classes}; set trainer.init_head=false to start the head fresh")
        start = head.class_start
        with torch.no_grad():
            own.copy_(weight[start:start + own.shape[0]].to(own.dtype))
        log.info("init_from %s: backbone and the %d class vectors loaded", path, weight.shape[0])
