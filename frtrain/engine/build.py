"""Building objects from config nodes with ``hydra.utils.instantiate``, with one-line errors.

Values known only at run time (number of classes, embedding size, input size) are passed as keyword
arguments. Unknown options are reported with the group name and the options the target accepts.
"""

from __future__ import annotations

import inspect
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from frtrain.errors import ConfigError, FrtrainError


def _accepted(target) -> tuple[set[str], bool]:
    sig = inspect.signature(target)
    names = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def build(group: str, node: DictConfig | dict | None, exclude: tuple[str, ...] = (), **runtime: Any) -> Any:
    """Instantiate ``node`` (a config with ``_target_``), checking its keys against the target first.

    ``exclude`` names keys of the node that are not constructor arguments (read by the caller).
    """
    if isinstance(node, DictConfig):
        missing = sorted(OmegaConf.missing_keys(node))
        if missing:
            key = missing[0] if str(missing[0]).startswith(f"{group}.") else f"{group}.{missing[0]}"
            raise ConfigError(f"{key} is not set: give it on the command line, e.g. {key}=...")
        node = OmegaConf.to_container(node, resolve=True)  # resolves interpolations in the full config
    if not isinstance(node, dict) or "_target_" not in node:
        raise ConfigError(f"{group}: the config has no _target_ to build")
    target_name = node["_target_"]
    try:
        target = get_object(target_name)
    except Exception as e:
        raise ConfigError(f"{group}._target_={target_name!r} cannot be imported ({e})".splitlines()[0]) from None
    cfg = {k: v for k, v in node.items() if k not in exclude}
    keys = [k for k in cfg if not str(k).startswith("_")]
    names, var_kw = _accepted(target)
    if not var_kw:
        unknown = [k for k in keys if k not in names]
        if unknown:
            options = ", ".join(sorted(names - set(runtime) - {"self"}))
            raise ConfigError(
                f"{group}: {target_name} has no option {unknown[0]!r} (its options: {options})"
            )
    kwargs = {k: v for k, v in runtime.items() if var_kw or k in names}
    try:
        return instantiate(cfg, **kwargs, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, FrtrainError):
            raise cause from None
        msg = str(cause or e).splitlines()[0]
        raise ConfigError(f"{group}: cannot build {target_name}: {msg}") from None
