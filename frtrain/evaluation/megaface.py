"""MegaFace Challenge 1: FaceScrub probes against 10 .. 1,000,000 distractors (identification and verification).

Layouts read: insightface's aligned test pack (``<root>/facescrub_images/<name>/<image>``, ``<root>/megaface_images/
<a>/<b>/<image>``, the lists ``facescrub_lst`` and ``megaface_lst`` (one relative image path a line) and the noise
lists ``facescrub_noises.txt``, ``megaface_noises.txt``), optionally with the devkit's distractor lists
``templatelists/megaface_features_list.json_<N>_1`` (``{"path": [relative image paths]}``); without them the N-distractor
set is the first N images of ``megaface_lst``.

Protocol (the devkit's): FaceScrub identity with images p1..pk; each pi in turn is the probe, and each other pj of the
identity in turn is the mate placed in a gallery of the N distractors; rank = 1 + the distractors scoring at least
the mate's score (a tie counts against the mate); rank-1 (papers' number) and the CMC to rank 10 over all (probe,
mate) trials, per N. Verification: genuine = all FaceScrub same-identity pairs, impostors = every probe x distractor
pair at N; TAR at FAR 1e-6 by the strict rule (the threshold accepts at most FAR x impostors), read from the top
impostor scores kept blockwise. Cosine similarity of L2-normalised features.

Cleaning (``clean``, printed beside every number): ``none``; ``insightface`` = its ``remove_noises.py`` exactly:
a FaceScrub image whose file name is on the noise list gets its identity's centre (the sum of the identity's clean
unit features, plus uniform noise in [-0.001, 0.001] per dimension, normalised; numpy seeded 0 here, unseeded there),
and a distractor on the noise list gets a 513th feature dimension of 100, not renormalised, which the devkit's L2
distance puts beyond every face: here its cosine minus 5000 (the same order as that distance, since
|p - [v, 100]|^2 = 2 - 2 p.v + 10^4 for unit p, v); ``drop`` = the plain reading of the noise lists: noisy
FaceScrub images are left out and noisy distractors never match (they stay in N and among the impostors, as in
insightface's treatment).

Distractor features stream into a memory-mapped cache (``<cache_dir>/megaface/``, resumable: 1M x 512 float32 =
2 GB) and are scored a block at a time, so 1M distractors x ~3,500 probes fit in a few GB of RAM
(scripts/bench_megaface.py). ``devkit_features: DIR`` also writes every feature as the devkit's ``.bin`` files
(int32 rows, cols, stride, type 5, then float32), for users who run the official binary; ``features: DIR`` scores
features computed elsewhere instead of embedding the images (``facescrub.npy`` (P, d), ``megaface.npy`` (D, d), float,
rows in the lists' order; memory-mapped, never unpickled).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frtrain.errors import ConfigError, DataError
from frtrain.evaluation.benchmarks import FileImages
from frtrain.evaluation.megaface_scores import MegaFaceResult, score_features

SIZES = (10, 100, 1000, 10_000, 100_000, 1_000_000)
CLEANING = ("none", "insightface", "drop")


def _list(path: str, what: str) -> list[str]:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file ({what})")
    with open(path, encoding="utf-8") as f:
        out = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    if not out:
        raise DataError(f"{path}: lists nothing ({what})")
    return out


def _noises(path: str) -> set[str]:
    """A noise list: relative paths (megaface_noises.txt may carry a tab-separated prefix: the path is the last field)."""
    if not os.path.isfile(path):
        return set()
    with open(path, encoding="utf-8") as f:
        return {line.strip().split("\t")[-1] for line in f if line.strip() and not line.startswith("#")}


@dataclass
class MegaFaceBenchmark:
    name: str
    root: str
    probes: list[str]  # FaceScrub relative paths
    probe_ids: np.ndarray
    distractors: list[str]  # MegaFace relative paths, the largest set
    sizes: dict[int, np.ndarray]  # N -> indices into distractors
    probe_noise: np.ndarray  # (P,) bool
    distractor_noise: np.ndarray  # (D,) bool
    clean: str = "insightface"
    cache_dir: str | None = None
    devkit_features: str | None = None
    features: str | None = None
    block: int = 8192
    notes: list[str] = field(default_factory=list)

    def score(self, embedder) -> MegaFaceResult:
        start = time.perf_counter()
        if self.features:
            probe_feats, dist = given_features(self.features, len(self.probes), len(self.distractors))
        else:
            probe_feats, _ = embedder.embed(FileImages([os.path.join(self.root, "facescrub_images", p) for p in
                                                        self.probes]), len(self.probes), f"{self.name}/facescrub")
            dist = embed_distractors(self, embedder)
        if self.devkit_features:
            write_devkit(self.devkit_features, "facescrub", self.probes, probe_feats)
            write_devkit(self.devkit_features, "megaface", self.distractors, dist)
        rows = score_features(probe_feats, self.probe_ids, dist, self.sizes, self.probe_noise, self.distractor_noise,
                              self.clean, self.block, resamples=getattr(embedder, "interval_resamples", 0))
        options = {"clean": self.clean, "flip": "(given features)" if self.features else embedder.flip,
                   "distractor sets": self.notes[0] if self.notes else "", "features": self.features or "embedded",
                   "rules": "rank counts ties against the mate; TAR@FAR=1e-6 by the strict rule; cosine"}
        return MegaFaceResult(self.name, rows, options, seconds=time.perf_counter() - start,
                              notes=list(self.notes[1:]))


def megaface_benchmark(root: str, name: str = "megaface", sizes=SIZES, clean: str = "insightface",
                       cache_dir: str | None = None, devkit_features: str | None = None,
                       features: str | None = None) -> MegaFaceBenchmark:
    """Read the pack (see the module docstring); ``sizes``: the distractor counts to score (each at most the list's);
    ``features``: a directory of ``facescrub.npy`` (P, d) and ``megaface.npy`` (D, d) float32 features in the lists'
    order, computed elsewhere: scored as they are, no image read."""
    if clean not in CLEANING:
        raise ConfigError(f"benchmarks.<name>.clean={clean!r}: expected {', '.join(CLEANING)}")
    root = os.path.abspath(os.path.expanduser(str(root)))
    probes = _list(os.path.join(root, "facescrub_lst"), "FaceScrub's image list")
    distractors = _list(os.path.join(root, "megaface_lst"), "MegaFace's distractor list")
    for rel, folder in ((probes[0], "facescrub_images"), (distractors[0], "megaface_images")):
        if not features and not os.path.isfile(os.path.join(root, folder, rel)):
            raise DataError(f"{os.path.join(root, folder, rel)}: no such image (listed first in {root})")
    names: dict[str, int] = {}
    probe_ids = np.array([names.setdefault(p.split("/")[-2] if "/" in p else p, len(names)) for p in probes])
    position = {p: i for i, p in enumerate(distractors)}
    chosen, how = {}, "the first N of megaface_lst"
    for n in sorted(int(s) for s in sizes):
        listed = os.path.join(root, "templatelists", f"megaface_features_list.json_{n}_1")
        if os.path.isfile(listed):
            with open(listed, encoding="utf-8") as f:
                paths = json.load(f).get("path", [])
            missing = [p for p in paths if p not in position]
            if missing:
                raise DataError(f"{listed}: {missing[0]} is not in megaface_lst")
            chosen[n], how = np.array([position[p] for p in paths], np.int64), "the devkit's templatelists"
        elif n <= len(distractors):
            chosen[n] = np.arange(n)
    if not chosen:
        raise DataError(f"{root}: megaface_lst lists {len(distractors)} images, fewer than the smallest size "
                        f"{min(sizes)}")
    fs_noise, mf_noise = _noises(os.path.join(root, "facescrub_noises.txt")), _noises(os.path.join(root,
                                                                                                   "megaface_noises.txt"))
    notes = [f"N distractors: {how}; sizes scored {sorted(chosen)}"]
    if clean != "none" and not (fs_noise or mf_noise):
        notes.append("clean: no noise lists found (facescrub_noises.txt, megaface_noises.txt): nothing cleaned")
    return MegaFaceBenchmark(
        name, root, probes, probe_ids, distractors, chosen,
        np.array([os.path.basename(p) in fs_noise or p in fs_noise for p in probes]),
        np.array([p in mf_noise for p in distractors]), clean, cache_dir, devkit_features, features, notes=notes)


def embed_distractors(bench: MegaFaceBenchmark, embedder) -> np.memmap:
    """(D, d) float32 memmap of the distractors' features (the embedder's flip), resumable like IJB's."""
    from tqdm import tqdm

    used = np.unique(np.concatenate(list(bench.sizes.values())))
    count = int(used.max()) + 1
    key = hashlib.sha1(f"{embedder.model_key or id(embedder)}|{bench.root}|{count}|{embedder.flip}".encode()).hexdigest()
    base = Path(os.path.expanduser(bench.cache_dir or os.path.join("~", ".cache", "frtrain")))
    path = base / "megaface" / f"{key[:16]}.f32"
    path.parent.mkdir(parents=True, exist_ok=True)
    done_file = path.with_suffix(".done")
    done = int(done_file.read_text()) if done_file.is_file() and path.is_file() else 0
    load = FileImages([os.path.join(bench.root, "megaface_images", p) for p in bench.distractors[:count]])
    out = None
    bar = tqdm(total=count, initial=done, desc=f"{bench.name} distractors", unit="img", disable=not embedder.progress)
    for images in embedder.batches(load, count, start=done):
        feats, _ = embedder.forward([images])
        if out is None:
            out = np.memmap(path, dtype=np.float32, mode="r+" if done else "w+", shape=(count, feats.shape[1]))
        out[done:done + len(feats)] = feats
        done += len(feats)
        out.flush()
        done_file.write_text(str(done))
        bar.update(len(feats))
    bar.close()
    if out is None:  # everything was there already
        dim = path.stat().st_size // (4 * count)
        out = np.memmap(path, dtype=np.float32, mode="r", shape=(count, dim))
    if embedder.model_key is None:  # a throw-away file (evaluation during training)
        for p in (path, done_file):
            p.unlink(missing_ok=True)
    return out


def given_features(directory: str, probes: int, distractors: int) -> tuple[np.ndarray, np.ndarray]:
    """``facescrub.npy`` and ``megaface.npy`` of ``directory``, memory-mapped (never unpickled), checked against the
    lists: one float row per listed image, the same width."""
    out = []
    for kind, rows in (("facescrub", probes), ("megaface", distractors)):
        path = os.path.join(os.path.expanduser(str(directory)), f"{kind}.npy")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (features of {kind}_lst, one row per listed image)")
        try:
            a = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{path}: not a numpy array file ({e})") from None
        if a.ndim != 2 or a.shape[0] != rows or a.dtype.kind != "f":
            raise DataError(f"{path}: holds {a.dtype} {a.shape}, expected ({rows}, d) floats: one row per line of "
                            f"{kind}_lst")
        out.append(a)
    if out[0].shape[1] != out[1].shape[1]:
        raise DataError(f"{directory}: facescrub.npy has {out[0].shape[1]} columns, megaface.npy {out[1].shape[1]}")
    return np.asarray(out[0], dtype=np.float32), out[1]


def write_devkit(directory: str, kind: str, paths: list[str], feats) -> None:
    """The devkit's feature files: ``<directory>/<kind>/<relative path>_frtrain.bin`` = int32 (d, 1, 4, 5), d float32."""
    for rel, f in zip(paths, feats):
        out = Path(directory) / kind / f"{rel}_frtrain.bin"
        out.parent.mkdir(parents=True, exist_ok=True)
        v = np.asarray(f, dtype=np.float32)
        out.write_bytes(struct.pack("4i", len(v), 1, 4, 5) + v.tobytes())
