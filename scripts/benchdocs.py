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
