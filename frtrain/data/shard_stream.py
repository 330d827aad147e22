"""Training from WebDataset shards (``data=wds``): read with the ``webdataset`` library, split over ranks and loader
workers without overlap, shuffled per epoch from the run's seed, resumable at the same sample.

The plan of epoch e is computed the same way in every process from ``index.json`` (:mod:`frtrain.data.shards`):

- the shards are permuted by a generator seeded with (seed, e) and dealt to S = ranks x workers *slots*: slot
  (r, w) = rank r's loader worker w (worker 0 is the rank's own process with ``num_workers: 0``) takes permuted
  shards ``s, s + S, s + 2S, ...`` with s = r x workers + w;
- a slot reads its shards in that order (``webdataset.SimpleShardList`` + ``tarfile_to_samples``), passes the raw
  samples through a shuffle buffer of ``shuffle_buffer`` samples seeded with (seed, e, slot), decodes, augments
  (each sample's augmentation seeded by (seed, e, slot, position)) and batches;
- every slot yields the same number of batches in every epoch, m = (the samples of the floor(shards / slots)
  smallest shards) // batch size, the fewest any slot can get; so every rank has ``workers x m`` batches per epoch
  and the DataLoader's round-robin over workers is regular. Samples beyond a slot's m batches are not used that
  epoch (none when the shards are equal and divide evenly over the slots; the shard order changes per epoch).

Resume at batch k of an epoch (k = t x workers + j): every worker skips t batches' samples before decoding them,
and the first j batches the loader yields (workers 0..j-1's batch t, delivered before the interruption) are
dropped, so the run continues with the batch it would have taken: identical when the world size, the worker
count, and the corrupt samples met before the interruption are the same. A corrupt sample (undecodable image,
missing or out-of-range label) is skipped, the next one taking its place, and counted like a bad file; its index is
its key (frtrain's writers number the samples 0..N-1).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds  # imported here, before any loader worker is forked
from torch.utils.data import IterableDataset

from frtrain.data.base import ImageDataset, collate
from frtrain.data.images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, CorruptImageError, decode_image, resize_to
from frtrain.data.shards import read_index
from frtrain.data.transforms import apply_augment, to_chw_tensor
from frtrain.errors import ConfigError, DataError

#: sample members that are not the image
_NOT_IMAGE = {"__key__", "__url__", "__local_path__", "cls"}


class ShardFaces(ImageDataset):
    """The shard set of ``root`` (its ``index.json``): class count, sample count, names for messages, decoding.

    Args:
        root: the directory of ``index.json`` (and of the shards, unless ``url`` is given).
        url: where the shards are read from, when not ``root``: a template with ``{name}`` (the shard's file name),
            any URL or ``pipe:`` command webdataset opens, e.g. ``pipe:curl -s http://host/faces/{name}``.
        shuffle_buffer: samples of the per-slot shuffle buffer (0: the shards' order).
        input_size, augment, on_corrupt, max_image_pixels, max_image_bytes: see :class:`ImageDataset`.
    """

    def __init__(self, root: str, url: str | None = None, shuffle_buffer: int = 1000, input_size=(112, 112),
                 augment=None, on_corrupt: str = "skip", max_image_pixels: int = DEFAULT_MAX_PIXELS,
                 max_image_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__(input_size, augment, on_corrupt, max_image_pixels, max_image_bytes)
        if root is None or str(root) in ("", "???"):
            raise ConfigError("data.root is not set: give the directory of the shards' index.json")
        if int(shuffle_buffer) < 0:
            raise ConfigError(f"data.shuffle_buffer={shuffle_buffer}: expected 0 or more samples")
        if url is not None and "{name}" not in str(url):
            raise ConfigError(f"data.url={url!r}: expected a template with {{name}} (the shard's file name)")
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.index = read_index(self.root, check_files=url is None)
        self.url, self.shuffle_buffer = url, int(shuffle_buffer)
        self.shards = [s["name"] for s in self.index["shards"]]
        self.counts = np.array([s["samples"] for s in self.index["shards"]], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)])

    @property
    def num_classes(self) -> int:
        return int(self.index["num_classes"])

    def __len__(self) -> int:
        return int(self.index["samples"])

    def shard_url(self, i: int) -> str:
        name = self.shards[i]
        return os.path.join(self.root, name) if self.url is None else self.url.replace("{name}", name)

    def path(self, index: int) -> str:
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        return f"{self.shard_url(shard)} sample {int(index)}"

    def group(self, index: int) -> str:
        return self.shard_url(int(np.searchsorted(self.starts, index, side="right")) - 1)

    def sample(self, index: int):
        raise DataError("WebDataset shards are read as a stream (ShardStream), not by index")

    def decode(self, raw: dict, seed: int) -> tuple[torch.Tensor, int]:
        """(image (3, H, W) uint8, label) of a raw sample; raises :class:`CorruptImageError` for a bad one."""
        name = f"{raw.get('__url__', self.root)} sample {raw.get('__key__')}"
        images = [k for k in raw if k not in _NOT_IMAGE]
        if len(images) != 1 or "cls" not in raw:
            raise CorruptImageError(f"{name}: expected one image and a .cls member, found {sorted(raw)[:6]}")
        try:
            label = int(raw["cls"].decode().strip())
        except (UnicodeDecodeError, ValueError, AttributeError):
            raise CorruptImageError(f"{name}: its .cls is not a class number") from None
        if not 0 <= label < self.num_classes:
            raise CorruptImageError(f"{name}: label {label} outside the classes 0..{self.num_classes - 1}")
        data = raw[images[0]]
        if len(data) > self.max_image_bytes:
            raise CorruptImageError(f"{name}: {len(data):,} bytes, more than data.max_image_bytes")
        image = resize_to(decode_image(data, name, self.max_image_pixels), self.input_size)
        return to_chw_tensor(apply_augment(self.augment, image, seed)), label

    def sample_index(self, raw: dict) -> int:
        """The global index of a raw sample: its key (frtrain's writers number samples 0..N-1), else -1."""
        try:
            i = int(str(raw.get("__key__")))
        except ValueError:
            return -1
        return i if 0 <= i < len(self) else -1


class ShardStream(IterableDataset):
    """Batches ``(images, labels, skipped)`` of one rank from :class:`ShardFaces` (the module docstring's plan); also
    the trainer's sampler: ``batch_size``, ``batches_per_epoch``, ``set_epoch(epoch, start_batch)``."""

    def __init__(self, faces: ShardFaces, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 workers: int = 0):
        self.faces, self.batch_size, self.seed = faces, int(batch_size), int(seed)
        self.rank, self.world_size, self.workers = int(rank), int(world_size), max(1, int(workers))
        self.slots = self.world_size * self.workers
        if len(faces.shards) < self.slots:
            raise ConfigError(f"{faces.root}: {len(faces.shards)} shards for {self.world_size} ranks x {self.workers} "
                              "loader workers: each needs at least one shard (fewer data.loader.num_workers, or more, "
                              "smaller shards: --max-count)")
        self.epoch, self.start_batch = 0, 0
        # the fewest samples any slot can get in any epoch: floor(shards / slots) of the smallest shards
        smallest = np.sort(faces.counts)[: len(faces.shards) // self.slots]
        self.per_slot = int(smallest.sum()) // self.batch_size
        if self.per_slot < 1:
            raise ConfigError(f"{faces.root}: a slot (rank x loader worker) gets fewer than {self.batch_size} samples; "
                              "lower data.loader.batch_size or data.loader.num_workers")

    # -- the plan -------------------------------------------------------------------------------------------
    def shard_order(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.faces.shards), generator=g).numpy()

    def slot_shards(self, epoch: int, slot: int) -> list[int]:
        return [int(i) for i in self.shard_order(epoch)[slot::self.slots]]

    @property
    def batches_per_epoch(self) -> int:
        return self.workers * self.per_slot

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    # -- reading --------------------------------------------------------------------------------------------
    def raw_samples(self, slot: int) -> Iterator[dict]:
        """The slot's raw samples in its epoch order: its shards read in turn (webdataset), through the shuffle
        buffer; the shards again from the start if corrupt samples used them up."""
        urls = [self.faces.shard_url(i) for i in self.slot_shards(self.epoch, slot)]

        def handler(exn):
            raise DataError(f"{self.faces.root}: a shard of {urls[0]}...: cannot be read ({exn})") from None

        rng = np.random.default_rng((self.seed, self.epoch, slot))
        buffer_size = self.faces.shuffle_buffer
        while True:
            buffer: list = []
            for raw in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=handler)):
                if buffer_size <= 0:
                    yield raw
                    continue
                buffer.append(raw)
                if len(buffer) >= buffer_size:
                    j = int(rng.integers(len(buffer)))
                    buffer[j], buffer[-1] = buffer[-1], buffer[j]
                    yield buffer.pop()
            while buffer:
                j = int(rng.integers(len(buffer)))
                buffer[j], buffer[-1] = buffer[-1], buffer[j]
                yield buffer.pop()

    def slot_batches_from(self, slot: int, skip_batches: int) -> Iterator[tuple]:
        """The slot's batches after ``skip_batches`` (their samples skipped before decoding)."""
        raws, position = self.raw_samples(slot), 0
        for _ in range(skip_batches * self.batch_size):
            next(raws)
            position += 1
        for _ in range(self.per_slot - skip_batches):
            items, skipped = [], []
            while len(items) < self.batch_size:
                raw = next(raws)
                seed = int(np.random.default_rng((self.seed, self.epoch, slot, position)).integers(2**31 - 1))
                position += 1
                try:
                    items.append(self.faces.decode(raw, seed) + ((),))
                except CorruptImageError:
                    if self.faces.on_corrupt == "raise":
                        raise
                    skipped.append(self.faces.sample_index(raw))
                    if len(skipped) > self.batch_size * 256:
                        raise DataError(f"{self.faces.root}: {len(skipped)} samples in a row cannot be decoded; "
                                        "is the data readable?") from None
            images, labels, _ = collate(items)
            yield images, labels, [i for i in skipped if i >= 0]

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        slot = self.rank * self.workers + worker
        return self.slot_batches_from(slot, self.start_batch // self.workers)


class ShardLoader:
    """The DataLoader over a :class:`ShardStream` (workers started per epoch, so each sees the epoch set by
    ``set_epoch``), dropping the batches of a resumed epoch's unfinished round (see the module docstring)."""

    def __init__(self, stream: ShardStream, workers: int, pin_memory: bool, prefetch_factor: int = 2):
        from torch.utils.data import DataLoader

        from frtrain.data.loader import _one_thread_per_worker

        kwargs = dict(num_workers=workers, pin_memory=pin_memory, batch_size=None)
        if workers > 0:
            kwargs.update(prefetch_factor=prefetch_factor, worker_init_fn=_one_thread_per_worker,
                          persistent_workers=False)
        self.stream = stream
        self.loader = DataLoader(stream, **kwargs)

    def __iter__(self):
        drop = self.stream.start_batch % self.stream.workers
        for i, batch in enumerate(self.loader):
            if i >= drop:
                yield batch

    def __len__(self) -> int:
        return len(self.stream)
