"""A sharded head and its optimiser state, saved whole and resharded on load.

Each rank holds a contiguous slice (C_local, ...) of every class parameter (``head.class_parameters``:
class vectors, biases, centres) and the optimiser keeps per-row state of the same shape (SGD's
``momentum_buffer``, Adam's ``exp_avg``/``exp_avg_sq``). A checkpoint stores all C rows of each, gathered
on rank 0, so it does not depend on the world size that wrote it: a run on W' ranks takes rows
``shard_range(C, r, W')`` of it. Everything else (backbone, scalar head buffers, optimiser state of the
backbone) is identical on every rank and is saved from rank 0 as is.

The ``save`` functions are collectives: every rank must call them, in the same order; they return the
whole state on rank 0 and None on the other ranks.
"""

from __future__ import annotations

import torch

from frtrain import distributed as D
from frtrain.errors import CheckpointError


def class_row_names(head) -> list[str]:
    """Names of the head's parameters that hold one row per local class."""
    names = []
    for name in getattr(head, "class_parameters", ()):
        p = getattr(head, name, None)
        if isinstance(p, torch.Tensor) and p.ndim >= 1 and p.shape[0] == head.num_local:
            names.append(name)
    return names


def _class_row_indices(optimizer: torch.optim.Optimizer, head) -> dict[int, torch.Tensor]:
    """Optimiser state index (as in ``optimizer.state_dict()['state']``) -> class parameter of the head."""
    wanted = {id(getattr(head, n)): getattr(head, n) for n in class_row_names(head)}
    found, index = {}, 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) in wanted:
                found[index] = p
            index += 1
    return found


def save_head(head) -> dict | None:
    """``head.state_dict()`` with each class parameter gathered to all C rows (rank 0; None elsewhere)."""
    state = head.state_dict()
    for name in class_row_names(head):
        state[name] = D.gather_rows(state[name], head.num_classes)
    return state if D.is_main() else None


def load_head(head, state: dict, path: str) -> dict:
    """This rank's slice of a whole head state (as :func:`save_head` writes it), checked against ``head``."""
    start, count = head.class_start, head.num_local
    local = dict(state)
    for name in class_row_names(head):
        if name not in state:
            continue  # load_state_checked names the missing key
        rows = state[name]
        if rows.ndim < 1 or rows.shape[0] != head.num_classes:
            raise CheckpointError(f"{path}: head {name!r} has {rows.shape[0]} rows, this run has "
                                  f"{head.num_classes} classes")
        local[name] = rows[start:start + count]
    return local


def save_optimizer(optimizer: torch.optim.Optimizer, head) -> dict | None:
    """``optimizer.state_dict()`` with the per-row state of the head's class parameters gathered to C rows."""
    state = optimizer.state_dict()
    rows = _class_row_indices(optimizer, head)
    per_param = dict(state["state"])
    for index in sorted(rows):
        if index not in per_param:
            continue  # not stepped yet: the same on every rank
        entry = dict(per_param[index])
        for key in sorted(entry):
            value = entry[key]
            if isinstance(value, torch.Tensor) and value.shape == rows[index].shape:
                entry[key] = D.gather_rows(value, head.num_classes)
        per_param[index] = entry
    state["state"] = per_param
    return state if D.is_main() else None


def load_optimizer(optimizer: torch.optim.Optimizer, head, state: dict, path: str) -> dict:
    """This rank's slice of a whole optimiser state (as :func:`save_optimizer` writes it)."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or \
            not isinstance(state.get("param_groups"), list) or \
            not all(isinstance(e, dict) for e in state["state"].values()):
        raise CheckpointError(f"{path}: field 'optimizer' is not an optimiser state (a mapping with 'state' and "
                              "'param_groups')")
    rows = _class_row_indices(optimizer, head)
    start, count = head.class_start, head.num_local
    per_param = dict(state["state"])
    for index, param in rows.items():
        if index not in per_param:
            continue
        entry = dict(per_param[index])
        for key, value in entry.items():
            if isinstance(value, torch.Tensor) and value.ndim == param.ndim and value.ndim >= 1 \
                    and value.shape[1:] == param.shape[1:]:
                if value.shape[0] != head.num_classes:
                    raise CheckpointError(f"{path}: optimizer state {key!r} of head parameter {index} has "
                                          f"{value.shape[0]} rows, this run has {head.num_classes} classes")
                entry[key] = value[start:start + count]
        per_param[index] = entry
    return {**state, "state": per_param}
