"""Evaluator throughput: pairs/s and images/s for a 6,000-pair benchmark, on CPU (and CUDA when present).

    python scripts/bench_eval.py                          # a synthetic 6,000-pair .bin (112x112)
    python scripts/bench_eval.py --lfw $LFW # real LFW, pairs.txt layout (6,000 pairs)

For each model: ``decode`` (every distinct image decoded and resized once, in DataLoader workers, no
model) and ``score`` (the whole frtrain-eval path: decode in workers while the model embeds the images and
their flips under torch.inference_mode, then the 10-fold protocol). Median of ``--repeats`` runs. Weights are
random: throughput does not depend on them. Writes docs/bench_eval.json and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- bench_eval:begin -->", "<!-- bench_eval:end -->"
MODELS = {"iresnet_tiny": {}, "mobilefacenet": {}, "iresnet18": {}}


def build_backbone(name: str):
    from frtrain.config import compose

    from frtrain.engine.build import build

    cfg = compose("train", [f"backbone={name}"])
    return build("backbone", cfg.backbone).eval()


def benchmark(args):
    from frtrain.evaluation.benchmarks import bin_benchmark
    from frtrain.evaluation.lfw import lfw_benchmark
    from frtrain.data.synthetic import synthetic_verification_bin

    if args.lfw:
        return lfw_benchmark(args.lfw, name="lfw"), f"LFW pairs.txt layout ({args.lfw})"
    cache = os.environ.get("FRTRAIN_CACHE") or os.path.join(tempfile.gettempdir(), "frtrain-bench-cache")
    path = synthetic_verification_bin(cache, num_identities=1000, images_per_identity=8, num_pairs=6000,
                                      image_size=112, seed=0)
    return bin_benchmark(str(path), name="synthetic6000"), "synthetic .bin, 112x112 JPEG"


def measure(bench, model_name: str, device: str, workers: int, repeats: int, batch: int) -> list[dict]:
    import torch

    from frtrain.evaluation.embed import decode_all
    from frtrain.evaluation.verify import Verifier, _Resized

    backbone = build_backbone(model_name).to(device)
    verifier = Verifier([bench], backbone.input_size, backbone.mean, backbone.std, batch_size=batch,
                        num_workers=workers, cache_images=False)
    rows = []
    decode = []
    for _ in range(repeats):
        t = time.perf_counter()
        decode_all(_Resized(bench.load, verifier.input_size), bench.num_images, batch, workers)
        decode.append(time.perf_counter() - t)
    score, acc = [], None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        acc = verifier.score(backbone, bench, torch.device(device)).accuracy
        score.append(time.perf_counter() - t)
    for stage, times in (("decode", decode), ("score", score)):
        s = statistics.median(times)
        rows.append({"model": model_name, "input": f"{verifier.input_size[0]}x{verifier.input_size[1]}",
                     "device": device, "workers": workers, "stage": stage, "seconds": s,
                     "pairs_per_s": bench.num_pairs / s, "images_per_s": bench.num_images / s,
                     "times": times, **({"accuracy": acc} if stage == "score" else {})})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [BEGIN, "## Evaluator throughput (scripts/bench_eval.py)", "",
             f"On {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads; "
             f"{meta['benchmark']}: {meta['pairs']} pairs, {meta['images']} distinct images (each decoded once; "
             "`score` embeds each image and its flip, 32 images per forward pass on CPU). Median of the runs "
             "given. Random weights. Each row's command is in docs/bench_eval.json.", "",
             "| model | input | device | workers | stage | runs | seconds | pairs/s | images/s |",
             "|---|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['input']} | {r['device']} | {r['workers']} | {r['stage']} | "
                     f"{len(r['times'])} | {r['seconds']:.1f} | {r['pairs_per_s']:.1f} | {r['images_per_s']:.1f} |")
    if "cuda" not in {r["device"] for r in rows}:
        lines += ["", "CUDA: not measured (no GPU on the machine that ran this)."]
    lines.append(END)
    return "\n".join(lines)


def write_docs(rows: list[dict], meta: dict, out_json: Path, out_md: Path) -> None:
    from benchdocs import write_section

    write_section(markdown(rows, meta), BEGIN, END, out_md, out_json, {"meta": meta, "rows": rows})


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lfw", help="real LFW directory (pairs.txt layout); default: a synthetic 6,000-pair .bin")
    ap.add_argument("--models", nargs="+", default=["iresnet_tiny", "mobilefacenet"], choices=sorted(MODELS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", nargs="+", default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_eval.json")
    ap.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)

    import torch

    bench, described = benchmark(args)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for device in devices:
        for m in args.models:
            rows += measure(bench, m, device, args.workers, args.repeats, args.batch)
            print(json.dumps({k: v for k, v in rows[-1].items() if k != "times"}), flush=True)
    meta = {"command": "python scripts/bench_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()} {os.cpu_count()} cores"
                       + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "benchmark": described,
            "pairs": bench.num_pairs, "images": bench.num_images, "repeats": args.repeats}
    if args.json.is_file():  # keep earlier rows of the models/devices not measured now (same benchmark)
        old = json.loads(args.json.read_text())
        if old["meta"]["benchmark"] == meta["benchmark"]:
            done = {(r["model"], r["device"]) for r in rows}
            rows = [r for r in old["rows"] if (r["model"], r["device"]) not in done] + rows
    for r in rows:
        r.setdefault("command", meta["command"])
        r.setdefault("repeats", args.repeats)
    write_docs(rows, meta, args.json, args.markdown)
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
