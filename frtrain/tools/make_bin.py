"""Write an insightface verification ``.bin`` from LFW's pairs.txt layout or a CSV pair list.

    python -m frtrain.tools.make_bin --lfw /data/lfw --out lfw.bin
    python -m frtrain.tools.make_bin --csv my_pairs.csv --out my_pairs.bin [--root /data/faces]
    python -m frtrain.tools.make_bin --lfw /data/lfw_original --crop 0.28 0.28 0.28 0.28 --size 112 --out lfw.bin

A .bin holds 2N encoded images and N booleans (pair i = images 2i, 2i+1) and is scored with 10
consecutive equal folds. Image files already at ``--size`` and without ``--crop`` are stored byte for byte
(so the .bin scores exactly like the files); others are cropped, resized and stored as PNG (lossless).
The pairs are written in the source's order; when the source's folds are not 10 consecutive equal chunks
(LFW's 10 sets of 600 are), the script says so, since the .bin's folds will then differ.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import sys

import numpy as np
from PIL import Image

from frtrain.cli import report_errors
from frtrain.data.images import center_crop, read_image, resize_to
from frtrain.evaluation.benchmarks import PairBenchmark
from frtrain.evaluation.lfw import lfw_benchmark
from frtrain.evaluation.metrics import kfold_ids
from frtrain.evaluation.pairlist import csv_benchmark


def encoded_image(path: str, size: int | None, crop) -> bytes:
    """The file's bytes when it needs no change, else the cropped/resized image as PNG."""
    if not crop:
        with Image.open(path) as img:
            if size is None or img.size == (size, size):
                with open(path, "rb") as f:
                    return f.read()
    img = center_crop(read_image(path), crop)
    if size is not None:
        img = resize_to(img, (size, size))
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_bin(bench: PairBenchmark, out: str, size: int | None = 112, crop=None) -> dict:
    """Write ``bench`` (a file-based benchmark) as a .bin; returns a summary."""
    paths = bench.load.paths
    cache: dict[int, bytes] = {}
    bins, issame = [], []
    for (a, b), same in zip(bench.pairs, bench.issame):
        for i in (int(a), int(b)):
            if i not in cache:
                cache[i] = encoded_image(paths[i], size, crop)
            bins.append(cache[i])
        issame.append(bool(same))
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    with open(out, "wb") as f:
        pickle.dump((bins, issame), f, protocol=4)
    same_folds = np.array_equal(kfold_ids(len(issame), 10), bench.folds)
    return {"pairs": len(issame), "images": len(cache), "bytes": os.path.getsize(out), "same_folds": same_folds}


@report_errors("make_bin")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--lfw", help="LFW directory (pairs.txt and <name>/<name>_NNNN.jpg, or images/ under it)")
    src.add_argument("--csv", help="CSV pair list path1,path2,is_same[,fold]")
    ap.add_argument("--root", help="base of the CSV's relative paths (default: its directory)")
    ap.add_argument("--pairs", help="LFW pairs file (default: <lfw>/pairs.txt)")
    ap.add_argument("--out", required=True, help="the .bin to write")
    ap.add_argument("--size", type=int, default=112, help="square side of the stored images (0: keep sizes)")
    ap.add_argument("--crop", type=float, nargs=4, metavar=("LEFT", "TOP", "RIGHT", "BOTTOM"),
                    help="fractions cut off each border before resizing")
    args = ap.parse_args(argv)
    bench = (lfw_benchmark(args.lfw, pairs=args.pairs) if args.lfw
             else csv_benchmark(args.csv, root=args.root))
    summary = write_bin(bench, args.out, args.size or None, args.crop)
    print(f"wrote {args.out}: {summary['pairs']} pairs, {summary['images']} distinct images, "
          f"{summary['bytes'] / 1e6:.1f} MB")
    if not summary["same_folds"]:
        print("note: the source's folds are not 10 consecutive equal chunks; the .bin's folds (which are) differ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
