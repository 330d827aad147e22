"""What a run writes besides its checkpoints: TensorBoard, the loss lines of ``train.log``, ``results.json``,
``pairs/<benchmark>.npz`` and ``corrupt_images.txt`` (all on rank 0), and the images/s meter behind them."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time

import numpy as np

from frtrain.log_files import to_log_files

log = logging.getLogger("frtrain")


class Throughput:
    """Images/s and mean loss over a logging window, with evaluation and saving kept out of the time."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.started, self.paused_s, self.images, self.losses = time.perf_counter(), 0.0, 0, []

    def add(self, images: int, loss: float) -> None:
        self.images += images
        self.losses.append(loss)

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.paused_s += time.perf_counter() - t

    def images_per_second(self) -> float:
        return self.images / max(time.perf_counter() - self.started - self.paused_s, 1e-9)

    def mean_loss(self) -> float:
        return sum(self.losses) / max(len(self.losses), 1)


class RunLog:
    """The run's record (rank 0 writes; the other ranks keep nothing): ``history`` is what results.json reports."""

    def __init__(self, out_dir: str, is_main: bool, total_steps: int, provenance: dict | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.out_dir, self.is_main, self.total_steps = out_dir, is_main, int(total_steps)
        self.writer = SummaryWriter(os.path.join(out_dir, "tb")) if is_main else None
        self.history: dict[str, list] = {"eval": [], "loss": []}
        self.provenance = provenance
        self.last_geometry = None  # the last geometry record (eval.analysis), for results.json

    def step(self, state, progress, loss: float, lr: float, speed: float, grad_norm: float | None, corrupt: int,
             head_stats: dict) -> None:
        """One logging step: the progress bar, a line in train.log (the console keeps its bar), TensorBoard."""
        progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", img_s=f"{speed:.0f}")
        if not self.is_main:
            return
        line = (f"step {state.step}/{self.total_steps}  epoch {state.epoch}  loss {loss:.4f}  lr {lr:.4g}  "
                f"{speed:.0f} images/s" + (f"  grad_norm {grad_norm:.3g}" if grad_norm is not None else ""))
        if progress.disable:
            log.info(line)
        else:
            to_log_files(line)
        self.history["loss"].append({"step": state.step, "loss": loss, "lr": lr, "images_per_sec": speed})
        for key, value in (("loss", loss), ("lr", lr), ("images_per_sec", speed), ("corrupt_images_skipped", corrupt),
                           ("grad_norm", grad_norm)):
            if value is not None:
                self.writer.add_scalar(f"train/{key}", value, state.step)
        for key, value in head_stats.items():
            self.writer.add_scalar(f"head/{key}", float(value), state.step)

    def result(self, step: int, name: str, r) -> None:
        """A benchmark's result (any :class:`~frtrain.evaluation.results.BenchmarkResult`): scalars and the ROC
        figure in TensorBoard, a log line, the history."""
        from frtrain.evaluation.report import roc_figure

        for key, value in r.scalars().items():
            if value is not None:
                self.writer.add_scalar(f"val/{name}/{key}", value, step)
        if r.roc.get("fpr"):  # protocols without pairs (identification) have no ROC
            self.writer.add_figure(f"val/{name}/roc", roc_figure(r), step)
        log.info("step %d  %s: %s", step, name, r.headline() + (f"  auc {r.auc:.4f}" if r.auc is not None else ""))
        self.history["eval"].append({**r.scalars(), "step": step, "benchmark": name, "accuracy": r.accuracy})

    def geometry(self, step: int, record: dict, arrays: dict) -> None:
        """Geometry measures: scalars as geometry/<measure>/<name>, histograms as geometry/<array>; kept for
        results.json."""
        from frtrain.evaluation.geometry import scalars

        values = scalars(record)
        for key, value in values.items():
            self.writer.add_scalar(f"geometry/{key}", value, step)
        for key, value in arrays.items():
            if len(value):
                self.writer.add_histogram(f"geometry/{key}", value, step)
        self.history.setdefault("geometry", []).append({"step": step, **values})
        self.last_geometry = record

    def write_results(self, results: dict, state, best_checkpoint: str | None, train_seconds: float,
                      corrupt: list[str], watchdog: list[dict] | None = None) -> None:
        """``results.json`` (final and best scores, history, time, corrupt images), ``pairs/<benchmark>.npz`` (each
        pair's cosine, label, fold and outcome at the final evaluation: what frtrain-compare pairs up) and
        ``corrupt_images.txt`` (every skipped file, once) when there were any."""
        if not self.is_main:
            return
        self.write_corrupt_list(corrupt)
        for name, r in results.items():
            if r.per_pair:
                os.makedirs(os.path.join(self.out_dir, "pairs"), exist_ok=True)
                np.savez(os.path.join(self.out_dir, "pairs", f"{name}.npz"), **r.per_pair)
        summary = {
            "final": {name: r.to_dict() for name, r in results.items()},
            "best": {"score": state.best_score, "step": state.best_step, "checkpoint": best_checkpoint},
            "steps": state.step,
            "train_seconds": train_seconds,
            "corrupt_images_skipped": len(corrupt),
            "history": self.history,
            "watchdog": list(watchdog or []),  # the checks that fired (frtrain.engine.watchdog), in order
        }
        if self.last_geometry is not None:
            from frtrain.evaluation.geometry import scalars
            from frtrain.evaluation.results import jsonable

            summary["geometry"] = {"scalars": scalars(self.last_geometry), **jsonable(self.last_geometry)}
        if self.provenance is not None:
            from frtrain.evaluation.provenance import with_results

            summary["provenance"] = with_results(self.provenance, results)
        path = os.path.join(self.out_dir, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(path + ".tmp", path)

    def write_corrupt_list(self, corrupt: list[str]) -> None:
        """``corrupt_images.txt``: every skipped file, once (rank 0)."""
        if not corrupt or not self.is_main:
            return
        with open(os.path.join(self.out_dir, "corrupt_images.txt"), "w") as f:
            f.write("\n".join(corrupt) + "\n")
        log.warning("%d corrupt images were skipped (listed in %s)", len(corrupt),
                    os.path.join(self.out_dir, "corrupt_images.txt"))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None
