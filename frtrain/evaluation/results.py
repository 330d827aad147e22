"""What every benchmark's score is: the :class:`BenchmarkResult` contract the trainer, the report writer and
frtrain-compare use, whatever the protocol (pairs, templates, and the ones to come).

A result says its headline number (``accuracy``: what ``best.pt`` is selected by, and what a comparison ranks),
its TensorBoard scalars, one row of the report's table (``table``: column -> text; results with the same columns
share a table, under the ``caption`` of the first), any further report lines (``details``), its ROC for the plots,
the cosine thresholds to deploy, each pair's outcome where the protocol has pairs (``per_pair``: what
frtrain-compare pairs up), its notes, and ``to_dict`` for ``report.json`` / ``results.json``. Protocols without
verification pairs (identification: TinyFace, SCface, MegaFace; closed-set classification; RFW's per-group mean)
leave ``roc`` empty, ``auc`` None and ``per_pair`` None: the report and the TensorBoard log then skip the plot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class BenchmarkResult(Protocol):
    name: str
    caption: str  # what the numbers of its table are, with the rules behind them
    notes: list[str]
    roc: dict  # {"fpr": [...], "tpr": [...]}: the curve kept for plots; {} without verification pairs
    far_thresholds: dict  # far -> {cosine, far, impostors, reliable}
    num_impostors: int
    auc: float | None  # None without verification pairs
    per_pair: dict | None  # each pair's "score", "issame", "fold", "correct" (N,), or None

    @property
    def accuracy(self) -> float: ...

    def headline(self) -> str: ...

    def scalars(self) -> dict[str, float]: ...

    def table(self) -> dict[str, str]: ...

    def details(self) -> list[str]: ...

    def to_dict(self, with_roc: bool = False) -> dict: ...


def pct(value) -> str:
    """A fraction as a percentage with two decimals; an em dash for None."""
    return "—" if value is None else f"{100 * value:.2f}"


def jsonable(value):
    """``value`` with numpy scalars and arrays turned into plain Python (for JSON)."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(kw_only=True)
class WithoutPairs:
    """The part of the contract a protocol without verification pairs fills the same way (identification,
    closed-set classification, per-group means): no ROC, no AUC, no per-pair outcomes; ``seconds`` and ``notes`` as
    every result. A subclass (a dataclass) adds its own fields and ``accuracy``, ``headline``, ``scalars``, ``table``,
    ``details``; ``to_dict`` adds the headline accuracy to its fields."""

    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    roc: dict = field(default_factory=dict)
    far_thresholds: dict = field(default_factory=dict)
    num_impostors: int = 0
    auc: float | None = None
    per_pair = None

    def to_dict(self, with_roc: bool = False) -> dict:
        return result_dict(self, with_roc)


def result_dict(result, with_roc: bool = False) -> dict:
    """A dataclass result as JSON-ready data: its fields but the per-pair arrays (the ROC only ``with_roc``) and its
    headline accuracy."""
    d = {f.name: getattr(result, f.name) for f in fields(result) if f.name != "per_pair"}
    d = {k: asdict(v) if is_dataclass(v) else v for k, v in d.items()}
    d["accuracy"] = result.accuracy
    if not with_roc:
        d.pop("roc", None)
    return jsonable(d)
