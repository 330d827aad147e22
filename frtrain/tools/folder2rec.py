"""Identity folders -> insightface RecordIO: ``python -m frtrain.tools.folder2rec /data/casia /data/casia_rec``.

Writes ``train.rec``/``train.idx`` with insightface's header record 0 (images are keys 1..N, labels
follow the sorted folder names) and each image file's bytes as they are (no re-encoding).
"""

from __future__ import annotations

import argparse
import os
import sys

from tqdm import tqdm

from frtrain.cli import report_errors
from frtrain.data.folder import load_index
from frtrain.data.recordio import pack, write_record


@report_errors("folder2rec")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", help="directory of identity folders")
    ap.add_argument("out", help="output directory for train.rec and train.idx")
    args = ap.parse_args(argv)
    classes, paths, labels = load_index(os.path.abspath(args.root), None)
    os.makedirs(args.out, exist_ok=True)
    n = len(paths)
    with open(os.path.join(args.out, "train.rec"), "wb") as rec, open(os.path.join(args.out, "train.idx"), "w") as idx:
        idx.write(f"0\t{write_record(rec, pack([n + 1, n + 1 + len(classes)], b''))}\n")
        for key, (rel, label) in enumerate(tqdm(list(zip(paths, labels)), desc="folder2rec", unit="img"), 1):
            with open(os.path.join(args.root, rel.decode()), "rb") as f:
                idx.write(f"{key}\t{write_record(rec, pack(float(label), f.read()))}\n")
    print(f"wrote {n} images of {len(classes)} identities to {args.out}/train.rec")
    return 0


if __name__ == "__main__":
    sys.exit(main())
