"""``frtrain-plan``: the predicted peak memory of one training step per device, before any data is read.

    frtrain-plan                                             # the default run
    frtrain-plan backbone=iresnet50 data=rec data.root=/data/webface42m trainer.device=cuda trainer.device_memory_gb=12
    frtrain-plan backbone=iresnet50 trainer.device=cuda trainer.plan_classes=2000000 trainer.device_memory_gb=12
    frtrain-plan ... trainer.plan_ranks=8                    # the class vectors sharded over 8 ranks

It takes frtrain-train's overrides. The class count comes from ``trainer.plan_classes``, else from the data's own
small index (a synthetic set's config, the shards' index.json, the .rec header, the identity folders of a folder set);
the ranks from ``trainer.plan_ranks``, else WORLD_SIZE. The device memory from ``trainer.device_memory_gb``, else the
GPU's (on CUDA) or the available memory (on the CPU). When the run does not fit it prints the cheapest overrides that
make it fit. Writes nothing; ``--json`` prints the plan as JSON. The model: :mod:`frtrain.engine.memory_plan`.
"""

from __future__ import annotations

import json
import os
import sys

from omegaconf import DictConfig

from frtrain import config
from frtrain.cli import hydra_entry_point
from frtrain.engine.memory_plan import GIB, MemoryPlan, RunShape, plan_for


def loader_line(shape: RunShape) -> str:
    h, w = shape.image_hw
    host = shape.workers * shape.prefetch * shape.batch * 3 * h * w
    return (f"  host memory besides: loader buffers {host / GIB:.3f} GiB per rank ({shape.workers} workers x "
            f"{shape.prefetch} prefetched batches of {shape.batch} uint8 images)")


def _task(cfg: DictConfig, as_json: bool = False) -> MemoryPlan:
    config.validate_train(cfg, for_plan=True)
    plan = plan_for(cfg)
    if as_json:
        print(json.dumps(plan.to_dict(), indent=1))
    else:
        print(plan.render())
        print(loader_line(plan.shape))
    return plan


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    if not any(a in ("-h", "--help", "--hydra-help") for a in argv):  # a plan writes nothing: no run directory, no log
        argv += ["hydra.run.dir=.", "hydra.output_subdir=null", "hydra.job_logging.handlers.file.filename=" + os.devnull,
                 "hydra.job_logging.handlers.console.stream=ext://sys.stderr",  # stdout: the plan (or its JSON) only
                 "hydra/hydra_logging=disabled"]

    def task(cfg: DictConfig) -> None:
        _task(cfg, as_json)

    hydra_entry_point("frtrain-plan", "train", task, argv, doc=__doc__)


if __name__ == "__main__":
    main()
