"""Low-resolution identification: TinyFace and SCface, each a reader plus ``score(embedder)``.

**TinyFace** (Cheng et al. 2018), as released: ``<root>/Testing_Set/Probe/``, ``Gallery_Match/`` and
``Gallery_Distractor/``; an image's identity is its file name's prefix before the first ``_`` (the distractors have
no mate). Every probe is searched in Gallery_Match plus Gallery_Distractor (the standard setting, ~153K distractors)
and in Gallery_Match alone; the report gives rank-1/5/10/20 and mAP for both. The native ~20x16 images are upsampled
to the model's input (bilinear: OpenCV's INTER_LINEAR; recorded).

**SCface** (Grgic et al. 2011) is licensed, so it is read from a list file the user writes for their copy: lines
``<image path> <subject id> <role: gallery|probe> <distance>`` (paths relative to the list file; ``#`` comments and
blank lines skipped). Probes of each distance are searched in the gallery of mugshots; the report gives rank-1 (and
rank-5, mAP) per distance.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np

from frtrain.data.images import IMAGE_EXTENSIONS
from frtrain.errors import DataError
from frtrain.evaluation.benchmarks import FileImages
from frtrain.evaluation.identification import RULE, IdentificationResult, identification_setting

INTERPOLATION = "bilinear (OpenCV INTER_LINEAR) from the native size to the model's input; area when shrinking"


@dataclass
class GalleryProbeBenchmark:
    """Images with identities, each a probe or a gallery entry; ``settings`` name the galleries to search:
    setting -> (probe mask, gallery mask) over the images."""

    name: str
    paths: list[str]
    identities: np.ndarray  # (N,) int: the identity of each image (distractors: a unique negative id each)
    settings: dict[str, tuple[np.ndarray, np.ndarray]]
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ranks: tuple[int, ...] = (1, 5, 10, 20)

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def score(self, embedder) -> IdentificationResult:
        """Embed every image once (``embedder.flip`` as for pairs), then rank each setting's probes."""
        start = time.perf_counter()
        emb, _ = embedder.embed(FileImages(self.paths), self.num_images, self.name)
        rows = {}
        for setting, (probe, gallery) in self.settings.items():
            rows[setting] = identification_setting(emb[probe], self.identities[probe], emb[gallery],
                                                   self.identities[gallery], self.ranks,
                                                   resamples=getattr(embedder, "interval_resamples", 0))
        options = dict(self.options, flip=embedder.flip, rules=RULE)
        return IdentificationResult(self.name, rows, options, seconds=time.perf_counter() - start,
                                    notes=list(self.notes))


def _images(folder: str, what: str) -> list[str]:
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such directory ({what})")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DataError(f"{folder}: holds no images ({what})")
    return [os.path.join(folder, n) for n in names]


def tinyface_benchmark(root: str, name: str = "tinyface", distractors: bool = True) -> GalleryProbeBenchmark:
    """TinyFace's Testing_Set (see the module docstring); ``distractors=False`` skips the 153K-image setting."""
    root = os.path.abspath(os.path.expanduser(str(root)))
    test = os.path.join(root, "Testing_Set") if os.path.isdir(os.path.join(root, "Testing_Set")) else root
    probe = _images(os.path.join(test, "Probe"), "TinyFace probes")
    match = _images(os.path.join(test, "Gallery_Match"), "TinyFace gallery")
    extra = _images(os.path.join(test, "Gallery_Distractor"), "TinyFace distractors") if distractors else []
    labels: dict[str, int] = {}

    def identity(path: str) -> int:
        stem = os.path.basename(path)
        if "_" not in stem:
            raise DataError(f"{path}: a TinyFace image name is '<identity>_<number>.<ext>'")
        return labels.setdefault(stem.split("_", 1)[0], len(labels))

    ids = np.array([identity(p) for p in probe + match] + [-1 - i for i in range(len(extra))], dtype=np.int64)
    n_p, n_m = len(probe), len(match)
    is_probe = np.zeros(len(ids), bool)
    is_probe[:n_p] = True
    is_match = np.zeros(len(ids), bool)
    is_match[n_p:n_p + n_m] = True
    settings = {}
    if extra:
        settings["with distractors"] = (is_probe, ~is_probe)
    settings["without distractors"] = (is_probe, is_match)
    options = {"interpolation": INTERPOLATION, "probes": n_p, "gallery_match": n_m, "distractors": len(extra),
               "identity": "the file name's prefix before the first '_'"}
    return GalleryProbeBenchmark(name, probe + match + extra, ids, settings, options)


def scface_benchmark(list_file: str, name: str = "scface") -> GalleryProbeBenchmark:
    """SCface from a user-written list file (see the module docstring); one setting per probe distance."""
    list_file = os.path.abspath(os.path.expanduser(str(list_file)))
    if not os.path.isfile(list_file):
        raise DataError(f"{list_file}: no such file (an SCface list: '<image> <subject> <gallery|probe> <distance>')")
    base = os.path.dirname(list_file)
    paths, subjects, roles, distances = [], [], [], []
    with open(list_file, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            if len(fields) != 4 or fields[2] not in ("gallery", "probe") or not fields[1].lstrip("-").isdigit():
                raise DataError(f"{list_file}:{lineno}: expected '<image> <subject id> <gallery|probe> <distance>', "
                                f"got {line.strip()!r}")
            path = fields[0] if os.path.isabs(fields[0]) else os.path.join(base, fields[0])
            if not os.path.isfile(path):
                raise DataError(f"{list_file}:{lineno}: {path}: no such image")
            paths.append(path)
            subjects.append(int(fields[1]))
            roles.append(fields[2])
            distances.append(fields[3])
    roles_a, dist_a = np.array(roles), np.array(distances)
    gallery = roles_a == "gallery"
    if not gallery.any() or gallery.all():
        raise DataError(f"{list_file}: needs both gallery and probe images")
    settings = {f"distance {d}": ((roles_a == "probe") & (dist_a == d), gallery)
                for d in sorted(set(dist_a[~gallery].tolist()))}
    options = {"interpolation": INTERPOLATION, "gallery": int(gallery.sum()), "probes": int((~gallery).sum()),
               "list": list_file}
    return GalleryProbeBenchmark(name, paths, np.array(subjects, np.int64), settings, options, ranks=(1, 5))
