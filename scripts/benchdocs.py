"""Writing a benchmark's section into docs/benchmarks.md (between its begin/end markers) and its JSON."""

from __future__ import annotations

import json
from pathlib import Path


def write_section(section: str, begin: str, end: str, out_md: Path, out_json: Path, payload: dict) -> None:
    """Write ``payload`` to ``out_json`` and replace (or append) the ``begin``..``end`` section of ``out_md``."""
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(payload, indent=1) + "\n")
    text = out_md.read_text() if out_md.exists() else "# Benchmarks\n\nWritten by the scripts/bench_*.py scripts.\n\n"
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    out_md.write_text(text)


def run_record(script: str, argv, args=None, rows=None, **extra) -> dict:
    """What every benchmark's JSON records: its command, machine, PyTorch version, arguments and rows."""
    import os
    import platform
    import sys

    import torch

    record = {"command": f"python scripts/{script} " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores",
              "torch": torch.__version__}
    if torch.cuda.is_available():
        record["machine"] += f", {torch.cuda.get_device_name()}"
    if args is not None:
        record["args"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                          if not k.startswith("out")}
    if rows is not None:
        record["rows"] = rows
    record.update(extra)
    return record


def status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: the resident set now, VmHWM: its peak)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")
