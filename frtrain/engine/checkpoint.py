"""Checkpoints: one ``.pt`` file per save, written atomically, read with ``weights_only=True``.

Keys (constant, pinned by a test): ``format`` (``frtrain-checkpoint``), ``version``, ``meta`` (the
backbone and head configs, num_classes, embedding and input size, normalisation: enough to rebuild the
model without the run's config), ``model`` (backbone state dict), ``head``, ``optimizer``,
``lr_scheduler``, ``grad_scaler``, ``train_state`` (step, epoch, batch within the epoch, best score),
``rng`` (a list: each rank's torch, CUDA, numpy and Python generator states). The head's class rows and
their optimiser state are whole (all C rows, gathered from every rank), so a checkpoint resumes on any
number of ranks (:mod:`frtrain.engine.sharded_state`).
"""

from __future__ import annotations

import glob
import os
import random
import re
from typing import Any

import numpy as np
import torch

from frtrain.errors import CheckpointError

FORMAT = "frtrain-checkpoint"
VERSION = 1
CHECKPOINT_KEYS = ("format", "version", "meta", "model", "head", "optimizer", "lr_scheduler", "grad_scaler",
                   "train_state", "rng")
_STEP_FILE = re.compile(r"step-(\d+)\.pt$")


def save_atomic(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same directory, then rename over ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: cannot be loaded with weights_only=True ({first})") from None


def load_checkpoint(path: str, map_location="cpu", mmap: bool = False) -> dict:
    """A frtrain checkpoint (see module docstring); anything else raises :class:`CheckpointError`."""
    ckpt = load_file(path, map_location, mmap)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a frtrain checkpoint (no 'format': '{FORMAT}' entry)")
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
