"""A sharded head at a million classes: peak memory and step time per rank, against one process holding all.

    python scripts/bench_scale.py                              # C = 1,000,000, d = 512, global batch 128, CPU
    python scripts/bench_scale.py --classes 100000 --repeats 5

Each configuration runs in fresh processes (``torch.multiprocessing.spawn``; 2 ranks join a gloo group):
one process with all C class vectors on the plain path (one B x C logit matrix) and on the chunked path
(frtrain/heads/chunked.py; also with bf16 class vectors), 2 ranks with C/2 each, and 2 ranks with Partial FC
(``sample_rate`` 0.1). A step is the ArcFace head's forward, backward and an SGD step with momentum on a
fixed global batch of embeddings (the backbone is left out: it is the same in every configuration, and data
parallel). The CPU's threads are split evenly between the ranks, so every configuration uses the same cores.

Memory is the process's resident set (Linux ``VmHWM``, the peak, and ``VmRSS``): ``head memory`` is the peak
minus the resident set measured just before the head was built (PyTorch itself, the inputs). Time is the
median of ``--repeats`` steps after one warm-up step, the slowest rank's. On CUDA (when present) the same runs
use NCCL and ``torch.cuda.max_memory_allocated`` (the 2-rank rows need 2 GPUs). Writes docs/bench_scale.json
and a section of docs/benchmarks.md.
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
BEGIN, END = "<!-- bench_scale:begin -->", "<!-- bench_scale:end -->"


def _status_kib(field: str) -> int:
    from scripts.benchdocs import status_kib

    return status_kib(field)


def _worker(rank: int, world: int, args, sample_rate: float, device_type: str, init_file: str, out_dir: str,
            chunk_size="auto", class_dtype: str = "float32"):
    import torch
    import torch.distributed as dist

    from frtrain.heads import ArcFace

    cores = len(os.sched_getaffinity(0))
    torch.set_num_threads(max(1, cores // world))
    if world > 1:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", init_method=f"file://{init_file}",
                                rank=rank, world_size=world)
    device = torch.device(f"cuda:{rank}" if device_type == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        g = torch.Generator().manual_seed(rank)
        per_rank = args.batch // world
        x = torch.randn(per_rank, args.dim, generator=g).to(device).requires_grad_(True)
        y = torch.randint(0, args.classes, (per_rank,), generator=g).to(device)
        base_kib = _status_kib("VmRSS")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base_cuda = torch.cuda.memory_allocated(device)
        torch.manual_seed(rank)
        head = ArcFace(args.dim, args.classes, sample_rate=sample_rate, chunk_size=chunk_size,
                       class_dtype=class_dtype).to(device).train()
        optimizer = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
        times = []
        for _ in range(1 + args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            loss = head(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            x.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        result = {"rank": rank, "num_local": head.num_local, "step_s": times[1:], "loss": float(loss.detach()),
                  "chunk": head.chunks(per_rank * world, head.num_local),
                  "peak_rss_mib": _status_kib("VmHWM") / 1024, "base_rss_mib": base_kib / 1024}
        if device.type == "cuda":
            result["peak_cuda_mib"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        if world > 1:
            dist.destroy_process_group()


def run_config(args, world: int, sample_rate: float, device_type: str, chunk_size="auto",
               class_dtype: str = "float32") -> dict:
    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, args, sample_rate, device_type, os.path.join(tmp, "rdzv"), tmp, chunk_size,
                                class_dtype), nprocs=world, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=False) for r in range(world)]
    slowest = [max(r["step_s"][i] for r in ranks) for i in range(args.repeats)]
    row = {
        "device": device_type, "ranks": world, "sample_rate": sample_rate, "chunk": ranks[0]["chunk"],
        "class_dtype": class_dtype,
        "classes_per_rank": [r["num_local"] for r in ranks],
        "step_s_median": statistics.median(slowest), "step_s": slowest,
        "peak_rss_mib_per_rank": max(r["peak_rss_mib"] for r in ranks),
        "head_mib_per_rank": max(r["peak_rss_mib"] - r["base_rss_mib"] for r in ranks),
        "loss": ranks[0]["loss"],
    }
    if device_type == "cuda":
        row["peak_cuda_mib_per_rank"] = max(r["peak_cuda_mib"] for r in ranks)
    return row


def markdown(payload: dict) -> str:
    a = payload["args"]
    lines = [BEGIN, "## Sharded class vectors at scale (scripts/bench_scale.py)", "",
             f"ArcFace head, C = {a['classes']:,} classes, d = {a['dim']}, global batch {a['batch']}: forward, backward "
             f"and SGD-with-momentum step of the head alone. Median of {a['repeats']} steps after a warm-up (the "
             "slowest rank's); memory per rank is the peak resident set minus the resident set before the head "
             f"was built. Machine: {payload['machine']}; PyTorch {payload['torch']}. Command: `{payload['command']}`.",
             "", "| device | ranks | classes per rank | path | Partial FC | step (s) | head memory per rank (MiB) "
             "| peak RSS per rank (MiB) | vs one plain process: memory | vs one plain process: time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for device in sorted({r["device"] for r in payload["rows"]}):
        rows = [r for r in payload["rows"] if r["device"] == device]
        base = next(r for r in rows if r["ranks"] == 1)
        for r in rows:
            mem_key = "peak_cuda_mib_per_rank" if device == "cuda" else "head_mib_per_rank"
            path = "plain" if not r.get("chunk") else f"chunks of {r['chunk']:,}"
            path += "" if r.get("class_dtype", "float32") == "float32" else f", {r['class_dtype']} class vectors"
            lines.append(
                f"| {device} | {r['ranks']} | {' / '.join(f'{n:,}' for n in r['classes_per_rank'])} | {path} | "
                f"{'off' if r['sample_rate'] >= 1 else r['sample_rate']} | {r['step_s_median']:.2f} | "
                f"{r[mem_key]:,.0f} | {r['peak_rss_mib_per_rank']:,.0f} | "
                f"{r[mem_key] / base[mem_key]:.2f}x | {r['step_s_median'] / base['step_s_median']:.2f}x |")
    if not any(r["device"] == "cuda" for r in payload["rows"]):
        lines += ["", "CUDA: not measured (no GPU on the machine that ran this)."]
    cd = 4 * a["classes"] * a["dim"] / 2**20
    lines += ["", f"The class vectors, their gradient and SGD's momentum are 3 x {cd:,.0f} MiB = {3 * cd:,.0f} MiB in "
              "float32: the chunked path's goal is at most that plus 512 MiB in one process (the plain path adds about "
              "5 float32 B x C matrices and the softmax's copies). The 2-rank rows use the same cores as the "
              "one-process rows (threads split between the ranks), so time shows the cost of the collectives, not a "
              "speed-up; what sharding buys is the memory per rank, which is what bounds the class count on a GPU."]
    for r in payload["rows"]:
        if r["device"] == "cpu" and r["ranks"] == 1 and r.get("chunk") and r.get("class_dtype", "float32") == "float32":
            met = r["head_mib_per_rank"] <= 3 * cd + 512
            lines += ["", f"Goal (issue 18), one process at C = {a['classes']:,}: head memory at most {3 * cd + 512:,.0f} MiB. "
                      f"Chunked: {r['head_mib_per_rank']:,.0f} MiB, **{'met' if met else 'not met'}**."]
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--classes", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=128, help="global batch (split over the ranks)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sample-rate", type=float, default=0.1, help="Partial FC rate of the third configuration")
    p.add_argument("--out-md", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--out-json", type=Path, default=ROOT / "docs" / "bench_scale.json")
    args = p.parse_args(argv)

    import torch

    from benchdocs import run_record, write_section

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for world, rate, chunk, dtype in ((1, 1.0, 0, "float32"), (1, 1.0, "auto", "float32"),
                                          (1, 1.0, "auto", "bfloat16"), (2, 1.0, "auto", "float32"),
                                          (2, args.sample_rate, "auto", "float32")):
            if device == "cuda" and world > torch.cuda.device_count():
                continue  # one GPU: the one-process rows only
            row = run_config(args, world, rate, device, chunk, dtype)
            print(f"{device} ranks={world} sample_rate={rate}: step {row['step_s_median']:.2f} s, head memory per "
                  f"rank {row.get('peak_cuda_mib_per_rank', row['head_mib_per_rank']):,.0f} MiB", flush=True)
            rows.append(row)
    payload = run_record("bench_scale.py", argv, args, rows)
    write_section(markdown(payload), BEGIN, END, args.out_md, args.out_json, payload)
    print(f"wrote {args.out_json} and {args.out_md}")


if __name__ == "__main__":
    main()
