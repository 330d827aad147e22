"""Coverage of frtrain-compare's paired intervals on planted heads: how often the 95% interval holds the true difference.

    python scripts/bench_coverage.py                     # 400 simulations for each planted difference (0 and 2 points)

Each simulation draws people from a population in which each person c has a base accuracy p_c ~ U(0.4, 0.6) and a
person-level difference between the two heads d_c = delta + U(-0.35, 0.35) (what identity-level correlation does: one
person's pairs favour one head together). A benchmark holds ``people`` people and ``pairs_per_person`` pairs per
person, half of one person (genuine), half of two (impostor: the mean of their p and d); each seed draws every pair's
outcome for head A (probability p) and head B (p - d) independently. The true difference is delta (the population
mean of d). The clustered interval (frtrain-compare: seeds and people resampled) and the interval that resamples
pairs as if independent (frtrain-compare before identity clusters) are scored by how often they hold delta. Writes
docs/bench_coverage.json and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
BEGIN, END = "<!-- bench_coverage:begin -->", "<!-- bench_coverage:end -->"


def planted(rng, people: int, pairs_per_person: int, seeds: int, delta: float, spread: float = 0.35):
    """(correct_a, correct_b) (seeds, pairs) and the pairs' people (pairs, 2) of one simulated benchmark."""
    p = rng.uniform(0.4, 0.6, people)
    d = delta + rng.uniform(-spread, spread, people)
    n = people * pairs_per_person
    a = np.repeat(np.arange(people), pairs_per_person)
    b = np.where(np.arange(n) % 2 == 0, a, rng.integers(0, people, n))
    prob_a, diff = (p[a] + p[b]) / 2, (d[a] + d[b]) / 2
    correct_a = rng.random((seeds, n)) < prob_a
    correct_b = rng.random((seeds, n)) < prob_a - diff
    return correct_a, correct_b, np.stack([a, b], 1)


def simulate(simulations: int = 400, people: int = 100, pairs_per_person: int = 30, seeds: int = 3,
             resamples: int = 1000, delta: float = 0.02, seed: int = 0) -> tuple[float, float]:
    """(coverage of the clustered interval, coverage of the pair-level interval) over ``simulations`` benchmarks."""
    from frtrain.evaluation.paired_stats import paired_bootstrap

    rng = np.random.default_rng(seed)
    hits_clustered = hits_pairs = 0
    for k in range(simulations):
        correct_a, correct_b, clusters = planted(rng, people, pairs_per_person, seeds, delta)
        c = paired_bootstrap(correct_a, correct_b, resamples, seed=k, clusters=clusters)
        n = paired_bootstrap(correct_a, correct_b, resamples, seed=k)
        hits_clustered += c.low <= delta <= c.high
        hits_pairs += n.low <= delta <= n.high
    return hits_clustered / simulations, hits_pairs / simulations


def markdown(payload: dict) -> str:
    a = payload["args"]
    lines = [BEGIN, "## Coverage of paired intervals (scripts/bench_coverage.py)", "",
             f"`{payload['command']}` on {payload['machine']}: {a['simulations']} simulated benchmarks per planted "
             f"difference, {a['people']} people x {a['pairs_per_person']} pairs, {a['seeds']} seeds, "
             f"{a['resamples']} resamples; person-level heterogeneity of the difference U(-0.35, 0.35). Coverage = "
             "how often the 95% interval holds the planted difference (target 92-98%).", "",
             "| planted difference (points) | clustered: seeds and people resampled | pairs resampled as independent "
             "| seconds |", "|---:|---:|---:|---:|"]
    for r in payload["rows"]:
        lines.append(f"| {100 * r['delta']:.1f} | {100 * r['clustered']:.1f}% | {100 * r['pairs']:.1f}% | "
                     f"{r['seconds']:.0f} |")
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> None:
    from benchdocs import run_record, write_section

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--simulations", type=int, default=400)
    ap.add_argument("--people", type=int, default=100)
    ap.add_argument("--pairs-per-person", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--deltas", type=float, nargs="+", default=[0.0, 0.02])
    ap.add_argument("--out-json", type=Path, default=ROOT / "docs" / "bench_coverage.json")
    ap.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    rows = []
    for delta in args.deltas:
        start = time.perf_counter()
        clustered, pairs = simulate(args.simulations, args.people, args.pairs_per_person, args.seeds, args.resamples,
                                    delta)
        rows.append({"delta": delta, "clustered": clustered, "pairs": pairs, "seconds": time.perf_counter() - start})
        print(f"delta {delta}: clustered {clustered:.3f}, pairs {pairs:.3f}", flush=True)
    payload = run_record("bench_coverage.py", argv, args, rows)
    write_section(markdown(payload), BEGIN, END, args.out_md, args.out_json, payload)
    print(markdown(payload))


if __name__ == "__main__":
    main()
