"""``frtrain-verify``: are two face images the same person? The cosine score and the decision at a threshold.

    frtrain-verify model=runs/<run> a.jpg b.jpg                       # aligned crops; the model's recorded threshold
    frtrain-verify model=face.onnx a.jpg b.jpg threshold=0.31         # or a threshold of your own
    frtrain-verify model=best.pt raw1.jpg raw2.jpg landmarks=pts.txt  # raw photos, aligned from 5 landmarks each

``model`` is what ``frtrain-eval`` takes (a checkpoint, a run directory, an ONNX file; ``backbone=<name>`` for a
plain state dict). The threshold is the one ``frtrain-export ... threshold.report=<frtrain-eval report>`` recorded
in the checkpoint or the ONNX file (a cosine at a false accept rate on a benchmark, printed with it), unless
``threshold=`` gives one. Images are embedded as the evaluator embeds them (the image plus its horizontal flip,
summed, L2-normalised), so the score equals the one ``frtrain-eval`` computes for the same pair. ``landmarks``: a
file of lines ``<image> x1 y1 ... x5 y5 [score]`` (the image's name or path), see ``scripts/align.py``.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from frtrain.cli import one_line_errors, quiet_third_party_warnings
from frtrain.errors import ConfigError

USAGE = "usage: frtrain-verify model=<checkpoint|run|onnx> IMAGE_A IMAGE_B [threshold=T] [landmarks=FILE] [backbone=NAME]"
OPTIONS = ("model", "threshold", "landmarks", "backbone", "device")


def parse(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    opts, images = {}, []
    for a in argv:
        if "=" in a and not os.path.exists(a):
            key, value = a.split("=", 1)
            if key not in OPTIONS:
                raise ConfigError(f"{key}: no such option of frtrain-verify (options: {', '.join(OPTIONS)})")
            opts[key] = value
        else:
            images.append(a)
    if "model" not in opts or len(images) != 2:
        raise ConfigError(f"give model= and exactly two images ({len(images)} given); {USAGE}")
    return opts, images


def load_face(path: str, size, landmarks: dict | None) -> np.ndarray:
    """(H, W, 3) uint8 at the model's input size: aligned from its landmarks when given, else taken as aligned."""
    from frtrain.data.images import read_image, resize_to
    from frtrain.errors import DataError
    from frtrain.evaluation.align import align_face

    image = read_image(path)
    if landmarks is not None:
        lmk = landmarks.get(path, landmarks.get(os.path.basename(path)))
        if lmk is None:
            raise DataError(f"{path}: no landmarks for this image in the landmark file")
        image = align_face(image, lmk, 112, where=f"{path} landmarks")
    return resize_to(image, tuple(size))


def verify(opts: dict[str, str], images: list[str]) -> tuple[float, dict | None]:
    """(cosine score, threshold record or None) of the two images."""
    import torch

    from frtrain.config import compose
    from frtrain.engine.checkpoint import load_model, resolve_checkpoint
    from frtrain.evaluation.align import read_landmark_file
    from frtrain.evaluation.embed import embed_batches

    path = resolve_checkpoint(opts["model"])
    backbone_cfg = compose("train", [f"backbone={opts['backbone']}"]).backbone if opts.get("backbone") else None
    model, meta = load_model(path, backbone_cfg)
    record = dict(meta.get("threshold") or (getattr(model, "meta", {}) or {}).get("threshold") or {}) or None
    if opts.get("threshold"):
        try:
            record = {"cosine": float(opts["threshold"]), "far": None, "benchmark": "given on the command line"}
            if not -1.0 <= record["cosine"] <= 1.0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"threshold={opts['threshold']!r}: expected a cosine similarity, e.g. threshold=0.3") from None
    landmarks = None
    if opts.get("landmarks"):
        landmarks = {name: lmk for name, lmk, _ in read_landmark_file(opts["landmarks"])}
    faces = np.stack([load_face(p, model.input_size, landmarks) for p in images])
    batch = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2)))
    device = torch.device(opts.get("device", "cpu"))
    emb, _ = embed_batches(model.to(device) if hasattr(model, "to") else model, [batch], model.mean, model.std,
                           device, "sum")
    emb = emb.astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return float(emb[0] @ emb[1]), record


def main(argv: list[str] | None = None) -> int:
    quiet_third_party_warnings("frtrain-verify")
    with one_line_errors("frtrain-verify"):
        opts, images = parse(list(sys.argv[1:] if argv is None else argv))
        score, record = verify(opts, images)
        if record is None:
            print(f"cosine {score:.4f}; no threshold: the model records none (frtrain-export ... threshold.report=...) "
                  "and none was given (threshold=...)", flush=True)
            return 0
        verdict = "same person" if score >= record["cosine"] else "different people"
        where = (f"FAR {record['far']:g} on {record['benchmark']}" if record.get("far") is not None
                 else record["benchmark"])
        print(f"cosine {score:.4f}; threshold {record['cosine']:.4f} ({where}): {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
