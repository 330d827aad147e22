"""Throw mutated user files at frtrain's readers: every one must be read or refused with a FrtrainError, never a
traceback, a crash, an unbounded allocation or a minutes-long loop.

    python scripts/fuzz_inputs.py                                   # 10,000 images, 200 checkpoints, 200 .rec files
    python scripts/fuzz_inputs.py --images 300 --checkpoints 30 --records 30 --out /tmp/fuzz.json   # the test's size

* images: valid JPEG/PNG/BMP/GIF/WebP/TIFF/PGM faces, mutated (bit flips, truncation, insertions, header fields set
  to huge or zero sizes, splices, random bytes, empty files), read as training samples of an identity-folder data
  set (``FaceFolder``: decoding, the size and pixel limits, corrupt-file replacement);
* checkpoints: a real 2-step training checkpoint whose fields are replaced by hostile values (strings, nested
  mappings, huge or negative sizes, NaN, tensors of other shapes and dtypes, zero-stride views claiming 10^9
  elements, missing and unknown keys) or whose bytes are flipped, read the ways users read checkpoints:
  ``frtrain-eval``/``verify``/``export`` (``load_model``), ``trainer.init_from`` and ``trainer.resume``;
* RecordIO: a valid ``train.rec``/``.idx`` with flipped bytes, header labels and record labels set to 1e9, NaN or
  -1, record lengths made huge, index offsets moved, truncation; opened (``RecordFaces``) and every sample read.

Each case runs under a time limit (``--case-seconds``, SIGALRM). Writes a JSON summary (cases, outcomes, failures
with their tracebacks, seconds, peak RSS) to ``--out``; exits 1 when any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import resource
import signal
import struct
import tempfile
import time
import traceback
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise CaseTimeout(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Tally:
    """Outcomes by kind: ``ok`` (read), ``refused`` (a FrtrainError: one line), ``failed`` (anything else)."""

    def __init__(self, name: str):
        self.name, self.ok, self.refused, self.failures, self.started = name, 0, 0, [], time.perf_counter()
        self.messages: dict[str, int] = {}

    def run(self, label: str, fn, seconds: float) -> None:
        from frtrain.errors import FrtrainError

        try:
            with time_limit(seconds):
                fn()
            self.ok += 1
        except FrtrainError as e:
            self.refused += 1
            if "\n" in str(e) or not str(e).strip():
                self.failures.append({"case": label, "error": f"a FrtrainError of more than one line: {str(e)!r}"})
            key = str(e).split(":")[-1].strip()[:60]
            self.messages[key] = self.messages.get(key, 0) + 1
        except BaseException as e:  # noqa: BLE001 - what the fuzzer is looking for
            if isinstance(e, KeyboardInterrupt):
                raise
            self.failures.append({"case": label, "error": f"{type(e).__name__}: {e}"[:500],
                                  "traceback": traceback.format_exc()[-3000:]})

    def summary(self) -> dict:
        return {"cases": self.ok + self.refused + len(self.failures), "read": self.ok, "refused": self.refused,
                "failed": len(self.failures), "seconds": round(time.perf_counter() - self.started, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1), "failures": self.failures[:20],
                "most_common_refusals": dict(sorted(self.messages.items(), key=lambda kv: -kv[1])[:8])}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- images --------------------------------------------------------------------------------------------------
def base_images() -> list[bytes]:
    from PIL import Image

    from frtrain.data.synthetic import render_face, identity_params, _identity_rng, _image_rng

    pixels = render_face(identity_params(_identity_rng(0, 0, 1)), _image_rng(0, 0, 1, 0), 48)
    out = []
    for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGB"), ("PNG", "L"), ("BMP", "RGB"), ("WEBP", "RGB"),
                      ("TIFF", "RGB"), ("PPM", "RGB"), ("PNG", "I;16")):
        img = Image.fromarray(pixels, "RGB")
        img = img.convert("I;16") if mode == "I;16" else img.convert(mode)
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def mutate_image(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(9)
    if kind == 0:  # bit flips
        for _ in range(rng.randint(1, 12)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncation
        data = data[:rng.randrange(len(data))]
    elif kind == 2:  # insert or delete a run of bytes
        i = rng.randrange(len(data))
        if rng.random() < 0.5:
            data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        else:
            del data[i:i + rng.randint(1, 64)]
    elif kind == 3:  # a header field (sizes live in the first bytes) set to a huge or zero value
        i = rng.randrange(min(len(data) - 4, 64))
        data[i:i + 4] = struct.pack(rng.choice([">I", "<I"]), rng.choice([0, 1, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                                                                          60000, 100000]))
    elif kind == 4:  # splice two files
        other = rng.choice(others)
        data = data[:rng.randrange(len(data))] + other[rng.randrange(len(other)):]
    elif kind == 5:
        data = bytearray(os.urandom(rng.randint(0, 4096)))
    elif kind == 6:
        data = bytearray()
    elif kind == 7:  # junk appended
        data += os.urandom(rng.randint(1, 2048))
    else:  # the signature kept, the rest random
        data = data[:8] + bytearray(os.urandom(rng.randint(0, 2048)))
    return bytes(data)


def fuzz_images(count: int, seed: int, work: Path, seconds: float) -> dict:
    from frtrain.data.folder import FaceFolder

    rng, bases = random.Random(seed), base_images()
    root = work / "images"
    names = []
    for i in range(count):
        folder = root / f"person_{i // 50:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        ext = rng.choice([".jpg", ".png", ".bmp", ".webp", ".tif", ".ppm"])
        data = mutate_image(rng.choice(bases), rng, bases) if rng.random() < 0.95 else rng.choice(bases)
        path = folder / f"{i:06d}{ext}"
        path.write_bytes(data)
        names.append(path)
    # one good image per folder, so a replacement exists somewhere
    for folder in sorted(p for p in root.iterdir()):
        (folder / "zz_good.png").write_bytes(bases[1])
    tally = Tally("images")
    dataset = None

    def build():
        nonlocal dataset
        dataset = FaceFolder(str(root), input_size=(48, 48), augment=None, index_cache=False)

    tally.run("index the folder", build, 600)
    corrupt = set()
    if dataset is not None:
        for i in range(len(dataset)):
            tally.run(dataset.path(i), lambda i=i: corrupt.update(dataset[(i, i)][2]), seconds)
    return dict(tally.summary(), files=count, corrupt_files_skipped=len(corrupt))


# -- checkpoints ---------------------------------------------------------------------------------------------
def train_tiny(work: Path):
    """A real checkpoint of a 2-step run of a small model, and the built trainer to resume with."""
    from frtrain.config import compose
    from frtrain.train import build_trainer

    cfg = compose("train", ["data.num_identities=30", "data.images_per_identity=8", "data.image_size=32",
                            "data.loader.batch_size=16", "data.loader.num_workers=0", "backbone.input_size=32",
                            "backbone.width=8", "backbone.embedding_size=32", "trainer.progress=false",
                            "trainer.max_steps=2", "eval=none", f"paths.cache_dir={work / 'cache'}"])
    out = work / "run"
    out.mkdir(parents=True)
    trainer = build_trainer(cfg, str(out))
    trainer.fit()
    return trainer, str(out / "checkpoints" / "step-00000002.pt")


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _hostile(rng: random.Random, current):
    import torch

    shape = tuple(current.shape) if hasattr(current, "shape") else (3,)
    choices = [
        "a string", None, 10**9, -5, 10**18, float("nan"), float("inf"), 0, [], [10**9, 1, 1, 1],
        {"_target_": "os.system", "command": "touch /tmp/fuzz-ran-code"}, {"nested": {"deeper": [1, "x"]}},
        torch.zeros(1).expand(10**9), torch.zeros(2, 3), torch.ones(shape, dtype=torch.int64),
        torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.complex64), torch.zeros(0),
        torch.full(shape, float("nan")) if shape else torch.tensor(float("nan")), list(range(625)), [1.5] * 3,
        {"last_epoch": 10**9}, {"last_epoch": -3, "get_lr": "x"}, ("tuple", 1), b"bytes",
    ]
    return rng.choice(choices)


def mutate_checkpoint(ckpt: dict, rng: random.Random) -> dict:
    import copy

    obj = copy.deepcopy(ckpt)
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(list(obj))  # each field as likely as another (rng alone holds 625 numbers per rank)
        paths = [(field,)] + list(_paths(obj[field], (field,)))
        path = rng.choice(paths)
        parent = obj
        for key in path[:-1]:
            parent = parent[key]
        action = rng.random()
        if action < 0.15:
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
        elif action < 0.25 and isinstance(parent, dict):
            parent[f"unknown_{rng.randrange(100)}"] = _hostile(rng, None)
        else:
            parent[path[-1]] = _hostile(rng, parent[path[-1]])
    if rng.random() < 0.3:  # sizes in the backbone record
        record = obj.get("meta", {}).get("backbone") if isinstance(obj.get("meta"), dict) else None
        if isinstance(record, dict):
            key = rng.choice(["embedding_size", "input_size", "width", "layers", "depth", "dropout"])
            record[key] = rng.choice([10**9, 100000, [100000, 100000], [20000, 1, 1, 1], -1, 0, "x", 3.5, None])
    return obj


def fuzz_checkpoints(count: int, seed: int, work: Path, seconds: float) -> dict:
    import torch

    from frtrain.engine.checkpoint import load_checkpoint
    from frtrain.engine.model_files import load_model

    trainer, path = train_tiny(work)
    ckpt = torch.load(path, weights_only=True)
    rng, tally = random.Random(seed), Tally("checkpoints")
    marker = Path("/tmp/fuzz-ran-code")
    for i in range(count):
        target = work / f"mutated-{i:04d}.pt"
        torch.save(mutate_checkpoint(ckpt, rng), target)
        if rng.random() < 0.2:  # and some bytes flipped in the file
            data = bytearray(target.read_bytes())
            for _ in range(rng.randint(1, 8)):
                j = rng.randrange(len(data))
                data[j] ^= 1 << rng.randrange(8)
            target.write_bytes(bytes(data))
        tally.run(f"{target.name}: frtrain-eval/verify/export", lambda: load_model(str(target)), seconds)
        tally.run(f"{target.name}: trainer.init_from", lambda: trainer.checkpointer.init_weights(trainer.backbone, trainer.head, str(target)), seconds)
        tally.run(f"{target.name}: trainer.resume",
                  lambda: trainer.load_state_dict(load_checkpoint(str(target), mmap=True), str(target)), seconds)
        target.unlink()
    if marker.exists():
        tally.failures.append({"case": "all", "error": f"{marker} exists: a checkpoint ran code"})
    return tally.summary()


# -- RecordIO ------------------------------------------------------------------------------------------------
def write_rec(folder: Path, images: list[bytes], labels: list[float], header: bool) -> None:
    from frtrain.data.recordio import pack, write_record

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    with open(folder / "train.rec", "wb") as f:
        key = 0
        if header:
            n = len(images) + 1
            lines.append(f"0\t{write_record(f, pack([float(n), float(n + int(max(labels)) + 1)], b''))}")
            key = 1
        for image, label in zip(images, labels):
            lines.append(f"{key}\t{write_record(f, pack(label, image))}")
            key += 1
    (folder / "train.idx").write_text("\n".join(lines) + "\n")


def _offsets(idx: Path) -> list[int]:
    return [int(f[1]) for f in (line.split() for line in idx.read_text().split("\n")) if len(f) == 2 and f[1].isdigit()]


def mutate_rec(folder: Path, rng: random.Random) -> None:
    rec, idx = folder / "train.rec", folder / "train.idx"
    data = bytearray(rec.read_bytes())
    kind = rng.randrange(7)
    if kind == 0:
        for _ in range(rng.randint(1, 16)):
            j = rng.randrange(len(data))
            data[j] ^= 1 << rng.randrange(8)
    elif kind == 1:  # a label (first float after the 8-byte frame and the flag) set to something hostile
        off = rng.choice(_offsets(idx) or [0])
        value = rng.choice([1e9, float("nan"), -1.0, float("inf"), 3.5, 2.0**31])
        if rng.random() < 0.5:
            data[off + 12:off + 16] = struct.pack("<f", value)  # the IfQQ label
        else:
            data[off + 8:off + 12] = struct.pack("<I", 2)  # flag 2: a label array
            data[off + 32:off + 36] = struct.pack("<f", value)
    elif kind == 2:  # a record length made huge
        off = rng.choice(_offsets(idx) or [0])
        data[off + 4:off + 8] = struct.pack("<I", rng.choice([(1 << 29) - 1, 0x7FFFFFFF, 0]))
    elif kind == 3:  # truncated
        data = data[:rng.randrange(len(data))]
    elif kind == 4:  # index offsets moved or made huge
        lines = [line for line in idx.read_text().split("\n") if len(line.split()) == 2]
        i = rng.randrange(len(lines))
        lines[i] = f"{lines[i].split()[0]}\t{rng.choice([1, 3, 10**12, len(data) - 4, 17])}"
        idx.write_text("\n".join(lines) + "\n")
    elif kind == 5:  # the header's image range
        data[8 + 24:8 + 28] = struct.pack("<f", rng.choice([1e9, float("nan"), -1.0, 0.0, 1.0]))
    else:  # garbage index lines
        idx.write_text(idx.read_text() + rng.choice(["x\ty\n", "5\n", "-1\t0\n", "99999999999\t0\n"]))
    rec.write_bytes(bytes(data))


def fuzz_records(count: int, seed: int, work: Path, seconds: float) -> dict:
    from frtrain.data.recordio import RecordFaces
    from frtrain.data.synthetic import draw_image

    rng, tally = random.Random(seed), Tally("records")
    images = [draw_image(0, 0, i % 4, i, 32) for i in range(24)]
    labels = [float(i % 4) for i in range(24)]
    for i in range(count):
        folder = work / f"rec-{i:04d}"
        write_rec(folder, images, labels, header=rng.random() < 0.5)
        for _ in range(rng.randint(1, 3)):
            mutate_rec(folder, rng)

        def read(folder=folder):
            ds = RecordFaces(str(folder), input_size=(32, 32), augment=None)
            for j in range(len(ds)):
                ds[(j, j)]

        tally.run(folder.name, read, seconds)
    return tally.summary()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--checkpoints", type=int, default=200)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case-seconds", type=float, default=30.0, help="time limit of one case")
    ap.add_argument("--out", default=str(ROOT / "docs" / "fuzz_inputs.json"))
    args = ap.parse_args()
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import logging

    logging.getLogger("frtrain").setLevel(logging.ERROR)  # the readers' warnings about skipped files, by thousands
    started = time.perf_counter()
    report = {"command": "python scripts/fuzz_inputs.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")}
    with tempfile.TemporaryDirectory(prefix="frtrain-fuzz-") as tmp:
        work = Path(tmp)
        os.environ["FRTRAIN_CACHE"] = str(work / "cache")
        report["images"] = fuzz_images(args.images, args.seed, work, args.case_seconds)
        report["checkpoints"] = fuzz_checkpoints(args.checkpoints, args.seed, work, args.case_seconds)
        report["records"] = fuzz_records(args.records, args.seed, work, args.case_seconds)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["peak_rss_mb"] = round(peak_rss_mb(), 1)
    failed = sum(report[k]["failed"] for k in ("images", "checkpoints", "records"))
    report["failed"] = failed
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print("| files | cases | read | refused in one line | failed | seconds | peak RSS (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for kind in ("images", "checkpoints", "records"):
        r = report[kind]
        print(f"| {kind} | {r['cases']} | {r['read']} | {r['refused']} | {r['failed']} | {r['seconds']} | "
              f"{r['peak_rss_mb']} |")
    print(f"total {report['seconds']} s, peak RSS {report['peak_rss_mb']} MB, {failed} failures; {args.out}")
    for kind in ("images", "checkpoints", "records"):
        for f in report[kind]["failures"][:3]:
            print(f"FAILED {kind}: {f['case']}: {f['error']}\n{f.get('traceback', '')}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
