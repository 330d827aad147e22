"""Fine-tuning a released backbone: frozen layers, LoRA adapters (PEFT), and the plain weights a checkpoint keeps.

The backbone node's ``freeze`` and ``lora`` options (configs/backbone/_finetune.yaml) are read here, not by the
backbone's constructor (:data:`BACKBONE_OPTIONS`):

- ``backbone.freeze``: parameter-name patterns (fnmatch, e.g. ``[conv1.*, bn1.*, layer1.*]`` or ``[blocks.[0-5].*]``)
  whose parameters get no gradient; a pattern that matches nothing is an error naming it.
- ``backbone.lora.rank`` (0: off), ``alpha``, ``dropout`` and ``targets`` (module-name patterns, default every
  Linear and Conv2d): PEFT's LoRA layers are put in place of the matching layers (:class:`peft.LoraModel`, in place:
  the backbone keeps its class and attributes); every other backbone parameter is frozen, so a LoRA run trains the
  adapters and the head only.

A checkpoint's ``model`` field always holds **plain** weights (each adapted layer's weight plus its LoRA delta,
:func:`plain_state_dict`): evaluation, export, ``init_from`` and every other reader see an ordinary backbone, and
exported models need nothing extra. A LoRA run also keeps its adapted state (``model_adapted``) to resume from.
"""

from __future__ import annotations

import fnmatch
import logging
import re

import torch
from torch import nn

from frtrain.errors import ConfigError

log = logging.getLogger("frtrain")

#: options of a backbone node that are not its constructor's: read by this module
BACKBONE_OPTIONS = ("freeze", "lora")
ADAPTER = "default"
_LORA_KEYS = {"rank", "alpha", "dropout", "targets"}


def options(node) -> tuple[list[str], dict]:
    """(freeze patterns, LoRA options with rank 0 meaning off) of a backbone node, checked."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    freeze = plain.get("freeze") or []
    if isinstance(freeze, str):
        freeze = [freeze]
    if not isinstance(freeze, list) or not all(isinstance(p, str) and p for p in freeze):
        raise ConfigError(f"backbone.freeze={freeze!r}: expected a list of parameter-name patterns, e.g. [layer1.*]")
    lora = plain.get("lora") or {}
    if not isinstance(lora, dict):
        raise ConfigError(f"backbone.lora={lora!r}: expected a mapping (rank, alpha, dropout, targets)")
    unknown = sorted(set(lora) - _LORA_KEYS)
    if unknown:
        raise ConfigError(f"backbone.lora has no option {unknown[0]!r} (its options: {', '.join(sorted(_LORA_KEYS))})")
    lora = {"rank": 0, "alpha": 16.0, "dropout": 0.0, "targets": ["*"], **lora}
    if isinstance(lora["targets"], str):
        lora["targets"] = [lora["targets"]]
    if not isinstance(lora["rank"], int) or isinstance(lora["rank"], bool) or lora["rank"] < 0:
        raise ConfigError(f"backbone.lora.rank={lora['rank']!r}: expected 0 (off) or a positive integer")
    if not isinstance(lora["alpha"], (int, float)) or lora["alpha"] <= 0:
        raise ConfigError(f"backbone.lora.alpha={lora['alpha']!r}: expected a positive number")
    if not isinstance(lora["dropout"], (int, float)) or not 0 <= lora["dropout"] < 1:
        raise ConfigError(f"backbone.lora.dropout={lora['dropout']!r}: expected a probability in [0, 1)")
    if not isinstance(lora["targets"], list) or not all(isinstance(t, str) and t for t in lora["targets"]):
        raise ConfigError(f"backbone.lora.targets={lora['targets']!r}: expected module-name patterns")
    return list(freeze), lora


def constructor_node(node) -> dict:
    """A backbone node without :data:`BACKBONE_OPTIONS` (what the class is built from and a checkpoint records)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    return {k: v for k, v in plain.items() if k not in BACKBONE_OPTIONS}


def matching(names: list[str], patterns: list[str], what: str) -> set[str]:
    chosen = set()
    for pattern in patterns:
        hits = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            close = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ConfigError(f"{what}: the pattern {pattern!r} matches no name of this backbone (its names: {close})")
        chosen |= hits
    return chosen


def apply(backbone: nn.Module, node) -> dict:
    """Freeze and add LoRA adapters as ``node`` says, in place; returns counts for the log (trainable, total)."""
    freeze, lora = options(node)
    if freeze:
        names = [n for n, _ in backbone.named_parameters()]
        frozen = matching(names, freeze, "backbone.freeze")
        for name, p in backbone.named_parameters():
            if name in frozen:
                p.requires_grad_(False)
    if lora["rank"]:
        add_lora(backbone, lora)
    total = sum(p.numel() for p in backbone.parameters())
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    return {"backbone_parameters": total, "backbone_trainable": trainable, "lora_rank": lora["rank"],
            "frozen_patterns": freeze}


def add_lora(backbone: nn.Module, lora: dict) -> None:
    """PEFT's LoRA on the Linear and Conv2d layers whose names match ``lora['targets']``; the rest frozen."""
    from peft import LoraConfig, LoraModel

    layers = [n for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
    chosen = sorted(matching(layers, lora["targets"], "backbone.lora.targets"))
    config = LoraConfig(r=lora["rank"], lora_alpha=float(lora["alpha"]), lora_dropout=float(lora["dropout"]),
                        target_modules="^(?:" + "|".join(re.escape(n) for n in chosen) + ")$", bias="none")
    LoraModel(backbone, config, ADAPTER)  # replaces the layers of ``backbone`` in place, freezes the rest
    backbone._frtrain_lora = dict(lora)


def has_lora(backbone: nn.Module) -> bool:
    return hasattr(backbone, "_frtrain_lora")


def _lora_layers(backbone: nn.Module) -> dict:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in backbone.named_modules() if isinstance(m, LoraLayer)}


def plain_state_dict(backbone: nn.Module) -> dict:
    """The backbone's state dict with every LoRA layer merged into its base weight (W + B A alpha / r) under the plain
    key names: the state dict of the backbone class without adapters, in its key order."""
    state = backbone.state_dict()
    if not has_lora(backbone):
        return state
    layers = _lora_layers(backbone)
    out = {}
    with torch.no_grad():
        for key, value in state.items():
            if ".lora_" in key:
                continue
            module, _, leaf = key.rpartition(".base_layer.")
            if module in layers and leaf == "weight":
                value = value + layers[module].get_delta_weight(ADAPTER).to(value.dtype)
            out[key.replace(".base_layer.", ".") if module in layers else key] = value
    return out


def adapted_state_from_plain(backbone: nn.Module, plain: dict) -> dict:
    """Plain weights (``init_from``) under the adapted backbone's key names; its adapters as they are (fresh)."""
    if not has_lora(backbone):
        return plain
    layers = _lora_layers(backbone)
    own = backbone.state_dict()
    out = {}
    for key, value in plain.items():
        module, _, leaf = key.rpartition(".")
        out[f"{module}.base_layer.{leaf}" if module in layers else key] = value
    out.update({k: v for k, v in own.items() if ".lora_" in k})
    return out


def log_counts(counts: dict, head: nn.Module) -> None:
    head_trainable = sum(p.numel() for p in head.parameters() if p.requires_grad)
    log.info("trainable parameters: backbone %s of %s%s, head %s", f"{counts['backbone_trainable']:,}",
             f"{counts['backbone_parameters']:,}", f" (LoRA rank {counts['lora_rank']})" if counts["lora_rank"] else "",
             f"{head_trainable:,}")
