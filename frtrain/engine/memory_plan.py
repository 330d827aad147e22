"""The memory one training step needs on each device, predicted before any data is read.

``frtrain-plan <overrides>`` prints it; ``frtrain-train ... trainer.plan=true`` prints it and stops a run that
does not fit before the first step (``trainer.plan=auto``, the default: the same on CUDA, nothing on the CPU).
Every figure is per rank, in bytes (printed in GiB):

- backbone weights (float32 master copies), their gradients and the optimiser's state (tensors per parameter
  counted by stepping the configured optimiser once on a dummy parameter: 1 for SGD with momentum, 2 for AdamW);
- activations: the tensors the backbone's forward pass saves for its backward pass, measured by a probe (two CPU
  forward passes, of 2 and 4 images, with uninitialised weights under the run's precision: each storage counted once,
  parameters left out), the difference giving the bytes per image, scaled to the batch, and what does not grow with
  the batch (autocast's half-precision weight copies in bf16/fp16 runs); plus the backward pass's
  working set, the largest saved tensor once more (gradients of the activations, freed layer by layer). ``backbone.checkpointing`` is measured by the same probe;
- the input batch (uint8 images and their float copy);
- class vectors, their gradient and optimiser state: ceil(C / ranks) x d in ``head.class_dtype``;
- Partial FC's selected rows and their gradient (2 x K x d), K = ceil(sample_rate x C_local);
- the head's working set: the plain path's 5 float32 N x K matrices, or a chunk's 6 float32 N x chunk matrices
  (N = batch x ranks, :mod:`frtrain.heads.chunked`);
- DDP's gradient buckets (a float32 copy of the backbone's gradients) when ranks > 1;
- the optimiser step's temporaries: weight decay and Adam's square roots make a copy of the gradients, of all of
  them at once on CUDA (foreach kernels), of the largest tensor on the CPU;
- on the CPU, the runtime's own resident memory (:data:`CPU_RUNTIME_BYTES`, a calibrated constant).

The peak is the larger of two moments: the backward pass (persistent state, activations, the class-vector
gradient and the head's or the backward's working set, whichever is larger, and the backbone's gradients) and the
optimiser step (persistent state, every gradient and the step's temporaries). Loader buffers live in host memory
(the workers' prefetched batches) and are shown apart. Not modelled: ``trainer.compile`` (usually lowers the
activations), the evaluation passes (run between steps, on smaller working sets), the CUDA context (the fit rule
keeps a reserve for it and the allocator's slack).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from frtrain.errors import ConfigError
from frtrain.heads.chunked import CHUNK_MATRICES, PLAIN_MATRICES, plan as chunk_plan

log = logging.getLogger("frtrain")

GIB = 2**30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: the fit rule on CUDA: the prediction plus this share of the device and this many GiB (context, allocator slack)
CUDA_RESERVE_SHARE, CUDA_RESERVE_GIB = 0.10, 0.5
#: on the CPU: the prediction within this share of the available memory
CPU_USABLE_SHARE = 0.9
#: what a CPU training process holds whatever the model: PyTorch's kernels' code pages, the thread pools, the
#: allocator's arenas. Measured as the peak resident-set growth of 3 steps of a 2-image IResNet-tiny run minus the
#: plan's items (scripts/bench_plan.py, row "calibration": 181 MiB; IResNet-18 and MobileFaceNet 2-image steps gave
#: 162 and 174 MiB). Not counted on CUDA: there it is host memory, and max_memory_allocated does not see it.
CPU_RUNTIME_BYTES = 170 * 2**20


@dataclass
class RunShape:
    """What the prediction depends on; every suggestion is this with a field or two changed."""

    device_type: str  # cuda | cpu
    precision: str  # fp32 | bf16 | fp16
    params: int  # backbone parameters
    trainable: int  # of which trainable
    largest_param: int  # elements of the largest backbone parameter
    act_per_image: float  # saved activation bytes per image
    act_fixed: float  # saved bytes that do not grow with the batch
    largest_saved_per_image: float  # bytes of the largest saved tensor per image
    image_hw: tuple[int, int]
    embedding_size: int
    classes: int
    ranks: int
    batch: int  # per rank, per micro-batch
    accumulate: int
    optimizer_state: float  # state tensors per parameter
    weight_decay_copy: bool  # the step copies the gradients (weight decay added to them, Adam's denominators)
    sample_rate: float
    chunk_size: object
    memory_budget_mb: float
    class_dtype: str
    workers: int
    prefetch: int
    checkpointing: bool = False
    recompute_per_image: float = 0.0  # checkpointing: one block's activations, rebuilt in the backward pass
    #: (bytes per image, fixed bytes, largest per image) of the probe with checkpointing on, when the backbone can
    checkpointed_activations: tuple[float, float, float] | None = None


@dataclass
class Item:
    name: str
    bytes: float
    detail: str
    moment: str  # always | backward | step | host

    def to_dict(self) -> dict:
        return {"name": self.name, "bytes": int(self.bytes), "gib": round(self.bytes / GIB, 3), "detail": self.detail,
                "moment": self.moment}


@dataclass
class MemoryPlan:
    shape: RunShape
    items: list[Item]
    peak: float  # bytes, per rank
    peak_moment: str
    device_memory: float | None = None  # bytes
    device_memory_source: str = ""
    suggestions: list[tuple[list[str], float]] = field(default_factory=list)

    @property
    def limit(self) -> float | None:
        """Bytes the prediction may reach on this device (the fit rule), or None without a device memory."""
        if self.device_memory is None:
            return None
        if self.shape.device_type == "cuda":
            return self.device_memory * (1 - CUDA_RESERVE_SHARE) - CUDA_RESERVE_GIB * GIB
        return self.device_memory * CPU_USABLE_SHARE

    @property
    def fits(self) -> bool | None:
        return None if self.limit is None else self.peak <= self.limit

    def to_dict(self) -> dict:
        return {"peak_bytes": int(self.peak), "peak_gib": round(self.peak / GIB, 3), "peak_moment": self.peak_moment,
                "device_memory_gib": None if self.device_memory is None else round(self.device_memory / GIB, 2),
                "device_memory_source": self.device_memory_source,
                "limit_gib": None if self.limit is None else round(self.limit / GIB, 2), "fits": self.fits,
                "items": [i.to_dict() for i in self.items],
                "suggestions": [{"overrides": o, "peak_gib": round(p / GIB, 3)} for o, p in self.suggestions],
                "shape": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self.shape).items()}}

    def render(self) -> str:
        s = self.shape
        lines = [f"memory plan, per rank: {s.device_type}, {s.precision}, {s.ranks} rank(s), batch {s.batch} per rank"
                 + (f" x {s.accumulate} micro-batches" if s.accumulate > 1 else "")
                 + f", {s.classes:,} classes (d = {s.embedding_size}), backbone {s.params / 1e6:.1f}M parameters"]
        width = max(len(i.name) for i in self.items)
        for i in self.items:
            lines.append(f"  {i.name:<{width}}  {i.bytes / GIB:8.3f} GiB  {i.detail}")
        lines.append(f"  {'predicted peak':<{width}}  {self.peak / GIB:8.3f} GiB  (at the {self.peak_moment}; "
                     f"host-side loader buffers not included)")
        if self.device_memory is not None:
            rule = (f"peak + {CUDA_RESERVE_SHARE:.0%} + {CUDA_RESERVE_GIB} GiB reserve" if s.device_type == "cuda"
                    else f"peak within {CPU_USABLE_SHARE:.0%} of it")
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"  device memory {self.device_memory / GIB:.1f} GiB ({self.device_memory_source}): "
                         f"{verdict} ({rule}: limit {self.limit / GIB:.2f} GiB)")
            if not self.fits:
                if self.suggestions:
                    lines.append("  cheapest change that fits (exact changes first):")
                    for overrides, peak in self.suggestions[:3]:
                        lines.append(f"    {' '.join(overrides)}   -> {peak / GIB:.2f} GiB")
                else:
                    lines.append("  no change frtrain knows of makes it fit: shard the class vectors over more ranks")
        return "\n".join(lines)

    def one_line(self) -> str:
        """The refusal: predicted peak, the limit and the cheapest change."""
        fix = f"; the cheapest change that fits: {' '.join(self.suggestions[0][0])}" if self.suggestions else \
            "; no change frtrain knows of fits (more ranks shard the class vectors)"
        return (f"trainer.plan: the run needs about {self.peak / GIB:.2f} GiB per rank at the {self.peak_moment} and "
                f"{self.device_memory / GIB:.1f} GiB ({self.device_memory_source}) allows {self.limit / GIB:.2f} GiB"
                f"{fix} (frtrain-plan shows the table; trainer.plan=false runs anyway)")


def _class_rows(s: RunShape) -> tuple[int, int]:
    """(C_local, K): this rank's class rows and the rows a step uses."""
    local = math.ceil(s.classes / s.ranks)
    if s.sample_rate >= 1.0:
        return local, local
    positives = math.ceil(s.batch * s.ranks * local / s.classes)  # the batch's classes that fall in this shard (expected)
    k = max(math.ceil(s.sample_rate * local), min(local, positives))
    return local, min(local, k)


def estimate(s: RunShape) -> tuple[list[Item], float, str]:
    """(items, peak bytes, the moment of the peak) for one rank."""
    half = s.precision in ("bf16", "fp16")
    cbytes = _DTYPE_BYTES[s.class_dtype]
    local, k = _class_rows(s)
    d, n = s.embedding_size, s.batch * s.ranks
    h, w = s.image_hw
    items = [
        Item("backbone weights", 4 * s.params, f"{s.params:,} float32", "always"),
        Item("backbone optimiser state", 4 * s.trainable * s.optimizer_state,
             f"{s.optimizer_state:g} tensor(s) per parameter", "always"),
        Item("class vectors", local * d * cbytes, f"{local:,} x {d} {s.class_dtype}", "always"),
        Item("class optimiser state", local * d * cbytes * s.optimizer_state,
             f"{s.optimizer_state:g} x {local:,} x {d} {s.class_dtype}", "always"),
    ]
    act = s.act_fixed + s.act_per_image * s.batch
    items += [
        Item("activations", act, f"{s.act_per_image / 2**20:.2f} MiB per image x {s.batch} (probe"
             + (", checkpointed" if s.checkpointing else "")
             + (f"; with autocast's {s.precision} weight copies, {s.act_fixed / GIB:.3f} GiB" if half else "") + ")",
             "backward"),
        Item("backward working set", max(s.largest_saved_per_image,
                                         s.recompute_per_image if s.checkpointing else 0.0) * s.batch,
             "one block recomputed" if s.checkpointing and s.recompute_per_image > s.largest_saved_per_image
             else "the largest saved tensor once more", "backward-transient"),
        Item("input batch", s.batch * 3 * h * w * (1 + 4), f"{s.batch} x 3 x {h} x {w} uint8 + float32", "backward"),
        Item("backbone gradients", 4 * s.trainable, f"{s.trainable:,} float32", "gradients"),
        Item("class-vector gradient", local * d * cbytes, f"{local:,} x {d} {s.class_dtype}", "gradients"),
    ]
    chunk = chunk_plan(n, k, s.chunk_size, s.memory_budget_mb, s.device_type)
    if chunk is None:
        items.append(Item("head working set", PLAIN_MATRICES * 4 * n * k,
                          f"plain path: {PLAIN_MATRICES} float32 {n} x {k:,} matrices", "head"))
    else:
        items.append(Item("head working set", CHUNK_MATRICES * 4 * n * min(chunk, k) + 2 * 4 * n * d,
                          f"chunks of {chunk:,} classes: {CHUNK_MATRICES} float32 {n} x {min(chunk, k):,} blocks", "head"))
    if k < local:
        items.append(Item("Partial FC rows", 2 * k * d * max(cbytes, 4 if chunk is None else cbytes),
                          f"{k:,} selected rows and their gradient", "head"))
    if s.ranks > 1:
        items.append(Item("DDP gradient buckets", 4 * s.trainable, "a float32 copy of the backbone's gradients",
                          "gradients"))
    if s.device_type == "cpu":
        items.append(Item("CPU runtime", CPU_RUNTIME_BYTES, "kernels' code, thread pools, allocator (calibrated)",
                          "always"))
    if s.weight_decay_copy:
        copied = (4 * s.trainable + local * d * cbytes) if s.device_type == "cuda" else \
            max(4 * s.largest_param, local * d * cbytes)
        items.append(Item("optimiser step temporaries", copied,
                          "a copy of every gradient (foreach)" if s.device_type == "cuda" else
                          "a copy of the largest gradient", "step"))
    by = {}
    for i in items:
        by[i.moment] = by.get(i.moment, 0.0) + i.bytes
    always, grads = by.get("always", 0.0), by.get("gradients", 0.0)
    head = by.get("head", 0.0)
    backward = always + by.get("backward", 0.0) + grads + max(head, by.get("backward-transient", 0.0))
    step = always + grads + by.get("step", 0.0)
    return items, max(backward, step), "backward pass" if backward >= step else "optimiser step"


def make_plan(s: RunShape, device_memory: float | None = None, source: str = "") -> MemoryPlan:
    items, peak, moment = estimate(s)
    plan = MemoryPlan(s, items, peak, moment, device_memory, source)
    if plan.fits is False:
        plan.suggestions = suggestions(s, plan.limit)
    return plan


def _candidates(s: RunShape) -> list[tuple[list[str], dict]]:
    """Single changes, exact ones first: the chunked head, half-precision class vectors, checkpointing, micro-batches
    (same global batch), then those that change the recipe: Partial FC, a smaller batch."""
    out = []
    _, k = _class_rows(s)
    if chunk_plan(s.batch * s.ranks, k, s.chunk_size, s.memory_budget_mb, s.device_type) is None:
        out.append((["head.chunk_size=auto", "head.memory_budget_mb=64"], {"chunk_size": "auto", "memory_budget_mb": 64}))
    if s.class_dtype == "float32":
        out.append((["head.class_dtype=bfloat16"], {"class_dtype": "bfloat16"}))
    if s.checkpointed_activations is not None and not s.checkpointing:
        out.append((["backbone.checkpointing=true"], {"checkpointing": True}))
    for m in (2, 4, 8):
        if s.batch % m == 0 and s.batch // m >= 2:
            out.append(([f"data.loader.batch_size={s.batch // m}", f"trainer.accumulate={s.accumulate * m}"],
                        {"batch": s.batch // m, "accumulate": s.accumulate * m}))
    for rate in (0.5, 0.3, 0.2, 0.1):
        if rate < s.sample_rate:
            out.append(([f"head.sample_rate={rate}"], {"sample_rate": rate}))
    b = s.batch
    while b > 2:
        b //= 2
        out.append(([f"data.loader.batch_size={b}"], {"batch": b}))
    return out


def _with(s: RunShape, change: dict) -> RunShape:
    t = dataclasses.replace(s, **change)
    if change.get("checkpointing"):  # the probe's figures with checkpointing on
        t.act_per_image, t.act_fixed, t.largest_saved_per_image = s.checkpointed_activations
    return t


def suggestions(s: RunShape, limit: float) -> list[tuple[list[str], float]]:
    """Changes (overrides, predicted peak) that fit within ``limit`` bytes: each single change that fits, in order;
    when none does, the exact changes combined, then with each recipe change in turn."""
    single = []
    for overrides, change in _candidates(s):
        t = _with(s, change)
        peak = estimate(t)[1]
        if peak <= limit:
            single.append((overrides, peak))
    if single:
        return single
    exact, combined, shape = [], [], s
    for overrides, change in _candidates(s):
        t = _with(shape, change)
        peak = estimate(t)[1]
        if "sample_rate" in change or ("batch" in change and "accumulate" not in change):
            if peak <= limit:
                combined.append((exact + overrides, peak))
            continue
        if "accumulate" in change and any("accumulate" in o for o in exact):
            continue
        exact, shape = exact + overrides, t
        if peak <= limit:
            return [(exact, peak)]
    return combined[:3]


# -- measuring the backbone -------------------------------------------------------------------------------------

def probe_activations(backbone: torch.nn.Module, precision: str, sizes: tuple[int, int] = (2, 4)
                      ) -> tuple[float, float, float]:
    """(bytes per image, fixed bytes, largest saved tensor per image) of what the forward pass saves for backward.

    ``backbone`` on the CPU in training mode; its weights may be uninitialised (the values do not matter). Under
    bf16/fp16 the forward runs under CPU autocast in bfloat16 (the same element size as CUDA's half precision).
    """
    params = {p.untyped_storage().data_ptr() for p in backbone.parameters()}
    h, w = backbone.input_size
    totals, shapes = [], []
    backbone.train()
    for b in sizes:
        seen: dict[int, int] = {}
        shaped: dict[tuple, int] = {}

        def pack(t: torch.Tensor):
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in params and t.device.type != "meta":
                seen[ptr] = max(seen.get(ptr, 0), st.nbytes())
                shaped[tuple(t.shape)] = max(shaped.get(tuple(t.shape), 0), st.nbytes())
            return t

        x = torch.zeros(b, 3, h, w).normal_()
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if precision in ("bf16", "fp16") else contextlib.nullcontext()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
            out = backbone(x)
        del out
        totals.append(sum(seen.values()))
        shapes.append(shaped)
    (b0, b1), (t0, t1) = sizes, totals
    per_image = max(0.0, (t1 - t0) / (b1 - b0))
    # the largest tensor that grows with the batch: shapes of the larger probe not seen in the smaller one (autocast's
    # weight copies, the same in both, are left out)
    largest = max((n for shape, n in shapes[1].items() if shape not in shapes[0]), default=0)
    return per_image, max(0.0, t0 - per_image * b0), largest / b1


def optimizer_state_per_param(optim_factory) -> tuple[float, bool]:
    """(state tensors per parameter, whether the step copies the gradients) of an optimiser factory, by stepping it
    once on a dummy parameter of 64 elements."""
    p = torch.nn.Parameter(torch.zeros(64))
    opt = optim_factory([{"params": [p]}])
    p.grad = torch.ones(64)
    opt.step()
    elements = sum(v.numel() for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.numel() > 1)
    group = opt.param_groups[0]
    adam = "betas" in group
    copies = adam or float(group.get("weight_decay", 0) or 0) > 0
    return elements / 64, copies


# -- from a training config (frtrain-plan, frtrain-train's trainer.plan) ----------------------------------------

def count_classes(cfg: DictConfig) -> int:
    """The class count of the training data without reading its images (see the module's doc)."""
    if cfg.trainer.get("plan_classes"):
        return int(cfg.trainer.plan_classes)
    data = cfg.data
    target = str(data.get("_target_", ""))
    if data.get("num_classes"):
        return int(data.num_classes)
    if data.get("identities"):
        from frtrain.data.folder import read_identity_list

        return len(read_identity_list(OmegaConf.to_container(data.identities, resolve=True)
                                      if OmegaConf.is_config(data.identities) else data.identities)[0])
    if target.endswith("SyntheticFaces"):
        return int(data.num_identities)
    root = os.path.expanduser(str(data.get("root") or ""))
    if target.endswith("ShardFaces"):
        from frtrain.data.shards import read_index

        return int(read_index(root, check_files=False)["num_classes"])
    if target.endswith("RecordFaces"):
        from frtrain.data.recordio import RecordFile

        header = RecordFile(os.path.join(root, "train.rec") if os.path.isdir(root) else root).header0
        if header and header[1] > header[0]:
            return int(header[1] - header[0])
    elif target.endswith("FaceFolder") and os.path.isdir(root):
        with os.scandir(root) as it:
            return sum(1 for e in it if e.is_dir() and not e.name.startswith("."))
    raise ConfigError(f"trainer.plan: cannot tell the class count of data={target} without reading it; "
                      f"give trainer.plan_classes=N")


def _target_device(cfg: DictConfig) -> str:
    dev = str(cfg.trainer.device)
    if dev == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if dev.startswith("cuda") else "cpu"


def _precision(cfg: DictConfig, device_type: str) -> str:
    p = str(cfg.trainer.precision)
    if p == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return p


def device_memory(cfg: DictConfig, device_type: str) -> tuple[float | None, str]:
    """(bytes, where the figure came from): trainer.device_memory_gb, the GPU's total, or the CPU's available."""
    given = cfg.trainer.get("device_memory_gb")
    if given:
        return float(given) * GIB, "trainer.device_memory_gb"
    if device_type == "cuda":
        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            return float(torch.cuda.mem_get_info(index)[1]), torch.cuda.get_device_name(index)
        return None, ""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024, "available host memory"
    except OSError:
        pass
    return None, ""


def run_shape(cfg: DictConfig, classes: int | None = None, ranks: int | None = None) -> RunShape:
    """Everything :func:`frtrain.engine.memory_plan.estimate` needs, from a validated training config; builds the
    backbone without initialising it and probes its activations on the CPU (seconds)."""
    from frtrain.engine.build import build, without_initialisation
    from frtrain.runtime import resolve_workers

    device_type = _target_device(cfg)
    precision = _precision(cfg, device_type)
    with without_initialisation():
        backbone = build("backbone", cfg.backbone)
    backbone = backbone.to_empty(device="cpu")
    params = sum(p.numel() for p in backbone.parameters())
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    largest = max((p.numel() for p in backbone.parameters()), default=0)
    log.info("memory plan: probing %s's activations (CPU forward passes of 2 and 4 images%s)",
             type(backbone).__name__, ", with and without checkpointing" if hasattr(backbone, "checkpointing") else "")
    per_image, fixed, largest_saved = probe_activations(backbone, precision)
    checkpointed, recompute = None, 0.0
    if hasattr(backbone, "checkpointing"):  # the other setting's figures: for the suggestion, and one block's recompute
        was = backbone.checkpointing
        backbone.checkpointing = not was
        other = probe_activations(backbone, precision)
        backbone.checkpointing = was
        configured = (per_image, fixed, largest_saved)
        plain, checkpointed = (other, configured) if was else (configured, other)
        recompute = max(0.0, plain[0] - checkpointed[0]) / (len(getattr(backbone, "blocks", ())) or 1)
    state, copies = optimizer_state_per_param(build("optim", cfg.optim))
    head = cfg.head
    loader = cfg.data.loader
    shape = RunShape(
        device_type=device_type, precision=precision, params=params, trainable=trainable, largest_param=largest,
        act_per_image=per_image, act_fixed=fixed, largest_saved_per_image=largest_saved,
        image_hw=tuple(backbone.input_size), embedding_size=int(backbone.embedding_size),
        classes=int(classes if classes is not None else count_classes(cfg)),
        ranks=int(ranks or cfg.trainer.get("plan_ranks") or os.environ.get("WORLD_SIZE", 1)),
        batch=int(loader.batch_size), accumulate=int(cfg.trainer.accumulate), optimizer_state=state,
        weight_decay_copy=copies, sample_rate=float(head.get("sample_rate", 1.0)),
        chunk_size=head.get("chunk_size", "auto"), memory_budget_mb=float(head.get("memory_budget_mb", 256)),
        class_dtype=str(head.get("class_dtype", "float32")),
        workers=resolve_workers(loader.num_workers), prefetch=int(loader.prefetch_factor),
        checkpointing=bool(getattr(backbone, "checkpointing", False)),
        recompute_per_image=recompute, checkpointed_activations=checkpointed)
    return shape


def plan_for(cfg: DictConfig, classes: int | None = None, ranks: int | None = None) -> MemoryPlan:
    shape = run_shape(cfg, classes, ranks)
    memory, source = device_memory(cfg, shape.device_type)
    return make_plan(shape, memory, source)


def wanted(cfg: DictConfig) -> bool:
    """Whether frtrain-train plans before its first step: trainer.plan=true, or auto on a CUDA device."""
    mode = cfg.trainer.get("plan", "auto")
    return mode is True or (mode == "auto" and _target_device(cfg) == "cuda")


def check_before_training(cfg: DictConfig, out_dir: str | None, ranks: int = 1) -> MemoryPlan | None:
    """frtrain-train's plan (when :func:`wanted`): log it, write ``memory_plan.json`` into the run directory, and
    refuse in one line a run predicted not to fit its device memory."""
    if not wanted(cfg):
        return None
    plan = plan_for(cfg, ranks=ranks)
    for line in plan.render().splitlines():
        log.info("%s", line)
    if out_dir:
        with open(os.path.join(out_dir, "memory_plan.json"), "w") as f:
            json.dump(plan.to_dict(), f, indent=1)
    if plan.fits is False:
        raise ConfigError(plan.one_line())
    return plan
