"""Training-data throughput: images/s per DataLoader worker from insightface RecordIO, identity folders and WebDataset
shards.

    python scripts/bench_data.py                               # synthetic 112x112 JPEG faces
    python scripts/bench_data.py --lfw $LFW      # real aligned LFW JPEGs (13,233 images)

The same images are read three ways: the folder tree (``data=folder``), a ``train.rec``/``train.idx`` written
from it by scripts/folder2rec.py (``data=rec``, the JPEG bytes unchanged) and WebDataset shards written by
scripts/folder2wds.py (``data=wds``: 1,000 samples a shard, read as a stream with a 1,000-sample shuffle buffer). Each sample is what training gets:
decoded, resized to 112x112 if needed, the default augmentation (horizontal flip, p = 0.5), a (3, 112, 112) uint8
tensor. Every file is read once before timing, so the page cache holds them: this measures decoding and
augmentation, not the disk.

Rows: ``main process`` (no DataLoader: the dataset indexed in a loop on one core, the cost per core; for shards the
stream's batches, collation included) and DataLoader runs with 1..N workers (batches of 128 from the training
sampler or the shard stream, as the trainer loads them).
Median of ``--repeats`` passes over ``--images`` images. Writes docs/bench_data.json and a section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- bench_data:begin -->", "<!-- bench_data:end -->"
AUGMENT = [{"_target_": "albumentations.HorizontalFlip", "p": 0.5}]  # configs/data/{folder,rec}.yaml
TARGET_PER_CORE = 1500


def source_tree(args) -> tuple[str, str]:
    """(identity-folder root, description)."""
    if args.lfw:
        return os.path.join(args.lfw, "images"), f"real LFW, aligned 112x112 JPEG ({args.lfw})"
    from frtrain.data.synthetic import generate_identity_folder

    cache = os.environ.get("FRTRAIN_CACHE") or os.path.join(tempfile.gettempdir(), "frtrain-bench-cache")
    root = os.path.join(cache, "bench_data", "synthetic112")
    generate_identity_folder(root, num_identities=500, images_per_identity=20, image_size=112, seed=0)
    return root, "synthetic faces, 112x112 JPEG (quality 95)"


def build(kind: str, root: str, rec_dir: str):
    from frtrain.data.folder import FaceFolder
    from frtrain.data.recordio import RecordFaces
    from frtrain.data.shard_stream import ShardFaces

    if kind == "wds":
        return ShardFaces(os.path.join(rec_dir, "wds"), input_size=(112, 112), augment=AUGMENT)
    if kind == "rec":
        return RecordFaces(rec_dir, input_size=(112, 112), augment=AUGMENT)
    return FaceFolder(root, input_size=(112, 112), augment=AUGMENT, index_cache=False)


def in_process(dataset, n: int) -> float:
    from frtrain.data.shard_stream import ShardFaces, ShardStream

    if isinstance(dataset, ShardFaces):  # a stream: its batches in this process
        start, seen = time.perf_counter(), 0
        for images, _, _ in ShardStream(dataset, 128, workers=0):
            seen += images.shape[0]
            if seen >= n:
                break
        return seen / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
        dataset[(i % len(dataset), i)]
    return n / (time.perf_counter() - start)


def with_loader(dataset, n: int, workers: int, batch: int) -> float:
    from frtrain.data.loader import ResumableBatchSampler, make_loader
    from frtrain.data.shard_stream import ShardFaces, ShardLoader, ShardStream

    if isinstance(dataset, ShardFaces):
        loader = ShardLoader(ShardStream(dataset, batch, workers=workers), workers, False, prefetch_factor=4)
    else:
        sampler = ResumableBatchSampler(len(dataset), batch, seed=0)
        loader = make_loader(dataset, sampler, workers, pin_memory=False, prefetch_factor=4, persistent=False)
    batches = max(1, n // batch)
    seen, start = 0, None
    for i, (images, _, _) in enumerate(loader):
        if i == 0:  # the first batch includes starting the workers
            start = time.perf_counter()
            continue
        seen += images.shape[0]
        if i >= batches:
            break
    return seen / (time.perf_counter() - start)


def markdown(payload: dict) -> str:
    lines = [BEGIN, "## Training-data throughput (scripts/bench_data.py)", "",
             f"Data: {payload['data']}; {payload['num_images']:,} images. Each sample decoded, resized to 112x112 "
             "when needed and flipped (p = 0.5), as training gets it; files in the page cache. Median of "
             f"{payload['repeats']} passes. Machine: {payload['machine']}; PyTorch {payload['torch']}. "
             f"Command: `{payload['command']}`.", "",
             "| source | loader | images/s | images/s per worker (core) | target 1,500/core |", "|---|---|---|---|---|"]
    for r in payload["rows"]:
        per = r["images_per_s"] / max(1, r["workers"])
        loader = "main process, no DataLoader" if r["workers"] == 0 else f"DataLoader, {r['workers']} worker(s)"
        lines.append(f"| {r['source']} | {loader} | {r['images_per_s']:,.0f} | {per:,.0f} | "
                     f"{'met' if per >= TARGET_PER_CORE else 'not met'} |")
    lines += ["", payload["reading"], END]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lfw", help="LFW root (images/<name>/...) instead of synthetic faces")
    p.add_argument("--images", type=int, default=4000, help="images per timed pass")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="*", default=None, help="DataLoader worker counts (default 1..cores)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--out-json", type=Path, default=ROOT / "docs" / "bench_data.json")
    args = p.parse_args(argv)

    import cv2
    import torch

    from benchdocs import run_record, write_section
    from folder2rec import main as folder2rec
    from folder2wds import main as folder2wds

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or list(range(1, cores + 1))
    root, what = source_tree(args)
    rows = []
    with tempfile.TemporaryDirectory() as rec_dir:
        folder2rec([root, rec_dir])
        folder2wds([root, os.path.join(rec_dir, "wds"), "--max-count", "1000"])
        datasets = {kind: build(kind, root, rec_dir) for kind in ("rec", "folder", "wds")}
        n = min(args.images, len(datasets["rec"]))
        for ds in datasets.values():  # warm the page cache and the decoders
            in_process(ds, min(len(ds), 2 * n))
        for kind, ds in datasets.items():
            speed = statistics.median(in_process(ds, n) for _ in range(args.repeats))
            rows.append({"source": kind, "workers": 0, "images_per_s": speed})
            print(f"{kind} main process: {speed:,.0f} images/s", flush=True)
            for w in workers:
                speed = statistics.median(with_loader(ds, n, w, args.batch) for _ in range(args.repeats))
                rows.append({"source": kind, "workers": w, "images_per_s": speed})
                print(f"{kind} {w} workers: {speed:,.0f} images/s ({speed / w:,.0f} per worker)", flush=True)
        num_images = len(datasets["rec"])
    rec_core = next(r["images_per_s"] for r in rows if r["source"] == "rec" and r["workers"] == 0)
    wds_core = next(r["images_per_s"] for r in rows if r["source"] == "wds" and r["workers"] == 0)
    reading = (f"One core decodes {rec_core:,.0f} images/s from .rec and {wds_core:,.0f} from shards "
               f"({'at or above' if rec_core >= TARGET_PER_CORE else 'below'} the {TARGET_PER_CORE:,}/core target); "
               f"16 such cores would feed {16 * rec_core:,.0f} images/s. Worker rows on this machine share its "
               f"{cores} cores with the main process, so per-worker figures above {cores - 1} worker(s) also pay "
               "for the collation and the queue.")
    payload = run_record("bench_data.py", argv, rows=rows, data=what, num_images=num_images, repeats=args.repeats,
                         reading=reading, opencv=cv2.__version__)
    write_section(markdown(payload), BEGIN, END, args.out_md, args.out_json, payload)
    print(reading)
    print(f"wrote {args.out_json} and {args.out_md}")


if __name__ == "__main__":
    main()
