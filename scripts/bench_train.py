"""Training throughput: images/s of a full training step (backbone, ArcFace head, SGD) at batch 128.

    python scripts/bench_train.py                                  # IResNet-50, CPU fp32 (and CUDA when present)
    python scripts/bench_train.py --models iresnet50 mobilefacenet --repeats 3

A step is what the trainer does per batch: uint8 images normalised on the device, the backbone's forward, the
ArcFace head over ``--classes`` class vectors (MS1MV2's 85,742 by default), backward, and an SGD step with
momentum. Images are random uint8 tensors already in memory (data loading is scripts/bench_data.py's job).
On CUDA the step runs under bf16 autocast (``trainer.precision=auto``) with channels_last, as a GPU run would;
on CPU in fp32. Median of ``--repeats`` steps after ``--warmup`` steps. Writes docs/bench_train.json and a
section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- bench_train:begin -->", "<!-- bench_train:end -->"


def build_backbone(name: str):
    from frtrain.config import compose

    from frtrain.engine.build import build

    cfg = compose("train", [f"backbone={name}"])
    return build("backbone", cfg.backbone)


def measure(name: str, device: str, args) -> dict:
    import torch

    from frtrain.data.transforms import normalize_batch
    from frtrain.heads import ArcFace

    torch.manual_seed(0)
    backbone = build_backbone(name).to(device).train()
    head = ArcFace(backbone.embedding_size, args.classes).to(device).train()
    cuda = device == "cuda"
    if cuda:
        backbone.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    h, w = backbone.input_size
    images = torch.randint(0, 256, (args.batch, 3, h, w), dtype=torch.uint8, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    times = []
    for _ in range(args.warmup + args.repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        x = normalize_batch(images, backbone.mean, backbone.std)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            embeddings = backbone(x)
        loss = head(embeddings, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        print(f"  {name} {device}: step {len(times)} {times[-1]:.2f} s", flush=True)
    step = statistics.median(times[args.warmup:])
    return {"model": name, "device": device, "precision": "bf16 autocast, channels_last" if cuda else "fp32",
            "batch": args.batch, "input_size": [h, w], "step_s_median": step, "step_s": times[args.warmup:],
            "images_per_s": args.batch / step, "threads": torch.get_num_threads()}


def markdown(payload: dict) -> str:
    a = payload["args"]
    lines = [BEGIN, "## Training throughput (scripts/bench_train.py)", "",
             f"One training step at batch {a['batch']}: backbone forward and backward, ArcFace over "
             f"{a['classes']:,} classes, SGD with momentum; random uint8 images in memory. Median of {a['repeats']} "
             f"steps after {a['warmup']} warm-up step(s). Machine: {payload['machine']}; PyTorch {payload['torch']}. "
             f"Command: `{payload['command']}`.", "",
             "| model | device | precision | input | step (s) | images/s |", "|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        lines.append(f"| {r['model']} | {r['device']} ({r['threads']} threads) | {r['precision']} | "
                     f"{r['input_size'][0]}x{r['input_size'][1]} | {r['step_s_median']:.2f} | {r['images_per_s']:.1f} |")
    if not any(r["device"] == "cuda" for r in payload["rows"]):
        lines += ["", "CUDA with AMP: not measured (no GPU on the machine that ran this)."]
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["iresnet50"])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--classes", type=int, default=85742)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when present")
    p.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--out-json", type=Path, default=ROOT / "docs" / "bench_train.json")
    args = p.parse_args(argv)

    import torch

    from benchdocs import run_record, write_section

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    rows = [measure(m, d, args) for d in devices for m in args.models]
    for r in rows:
        print(f"{r['model']} {r['device']} {r['precision']}: {r['images_per_s']:.1f} images/s "
              f"({r['step_s_median']:.2f} s per step of {r['batch']})")
    payload = run_record("bench_train.py", argv, args, rows)
    write_section(markdown(payload), BEGIN, END, args.out_md, args.out_json, payload)
    print(f"wrote {args.out_json} and {args.out_md}")


if __name__ == "__main__":
    main()
