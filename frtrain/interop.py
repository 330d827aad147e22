"""``frtrain-import-insightface``: an insightface arcface_torch output directory -> one frtrain checkpoint.

    frtrain-import-insightface /work_dirs/ms1mv3_r50 --backbone iresnet50 --out r50.pt --num-classes 93431

The reading of insightface's files is :mod:`frtrain.engine.insightface`.
"""

from __future__ import annotations

import argparse
import sys

from frtrain.cli import quiet_third_party_warnings
from frtrain.engine import checkpoint as ckpt_io
from frtrain.engine.insightface import import_training_dir, rank_files
from frtrain.errors import ConfigError, FrtrainError, first_line


def backbone_config(name: str, overrides: list[str] | None = None):
    """The backbone config ``configs/backbone/<name>.yaml`` (with ``backbone.key=value`` overrides)."""
    from frtrain import config

    try:
        return config.compose("train", [f"backbone={name}"] + list(overrides or [])).backbone
    except Exception as e:
        raise ConfigError(f"backbone={name}: {first_line(e)}") from None


def main(argv: list[str] | None = None) -> int:
    """``frtrain-import-insightface DIR --backbone iresnet50 --out frtrain.pt [--num-classes N]``."""
    quiet_third_party_warnings()
    ap = argparse.ArgumentParser(prog="frtrain-import-insightface",
                                 description="Turn an insightface arcface_torch output directory into a frtrain "
                                             "checkpoint (backbone + class vectors of every rank).")
    ap.add_argument("directory", help="holds backbone.pth and/or checkpoint_gpu_<rank>.pt")
    ap.add_argument("--backbone", required=True, help="frtrain backbone config it was trained as (e.g. iresnet50)")
    ap.add_argument("--out", required=True, help="the frtrain checkpoint to write")
    ap.add_argument("--num-classes", type=int, help="the dataset's identity count, checked against the class vectors")
    ap.add_argument("overrides", nargs="*", help="backbone.key=value overrides (e.g. backbone.embedding_size=256)")
    args = ap.parse_intermixed_args(argv)
    try:
        ckpt = import_training_dir(args.directory, backbone_config(args.backbone, args.overrides), args.num_classes)
        ckpt_io.save_atomic(ckpt, args.out)
    except FrtrainError as e:
        print(f"frtrain-import-insightface: error: {e}", file=sys.stderr)
        return 2
    c = ckpt["meta"]["num_classes"]
    print(f"wrote {args.out}: backbone {args.backbone}"
          + (f", {c} class vectors from {len(rank_files(args.directory))} rank file(s)" if c else ", no class vectors")
          + f"; fine-tune with frtrain-train trainer.init_from={args.out} backbone={args.backbone} head=...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
