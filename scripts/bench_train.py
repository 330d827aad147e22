"""Training throughput: images/s of a full training step (backbone, ArcFace head, SGD) at batch 128.

    python scripts/bench_train.py                                  # IResNet-50, CPU fp32 (and CUDA when present)
    python scripts/bench_train.py --models iresnet50 mobilefacenet --repeats 3

A step is what the trainer does per batch: uint8 images normalised on the device, the backbone's forward, the
ArcFace head over ``--classes`` class vectors (MS1MV2's 85,742 by default), backward, and an SGD step with
momentum. Images are random uint8 tensors already in memory (data loading is scripts/bench_data.py's job).
Median of ``--repeats`` steps after ``--warmup`` steps (compilation happens in the warm-up). Writes
docs/bench_train.json and a section of docs/benchmarks.md.

``--variants`` are ``+``-joined options: a precision (``fp32``, ``bf16``, ``fp16``: autocast of the backbone, as
``trainer.precision``), ``channels_last`` and ``compile`` (``torch.compile`` of the backbone). Default: ``fp32`` on
CPU, ``bf16+channels_last`` on CUDA (what ``trainer.precision=auto`` does on a GPU). On CUDA the table also shows
the step's peak allocated memory (``torch.cuda.max_memory_allocated``).

    python scripts/bench_train.py --devices cuda --variants bf16 bf16+channels_last bf16+compile bf16+channels_last+compile
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


PRECISIONS = ("fp32", "bf16", "fp16")
OPTIONS = ("channels_last", "compile")


def parse_variant(variant: str) -> tuple[str, set[str]]:
    """``"bf16+channels_last"`` -> ("bf16", {"channels_last"}); a clear error for an unknown part."""
    parts = variant.split("+")
    precision = next((p for p in parts if p in PRECISIONS), "fp32")
    options = {p for p in parts if p not in PRECISIONS}
    unknown = options - set(OPTIONS)
    if unknown or sum(p in PRECISIONS for p in parts) > 1:
        raise SystemExit(f"bench_train: bad variant {variant!r}: use one of {PRECISIONS} joined by '+' with any of {OPTIONS}")
    return precision, options


def measure(name: str, device: str, variant: str, args) -> dict:
    import torch

    from frtrain.data.transforms import normalize_batch
    from frtrain.heads import ArcFace

    precision, options = parse_variant(variant)
    torch.manual_seed(0)
    backbone = build_backbone(name).to(device).train()
    head = ArcFace(backbone.embedding_size, args.classes).to(device).train()
    cuda = device == "cuda"
    channels_last = "channels_last" in options
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(list(backbone.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    forward = torch.compile(backbone) if "compile" in options else backbone
    h, w = backbone.input_size
    images = torch.randint(0, 256, (args.batch, 3, h, w), dtype=torch.uint8, device=device)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    amp = torch.autocast(device, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device) if precision == "fp16" else None
    times = []
    for i in range(args.warmup + args.repeats):
        if cuda:
            torch.cuda.synchronize()
            if i == args.warmup:
                torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        x = normalize_batch(images, backbone.mean, backbone.std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp:
            embeddings = forward(x)
        loss = head(embeddings.float(), labels)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        print(f"  {name} {device} {variant}: step {len(times)} {times[-1]:.2f} s", flush=True)
    step = statistics.median(times[args.warmup:])
    row = {"model": name, "device": device, "variant": variant, "precision": precision,
           "channels_last": channels_last, "compile": "compile" in options,
           "batch": args.batch, "input_size": [h, w], "step_s_median": step, "step_s": times[args.warmup:],
           "images_per_s": args.batch / step, "threads": torch.get_num_threads()}
    if cuda:
        row["peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    del forward, backbone, head, optimizer
    if cuda:
        torch.cuda.empty_cache()
    return row


def markdown(payload: dict) -> str:
    a = payload["args"]
    lines = [BEGIN, "## Training throughput (scripts/bench_train.py)", "",
             f"One training step at batch {a['batch']}: backbone forward and backward, ArcFace over "
             f"{a['classes']:,} classes, SGD with momentum; random uint8 images in memory. Median of {a['repeats']} "
             f"steps after {a['warmup']} warm-up step(s). Machine: {payload['machine']}; PyTorch {payload['torch']}. "
             f"Command: `{payload['command']}`.", "",
             "| model | device | variant | input | step (s) | images/s | peak GiB (CUDA) |",
             "|---|---|---|---|---:|---:|---:|"]
    for r in payload["rows"]:
        variant = r.get("variant", r.get("precision"))
        peak = f"{r['peak_allocated_bytes'] / 2**30:.2f}" if "peak_allocated_bytes" in r else "-"
        where = r["device"] if r["device"] == "cuda" else f"{r['device']} ({r['threads']} threads)"
        lines.append(f"| {r['model']} | {where} | {variant} | {r['input_size'][0]}x{r['input_size'][1]} | "
                     f"{r['step_s_median']:.3f} | {r['images_per_s']:.1f} | {peak} |")
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
    p.add_argument("--variants", nargs="+", default=None,
                   help="precision[+channels_last][+compile], e.g. bf16+channels_last (default: fp32 on CPU, "
                        "bf16+channels_last on CUDA)")
    p.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--out-json", type=Path, default=ROOT / "docs" / "bench_train.json")
    args = p.parse_args(argv)

    import torch

    from benchdocs import run_record, write_section

    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for v in args.variants or []:
        parse_variant(v)  # all variants checked before the first (slow) model is built

    def variants(device):
        return args.variants or (["bf16+channels_last"] if device == "cuda" else ["fp32"])

    rows = [measure(m, d, v, args) for d in devices for m in args.models for v in variants(d)]
    for r in rows:
        print(f"{r['model']} {r['device']} {r['variant']}: {r['images_per_s']:.1f} images/s "
              f"({r['step_s_median']:.2f} s per step of {r['batch']})")
    payload = run_record("bench_train.py", argv, args, rows)
    write_section(markdown(payload), BEGIN, END, args.out_md, args.out_json, payload)
    print(f"wrote {args.out_json} and {args.out_md}")


if __name__ == "__main__":
    main()
