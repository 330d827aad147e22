"""scripts/fuzz_inputs.py at a small size: mutated images, checkpoints and .rec files are read or refused in one
line, never a traceback (the full size, 10,000 / 200 / 200, is run by hand: figures in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # a fuzzing process
def test_mutated_user_files_are_read_or_refused_in_one_line(tmp_path):
    out = tmp_path / "fuzz.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_inputs.py"), "--images", "400",
                           "--checkpoints", "25", "--records", "40", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["failed"] == 0
    assert report["images"]["corrupt_files_skipped"] > 200  # most mutations break the file: the skip path is used
    assert report["checkpoints"]["cases"] == 75 and report["checkpoints"]["refused"] > 20
    assert report["records"]["cases"] == 40 and report["records"]["refused"] > 5
