"""Building objects from config nodes with ``hydra.utils.instantiate``, with one-line errors.

Values known only at run time (number of classes, embedding size, input size) are passed as keyword
arguments. Before anything is built, every key of the node is checked against the target's signature:
an unknown key is named with the closest valid ones, a value of the wrong type with the type expected
(from the signature's annotations), and a renamed option (a target's ``renamed_options``) is rewritten
to its new name with a warning. Config nodes come from the user's configs; nothing read from a data
file is ever built here (see :func:`frtrain.engine.model_record.rebuild_backbone`).
"""

from __future__ import annotations

import collections.abc
import contextlib
import difflib
import inspect
import types
import typing
import warnings
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from frtrain.errors import ConfigError, FrtrainError, first_line


def _init_chain(target) -> list:
    """The ``__init__`` functions a class's keyword arguments can reach: its own, then, while each passes
    ``**kwargs`` on, its bases' (pytorch-metric-learning's habit: a head states only its own options and hands the
    shared ones to :class:`~frtrain.heads.class_vectors.Head`). A function is its own chain."""
    if not inspect.isclass(target):
        return [target]
    chain = []
    for cls in target.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None or cls is object:
            continue
        chain.append(init)
        if not any(p.kind == p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return chain


def _options_chain(target) -> list:
    """Whose parameters are a target's options: its own ``__init__`` and, when that passes ``**kwargs`` on, the
    ``__init__`` at the end of the chain that receives them (the shared options, :class:`Head`'s). The classes in
    between hand their own parameters on positionally (CosFace sets CombinedMargin's m1..m3): not options."""
    chain = _init_chain(target)
    return chain if len(chain) <= 1 else [chain[0], chain[-1]]


def _signature(target) -> tuple[dict[str, inspect.Parameter], bool]:
    """(named parameters, open to any keyword): the target's own and the shared ones (:func:`_options_chain`), so a
    typo in a shared option is caught by name all the same; open only when the chain ends in ``**kwargs``."""
    params, var_kw = {}, False
    for fn in _options_chain(target):
        sig = inspect.signature(fn)
        for n, p in sig.parameters.items():
            if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                params.setdefault(n, p)
        var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return params, var_kw


def _hints(target) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for fn in _options_chain(target):
        try:
            for k, v in typing.get_type_hints(fn).items():
                hints.setdefault(k, v)
        except Exception:  # unresolvable forward references: types are not checked
            pass
    return hints


def _type_ok(value, tp) -> bool:
    """Whether ``value`` (plain config data) fits the annotation ``tp``; unknown annotations accept anything."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        return isinstance(value, dict)
    return True


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in typing.get_args(tp)))
    if origin in (list, tuple, collections.abc.Sequence) or tp in (list, tuple):
        return "a list"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _plain(group: str, node) -> dict:
    if isinstance(node, DictConfig):
        missing = sorted(OmegaConf.missing_keys(node))
        if missing:
            key = missing[0] if str(missing[0]).startswith(f"{group}.") else f"{group}.{missing[0]}"
            raise ConfigError(f"{key} is not set: give it on the command line, e.g. {key}=...")
        node = OmegaConf.to_container(node, resolve=True)  # resolves interpolations in the full config
    elif isinstance(node, dict):
        node = {k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for k, v in node.items()}
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError(f"{group}: the config has no _target_ to build")
    return dict(node)


def _prepare(group: str, node, exclude: tuple[str, ...], runtime: dict) -> tuple[Any, dict, dict]:
    """(target, constructor config, runtime kwargs it accepts), every key checked. A backbone node's fine-tuning
    options (:data:`frtrain.engine.finetune.BACKBONE_OPTIONS`) are not its constructor's: left out here."""
    if group == "backbone":
        from frtrain.engine.finetune import BACKBONE_OPTIONS

        exclude = tuple(exclude) + BACKBONE_OPTIONS
    cfg = {k: v for k, v in _plain(group, node).items() if k not in exclude}
    target_name = cfg["_target_"]
    try:
        target = get_object(target_name)
    except Exception as e:
        raise ConfigError(f"{group}._target_={target_name!r} cannot be imported ({first_line(e)})") from None
    params, var_kw = _signature(target)
    renamed = getattr(target, "renamed_options", {}) or {}
    for old, new in renamed.items():
        if old in cfg:
            if new in cfg:
                raise ConfigError(f"{group}.{old} is the old name of {group}.{new}; give only {group}.{new}")
            warnings.warn(f"{group}.{old} is deprecated: it is now {group}.{new} ({target_name})", FutureWarning,
                          stacklevel=3)
            cfg[new] = cfg.pop(old)
    if not var_kw:
        options = sorted(set(params) - set(runtime) - {"self"})
        for key in (k for k in cfg if not str(k).startswith("_")):
            if key not in params:
                close = difflib.get_close_matches(key, options + list(renamed), n=2, cutoff=0.6)
                close = list(dict.fromkeys(renamed.get(c, c) for c in close))
                hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
                raise ConfigError(f"{group}: {target_name} has no option {key!r} ({hint}its options: "
                                  f"{', '.join(options)})")
    hints = _hints(target)
    for key, value in cfg.items():
        if key in hints and not (isinstance(value, dict) and "_target_" in value) and not _type_ok(value, hints[key]):
            raise ConfigError(f"{group}.{key}={value!r}: expected {_describe(hints[key])}")
    kwargs = {k: v for k, v in runtime.items() if var_kw or k in params}
    return target, cfg, kwargs


def check_node(group: str, node, exclude: tuple[str, ...] = (), **runtime: Any) -> None:
    """Check ``node``'s keys and value types against its target without building it."""
    _prepare(group, node, exclude, runtime)


def build(group: str, node: DictConfig | dict | None, exclude: tuple[str, ...] = (), **runtime: Any) -> Any:
    """Instantiate ``node`` (a config with ``_target_``), checking its keys against the target first.

    ``exclude`` names keys of the node that are not constructor arguments (read by the caller).
    """
    target, cfg, kwargs = _prepare(group, node, exclude, runtime)
    try:
        return instantiate(cfg, **kwargs, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, FrtrainError):
            raise cause from None
        msg = first_line(cause or e)
        raise ConfigError(f"{group}: cannot build {cfg['_target_']}: {msg}") from None


@contextlib.contextmanager
def without_initialisation():
    """``torch.nn.init`` functions as no-ops: on the meta device they would import torch._dynamo (1.4 s)."""
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        with torch.device("meta"):
            yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def dry_build(group: str, node, **runtime: Any) -> Any:
    """Build ``node`` without cost, so that its own range checks run before any expensive work.

    Modules (backbone, head) are built on the ``meta`` device without initialisation (no memory, no
    time); an optimiser factory is called on one dummy parameter; a schedule factory for a dummy run length.
    """
    import torch

    plain = _plain(group, node)
    if group == "backbone" and plain.get("pretrained_file"):  # would read the weights file
        check_node(group, node, **runtime)
        return None
    if group in ("backbone", "head"):
        with without_initialisation():
            return build(group, node, **runtime)
    built = build(group, node, **runtime)
    if group == "optim":
        lr = plain.get("lr")
        if isinstance(lr, (int, float)) and not lr >= 0:
            raise ConfigError(f"optim.lr={lr!r}: expected a non-negative learning rate")
        try:
            return built([{"params": [torch.nn.Parameter(torch.zeros(1))]}])
        except (ValueError, TypeError) as e:
            raise ConfigError(f"optim: {plain['_target_']} refuses these options ({first_line(e)})") from None
    if group == "sched":
        fn = built(total_steps=100, steps_per_epoch=10)
        for step in (0, 50, 99):
            fn(step)
        return fn
    return built


#: options every pair benchmark takes besides its reader's: a CSV mapping images to groups, and the FAR of the
#: global threshold of the per-group breakdown (:mod:`frtrain.evaluation.groups`)
BENCHMARK_OPTIONS = ("groups", "groups_far")


def build_benchmarks(nodes: dict) -> list:
    """The benchmarks of a command (``nodes``: name -> (config key, node), :func:`frtrain.config.benchmark_nodes`),
    each built by its reader; ``groups: <csv>`` on any pair benchmark adds the per-group breakdown."""
    built = []
    for name, (where, node) in nodes.items():
        bench = build(where, node, exclude=BENCHMARK_OPTIONS, name=name)
        groups = node.get("groups")
        if groups:
            if not hasattr(bench, "with_groups"):
                raise ConfigError(f"{where}.groups: {type(bench).__name__} is not a pair benchmark")
            bench.with_groups(str(groups), float(node.get("groups_far") or 1e-3))
        built.append(bench)
    return built


def embed_options(eval_cfg) -> dict:
    """The :class:`~frtrain.evaluation.embed.Embedder` settings of an ``eval`` node (flip, images per forward pass,
    decoding workers, the CPU activation budget, the threshold search of pair protocols, the interval resamples)."""
    return {"flip": str(eval_cfg.flip), "batch_size": eval_cfg.batch_size, "num_workers": int(eval_cfg.num_workers),
            "memory_budget_mb": float(eval_cfg.get("memory_budget_mb", 300)), "thresholds": str(eval_cfg.thresholds),
            "interval_resamples": int(eval_cfg.get("intervals", 1000))}

