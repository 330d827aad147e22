"""MegaFace Challenge 1's arithmetic on features: insightface's cleaning, rank-1/CMC over every (probe, mate) trial
and TAR at FAR=1e-6, blockwise over distractor features that may be memory-mapped; and the result. The protocol and
its rules are stated in :mod:`frtrain.evaluation.megaface`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from frtrain.evaluation.intervals import dense_clusters, rate_interval
from frtrain.evaluation.results import WithoutPairs, pct

FAR = 1e-6
RANKS = 10
#: insightface's noisy distractor, [v, 100] against a unit probe [p, 0]: 1 - |p - [v, 100]|^2 / 2 = p.v - 5000
NOISY_DISTRACTOR_PENALTY = 5000.0


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cleaned_probes(feats: np.ndarray, ids: np.ndarray, noise: np.ndarray, clean: str, seed: int = 0):
    """(probe features, ids, kept mask): insightface's centre replacement, the plain drop, or nothing."""
    feats = _unit(feats)
    keep = np.ones(len(feats), bool)
    if clean == "drop":
        keep = ~noise
    elif clean == "insightface" and noise.any():
        rng = np.random.default_rng(seed)
        feats = feats.copy()
        for i in np.flatnonzero(noise):
            centre = feats[(ids == ids[i]) & ~noise].sum(axis=0)
            f = centre + rng.uniform(-0.001, 0.001, feats.shape[1]).astype(np.float32)
            feats[i] = f / max(float(np.linalg.norm(f)), 1e-12)
    return feats, ids, keep


def score_features(probes, probe_ids, distractors, sizes: dict, probe_noise=None, distractor_noise=None,
                   clean: str = "none", block: int = 8192, far: float = FAR, resamples: int = 0) -> dict:
    """Per distractor count N: rank-1..10 (CMC) over every (probe, mate) trial and TAR at ``far``. ``distractors``
    may be a memmap; it is read ``block`` rows at a time. Returns ``{N: {...}}``."""
    probe_ids = np.asarray(probe_ids)
    p_noise = np.zeros(len(probes), bool) if probe_noise is None else np.asarray(probe_noise)
    d_noise = np.zeros(len(distractors), bool) if distractor_noise is None else np.asarray(distractor_noise)
    feats, ids, keep = cleaned_probes(np.asarray(probes), probe_ids, p_noise, clean)
    feats, ids = feats[keep], ids[keep]
    genuine_sim = feats @ feats.T  # (P, P), the probes against each other
    same = ids[:, None] == ids[None, :]
    np.fill_diagonal(same, False)
    iu = np.triu_indices(len(ids), 1)
    genuine_scores = genuine_sim[iu][same[iu]]
    rows = {}
    for n, index in sorted(sizes.items()):
        index = np.asarray(index)
        top, kept_imp = _top_scores(feats, distractors, index, d_noise, clean, block,
                                    k_rank=RANKS, k_far=int(math.floor(far * len(feats) * len(index))) + 1)
        # each trial (probe i, mate j): how many distractors score at least s_ij (only up to RANKS matter)
        ranks = []
        for i in range(len(ids)):
            mates = genuine_sim[i][same[i]]
            ranks.append(1 + (top[i][None, :] >= mates[:, None]).sum(axis=1))
        trial_ids = np.concatenate([np.full(len(r), ids[i]) for i, r in enumerate(ranks)]) if ranks else ids[:0]
        ranks = np.concatenate(ranks) if ranks else np.zeros(0, np.int64)
        impostors = len(feats) * len(index)
        allowed = int(math.floor(far * impostors))
        ordered = np.sort(kept_imp)[::-1]
        threshold = float(np.nextafter(ordered[allowed], np.inf)) if allowed < len(ordered) else -np.inf
        rows[n] = {"distractors": int(len(index)), "trials": int(len(ranks)),
                   "cmc": [float(np.mean(ranks <= r)) if len(ranks) else None for r in range(1, RANKS + 1)],
                   "rank1": float(np.mean(ranks <= 1)) if len(ranks) else None,
                   "genuine_pairs": int(len(genuine_scores)), "impostor_pairs": int(impostors),
                   "tar_at_far": float(np.mean(genuine_scores >= threshold)) if len(genuine_scores) else None,
                   "threshold": threshold}
        if resamples and len(ranks):
            clusters, count = dense_clusters(trial_ids.tolist())
            rows[n]["rank1_interval"] = rate_interval(ranks == 1, clusters, count, "FaceScrub identities",
                                                      resamples).to_dict()
    return rows


def _top_scores(probes, distractors, index, d_noise, clean, block, k_rank, k_far):
    """(per probe the ``k_rank`` highest distractor scores (P, k_rank), the ``k_far`` highest probe x distractor
    scores overall), over the distractors ``index``, read a block at a time."""
    p = len(probes)
    top = np.full((p, k_rank), -np.inf, np.float32)
    best = np.full(0, -np.inf, np.float32)
    for lo in range(0, len(index), block):
        rows = index[lo:lo + block]
        order = np.argsort(rows, kind="stable")  # read the memmap in file order
        d = np.asarray(distractors[rows[order]], dtype=np.float32)
        noise = d_noise[rows[order]]
        sim = probes @ _unit(d).T  # (P, b)
        if clean == "insightface" and noise.any():  # the extra dimension of 100: beyond every face
            sim[:, noise] -= NOISY_DISTRACTOR_PENALTY
        elif clean == "drop" and noise.any():  # never a match, never accepted
            sim[:, noise] = -np.inf
        k = min(k_rank, sim.shape[1])
        part = -np.partition(-sim, k - 1, axis=1)[:, :k]
        top = -np.partition(-np.concatenate([top, part], axis=1), k_rank - 1, axis=1)[:, :k_rank]
        flat = sim.ravel()
        kf = min(k_far, flat.size)
        best = np.concatenate([best, -np.partition(-flat, kf - 1)[:kf]])
        if len(best) > k_far:
            best = -np.partition(-best, k_far - 1)[:k_far]
    return top, best


@dataclass
class MegaFaceResult(WithoutPairs):
    """Per distractor count: rank-1, the CMC to rank 10 and TAR@FAR=1e-6; ``accuracy`` is rank-1 at the largest N."""

    name: str
    sizes: dict  # N -> row of score_features
    options: dict

    caption = ("MegaFace Challenge 1 (FaceScrub probes): rank-1 identification over every (probe, mate) trial against "
               "N distractors (a tie counts against the mate), with its 95% interval from a cluster bootstrap over the "
               "FaceScrub identities (the distractors fixed), and TAR at FAR=1e-6 (strict rule) over probe x "
               "distractor impostors; the cleaning is named beside the numbers.")

    @property
    def largest(self) -> int:
        return max(self.sizes, key=int)

    @property
    def accuracy(self) -> float:
        return self.sizes[self.largest]["rank1"] or 0.0

    def headline(self) -> str:
        r = self.sizes[self.largest]
        return (f"rank-1 {pct(r['rank1'])}% at {int(self.largest):,} distractors, TAR@FAR=1e-6 {pct(r['tar_at_far'])}% "
                f"(clean: {self.options['clean']})")

    def scalars(self) -> dict[str, float]:
        out = {}
        for n, r in self.sizes.items():
            out.update({f"{n}/rank1": r["rank1"], f"{n}/tar@far=1e-06": r["tar_at_far"]})
        return {k: v for k, v in out.items() if v is not None}

    def table(self) -> dict[str, str]:
        r = self.sizes[self.largest]
        iv = r.get("rank1_interval")
        return {"benchmark": self.name, "distractors": f"{int(self.largest):,}", "rank-1 (%)": pct(r["rank1"]),
                "rank-1 95% interval": f"[{pct(iv['low'])}, {pct(iv['high'])}] ({iv['clusters']} identities)" if iv
                else "—",
                "TAR@FAR=1e-6 (%)": pct(r["tar_at_far"]), "clean": self.options["clean"],
                "time (s)": f"{self.seconds:.1f}"}

    def details(self) -> list[str]:
        lines = ["", f"{self.name}: " + "; ".join(f"{k} {v}" for k, v in self.options.items()), "",
                 "| distractors | trials | rank-1 | rank-5 | rank-10 | TAR@FAR=1e-6 | genuine | impostors |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for n, r in sorted(self.sizes.items(), key=lambda kv: int(kv[0])):
            cmc = r["cmc"]
            lines.append(f"| {int(n):,} | {r['trials']:,} | {pct(cmc[0])} | {pct(cmc[4])} | {pct(cmc[9])} | "
                         f"{pct(r['tar_at_far'])} | {r['genuine_pairs']:,} | {r['impostor_pairs']:,} |")
        return lines
