"""insightface RecordIO -> identity folders: ``python -m frtrain.tools.rec2folder /data/faces_emore /data/ms1m_folders``.

Writes ``<out>/<label:06d>/<key>.jpg`` with each record's encoded image as it is (no re-encoding).
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from frtrain.cli import report_errors
from frtrain.data.images import file_ending
from frtrain.data.recordio import RecordFile


@report_errors("rec2folder")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("rec", help="train.rec, or the directory holding train.rec/train.idx")
    ap.add_argument("out", help="output directory of identity folders")
    args = ap.parse_args(argv)
    rec = os.path.join(args.rec, "train.rec") if os.path.isdir(args.rec) else args.rec
    records = RecordFile(rec)
    for key in tqdm(records.image_keys, desc="rec2folder", unit="img"):
        labels, image = records.record(key)
        folder = os.path.join(args.out, f"{int(labels[0]):06d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{key}{file_ending(image)}"), "wb") as f:
            f.write(image)
    print(f"wrote {len(records.image_keys)} images to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
