"""Closed-set identification of probes against a gallery: the CMC (rank-k rates) and mAP, blockwise, and the result
of a gallery/probe protocol (TinyFace, SCface).

Rules, stated in every report: cosine similarity of L2-normalised features; a probe's rank is 1 + the number of
non-mate gallery entries scoring at least as high as its best mate (a tie against the mate counts as a failure, as
MegaFace's devkit counts it); average precision over the probe's ranked gallery with non-mates placed before mates
at equal scores (the pessimistic order); mAP the mean over probes with at least one mate. Probes without a mate in
the gallery are left out of both and counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from frtrain.evaluation.intervals import dense_clusters, rate_interval
from frtrain.evaluation.results import WithoutPairs, pct

RANKS = (1, 5, 10, 20)
RULE = ("rank: 1 + non-mates scoring >= the best mate (ties count against the probe); AP with non-mates before mates "
        "at equal scores; cosine of L2-normalised features")


def normalized(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def rank_and_ap(probes: np.ndarray, probe_ids: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray,
                block_elements: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
    """Per probe: (rank of the best mate (0 where none), average precision (nan where none)), in blocks of probes
    holding at most ``block_elements`` similarities (TinyFace's 153K distractors: ~50 probes a block).

    ``probes`` (P, d), ``gallery`` (G, d): features (normalised here); ``*_ids``: identities (P,), (G,).
    """
    p, g = normalized(probes), normalized(gallery)
    block = max(1, block_elements // max(len(g), 1))
    ranks, aps = np.zeros(len(p), np.int64), np.full(len(p), np.nan)
    for lo in range(0, len(p), block):
        sim = p[lo:lo + block] @ g.T  # (b, G)
        mate = probe_ids[lo:lo + block, None] == gallery_ids[None, :]
        has = mate.any(axis=1)
        best = np.where(mate, sim, -np.inf).max(axis=1)
        ranks[lo:lo + block] = np.where(has, 1 + ((sim >= best[:, None]) & ~mate).sum(axis=1), 0)
        # AP: sort by falling score, non-mates first among equals (lexsort: last key is primary)
        order = np.lexsort((mate, -sim), axis=1)
        hits = np.take_along_axis(mate, order, axis=1)
        cum = np.cumsum(hits, axis=1)
        precision = cum / np.arange(1, hits.shape[1] + 1)[None, :]
        n = hits.sum(axis=1)
        ap = (precision * hits).sum(axis=1) / np.maximum(n, 1)
        aps[lo:lo + block] = np.where(has, ap, np.nan)
    return ranks, aps


def cmc(ranks: np.ndarray, ks=RANKS) -> dict[str, float | None]:
    """Rank-k identification rates of the probes with a mate (``ranks`` > 0)."""
    mated = ranks[ranks > 0]
    return {f"rank{k}": (float(np.mean(mated <= k)) if len(mated) else None) for k in ks}


@dataclass
class IdentificationResult(WithoutPairs):
    """Scores of a gallery/probe protocol: one row per setting (e.g. with and without distractors, or per distance);
    ``accuracy`` (the headline) is the rank-1 of the first setting."""

    name: str
    settings: dict  # setting name -> {"probes", "gallery", "unmated_probes", "rank1", ..., "mAP"}
    options: dict  # what decides the numbers (interpolation, distractors, the rules)

    caption = ("Identification (closed set): rank-k rates (CMC) of the probes with a mate in the gallery, and mAP; "
               f"{RULE}; rank-1's 95% interval in brackets: a cluster bootstrap over the probes' identities.")

    @property
    def accuracy(self) -> float:
        return next(iter(self.settings.values()))["rank1"] or 0.0

    def headline(self) -> str:
        first = next(iter(self.settings))
        return f"rank-1 {pct(self.accuracy)}% ({first})"

    def scalars(self) -> dict[str, float]:
        out = {}
        for setting, row in self.settings.items():
            out.update({f"{setting}/{k}": v for k, v in row.items() if isinstance(v, float)})
        return out

    def table(self) -> dict[str, str]:
        row = {"benchmark": self.name}
        for setting, r in self.settings.items():
            row[f"{setting}: rank-1"] = pct(r.get("rank1")) + _interval_text(r.get("rank1_interval"))
            row[f"{setting}: mAP"] = pct(r.get("mAP"))
        row["time (s)"] = f"{self.seconds:.1f}"
        return row

    def details(self) -> list[str]:
        ks = [k for k in ("rank1", "rank5", "rank10", "rank20") if any(k in r for r in self.settings.values())]
        lines = ["", f"{self.name} (%): " + "; ".join(f"{k} {v}" for k, v in self.options.items()), "",
                 "| setting | probes | gallery | unmated probes | " + " | ".join(ks) + " | mAP |",
                 "|---|---:|---:|---:|" + "---:|" * (len(ks) + 1)]
        for setting, r in self.settings.items():
            lines.append(f"| {setting} | {r['probes']} | {r['gallery']} | {r['unmated_probes']} | "
                         + " | ".join(pct(r.get(k)) for k in ks) + f" | {pct(r.get('mAP'))} |")
        return lines


def _interval_text(interval: dict | None) -> str:
    return f" [{pct(interval['low'])}, {pct(interval['high'])}]" if interval else ""


def identification_setting(probes, probe_ids, gallery, gallery_ids, ks=RANKS, with_ap: bool = True,
                           resamples: int = 0) -> dict:
    """One row of an :class:`IdentificationResult`: counts, rank-k rates and mAP; with ``resamples``, rank-1's 95%
    interval from the cluster bootstrap over the probes' identities (``rank1_interval``)."""
    probe_ids = np.asarray(probe_ids)
    ranks, aps = rank_and_ap(probes, probe_ids, gallery, np.asarray(gallery_ids))
    row = {"probes": int(len(probes)), "gallery": int(len(gallery)), "unmated_probes": int((ranks == 0).sum())}
    row.update(cmc(ranks, ks))
    if with_ap:
        mated = aps[~np.isnan(aps)]
        row["mAP"] = float(mated.mean()) if len(mated) else None
    if resamples and (ranks > 0).any():
        clusters, count = dense_clusters(probe_ids[ranks > 0].tolist())
        row["rank1_interval"] = rate_interval(ranks[ranks > 0] == 1, clusters, count, "probe identities",
                                              resamples).to_dict()
    return row
