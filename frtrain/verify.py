"""``frtrain-verify``: are two face images the same person? The cosine score and the decision at a threshold.

    frtrain-verify model=runs/<run> a.jpg b.jpg                       # aligned crops; the model's recorded threshold
    frtrain-verify model=face.onnx a.jpg b.jpg threshold=0.31         # or a threshold of your own
    frtrain-verify model=best.pt raw1.jpg raw2.jpg landmarks=pts.txt  # raw photos, aligned from 5 landmarks each
    frtrain-verify model=face_recognition_sface_2021dec.onnx input=sface a.jpg b.jpg threshold=0.36

The two images are the positional arguments; the rest are key=value options, as every frtrain command takes them
(``frtrain-verify --help`` lists them). ``model`` is what ``frtrain-eval`` takes (a checkpoint, a run directory, an
ONNX file with ``input=<preset>`` or ``input.size=...`` when it was made elsewhere; ``backbone=<name>`` for a plain
state dict). The threshold is the one ``frtrain-export ... threshold.report=<frtrain-eval report>`` recorded in the
checkpoint or the ONNX file (a cosine at a false accept rate on a benchmark, printed with it), unless
``threshold=`` gives one; a recorded threshold backed by fewer than 10/FAR impostor pairs is refused unless
``allow_few_impostors=true``. Images are embedded as the evaluator embeds them (the image plus its horizontal flip,
summed, L2-normalised), so the score equals the one ``frtrain-eval`` computes for the same pair. ``landmarks``: a
file of lines ``<image> x1 y1 ... x5 y5 [score]`` (the image's name, path, or the ending of its path), as
``python -m frtrain.tools.align`` reads them.
"""

from __future__ import annotations

import os
import sys

import numpy as np
from omegaconf import DictConfig

from frtrain.cli import hydra_entry_point
from frtrain.errors import ConfigError

#: the options (configs/verify.yaml); anything else that is not key=value is an image
OPTIONS = ("model", "threshold", "landmarks", "backbone", "device", "input", "paths", "allow_few_impostors", "images")


def _quoted(path: str) -> str:
    """A path as a quoted string of Hydra's override grammar."""
    return "'" + path.replace("\\", "\\\\").replace("'", "\\'") + "'"


def to_overrides(argv: list[str]) -> list[str]:
    """The command line as Hydra overrides: the two positional images become ``images=[...]``."""
    overrides, images = [], []
    for a in argv:
        key = a.split("=", 1)[0].lstrip("+~")
        if a.startswith("-") or ("=" in a and not os.path.exists(a) and key.split(".")[0] in OPTIONS + ("hydra",)):
            overrides.append(a)
        elif "=" in a and not os.path.exists(a):
            raise ConfigError(f"{key}: no such option of frtrain-verify (options: {', '.join(OPTIONS[:-1])})")
        else:
            images.append(a)
    if images:
        overrides.append("images=[" + ",".join(_quoted(os.path.abspath(i)) for i in images) + "]")
    return overrides


def load_face(path: str, size, landmarks: dict | None, landmark_file: str = "") -> np.ndarray:
    """(H, W, 3) uint8 at the model's input size: aligned from its landmarks when given, else taken as aligned."""
    from frtrain.data.images import read_image, resize_to
    from frtrain.evaluation.align import align_face, landmarks_for

    image = read_image(path)
    if landmarks is not None:
        image = align_face(image, landmarks_for(landmarks, path, landmark_file), 112, where=f"{path} landmarks")
    return resize_to(image, tuple(size))


def verify(cfg: DictConfig) -> tuple[float, dict | None]:
    """(cosine score, threshold record or None) of the two images of ``cfg.images``."""
    import torch

    from frtrain.engine.model_files import load_model, resolve_checkpoint
    from frtrain.evaluation.align import read_landmark_file
    from frtrain.evaluation.embed import Embedder
    from frtrain.export import check_enough_impostors

    images = list(cfg.images)
    if len(images) != 2:
        raise ConfigError(f"give exactly two images ({len(images)} given); frtrain-verify --help shows the usage")
    path = resolve_checkpoint(cfg.model)
    model, meta = load_model(path, cfg.get("backbone"), cfg.get("input"))
    record = dict(meta.get("threshold") or (getattr(model, "meta", {}) or {}).get("threshold") or {}) or None
    if cfg.threshold is not None:
        try:
            record = {"cosine": float(cfg.threshold), "far": None, "benchmark": "given on the command line"}
            if not -1.0 <= record["cosine"] <= 1.0:
                raise ValueError
        except ValueError:
            raise ConfigError(f"threshold={cfg.threshold!r}: expected a cosine similarity, e.g. threshold=0.3") from None
    landmarks = None
    if cfg.landmarks:
        landmarks = {name: lmk for name, lmk, _ in read_landmark_file(str(cfg.landmarks))}
    faces = np.stack([load_face(p, model.input_size, landmarks, str(cfg.landmarks or "")) for p in images])
    batch = torch.from_numpy(np.ascontiguousarray(faces.transpose(0, 3, 1, 2)))
    device = torch.device(str(cfg.device))
    embedder = Embedder(model.to(device) if hasattr(model, "to") else model, device, flip="sum", batch_size=2)
    emb, _ = embedder.forward([batch])
    if cfg.threshold is None and record is not None:
        check_enough_impostors(record, bool(cfg.allow_few_impostors), "allow_few_impostors")
    emb = emb.astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return float(emb[0] @ emb[1]), record


def _task(cfg: DictConfig) -> int:
    score, record = verify(cfg)
    if record is None:
        print(f"cosine {score:.4f}; no threshold: the model records none (frtrain-export ... threshold.report=...) "
              "and none was given (threshold=...)", flush=True)
        return 0
    verdict = "same person" if score >= record["cosine"] else "different people"
    where = (f"FAR {record['far']:g} on {record['benchmark']}" if record.get("far") is not None
             else record["benchmark"])
    print(f"cosine {score:.4f}; threshold {record['cosine']:.4f} ({where}): {verdict}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from frtrain.cli import HELP_FLAGS, one_line_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a in HELP_FLAGS for a in argv):
        with one_line_errors("frtrain-verify"):
            argv = to_overrides(argv)
    hydra_entry_point("frtrain-verify", "verify", _task, argv, doc=__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
