"""How close the memory plan (``frtrain-plan``) comes to the measured peak of real training steps.

    python scripts/bench_plan.py                 # the CPU grid: peak resident-set growth
    python scripts/bench_plan.py --device cuda   # on a GPU: torch.cuda.max_memory_allocated (scripts/device_check.sh)
    python scripts/bench_plan.py --rows 0,3      # some rows only

Each row is a training configuration (backbone, classes, batch, head path, Partial FC, class dtype, optimiser).
The prediction is :func:`frtrain.plan.plan_for` on the composed config. The measurement runs in a fresh child
process: it composes the same config, builds the backbone, the head (with the row's class count) and the optimiser
as frtrain-train does, and takes 3 training steps (forward, head, backward, optimiser step, zero_grad) on random
uint8 images and labels. CPU: the peak resident set (``VmHWM``, reset through /proc/self/clear_refs after the
imports) minus the resident set before anything was built, with glibc's mmap threshold fixed at 128 KiB so freed
buffers leave the resident set (as bench_heads does). CUDA: ``max_memory_allocated`` after a reset, minus what was
allocated before building. The loader is left out (its buffers are host memory in other processes; the plan shows
them apart). Writes docs/bench_plan.json and a section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BEGIN, END = "<!-- bench_plan:begin -->", "<!-- bench_plan:end -->"
TARGET = 0.15

#: (label, classes, overrides)
ROWS = [
    ("iresnet_tiny", 10_000, ["backbone=iresnet_tiny", "data.loader.batch_size=64"]),
    ("iresnet_tiny", 100_000, ["backbone=iresnet_tiny", "data.loader.batch_size=64"]),
    ("iresnet_tiny, plain head", 100_000, ["backbone=iresnet_tiny", "data.loader.batch_size=128", "head.chunk_size=0"]),
    ("iresnet_tiny", 1_000_000, ["backbone=iresnet_tiny", "data.loader.batch_size=64"]),
    ("iresnet_tiny, bf16 class vectors", 1_000_000, ["backbone=iresnet_tiny", "data.loader.batch_size=64",
                                                     "head.class_dtype=bfloat16"]),
    ("iresnet_tiny, Partial FC 0.1", 1_000_000, ["backbone=iresnet_tiny", "data.loader.batch_size=64",
                                                 "head.sample_rate=0.1"]),
    ("iresnet_tiny, AdamW", 100_000, ["backbone=iresnet_tiny", "data.loader.batch_size=128", "optim=adamw"]),
    ("iresnet18", 10_000, ["backbone=iresnet18", "data.loader.batch_size=16"]),
    ("iresnet18", 1_000_000, ["backbone=iresnet18", "data.loader.batch_size=16"]),
    ("iresnet18, bf16 class vectors, Partial FC 0.3", 1_000_000,
     ["backbone=iresnet18", "data.loader.batch_size=16", "head.class_dtype=bfloat16", "head.sample_rate=0.3"]),
    ("iresnet50", 10_000, ["backbone=iresnet50", "data.loader.batch_size=8"]),
    ("iresnet50", 100_000, ["backbone=iresnet50", "data.loader.batch_size=16"]),
]


def _status_kib(field: str) -> int:
    from scripts.benchdocs import status_kib

    return status_kib(field)


def measure(overrides: list[str], classes: int, device: str, steps: int = 3) -> dict:
    """The measured peak of ``steps`` training steps (this process; see the module's doc)."""
    import torch

    from frtrain.config import compose, register_schemas
    from frtrain.data.transforms import normalize_batch
    from frtrain.engine.build import build

    register_schemas()
    cfg = compose("train", overrides)
    dev = torch.device(device)
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.cuda.init()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")
    backbone = build("backbone", cfg.backbone).to(dev)
    head = build("head", cfg.head, embedding_size=backbone.embedding_size, num_classes=classes).to(dev)
    optimizer = build("optim", cfg.optim)([{"params": [p for p in backbone.parameters() if p.requires_grad]}]
                                          + head.param_groups())
    b = int(cfg.data.loader.batch_size)
    h, w = backbone.input_size
    g = torch.Generator().manual_seed(0)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    seconds = []
    for _ in range(steps):
        t0 = time.perf_counter()
        images = torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g).to(dev)
        labels = torch.randint(0, classes, (b,), generator=g).to(dev)
        x = normalize_batch(images, backbone.mean, backbone.std)
        with amp:
            emb = backbone(x)
        loss = head(emb, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        del images, labels, x, emb, loss
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda" else _status_kib("VmHWM") * 1024) - base
    return {"measured_bytes": int(peak), "step_seconds": seconds}


def predict(overrides: list[str], classes: int, device: str) -> dict:
    from frtrain.config import compose, register_schemas
    from frtrain.engine.memory_plan import plan_for

    register_schemas()
    extra = [f"trainer.device={device}", "trainer.plan_ranks=1"] + (["trainer.precision=bf16"] if device == "cuda"
                                                                      else [])
    plan = plan_for(compose("train", overrides + extra), classes=classes, ranks=1)
    return {"predicted_bytes": int(plan.peak), "peak_moment": plan.peak_moment,
            "items": {i.name: int(i.bytes) for i in plan.items}}


def run_child(overrides: list[str], classes: int, device: str) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--child", device, str(classes), *overrides]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_plan: the measured run {overrides} C={classes} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def markdown(rows: list[dict], meta: dict) -> str:
    worst = max(abs(r["error"]) for r in rows)
    lines = [BEGIN, f"## Memory plan against measured peaks ({meta['device']})", "",
             f"`{meta['command']}` on {meta['machine']}, torch {meta['torch']}. Predicted: `frtrain-plan`'s peak for "
             f"the row's config (fp32 on the CPU, bf16 on CUDA; one rank). Measured: 3 training steps in a fresh "
             f"process ({meta['measure']}). Error = predicted / measured - 1; target within +-{TARGET:.0%}: "
             f"worst {worst:.1%}.", "",
             "| row | classes | batch | predicted (GiB) | measured (GiB) | error | peak at |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['classes']:,} | {r['batch']} | {r['predicted_bytes'] / 2**30:.3f} | "
                     f"{r['measured_bytes'] / 2**30:.3f} | {r['error']:+.1%} | {r['peak_moment']} |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        device, classes, overrides = argv[1], int(argv[2]), argv[3:]
        print(json.dumps(measure(overrides, classes, device)))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--rows", default="", help="comma-separated row numbers (default: all)")
    p.add_argument("--out-json", type=Path, default=None)
    p.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args(argv)
    from scripts.benchdocs import run_record, write_section

    chosen = [int(i) for i in args.rows.split(",") if i] or list(range(len(ROWS)))
    rows = []
    for i in chosen:
        label, classes, overrides = ROWS[i]
        row = {"label": label, "classes": classes, "overrides": overrides,
               "batch": int(next(o.split("=")[1] for o in overrides if o.startswith("data.loader.batch_size=")))}
        row.update(predict(overrides, classes, args.device))
        row.update(run_child(overrides, classes, args.device))
        row["error"] = row["predicted_bytes"] / row["measured_bytes"] - 1
        rows.append(row)
        print(f"{label:<45} C={classes:>9,}  predicted {row['predicted_bytes'] / 2**30:7.3f} GiB  measured "
              f"{row['measured_bytes'] / 2**30:7.3f} GiB  error {row['error']:+6.1%}", flush=True)
    measure_rule = ("CUDA max_memory_allocated" if args.device == "cuda" else
                    "peak RSS growth, VmHWM minus the RSS before building, mmap threshold 128 KiB")
    record = run_record("bench_plan.py", argv, rows=rows, device=args.device, measure=measure_rule,
                        worst_error=max(abs(r["error"]) for r in rows), target=TARGET)
    out_json = args.out_json or ROOT / "docs" / f"bench_plan{'_cuda' if args.device == 'cuda' else ''}.json"
    begin, end = (BEGIN, END) if args.device == "cpu" else (BEGIN.replace(":begin", "_cuda:begin"),
                                                            END.replace(":end", "_cuda:end"))
    section = markdown(rows, record).replace(BEGIN, begin).replace(END, end)
    if len(chosen) == len(ROWS) or args.out_json:
        write_section(section, begin, end, args.out_md, out_json, record)
    else:
        print(section)
    worst = max(abs(r["error"]) for r in rows)
    print(f"worst error {worst:.1%} ({'within' if worst <= TARGET else 'OUTSIDE'} the {TARGET:.0%} target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
