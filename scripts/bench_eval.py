"""Evaluator throughput: pairs/s and images/s for a 6,000-pair benchmark, on CPU (and CUDA when present).

    python scripts/bench_eval.py                          # a synthetic 6,000-pair .bin (112x112)
    python scripts/bench_eval.py --lfw $LFW # real LFW, pairs.txt layout (6,000 pairs)

For each model: ``decode`` (every distinct image decoded and resized once, in DataLoader workers, no
model) and ``score`` (the whole frtrain-eval path: decode in workers while the model embeds the images and
their flips under torch.inference_mode, then the 10-fold protocol). Median of ``--repeats`` runs. Weights are
random: throughput does not depend on them. Writes docs/bench_eval.json and a section of docs/benchmarks.md.

    python scripts/bench_eval.py --lfw $LFW --sets 10 --models iresnet18 --forward-batch 8 16 32 auto --memory

``--forward-batch`` scores with each number of images per forward pass (``eval.batch_size``; ``auto`` chooses it
from ``eval.memory_budget_mb``, 300 MiB); ``--memory`` runs each score in a fresh child process and reports its
peak resident memory above what it held before scoring (model and image list loaded; the decoding workers are
separate processes and not counted).
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
MODELS = {"iresnet_tiny": {}, "mobilefacenet": {}, "iresnet18": {}, "iresnet50": {}}


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
        sets = f", sets {args.sets}" if args.sets else ""
        return lfw_benchmark(args.lfw, name="lfw", sets=args.sets), f"LFW pairs.txt layout ($LFW{sets})"
    cache = os.environ.get("FRTRAIN_CACHE") or os.path.join(tempfile.gettempdir(), "frtrain-bench-cache")
    pairs = getattr(args, "synthetic_pairs", 6000)
    path = synthetic_verification_bin(cache, num_identities=max(20, pairs // 6), images_per_identity=8,
                                      num_pairs=pairs, image_size=112, seed=0)
    return bin_benchmark(str(path), name=f"synthetic{pairs}"), f"synthetic .bin of {pairs:,} pairs, 112x112 JPEG"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def score_memory(args, model_name: str, forward_batch) -> dict:
    """In a fresh child process: peak RSS growth of one score of the benchmark, and its images/s."""
    import subprocess

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--worker", model_name, str(forward_batch), str(args.workers)]
    cmd += (["--lfw", args.lfw] if args.lfw else []) + (["--sets", *map(str, args.sets)] if args.sets else [])
    cmd += ["--synthetic-pairs", str(args.synthetic_pairs)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_eval: the memory run of {model_name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_worker(argv) -> None:
    import torch

    from frtrain.evaluation.embed import Embedder

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("forward_batch")
    ap.add_argument("workers", type=int)
    ap.add_argument("--lfw")
    ap.add_argument("--sets", type=int, nargs="*")
    ap.add_argument("--synthetic-pairs", type=int, default=6000)
    args = ap.parse_args(argv)
    bench, _ = benchmark(args)
    backbone = build_backbone(args.model)
    batch = args.forward_batch if args.forward_batch == "auto" else int(args.forward_batch)
    embedder = Embedder(backbone, torch.device("cpu"), batch_size=batch, num_workers=args.workers)
    chosen = embedder.forward_batch
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    t = time.perf_counter()
    acc = bench.score(embedder).accuracy
    seconds = time.perf_counter() - t
    print(json.dumps({"model": args.model, "forward_batch": args.forward_batch, "images_per_forward": chosen,
                      "peak_growth_bytes": (_rss_kib("VmHWM") - before) * 1024, "rss_before_bytes": before * 1024,
                      "seconds": seconds, "images_per_s": bench.num_images / seconds, "accuracy": acc}))


def measure(bench, model_name: str, device: str, workers: int, repeats: int, batch) -> list[dict]:
    import torch

    from frtrain.evaluation.embed import DECODE_BATCH, Embedder, Resized, decode_all

    backbone = build_backbone(model_name).to(device)
    embedder = Embedder(backbone, torch.device(device), batch_size=batch, num_workers=workers)
    rows = []
    decode = []
    for _ in range(repeats):
        t = time.perf_counter()
        decode_all(Resized(bench.load, embedder.input_size), bench.num_images, DECODE_BATCH, workers)
        decode.append(time.perf_counter() - t)
    score, acc = [], None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        acc = bench.score(embedder).accuracy
        score.append(time.perf_counter() - t)
    for stage, times in (("decode", decode), ("score", score)):
        s = statistics.median(times)
        rows.append({"model": model_name, "input": f"{embedder.input_size[0]}x{embedder.input_size[1]}",
                     "device": device, "workers": workers, "stage": stage, "seconds": s,
                     "forward_batch": str(batch), "images_per_forward": embedder.forward_batch,
                     "pairs_per_s": bench.num_pairs / s, "images_per_s": bench.num_images / s,
                     "times": times, **({"accuracy": acc} if stage == "score" else {})})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [BEGIN, "## Evaluator throughput (scripts/bench_eval.py)", "",
             f"On {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads; "
             f"{meta['benchmark']}: {meta['pairs']} pairs, {meta['images']} distinct images (each decoded once; "
             "`score` embeds each image and its flip, `per forward` images at a time). Median of the runs "
             "given. Random weights. Each row's command is in docs/bench_eval.json.", "",
             "| model | input | device | workers | stage | per forward | runs | seconds | pairs/s | images/s |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        per = "" if r["stage"] == "decode" else f"{r.get('forward_batch', '32')}" + (
            f" ({r['images_per_forward']})" if r.get("forward_batch") == "auto" else "")
        lines.append(f"| {r['model']} | {r['input']} | {r['device']} | {r['workers']} | {r['stage']} | {per} | "
                     f"{len(r['times'])} | {r['seconds']:.1f} | {r['pairs_per_s']:.1f} | {r['images_per_s']:.1f} |")
    memory = meta.get("memory") or []
    if memory:
        base = next((m for m in memory if m["forward_batch"] == "32"), memory[0])
        lines += ["", f"Peak memory of one score, each in a fresh process (`{meta.get('memory_command', meta['command'])}`): resident memory above "
                      "what the process held before scoring (model and image list loaded); ratios against 32 images "
                      "per forward (the fixed CPU batch before `eval.batch_size` was honoured), same run.", "",
                  "| model | images per forward | peak growth MiB | images/s | speed vs 32 |", "|---|---:|---:|---:|---:|"]
        for m in memory:
            label = m["forward_batch"] + (f" = {m['images_per_forward']}" if m["forward_batch"] == "auto" else "")
            lines.append(f"| {m['model']} | {label} | {m['peak_growth_bytes'] / 2**20:.0f} | {m['images_per_s']:.1f} | "
                         f"{m['images_per_s'] / base['images_per_s']:.2f}x |")
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
    ap.add_argument("--forward-batch", nargs="+", default=["auto"], help="images per forward pass: numbers or auto")
    ap.add_argument("--sets", type=int, nargs="*", help="LFW pairs sets to score (default: all)")
    ap.add_argument("--synthetic-pairs", type=int, default=6000, help="pairs of the synthetic .bin (without --lfw)")
    ap.add_argument("--memory", action="store_true", help="peak memory of each score, in a child process")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", nargs="+", default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_eval.json")
    ap.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)

    import torch

    bench, described = benchmark(args)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    memory = []
    for device in devices:
        for m in args.models:
            for fb in args.forward_batch:
                fb = fb if fb == "auto" else int(fb)
                if args.memory and device == "cpu":
                    memory.append(score_memory(args, m, fb))
                    print(json.dumps(memory[-1]), flush=True)
                else:
                    rows += measure(bench, m, device, args.workers, args.repeats, fb)
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "times"}), flush=True)
    meta = {"command": "python scripts/bench_eval.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()} {os.cpu_count()} cores"
                       + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "benchmark": described,
            "pairs": bench.num_pairs, "images": bench.num_images, "repeats": args.repeats, "memory": memory}
    if args.json.is_file():  # keep earlier rows of the models/devices not measured now (same benchmark)
        old = json.loads(args.json.read_text())
        if not memory:
            meta["memory"] = old["meta"].get("memory", [])
        if old["meta"]["benchmark"] == meta["benchmark"] or memory:
            done = {(r["model"], r["device"]) for r in rows}
            rows = [r for r in old["rows"] if (r["model"], r["device"]) not in done] + rows
    for r in rows:
        r.setdefault("command", meta["command"])
        r.setdefault("repeats", args.repeats)
    write_docs(rows, meta, args.json, args.markdown)
    print(markdown(rows, meta))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        memory_worker(sys.argv[2:])
    else:
        main()
