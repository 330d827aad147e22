"""MegaFace Challenge 1 at full size: ``frtrain-eval benchmarks=[megaface]`` on 1,000,000 distractors, time and peak RSS.

    python scripts/bench_megaface.py                        # 1M distractors x 3,530 probes, d = 512 (~3 GB of disk)
    python scripts/bench_megaface.py --distractors 100000   # quicker

A pack in insightface's layout without images: ``facescrub_lst`` (80 identities, 3,530 probes as FaceScrub's),
``megaface_lst``, the two noise lists (1% of the probes, 0.1% of the distractors) and the features as
``benchmarks.megaface.features`` reads them (``facescrub.npy``: identity centres plus noise, so rank-1 is neither 0 nor
1; ``megaface.npy``: random directions, float32, 2 GB at 1M x 512). The command runs as a child process (a tiny
checkpoint: the features are given, no image is embedded); its peak resident memory comes from ``wait4``. The pages of
the memory-mapped feature file it reads count there (the OS can drop them), so the table also gives the peak minus
the file's size. Writes docs/bench_megaface.json and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
BEGIN, END = "<!-- bench_megaface:begin -->", "<!-- bench_megaface:end -->"
SIZES = (10, 100, 1000, 10_000, 100_000, 1_000_000)


def write_pack(root: Path, distractors: int, identities: int, probes: int, dim: int, seed: int = 0) -> None:
    """The lists, noise lists and feature files (see the module docstring); the distractors a chunk at a time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    per = np.full(identities, probes // identities) + (np.arange(identities) < probes % identities)
    names = [f"Person_{i:03d}" for i in range(identities)]
    fs = [f"{n}/{n}_{k + 1}.png" for n, c in zip(names, per) for k in range(c)]
    (root / "facescrub_lst").write_text("\n".join(fs) + "\n")
    with open(root / "megaface_lst", "w") as f:
        for d in range(distractors):
            f.write(f"{d % 1000:03d}/{d // 1000 % 100:02d}/{d:07d}.jpg\n")
    noisy_fs = rng.choice(len(fs), max(1, len(fs) // 100), replace=False)
    (root / "facescrub_noises.txt").write_text("".join(f"{fs[i].split('/')[1]}\n" for i in sorted(noisy_fs)))
    noisy_mf = rng.choice(distractors, max(1, distractors // 1000), replace=False)
    (root / "megaface_noises.txt").write_text(
        "".join(f"{i}\t{i % 1000:03d}/{i // 1000 % 100:02d}/{i:07d}.jpg\n" for i in sorted(noisy_mf)))
    feats = root / "features"
    feats.mkdir(exist_ok=True)
    centres = rng.standard_normal((identities, dim)).astype(np.float32)
    ids = np.repeat(np.arange(identities), per)
    probe = centres[ids] + 1.6 * rng.standard_normal((len(fs), dim)).astype(np.float32)
    np.save(feats / "facescrub.npy", probe)
    out = np.lib.format.open_memmap(feats / "megaface.npy", mode="w+", dtype=np.float32, shape=(distractors, dim))
    for lo in range(0, distractors, 65536):
        hi = min(distractors, lo + 65536)
        out[lo:hi] = rng.standard_normal((hi - lo, dim), dtype=np.float32)
    out.flush()
    del out


def tiny_checkpoint(path: Path) -> None:
    """A frtrain checkpoint of a tiny IResNet (frtrain-eval needs a model; the features are given)."""
    import torch

    from frtrain.backbones import IResNet
    from frtrain.engine import checkpoint as checkpoint_io

    model = IResNet(depth=None, layers=[1, 1, 1, 1], width=8, embedding_size=32, input_size=40)
    meta = {"backbone": {"_target_": "frtrain.backbones.IResNet", "depth": None, "layers": [1, 1, 1, 1], "width": 8,
                         "embedding_size": 32, "input_size": 40, "dropout": 0.0},
            "head": {"_target_": "frtrain.heads.ArcFace"}, "num_classes": 10, "embedding_size": 32,
            "input_size": [40, 40], "mean": [0.5] * 3, "std": [0.5] * 3}
    torch.save({"format": checkpoint_io.FORMAT, "version": checkpoint_io.VERSION, "meta": meta,
                "model": model.state_dict()}, path)


def run_eval(root: Path, ckpt: Path, out: Path, sizes, clean: str) -> dict:
    """``frtrain-eval`` as a child process: (seconds, peak RSS in MiB, the report's rows)."""
    cmd = [sys.executable, "-m", "frtrain.evaluate", f"model={ckpt}", "benchmarks=[megaface]",
           f"benchmarks.megaface.root={root}", f"benchmarks.megaface.features={root / 'features'}",
           f"benchmarks.megaface.sizes=[{','.join(str(s) for s in sizes)}]", f"benchmarks.megaface.clean={clean}",
           f"output_dir={out}", "roc_plot=false", f"hydra.run.dir={out}/hydra"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"frtrain-eval failed:\n{output[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024, "result": report["results"]["megaface"]}


def markdown(payload: dict) -> str:
    a = payload["args"]
    file_mib = a["distractors"] * a["dim"] * 4 / 2**20
    lines = [BEGIN, "## MegaFace Challenge 1 at full size (scripts/bench_megaface.py)", "",
             f"`{payload['command']}` on {payload['machine']}, torch {payload['torch']}: `frtrain-eval "
             f"benchmarks=[megaface]` with given features (`benchmarks.megaface.features`, no image embedded), "
             f"{a['probes']:,} probes of {a['identities']} identities against up to {a['distractors']:,} random "
             f"distractors, d = {a['dim']}; every size of {payload['sizes']} scored in one command (rank-1 over every "
             f"(probe, mate) trial, CMC to 10, TAR at FAR 1e-6). Peak RSS of the child process (`wait4`); the "
             f"distractor file is {file_mib:,.0f} MiB and its pages count there while mapped.", "",
             "| clean | wall time (s) | peak RSS (MiB) | peak RSS minus the feature file (MiB) | rank-1 at the largest N (%) "
             "| TAR@FAR=1e-6 (%) |", "|---|---:|---:|---:|---:|---:|"]
    for r in payload["rows"]:
        largest = max(r["result"]["sizes"], key=int)
        row = r["result"]["sizes"][largest]
        lines.append(f"| {r['clean']} | {r['seconds']:.0f} | {r['peak_rss_mib']:,.0f} | "
                     f"{r['peak_rss_mib'] - file_mib:,.0f} | {100 * row['rank1']:.2f} | {100 * row['tar_at_far']:.2f} |")
    lines += ["", "The issue's budget: 1M distractors x ~3,500 probes within 8 GB of RAM.", END]
    return "\n".join(lines)


def main(argv=None) -> None:
    from benchdocs import run_record, write_section

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--distractors", type=int, default=1_000_000)
    ap.add_argument("--identities", type=int, default=80)
    ap.add_argument("--probes", type=int, default=3530)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clean", nargs="+", default=["insightface"], help="cleaning modes to run (one command each)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the pack goes (default: a temporary directory)")
    ap.add_argument("--out-json", type=Path, default=ROOT / "docs" / "bench_megaface.json")
    ap.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    sizes = [s for s in SIZES if s <= args.distractors]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp) / "megaface"
        t0 = time.perf_counter()
        write_pack(root, args.distractors, args.identities, args.probes, args.dim)
        print(f"pack written in {time.perf_counter() - t0:.0f} s", flush=True)
        tiny_checkpoint(Path(tmp) / "tiny.pt")
        rows = []
        for clean in args.clean:
            r = run_eval(root, Path(tmp) / "tiny.pt", Path(tmp) / f"eval-{clean}", sizes, clean)
            rows.append({"clean": clean, **r})
            print(f"clean={clean}: {r['seconds']:.0f} s, peak RSS {r['peak_rss_mib']:,.0f} MiB", flush=True)
    payload = run_record("bench_megaface.py", argv, args, rows, sizes=sizes)
    write_section(markdown(payload), BEGIN, END, args.out_md, args.out_json, payload)
    print(markdown(payload))


if __name__ == "__main__":
    main()
