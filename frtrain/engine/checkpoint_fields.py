"""What each field of a checkpoint may hold, checked before anything is built or loaded from it.

A checkpoint is a file from a user, so every field is data of a known shape, and nothing read from it may
drive an allocation or a loop before it is checked against the data it describes:

* the backbone record (class and keyword sizes) is built first on the ``meta`` device, with the number of
  tensors it may register capped by the number of tensors the file's weights hold, and its keys and shapes
  are compared with the weights; only a record that describes exactly the weights in the file is built for
  real (:func:`check_record_against_weights`). A record asking for ``embedding_size=10**9`` or
  ``layers=[20000, 1, 1, 1]`` is one line in well under a second;
* ``model`` and ``head`` are mappings of names to tensors; ``train_state``, ``rng``, ``lr_scheduler`` and
  ``grad_scaler`` hold numbers of the types and sizes frtrain writes; ``meta`` fields have their types and
  ranges; a recorded threshold is a cosine in [-1, 1].

Each check raises :class:`~frtrain.errors.CheckpointError` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import math
import numbers

import torch

from frtrain.errors import CheckpointError, brief


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def tensor_mapping(value, path: str, field: str, allow_empty: bool = True) -> dict:
    """``value`` if it is a mapping of names to numeric tensors, else a one-line error."""
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: field {brief(field)} is a {type(value).__name__}, expected a mapping of "
                              "parameter names to tensors")
    if not value and not allow_empty:
        raise CheckpointError(f"{path}: field {brief(field)} is empty")
    for key, tensor in value.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{path}: field {brief(field)} has a key of type {type(key).__name__}, expected names")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: {field}[{brief(key)}] is a {type(tensor).__name__}, expected a tensor")
        if tensor.is_complex() or tensor.dtype in (torch.bool,) or tensor.is_sparse:
            raise CheckpointError(f"{path}: {field}[{brief(key)}] is a {tensor.dtype} tensor, expected real numbers")
        check_storage(tensor, f"{path}: {field}[{brief(key)}]")
    return value


def check_storage(tensor: torch.Tensor, where: str) -> torch.Tensor:
    """Refuse a tensor that claims more elements than the bytes behind it (a zero-stride view of one number
    shaped 10^12: a copy or a dtype change would allocate all of them)."""
    if tensor.is_sparse or tensor.device.type == "meta":
        return tensor
    held = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
    if tensor.numel() > held:
        raise CheckpointError(f"{where} claims {tensor.numel():,} elements over a storage of {held:,}; "
                              "the file is malformed")
    return tensor


# -- meta -----------------------------------------------------------------------------------------------------
def _positive_int(meta: dict, key: str, path: str, upper: int, prefix: str) -> None:
    value = meta.get(key)
    if value is not None and not (_is_int(value) and 1 <= value <= upper):
        raise CheckpointError(f"{path}: {prefix}.{key}={brief(value)}: expected an integer from 1 to {upper:,}")


def check_meta(meta, path: str, prefix: str = "meta") -> dict:
    """The ``meta`` record's fields: types and ranges (the backbone record is checked by the allow-list)."""
    from frtrain.backbones.common import MAX_INPUT_SIDE

    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: field 'meta' is a {type(meta).__name__}, expected the model's record")
    _positive_int(meta, "num_classes", path, 1 << 31, prefix)
    _positive_int(meta, "embedding_size", path, 1 << 16, prefix)
    _positive_int(meta, "world_size", path, 1 << 20, prefix)
    size = meta.get("input_size")
    if size is not None and not (isinstance(size, (list, tuple)) and len(size) == 2
                                 and all(_is_int(v) and 1 <= v <= MAX_INPUT_SIDE for v in size)):
        raise CheckpointError(f"{path}: {prefix}.input_size={brief(size)}: expected [H, W], each from 1 to {MAX_INPUT_SIDE}")
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is None:
            continue
        if not (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_number(v) and math.isfinite(v)
                                                                                for v in value)):
            raise CheckpointError(f"{path}: {prefix}.{key}={brief(value)}: expected three finite numbers")
        if key == "std" and not all(v > 0 for v in value):
            raise CheckpointError(f"{path}: {prefix}.std={list(value)}: expected positive values")
    if meta.get("head") is not None and not isinstance(meta["head"], dict):  # the backbone record: the allow-list
        raise CheckpointError(f"{path}: {prefix}.head is a {type(meta['head']).__name__}, expected a mapping")
    if meta.get("threshold") is not None:
        check_threshold(meta["threshold"], f"{path}: {prefix}.threshold")
    return meta


def check_threshold(record, where: str) -> dict:
    """A recorded decision threshold: ``cosine`` in [-1, 1], ``far`` in (0, 1] or null, counts as integers."""
    if not isinstance(record, dict):
        raise CheckpointError(f"{where} is a {type(record).__name__}, expected a mapping with a 'cosine' threshold")
    cosine = record.get("cosine")
    if not (_is_number(cosine) and -1.0 <= cosine <= 1.0):
        raise CheckpointError(f"{where}.cosine={brief(cosine)}: expected a cosine similarity in [-1, 1]")
    far = record.get("far")
    if far is not None and not (_is_number(far) and 0.0 < far <= 1.0):
        raise CheckpointError(f"{where}.far={brief(far)}: expected a false accept rate in (0, 1]")
    for key in ("impostors", "genuine"):
        value = record.get(key)
        if value is not None and not (_is_int(value) and value >= 0):
            raise CheckpointError(f"{where}.{key}={brief(value)}: expected a count")
    if record.get("reliable") is not None and not isinstance(record["reliable"], bool):
        raise CheckpointError(f"{where}.reliable={brief(record['reliable'])}: expected true or false")
    if record.get("benchmark") is not None and not isinstance(record["benchmark"], str):
        raise CheckpointError(f"{where}.benchmark={brief(record['benchmark'])}: expected a name")
    return record


# -- the backbone record against the weights ------------------------------------------------------------------
class _TooManyTensors(Exception):
    pass


@contextlib.contextmanager
def _registration_cap(limit: int):
    """Stop module construction once it has registered more than ``limit`` parameters and buffers."""
    module = torch.nn.Module
    register_parameter, register_buffer = module.register_parameter, module.register_buffer
    count = 0

    def bump():
        nonlocal count
        count += 1
        if count > limit:
            raise _TooManyTensors(count)

    def parameter(self, name, param):
        if param is not None:
            bump()
        return register_parameter(self, name, param)

    def buffer(self, name, tensor, persistent=True):
        if tensor is not None:
            bump()
        return register_buffer(self, name, tensor, persistent)

    module.register_parameter, module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        module.register_parameter, module.register_buffer = register_parameter, register_buffer


def check_record_against_weights(cls: type, kwargs: dict, state: dict, path: str) -> None:
    """Build ``cls(**kwargs)`` on the ``meta`` device (no memory, no initialisation), registering at most about
    as many tensors as ``state`` holds, and compare its parameter names and shapes with ``state``.

    Raises :class:`CheckpointError` naming the first difference; returns when the record describes exactly the
    weights in the file, so that building it for real costs no more than the weights themselves.
    """
    from frtrain.engine.build import without_initialisation
    from frtrain.errors import FrtrainError, first_line

    limit = 2 * len(state) + 64  # non-persistent buffers are registered but not saved
    try:
        with _registration_cap(limit), without_initialisation():
            model = cls(**kwargs)
    except _TooManyTensors:
        raise CheckpointError(f"{path}: its backbone record describes a network of more than {limit:,} tensors, its "
                              f"weights hold {len(state):,}; the record does not belong to these weights") from None
    except (FrtrainError, TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{path}: its backbone record cannot be built ({first_line(e)})") from None
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"{path}: backbone key {brief(key)} has shape {tuple(value.shape)}, its backbone record "
                                  f"describes {tuple(own[key].shape)}; the record does not match its weights")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        what = (f"lack key {missing[0]!r}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                if missing else
                f"have unexpected key {unexpected[0]!r}" + (f" (and {len(unexpected) - 1} more)"
                                                            if len(unexpected) > 1 else ""))
        raise CheckpointError(f"{path}: the backbone weights {what} of the network its record describes")


# -- training state -------------------------------------------------------------------------------------------
#: TrainState field -> whether it is an integer (else a number)
_TRAIN_STATE = {"step": True, "epoch": True, "batch_in_epoch": True, "best_score": False, "best_step": True,
                "images_seen": True, "images_per_batch": True}


def check_train_state(value, path: str) -> dict:
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: field 'train_state' is a {type(value).__name__}, expected a mapping")
    for key, v in value.items():
        if key not in _TRAIN_STATE:
            raise CheckpointError(f"{path}: train_state has the unknown entry {brief(key)} (known: "
                                  f"{', '.join(_TRAIN_STATE)})")
        ok = _is_int(v) if _TRAIN_STATE[key] else _is_number(v) and math.isfinite(v)
        if not ok or (_TRAIN_STATE[key] and v < -1):
            raise CheckpointError(f"{path}: train_state.{key}={brief(v)}: expected "
                                  f"{'an integer' if _TRAIN_STATE[key] else 'a finite number'}")
    if "step" not in value:
        raise CheckpointError(f"{path}: train_state has no 'step'")
    return value


def scheduler_step(value, path: str) -> int:
    """The optimiser steps the schedule has taken: ``lr_scheduler`` is ``{"last_epoch": n}`` (older checkpoints
    hold LambdaLR's whole state; only that number is read from them)."""
    step = value.get("last_epoch") if isinstance(value, dict) else None
    if not (_is_int(step) and 0 <= step < 1 << 40):
        raise CheckpointError(f"{path}: lr_scheduler.last_epoch={brief(step)}: expected the number of steps taken")
    return int(step)


def check_grad_scaler(value, path: str) -> dict:
    """GradScaler's state: empty (fp32/bf16), or its scale and growth settings as positive numbers."""
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: field 'grad_scaler' is a {type(value).__name__}, expected a mapping")
    known = {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    for key, v in value.items():
        if key not in known:
            raise CheckpointError(f"{path}: grad_scaler has the unknown entry {brief(key)}")
        if not (_is_number(v) and math.isfinite(v) and v >= 0):
            raise CheckpointError(f"{path}: grad_scaler.{key}={brief(v)}: expected a finite non-negative number")
    return value


def check_rng(value, path: str) -> list:
    """A list (one per rank) of generator states as :func:`frtrain.engine.checkpoint.rng_state` writes them."""
    states = value if isinstance(value, list) else [value]
    if not states or len(states) > 1 << 20:
        raise CheckpointError(f"{path}: field 'rng' holds {len(states)} states, expected one per rank")
    reference = torch.get_rng_state()
    for r, s in enumerate(states):
        where = f"{path}: rng[{r}]"
        if not isinstance(s, dict):
            raise CheckpointError(f"{where} is a {type(s).__name__}, expected a mapping of generator states")
        t = s.get("torch")
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.shape == reference.shape):
            raise CheckpointError(f"{where}.torch: expected a uint8 tensor of shape {tuple(reference.shape)}")
        n = s.get("numpy")
        if not (isinstance(n, dict) and isinstance(n.get("keys"), torch.Tensor) and n["keys"].numel() == 624
                and _is_int(n.get("pos")) and 0 <= n["pos"] <= 624 and _is_int(n.get("has_gauss"))
                and _is_number(n.get("cached_gaussian"))):
            raise CheckpointError(f"{where}.numpy: expected numpy's MT19937 state (624 keys, pos, gauss)")
        py = s.get("python")
        if not (isinstance(py, (list, tuple)) and len(py) == 625 and all(_is_int(v) and 0 <= v < 1 << 32 for v in py)
                and _is_int(s.get("python_version"))
                and (s.get("python_gauss") is None or _is_number(s.get("python_gauss")))):
            raise CheckpointError(f"{where}.python: expected Python's Mersenne Twister state (625 integers)")
        cuda = s.get("cuda")
        if cuda is not None and not (isinstance(cuda, (list, tuple))
                                     and all(isinstance(c, torch.Tensor) and c.dtype == torch.uint8
                                             and c.numel() <= 1 << 16 for c in cuda)):
            raise CheckpointError(f"{where}.cuda: expected a list of uint8 CUDA generator states")
    return states


def _same_kind(saved, live) -> bool:
    """Whether an optimiser option from a file has the type of the live option (numbers interchangeable)."""
    if live is None or isinstance(live, bool) or isinstance(live, str):
        return type(saved) is type(live) or (live is None and saved is None)
    if _is_number(live):
        return _is_number(saved) and math.isfinite(saved)
    if isinstance(live, (list, tuple)):
        return isinstance(saved, (list, tuple)) and len(saved) == len(live) and all(
            _same_kind(a, b) for a, b in zip(saved, live))
    if isinstance(live, torch.Tensor):
        return isinstance(saved, torch.Tensor) and saved.shape == live.shape
    return False


def check_optimizer(value, optimizer: torch.optim.Optimizer, path: str) -> dict:
    """An optimiser state (already resliced to this rank) that fits ``optimizer``: the same groups with the same
    numbers of parameters and options of the same types; per-parameter state tensors of the parameter's shape
    (or scalars such as Adam's ``step``)."""
    if not isinstance(value, dict) or not isinstance(value.get("state"), dict) \
            or not isinstance(value.get("param_groups"), list):
        raise CheckpointError(f"{path}: field 'optimizer' is not an optimiser state (a mapping with 'state' and "
                              "'param_groups')")
    live_groups = optimizer.param_groups
    groups = value["param_groups"]
    if len(groups) != len(live_groups):
        raise CheckpointError(f"{path}: optimizer state has {len(groups)} parameter groups, this run has "
                              f"{len(live_groups)}")
    params = []
    for g, (saved, live) in enumerate(zip(groups, live_groups)):
        if not isinstance(saved, dict) or not isinstance(saved.get("params"), list) \
                or len(saved["params"]) != len(live["params"]) or not all(_is_int(i) for i in saved["params"]):
            raise CheckpointError(f"{path}: optimizer param_groups[{g}] does not hold this run's "
                                  f"{len(live['params'])} parameters")
        for key, option in saved.items():
            if key == "params":
                continue
            if key not in live and (option is None or isinstance(option, (numbers.Real, str))):
                continue  # an option this torch does not know: step() never reads it
            if key not in live or not _same_kind(option, live[key]):
                raise CheckpointError(f"{path}: optimizer param_groups[{g}].{key}={brief(option)} does not fit this run's "
                                      f"optimiser ({type(optimizer).__name__}, {key}={brief(live.get(key))})")
        params += list(zip(saved["params"], live["params"]))
    by_index = dict(params)
    for index, entry in value["state"].items():
        if index not in by_index or not isinstance(entry, dict):
            raise CheckpointError(f"{path}: optimizer state entry {brief(index)} belongs to no parameter of this run")
        param = by_index[index]
        for key, v in entry.items():
            if isinstance(v, torch.Tensor):
                if v.is_complex() or v.dtype == torch.bool or v.is_sparse:
                    raise CheckpointError(f"{path}: optimizer state {brief(key)} of parameter {index} is a {v.dtype} "
                                          "tensor, expected real numbers")
                if v.numel() != 1 and tuple(v.shape) != tuple(param.shape):
                    raise CheckpointError(f"{path}: optimizer state {brief(key)} of parameter {index} has shape "
                                          f"{tuple(v.shape)}, the parameter has {tuple(param.shape)}")
            elif not (_is_number(v) or v is None or isinstance(v, bool)):
                raise CheckpointError(f"{path}: optimizer state {brief(key)} of parameter {index} is a "
                                      f"{type(v).__name__}, expected a tensor or a number")
    return value
