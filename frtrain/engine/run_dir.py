"""A run's directory: one run at a time in it (a lock), and no empty directory left by a run that never started.

The lock is ``<run dir>/.frtrain.lock``, held with ``flock`` for the life of the run and naming the process
(pid, host, start time). The kernel drops it when the process dies, so a run killed with ``kill -9`` leaves a
file but no lock: the next run in that directory (``trainer.resume=auto``) takes it over and says whose it was.
A second run while the first is alive is refused in one line naming the first.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import socket
import time

from frtrain.errors import FrtrainError

log = logging.getLogger("frtrain")

LOCK_NAME = ".frtrain.lock"
#: what a directory holds when Hydra has made it for a run that has not written anything yet
_BEFORE_THE_RUN = {".hydra", "train.log", "config.yaml", "tb", "checkpoints", LOCK_NAME, "memory_plan.json"}


class RunDirectoryBusy(FrtrainError):
    """Another live frtrain-train run holds this directory."""


class RunLock:
    """``with RunLock(run_dir):`` holds the directory for this process (see the module docstring)."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self.fd: int | None = None

    def _holder(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                record = json.loads(f.read(4096) or "{}")
            return record if isinstance(record, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            h = self._holder()
            raise RunDirectoryBusy(
                f"{os.path.dirname(self.path)} is in use by another frtrain-train run (pid {h.get('pid', '?')} on "
                f"{h.get('host', '?')}, started {h.get('started', '?')}); give this run another output_dir, or wait "
                "for that one to end") from None
        previous = self._holder()
        if previous.get("pid"):
            log.warning("%s: taking over the lock of pid %s on %s (started %s), which ended without releasing it",
                        os.path.dirname(self.path), previous.get("pid"), previous.get("host"), previous.get("started"))
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # a clean end leaves no lock file; the flock dies with the descriptor
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def untouched(run_dir: str) -> bool:
    """Whether ``run_dir`` holds only what Hydra and a run's first moments write (no checkpoint, no results)."""
    if not os.path.isdir(run_dir):
        return False
    names = set(os.listdir(run_dir))
    if not names <= _BEFORE_THE_RUN:
        return False
    checkpoints = os.path.join(run_dir, "checkpoints")
    return not (os.path.isdir(checkpoints) and os.listdir(checkpoints))


def remove_unstarted(run_dir: str) -> None:
    """Delete a run directory that a run left before its first step (and its date folder when that is now empty),
    so a config mistake found after Hydra started leaves nothing behind in ``runs/``."""
    if not untouched(run_dir):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    parent = os.path.dirname(run_dir)
    try:
        os.rmdir(parent)  # only when empty
    except OSError:
        pass
