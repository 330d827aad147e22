"""Identity folders -> WebDataset shards: ``python -m frtrain.tools.folder2wds /data/casia /data/casia_wds``.

Writes ``000000.tar``, ... and ``index.json`` (:mod:`frtrain.data.shards`): each image file's bytes as they are (no
re-encoding) with its label (the sorted folder names, as ``data=folder`` numbers them), in the folder index's order.
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from frtrain.cli import report_errors
from frtrain.data.folder import load_index
from frtrain.data.shards import MAX_BYTES, MAX_COUNT, write_shards


def shard_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--max-bytes", type=int, default=MAX_BYTES, help=f"image bytes per shard at most ({MAX_BYTES})")
    ap.add_argument("--max-count", type=int, default=MAX_COUNT, help=f"samples per shard at most ({MAX_COUNT})")


@report_errors("folder2wds")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="directory of identity folders")
    ap.add_argument("out", help="output directory for the shards and index.json")
    shard_options(ap)
    args = ap.parse_args(argv)
    root = os.path.abspath(args.root)
    classes, paths, labels = load_index(root, None)

    def samples():
        for rel, label in zip(paths, labels):
            with open(os.path.join(root, rel.decode()), "rb") as f:
                yield f.read(), int(label)

    with tqdm(total=len(paths), desc="folder2wds", unit="img") as bar:
        index = write_shards(samples(), args.out, len(classes), root, args.max_bytes, args.max_count, bar.update)
    print(f"wrote {index['samples']} images of {len(classes)} identities in {len(index['shards'])} shards to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
