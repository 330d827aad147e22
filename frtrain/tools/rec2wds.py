"""insightface RecordIO -> WebDataset shards: ``python -m frtrain.tools.rec2wds /data/faces_emore /data/ms1m_wds``.

Writes ``000000.tar``, ... and ``index.json`` (:mod:`frtrain.data.shards`): each record's encoded image as it is (no
re-encoding) with its first label, in the order of the .idx; the class count as ``data=rec`` reads it.
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from frtrain.cli import report_errors
from frtrain.data.recordio import RecordFaces
from frtrain.data.shards import write_shards
from frtrain.tools.folder2wds import shard_options


@report_errors("rec2wds")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rec", help="train.rec, or the directory holding train.rec/train.idx")
    ap.add_argument("out", help="output directory for the shards and index.json")
    ap.add_argument("--num-classes", type=int, default=None, help="when the .rec's header does not give it")
    shard_options(ap)
    args = ap.parse_args(argv)
    faces = RecordFaces(os.path.abspath(args.rec), num_classes=args.num_classes)

    def samples():
        for key in faces.keys:
            labels, image = faces.records.record(int(key))
            yield image, int(labels[0])

    with tqdm(total=len(faces), desc="rec2wds", unit="img") as bar:
        index = write_shards(samples(), args.out, faces.num_classes, faces.root, args.max_bytes, args.max_count,
                             bar.update)
    print(f"wrote {index['samples']} images of {faces.num_classes} classes in {len(index['shards'])} shards to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
