"""Benchmark every loss head: forward + backward time and peak memory, as ratios to ArcFace.

For each device (CPU, and CUDA when present), batch B and class count C, every head is built from its
config file (configs/head/<name>.yaml, the papers' defaults) with d = 512 and timed on random embeddings:
median over ``--repeats`` forward + backward passes after two warm-ups. Peak memory is the extra memory one
forward + backward needs above the inputs and the head's parameters (gradients included):
- CUDA: ``torch.cuda.max_memory_allocated`` after a peak reset;
- CPU: the process's peak resident set (VmHWM, reset through /proc/self/clear_refs), measured in a child
  process started with a fixed glibc mmap threshold so that freed buffers go back to the OS.
ArcFace is measured in the same process as the other heads of its setting; the table shows each head as a
ratio to it, and its peak as a multiple of one B x C float32 matrix.

    python scripts/bench_heads.py                       # CPU (and CUDA if present), B 128/512, C 10k/100k
    python scripts/bench_heads.py --batch 128 --classes 10000 --repeats 3 --heads arcface unpg
    python scripts/bench_heads.py --batch 512 --classes 100000 --paths plain chunked   # both paths, one run

``--paths``: ``plain`` builds every head with ``chunk_size=0`` (one B x C logit matrix), ``chunked`` with the
chunk size ``auto`` picks for the default 256 MiB budget (frtrain/heads/chunked.py), ``auto`` as configured.
``--class-dtype float32 bfloat16`` measures both storage dtypes of the class vectors (``head.class_dtype``).

Writes docs/bench_heads.json and the "Loss heads" section of docs/benchmarks.md; settings measured by an
earlier run and not by this one are kept from the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADS = ["arcface", "softmax", "normface", "sphereface", "cosface", "combined", "magface", "center",
         "npt", "unpg", "intraloss", "ie", "marginloss", "adaface", "curricularface", "elasticface_arc",
         "elasticface_arc_plus", "elasticface_cos", "elasticface_cos_plus"]
BEGIN, END = "<!-- bench_heads:begin -->", "<!-- bench_heads:end -->"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def chunk_option(path: str, batch: int, classes: int, device: str):
    """The head's chunk_size for a bench path: plain (0), chunked (what auto picks at its default budget; below
    the budget, what it would pick above it), auto."""
    from frtrain.heads.chunked import auto_chunk

    if path == "plain":
        return 0
    if path == "chunked":
        return auto_chunk(batch, 256.0, device)
    return "auto"


def measure_setting(device: str, batch: int, classes: int, dim: int, heads: list[str], repeats: int,
                    what: str = "both", paths: tuple[str, ...] = ("auto",), class_dtypes: tuple[str, ...] = ("float32",)
                    ) -> list[dict]:
    """Time (``what`` = time|both) and peak memory (memory|both) of each head and path at one (device, B, C)."""
    import torch

    from frtrain.config import compose
    from frtrain.engine.build import build

    torch.manual_seed(0)
    dev = torch.device(device)
    rows = []
    for name, path, class_dtype in ((n, p, t) for n in heads for t in class_dtypes for p in paths):
        node = compose("train", [f"head={name}"]).head  # the head's file with the options every head shares
        head = build("head", node, embedding_size=dim, num_classes=classes,
                     chunk_size=chunk_option(path, batch, classes, dev.type), class_dtype=class_dtype).to(dev)
        x = torch.randn(batch, dim, device=dev, requires_grad=True)
        # about 4 images per identity, as a face-recognition sampler would give
        labels = torch.randint(0, classes, (batch // 4,), device=dev).repeat_interleave(4)[:batch]

        def step():
            head.zero_grad(set_to_none=True)
            x.grad = None
            head(x, labels).backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        for _ in range(2):  # warm-up
            step()
        head.zero_grad(set_to_none=True)
        x.grad = None
        peak = None
        if what == "time":
            pass
        elif dev.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            peak = torch.cuda.max_memory_allocated() - base
        else:
            base = _rss_kib("VmRSS")
            _reset_peak_rss()
            step()
            peak = (_rss_kib("VmHWM") - base) * 1024
        times = []
        for _ in range(repeats if what != "memory" else 0):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        row = {"device": device, "batch": batch, "classes": classes, "dim": dim, "head": name, "path": path,
               "chunk": head.chunks(batch, classes), "class_dtype": class_dtype}
        if times:
            row.update(median_ms=1000 * statistics.median(times), times_ms=[1000 * t for t in times])
        if peak is not None:
            row["peak_bytes"] = int(peak)
        rows.append(row)
        del head, x
    return rows


def cpu_peaks(batch: int, classes: int, dim: int, heads: list[str], paths=("auto",), class_dtypes=("float32",)) -> list[dict]:
    """CPU peak memory of one setting, in a child process with a fixed mmap threshold so that freed
    buffers leave the resident set (timing is done in this process, with the normal allocator)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--worker", "cpu", str(batch), str(classes), str(dim), "0", ",".join(paths),
           ",".join(class_dtypes), *heads]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_heads: the memory run B={batch} C={classes} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def with_ratios(rows: list[dict]) -> list[dict]:
    """Ratios to ArcFace in the same run: on the same path, and (``vs_plain_arcface``) to ArcFace's plain path."""
    for row in rows:
        same = [r for r in rows if r["head"] == "arcface" and r["device"] == row["device"]
                and r["batch"] == row["batch"] and r["classes"] == row["classes"]]
        ref = next((r for r in same if r.get("path") == row.get("path")
                    and r.get("class_dtype", "float32") == row.get("class_dtype", "float32")), same[0])
        plain = next((r for r in same if r.get("path") == "plain" and r.get("class_dtype", "float32") == "float32"), None)
        if plain is not None:
            row["time_vs_plain_arcface"] = row["median_ms"] / plain["median_ms"]
            row["memory_vs_plain_arcface"] = row["peak_bytes"] / max(plain["peak_bytes"], 1)
        row["time_vs_arcface"] = row["median_ms"] / ref["median_ms"]
        row["memory_vs_arcface"] = row["peak_bytes"] / max(ref["peak_bytes"], 1)
        row["peak_in_BxC_fp32"] = row["peak_bytes"] / (4 * row["batch"] * row["classes"])
        row["peak_in_Cxd_fp32"] = row["peak_bytes"] / (4 * row["classes"] * row["dim"])
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [BEGIN, "## Loss heads", "",
             f"`python scripts/bench_heads.py` on {meta['machine']}, torch {meta['torch']}, {meta['threads']} threads, "
             f"d = {meta['dim']}, median of {meta['repeats']} forward + backward passes after two warm-ups. "
             "Peak: extra memory of one forward + backward above inputs and parameters (gradients included); "
             "`xBC` and `xCd` are that peak in B x C and in C x d float32 matrices (the class vectors' gradient is "
             "one C x d). Ratios are to ArcFace measured in the same run.", ""]
    settings = sorted({(r["device"], r["batch"], r["classes"]) for r in rows}, key=lambda s: (s[0], s[2], s[1]))
    for device, batch, classes in settings:
        command = next(r.get("command", "") for r in rows if (r["device"], r["batch"], r["classes"]) == (device, batch, classes))
        setting = [r for r in rows if (r["device"], r["batch"], r["classes"]) == (device, batch, classes)]
        both = any(r.get("path") == "plain" for r in setting) and any(r.get("path") == "chunked" for r in setting)
        lines += [f"### {device}, B = {batch}, C = {classes:,}", "", f"`{command}`", "",
                  "| head | path | median ms | time / arcface | peak MiB | memory / arcface | xBC | xCd |"
                  + (" time / plain arcface | memory / plain arcface |" if both else ""),
                  "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if both else "")]
        for r in setting:
            path = r.get("path", "auto") + (f" ({r['chunk']:,})" if r.get("chunk") else "")
            path += "" if r.get("class_dtype", "float32") == "float32" else f", {r['class_dtype']}"
            lines.append(f"| {r['head']} | {path} | {r['median_ms']:.1f} | {r['time_vs_arcface']:.2f} | "
                         f"{r['peak_bytes'] / 2**20:.0f} | {r['memory_vs_arcface']:.2f} | "
                         f"{r['peak_in_BxC_fp32']:.1f} | {r['peak_in_Cxd_fp32']:.1f} |"
                         + (f" {r['time_vs_plain_arcface']:.2f} | {r['memory_vs_plain_arcface']:.2f} |" if both else ""))
        lines.append("")
    if not any(r["device"] == "cuda" for r in rows):
        lines += ["CUDA: not measured (no GPU on the machine that ran this).", ""]
    lines.append(END)
    return "\n".join(lines)


def merged(rows: list[dict], meta: dict, out_json: Path) -> tuple[list[dict], dict]:
    """Rows of earlier runs (in ``out_json``) for the settings this run did not measure, then this run's."""
    for row in rows:
        row["command"] = meta["command"]
    if not out_json.is_file():
        return rows, meta
    old = json.loads(out_json.read_text())
    measured = {(r["device"], r["batch"], r["classes"]) for r in rows}
    kept = [r for r in old["rows"] if (r["device"], r["batch"], r["classes"]) not in measured]
    for r in kept:  # rows of runs before the chunked path existed were all plain
        r.setdefault("path", "plain")
    return kept + rows, meta


def write_docs(rows: list[dict], meta: dict, out_json: Path, out_md: Path) -> None:
    from benchdocs import write_section

    write_section(markdown(rows, meta), BEGIN, END, out_md, out_json, {"meta": meta, "rows": rows})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--heads", nargs="+", default=HEADS, choices=HEADS)
    parser.add_argument("--paths", nargs="+", default=["auto"], choices=["auto", "plain", "chunked"])
    parser.add_argument("--class-dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"],
                        help="storage dtype(s) of the class vectors (head.class_dtype); several: one row each")
    parser.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "bench_heads.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)

    import torch
    from tqdm import tqdm

    heads = ["arcface"] + [h for h in args.heads if h != "arcface"]
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    settings = [(d, b, c) for d in devices for c in args.classes for b in args.batch]
    rows = []
    for device, batch, classes in tqdm(settings, desc="bench_heads", unit="setting"):
        timed = measure_setting(device, batch, classes, args.dim, heads, args.repeats,
                                "both" if device == "cuda" else "time", tuple(args.paths), tuple(args.class_dtype))
        if device == "cpu":
            for row, mem in zip(timed, cpu_peaks(batch, classes, args.dim, heads, args.paths, args.class_dtype)):
                row["peak_bytes"] = mem["peak_bytes"]
        rows += timed
    rows = with_ratios(rows)
    meta = {"command": "python scripts/bench_heads.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.machine()} {os.cpu_count()} cores"
                       + (f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "dim": args.dim, "repeats": args.repeats}
    rows, meta = merged(rows, meta, args.json)
    write_docs(rows, meta, args.json, args.markdown)
    print(markdown(rows, meta))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        device, batch, classes, dim, repeats, paths, class_dtypes, *names = sys.argv[2:]
        result = measure_setting(device, int(batch), int(classes), int(dim), names, int(repeats), "memory",
                                 tuple(paths.split(",")), tuple(class_dtypes.split(",")))
        print(json.dumps(result))
    else:
        main()
