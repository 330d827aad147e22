"""IJB-shaped evaluation at scale: template aggregation and pair scoring speed and memory, and embedding speed.

    python scripts/bench_ijb.py                       # 20,000 images, 2,000 templates, 1,000,000 pairs, d = 512
    python scripts/bench_ijb.py --ijbc                # also IJB-C's size: 469,375 images, 23,124 templates, 15.7M pairs

Scoring (``frtrain/evaluation/templates.py``): random image embeddings (image and flip, float32) in a memory-mapped file
as the embedding stage leaves them; templates of 1-4 medias of 1-5 images; 1:1 pairs (10% genuine) and a 1:N split
(two galleries, the rest probes). Each run is a fresh child process; ``peak above embeddings`` is its peak
resident memory minus what it held after opening the embedding file; the pages of the file it reads count there
(the OS can drop them), so the last column subtracts the file's size: the memory scoring itself holds.
Embedding: real JPEG loose crops (synthetic faces, 112x112) aligned from landmarks and embedded with a backbone (and
its flip), images/s through the whole stage. Median of ``--repeats``. Writes docs/bench_ijb.json and a section of
docs/benchmarks.md.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
BEGIN, END = "<!-- bench_ijb:begin -->", "<!-- bench_ijb:end -->"


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def synthetic_layout(images: int, templates: int, pairs: int, seed: int = 0):
    """(templates (N,), medias (N,), pairs (P, 2), labels (P,), subjects of the templates)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    per_template = rng.multinomial(images - templates, np.ones(templates) / templates) + 1
    tpl = np.repeat(np.arange(1, templates + 1), per_template)
    media = np.cumsum(np.r_[1, (np.diff(tpl) != 0) | (rng.random(images - 1) < 0.4)])
    subjects = np.arange(templates) // 3  # 3 templates a subject
    genuine = pairs // 10
    a = rng.integers(0, templates, pairs)
    mate = np.minimum((a // 3) * 3 + (a % 3 + 1) % 3, templates - 1)  # another template of a's subject
    b = np.where(np.arange(pairs) < genuine, mate, rng.integers(0, templates, pairs))
    b = np.where((np.arange(pairs) >= genuine) & (subjects[np.minimum(b, templates - 1)] == subjects[a]), (b + 3) % templates, b)
    labels = (subjects[a] == subjects[b]).astype(np.int8)
    return tpl, media, np.stack([a + 1, b + 1], 1), labels, subjects


def scoring_worker(images: int, templates: int, pairs: int, dim: int, tmp: str) -> dict:
    import numpy as np

    from frtrain.evaluation.metrics import roc
    from frtrain.evaluation.templates import identification_rates, pair_scores, template_features

    tpl, media, pair_ids, labels, subjects = synthetic_layout(images, templates, pairs)
    path = os.path.join(tmp, "emb.f32")
    emb = np.memmap(path, dtype=np.float32, mode="w+", shape=(images, 2, dim))
    for lo in range(0, images, 50_000):  # written as the embedding stage would, chunk by chunk
        emb[lo:lo + 50_000] = np.random.default_rng(lo).standard_normal((min(50_000, images - lo), 2, dim), dtype=np.float32)
    emb.flush()
    del emb
    raw = np.memmap(path, dtype=np.float32, mode="r", shape=(images, 2, dim))
    scores = np.ones(images, np.float32)
    base = _kib("VmRSS")
    stage_peaks = []

    def stage(fn, *args):
        """Run one stage; record its peak resident memory above what the process held when it began (MiB)."""
        before = _kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        t = time.perf_counter()
        out = fn(*args)
        stage_peaks.append(((_kib("VmHWM") - before) / 1024, (_kib("VmHWM") - base) / 1024))
        return out, time.perf_counter() - t

    (ids, feats), aggregate_s = stage(template_features, raw, scores, np.arange(images), tpl, media, "sum", False, True)
    s, pairs_s = stage(pair_scores, ids, feats, pair_ids)
    _, roc_s = stage(roc, labels, s)
    gallery = np.arange(0, templates, 3)
    probes = np.setdiff1d(np.arange(templates), gallery)
    _, ident_s = stage(identification_rates, feats[probes], subjects[probes], feats[gallery[: len(gallery) // 2]],
                       subjects[gallery[: len(gallery) // 2]])
    return {"images": images, "templates": templates, "pairs": pairs, "dim": dim,
            "aggregate_s": aggregate_s, "pair_scoring_s": pairs_s, "pairs_per_s": pairs / pairs_s, "roc_s": roc_s,
            "identification_s": ident_s, "peak_above_embeddings_mib": max(above for _, above in stage_peaks),
            "stage_growth_mib": dict(zip(("aggregation", "pair scoring", "ROC", "1:N"), (g for g, _ in stage_peaks))),
            "embedding_file_mib": images * 2 * dim * 4 / 2**20}


def embedding_speed(images: int, model: str, workers: int) -> dict:
    import numpy as np
    import torch

    from frtrain.config import compose
    from frtrain.data.synthetic import draw_image
    from frtrain.engine.build import build
    from frtrain.evaluation.align import ARCFACE_TEMPLATE
    from frtrain.evaluation.embed import Embedder
    from frtrain.evaluation.ijb_release import TemplateBenchmark
    from frtrain.evaluation.templates import embed_images

    backbone = build("backbone", compose("train", [f"backbone={model}"]).backbone).eval()
    with tempfile.TemporaryDirectory() as tmp:
        crops = Path(tmp) / "loose_crop"
        crops.mkdir()
        paths = []
        for i in range(images):
            p = crops / f"{i}.jpg"
            p.write_bytes(draw_image(0, 1, i // 5, i, 112))
            paths.append(str(p))
        lmk = np.repeat(ARCFACE_TEMPLATE[None], images, 0)
        bench = TemplateBenchmark("bench", tmp, "ijbc", paths, lmk, np.ones(images, np.float32),
                                  np.arange(images), np.arange(images), np.zeros((0, 2), int), np.zeros(0, np.int8))
        t = time.perf_counter()
        embed_images(bench, Embedder(backbone, torch.device("cpu"), batch_size=32, num_workers=workers),
                     Path(tmp) / "emb.f32")
        seconds = time.perf_counter() - t
    return {"model": model, "input": list(backbone.input_size), "images": images, "workers": workers,
            "seconds": seconds, "images_per_s": images / seconds}


def child(argv) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", *map(str, argv)], capture_output=True, text=True,
                          env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072"))
    if done.returncode != 0:
        raise SystemExit(f"bench_ijb: the run {argv} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(payload: dict) -> str:
    lines = [BEGIN, "## IJB-shaped evaluation (scripts/bench_ijb.py)", "",
             f"{payload['machine']}, PyTorch {payload['torch']}. Command: `{payload['command']}`. Scoring: random "
             "embeddings (d = 512, image and flip) in a memory-mapped file; each row a fresh process. Goals on this "
             "CPU: pair scoring at least 1,000,000 pairs/s; scoring's peak at most 300 MB above the embeddings.", "",
             "| images | templates | pairs | template aggregation (s) | pair scoring (s) | pairs/s | ROC (s) | 1:N (s) | "
             "peak above embeddings (MiB) | embedding file (MiB) | peak less the file's pages (MiB) | "
             "growth per stage: aggregation / pairs / ROC / 1:N (MiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in payload["scoring"]:
        lines.append(f"| {r['images']:,} | {r['templates']:,} | {r['pairs']:,} | {r['aggregate_s']:.1f} | "
                     f"{r['pair_scoring_s']:.2f} | {r['pairs_per_s']:,.0f} | {r['roc_s']:.1f} | {r['identification_s']:.1f} "
                     f"| {r['peak_above_embeddings_mib']:.0f} | {r['embedding_file_mib']:,.0f} | "
                     f"{r['peak_above_embeddings_mib'] - r['embedding_file_mib']:,.0f} | "
                     f"{' / '.join(f'{v:,.0f}' for v in r['stage_growth_mib'].values())} |")
    e = payload.get("embedding")
    if e:
        lines += ["", f"Embedding stage: {e['images']:,} real 112x112 JPEG loose crops aligned from landmarks and embedded "
                      f"(image and flip) by {e['model']} at {e['input'][0]}x{e['input'][1]}, {e['workers']} decoding "
                      f"workers: {e['images_per_s']:.0f} images/s ({e['seconds']:.0f} s)."]
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> None:
    from benchdocs import run_record, write_section

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ijbc", action="store_true", help="also IJB-C's size (15.7M pairs; minutes, ~2 GB of disk)")
    ap.add_argument("--embed-images", type=int, default=1000)
    ap.add_argument("--embed-model", default="iresnet_tiny")
    ap.add_argument("--out-json", type=Path, default=ROOT / "docs" / "bench_ijb.json")
    ap.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    sizes = [(20_000, 2_000, 1_000_000)] + ([(469_375, 23_124, 15_658_437)] if args.ijbc else [])
    scoring = []
    for images, templates, pairs in sizes:
        scoring.append(child(["scoring", images, templates, pairs, 512]))
        print(json.dumps(scoring[-1]), flush=True)
    embedding = child(["embedding", args.embed_images, args.embed_model, 2]) if args.embed_images else None
    payload = run_record("bench_ijb.py", argv, args, scoring=scoring, embedding=embedding)
    write_section(markdown(payload), BEGIN, END, args.out_md, args.out_json, payload)
    print(markdown(payload))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *rest = sys.argv[2:]
        with tempfile.TemporaryDirectory() as tmp:
            if kind == "scoring":
                result = scoring_worker(*map(int, rest), tmp)
            else:
                result = embedding_speed(int(rest[0]), rest[1], int(rest[2]))
        print(json.dumps(result))
    else:
        main()
