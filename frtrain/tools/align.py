"""Align raw face photos from 5 landmarks into an identity folder frtrain trains and scores on.

    python -m frtrain.tools.align RAW_DIR landmarks.txt OUT_DIR [--size 112]

``landmarks.txt`` has one line per photo, ``<path relative to RAW_DIR> x1 y1 ... x5 y5 [score]`` (left eye, right eye,
nose tip, left and right mouth corner, in pixels: IJB's ``*_name_5pts_score.txt`` layout, which detectors such as
RetinaFace give). Each photo is warped by the similarity transform that puts its landmarks on the ArcFace
template (the alignment IJB scoring uses) and written as ``OUT_DIR/<its relative path>`` (as PNG), so
``RAW_DIR/<identity>/<photo>`` becomes ``OUT_DIR/<identity>/<photo>.png``: ``data=folder data.root=OUT_DIR``.
A bad line, a missing photo or degenerate landmarks stop with one line naming it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from frtrain.cli import report_errors


@report_errors("align")
def main(argv=None) -> int:
    import cv2
    from tqdm import tqdm

    from frtrain.data.images import read_image
    from frtrain.evaluation.align import align_face, read_landmark_file

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("raw", help="the directory of the photos")
    ap.add_argument("landmarks", help="lines '<relative path> x1 y1 ... x5 y5 [score]'")
    ap.add_argument("out", help="the aligned identity folder to write")
    ap.add_argument("--size", type=int, default=112, help="side of the aligned crops (the template is scaled)")
    args = ap.parse_args(argv)
    entries = read_landmark_file(args.landmarks)
    for name, lmk, _ in tqdm(entries, desc="align", unit="img"):
        src = os.path.join(args.raw, name)
        face = align_face(read_image(src), lmk, args.size, where=f"{args.landmarks}: {name}")
        dst = Path(args.out) / (os.path.splitext(name)[0] + ".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(dst), face[:, :, ::-1])
    print(f"wrote {len(entries)} aligned {args.size}x{args.size} faces to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
