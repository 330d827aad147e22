"""The configuration: typed schemas, composition, and the checks that run before any expensive work.

Hydra composes ``configs/`` (shipped inside the package as ``frtrain.configs``). The nodes frtrain reads
itself have a schema (a dataclass registered in Hydra's ConfigStore and named ``schema`` in their group):
``trainer``, ``eval``, ``data.loader`` and ``paths``. A misspelt key or a wrong type there, in a command-line
override or in an experiment file, stops composition naming the key. The other nodes (backbone, head,
data set, benchmarks, optimiser, schedule) are ``_target_`` nodes whose keys are checked against the
target's signature by :func:`frtrain.engine.build.build`.

Before anything expensive (data generation, indexing, model building) the entry points call
:func:`check_command_line` (one line, with the closest valid names, for a bad override) and
:func:`validate_train` / :func:`validate_eval` (every node's keys, types and ranges).
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from omegaconf import DictConfig, OmegaConf

from frtrain.errors import ConfigError, first_line

CONFIG_MODULE = "frtrain.configs"


# -- schemas ------------------------------------------------------------------------------------------
@dataclass
class PathsConfig:
    """Where frtrain reads and caches data (``configs/paths/default.yaml``)."""

    cache_dir: str = "${oc.env:FRTRAIN_CACHE,'~/.cache/frtrain'}"  # generated data, file indexes
    datasets: str = "${oc.env:FRTRAIN_DATASETS,datasets}"  # training sets of the paper experiments
    benchmarks: str = "${oc.env:FRTRAIN_BENCHMARKS,benchmarks}"  # files of the named benchmarks


@dataclass
class LoaderConfig:
    """The training DataLoader, per rank (``data.loader``); checked in ``__post_init__``."""

    batch_size: int = 128  # images per rank and micro-batch
    num_workers: Union[int, str] = "auto"  # auto: this rank's share of the cores minus one
    pin_memory: Union[bool, str] = "auto"  # auto: on CUDA
    prefetch_factor: int = 4

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "data.self.batch_size", self.batch_size, "a positive integer")
        _require(self.num_workers == "auto" or (isinstance(self.num_workers, int) and self.num_workers >= 0),
                 "data.self.num_workers", self.num_workers, "auto or 0 or more")
        _require(self.pin_memory in ("auto", True, False), "data.self.pin_memory", self.pin_memory,
                 "auto, true or false")
        _require(self.prefetch_factor >= 1, "data.self.prefetch_factor", self.prefetch_factor, "a positive integer")


@dataclass
class WatchConfig:
    """Thresholds of the trainer's watchdog checks (``trainer.watch``; :mod:`frtrain.engine.watchdog`)."""

    chance_after: float = 1.0  # share of the warm-up after which the loss must be below the chance loss
    chance_tolerance: float = 0.01  # ... by at least this share of it (and by twice its standard error)
    flat_window: int = 100  # the latest half (lr >= a tenth of its peak) against the first half after warm-up
    flat_tolerance: float = 0.05  # the latest half-window must be this much (relative) below the first after warm-up
    spike_factor: float = 100.0  # a gradient norm this many times the running median is a spike
    collapse_std: float = 1e-3  # mean per-dimension std of a batch's normalised embeddings below this: collapsed
    chance_accuracy_after: float = 0.5  # share of the run after which verification must beat chance_accuracy
    chance_accuracy: float = 0.55

    def __post_init__(self) -> None:
        _require(self.chance_after > 0, "trainer.watch.chance_after", self.chance_after, "a positive share of the warm-up")
        _require(0 <= self.chance_tolerance < 1, "trainer.watch.chance_tolerance", self.chance_tolerance, "in [0, 1)")
        _require(self.flat_window >= 4, "trainer.watch.flat_window", self.flat_window, "4 steps or more")
        _require(self.flat_tolerance >= 0, "trainer.watch.flat_tolerance", self.flat_tolerance, "0 or more")
        _require(self.spike_factor > 1, "trainer.watch.spike_factor", self.spike_factor, "a factor above 1")
        _require(self.collapse_std >= 0, "trainer.watch.collapse_std", self.collapse_std, "0 or more")
        _require(0 <= self.chance_accuracy_after <= 1, "trainer.watch.chance_accuracy_after",
                 self.chance_accuracy_after, "a share of the run in [0, 1]")
        _require(0 <= self.chance_accuracy <= 1, "trainer.watch.chance_accuracy", self.chance_accuracy, "in [0, 1]")


@dataclass
class TrainerConfig:
    """The training loop (``configs/trainer/default.yaml``); every field checked in ``__post_init__``."""

    device: str = "auto"  # auto: cuda:LOCAL_RANK when available, else cpu
    precision: str = "auto"  # auto: bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on CPU | fp32 | bf16 | fp16
    epochs: float = 6.0  # ignored when max_steps is set
    max_steps: Optional[int] = None
    accumulate: int = 1  # micro-batches per optimiser step
    clip_grad_norm: Optional[float] = None  # e.g. 5.0
    channels_last: bool = False  # NHWC backbone and inputs: faster convolutions on CUDA with AMP
    compile: Union[bool, str] = False  # torch.compile the training forward: true, or a mode
    log_every: int = 10  # steps between TensorBoard/progress updates and the loss lines of train.log
    checkpoint_every: int = 0  # steps between step-N.pt checkpoints (0: none by step count)
    checkpoint_minutes: float = 10.0  # also save when this long has passed since the last checkpoint (0: never)
    keep_last: int = 3  # newest step-N.pt files kept (0: all; best.pt is always kept)
    init_from: Optional[str] = None  # fine-tune: a frtrain checkpoint or an insightface backbone.pth (weights only)
    init_head: bool = True  # with init_from: also take its class vectors when their shape fits this head
    resume: Optional[str] = None  # null | auto (latest in this run's directory) | PATH (file or run directory)
    threads: Union[int, str] = "auto"  # torch CPU threads of each rank; auto: its share of the cores
    progress: bool = True  # tqdm bar
    dist_timeout: float = 60.0  # seconds the ranks of a torchrun job wait for each other to join
    watchdog: str = "warn"  # warn | stop | off: checks that the run is learning (frtrain.engine.watchdog)
    watch: WatchConfig = field(default_factory=WatchConfig)
    backbone_lr_scale: float = 1.0  # the backbone's learning rate as a share of optim.lr (fine-tuning: e.g. 0.1)
    head_warmup_steps: int = 0  # fine-tuning: the first N steps train the head only (backbone frozen, in eval mode)
    plan: Union[bool, str] = "auto"  # memory plan before the first step: true | false | auto (on CUDA only)
    device_memory_gb: Optional[float] = None  # the plan's device memory (null: the GPU's, or the available RAM)
    plan_classes: Optional[int] = None  # the plan's class count (null: from the data's index, without its images)
    plan_ranks: Optional[int] = None  # ranks the plan shards the class vectors over (null: WORLD_SIZE)

    def __post_init__(self) -> None:
        _require(self.device == "auto" or re.fullmatch(r"cpu|cuda(:\d+)?", str(self.device)) is not None,
                 "trainer.device", self.device, "auto, cpu, cuda or cuda:N")
        _require(self.precision in ("auto", "fp32", "bf16", "fp16"), "trainer.precision", self.precision,
                 "auto, fp32, bf16 or fp16")
        if self.max_steps is None:
            _require(self.epochs > 0, "trainer.epochs", self.epochs,
                     "a positive number of epochs (or set trainer.max_steps)")
        else:
            _require(self.max_steps >= 1, "trainer.max_steps", self.max_steps, "a positive number of steps (or null)")
        _require(self.accumulate >= 1, "trainer.accumulate", self.accumulate, "a positive integer")
        _require(self.clip_grad_norm is None or self.clip_grad_norm > 0, "trainer.clip_grad_norm", self.clip_grad_norm,
                 "a positive norm or null")
        _require(self.compile in (True, False, "default", "reduce-overhead", "max-autotune",
                                  "max-autotune-no-cudagraphs"), "trainer.compile", self.compile,
                 "true, false or a torch.compile mode (default, reduce-overhead, max-autotune, max-autotune-no-cudagraphs)")
        _require(self.log_every >= 1, "trainer.log_every", self.log_every, "a positive number of steps")
        _require(self.checkpoint_every >= 0, "trainer.checkpoint_every", self.checkpoint_every,
                 "0 (none by step count) or more")
        _require(self.checkpoint_minutes >= 0, "trainer.checkpoint_minutes", self.checkpoint_minutes,
                 "0 (no wall-clock checkpoints) or a positive number of minutes")
        _require(self.keep_last >= 0, "trainer.keep_last", self.keep_last, "0 (keep all) or more")
        _require(self.threads == "auto" or (isinstance(self.threads, int) and self.threads >= 1), "trainer.threads",
                 self.threads, "auto or a positive integer")
        _require(self.dist_timeout > 0, "trainer.dist_timeout", self.dist_timeout, "a positive number of seconds")
        _require(self.watchdog in ("warn", "stop", "off"), "trainer.watchdog", self.watchdog, "warn, stop or off")
        _require(self.backbone_lr_scale >= 0, "trainer.backbone_lr_scale", self.backbone_lr_scale,
                 "a non-negative share of optim.lr")
        _require(self.head_warmup_steps >= 0, "trainer.head_warmup_steps", self.head_warmup_steps,
                 "0 or a number of steps")
        _require(self.plan in (True, False, "auto"), "trainer.plan", self.plan, "true, false or auto")
        _require(self.device_memory_gb is None or self.device_memory_gb > 0, "trainer.device_memory_gb",
                 self.device_memory_gb, "a positive number of GiB or null")
        _require(self.plan_classes is None or self.plan_classes >= 2, "trainer.plan_classes", self.plan_classes,
                 "at least 2 classes or null")
        _require(self.plan_ranks is None or self.plan_ranks >= 1, "trainer.plan_ranks", self.plan_ranks,
                 "a positive number of ranks or null")
        if not isinstance(self.watch, WatchConfig):  # a config node: its own checks
            check_typed(self.watch, WatchConfig)
        for key in ("resume", "init_from"):  # a path that is not there is a config mistake: say it before any work
            value = getattr(self, key)
            if value not in (None, "", "auto", "latest", "null", "none", "true", "false") and \
                    not os.path.exists(os.path.expanduser(str(value))):
                raise ConfigError(f"trainer.{key}={value}: no such file or directory")


@dataclass
class EvalConfig:
    """Verification scoring, during training and in ``frtrain-eval`` (``configs/eval``); checked in ``__post_init__``."""

    every_steps: int = 0  # steps between evaluations during training (0: only at the end)
    at_start: bool = False  # also score the untrained model
    select: Optional[str] = None  # the benchmark best.pt follows (default: the first scored during training)
    batch_size: Union[int, str] = "auto"  # images per forward pass; auto: 256 on CUDA, the memory budget on CPU
    num_workers: int = 0  # image decoding processes
    flip: str = "sum"  # sum (insightface) | concat | none: the image's and its flip's embeddings
    thresholds: str = "grid"  # grid (insightface: 0..4 step 0.01) | exact (every cut)
    threads: Union[int, str] = "auto"
    memory_budget_mb: int = 300  # activation memory of one CPU forward pass (batch_size=auto)
    final_only: List[str] = field(default_factory=list)  # benchmark names scored only after the last step
    intervals: int = 1000  # cluster-bootstrap resamples for each headline's 95% interval (0: no intervals)
    # geometry measures logged at each evaluation during training (pairs, separation, shape, margins, norms): on the
    # first 5 images of the first 200 training classes, against the head's class vectors
    analysis: List[str] = field(default_factory=list)
    benchmarks: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.every_steps >= 0, "eval.every_steps", self.every_steps, "0 (only at the end) or more")
        _require(self.flip in ("sum", "concat", "none"), "eval.flip", self.flip, "sum, concat or none")
        _require(self.thresholds in ("grid", "exact"), "eval.thresholds", self.thresholds, "grid or exact")
        _require(self.batch_size == "auto" or (isinstance(self.batch_size, int) and self.batch_size >= 1), "eval.batch_size",
                 self.batch_size, "auto or a positive integer")
        _require(self.num_workers >= 0, "eval.num_workers", self.num_workers, "0 or more")
        _require(self.threads == "auto" or (isinstance(self.threads, int) and self.threads >= 1), "eval.threads", self.threads,
                 "auto or a positive integer")
        _require(self.memory_budget_mb >= 16, "eval.memory_budget_mb", self.memory_budget_mb, "at least 16 (MiB)")
        _require(self.intervals == 0 or self.intervals >= 100, "eval.intervals", self.intervals,
                 "0 (no intervals) or at least 100 resamples")
        measures = ("pairs", "separation", "shape", "margins", "norms")
        _require(all(m in measures for m in self.analysis), "eval.analysis", list(self.analysis),
                 "some of " + ", ".join(measures))


@dataclass
class InputConfig:
    """How an ONNX model made elsewhere takes its input (``configs/input``); all None: the file's frtrain metadata."""

    size: Any = None  # side or [H, W] in pixels
    mean: Any = None  # on the 0..255 scale, one number or one per channel in the model's channel order
    std: Any = None
    channels: Optional[str] = None  # rgb | bgr
    layout: Optional[str] = None  # nchw | nhwc


_SCHEMAS = {"paths": PathsConfig, "trainer": TrainerConfig, "eval": EvalConfig, "data/loader": LoaderConfig,
            "input": InputConfig}


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore (as ``<group>/schema``); idempotent."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, node in _SCHEMAS.items():
        cs.store(group=group, name="schema", node=node)


def compose(config_name: str = "train", overrides: list[str] | None = None,
            return_hydra_config: bool = False) -> DictConfig:
    """The config ``frtrain-<config_name>`` would run with ``overrides`` (for tests and scripts)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    overrides = normalise_overrides(list(overrides or []))
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name, overrides=overrides, return_hydra_config=return_hydra_config)
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        return hydra_compose(config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def group_options(group: str) -> list[str]:
    """The option names of a config group: the ``.yaml`` files of ``configs/<group>/``."""
    folder = importlib.resources.files(CONFIG_MODULE)
    for part in group.split("/"):
        folder = folder / part
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_"))


def groups() -> list[str]:
    folder = importlib.resources.files(CONFIG_MODULE)
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))


# -- the command line ---------------------------------------------------------------------------------
#: old spellings that still work, rewritten with a warning: (pattern, replacement)
_RENAMED_OVERRIDES = [
    (re.compile(r"^\+experiment="), "experiment="),
    (re.compile(r"^(\+{0,2}|~)data\.(batch_size|num_workers|pin_memory|prefetch_factor)(=|$)"), r"\1data.loader.\2\3"),
]
#: flags after which Hydra does not run the task (nothing to check)
_NO_RUN_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--experimental-rerun"}
#: flags that take a value
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def normalise_overrides(overrides: list[str]) -> list[str]:
    """Rewrite deprecated spellings (``+experiment=``, ``data.batch_size=``) to the current ones."""
    out = []
    for o in overrides:
        new = o
        for pattern, repl in _RENAMED_OVERRIDES:
            new = pattern.sub(repl, new)
        if new != o and not o.startswith("+experiment="):
            warnings.warn(f"{o.split('=')[0]} is now {new.split('=')[0]}; the old name still works for now",
                          FutureWarning, stacklevel=2)
        out.append(new)
    return out


def split_command_line(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """(flags, overrides, runs_task) of a Hydra command line."""
    flags, overrides, runs, skip = [], [], True, False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            flags.append(a)
            continue
        if a.startswith("-") and "=" not in a.split("-", 2)[-1][:1]:
            flags.append(a)
            name = a.split("=")[0]
            if name in _NO_RUN_FLAGS or name in ("--cfg", "-c", "--config-name", "-cn", "--config-path", "-cp",
                                                 "--config-dir", "-cd"):
                runs = False
            if name in _VALUE_FLAGS and "=" not in a:
                skip = True
            continue
        overrides.append(a)
    return flags, overrides, runs


def prepare_argv(argv: list[str]) -> list[str]:
    """The command line Hydra gets: deprecated spellings rewritten, and ``output_dir=X`` also made the
    run directory (so ``train.log`` and ``.hydra/`` go where the checkpoints go)."""
    flags, overrides, _ = split_command_line(argv)
    overrides = normalise_overrides(overrides)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    out_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("output_dir=")), None)
    if out_dir and out_dir != "null" and not multirun and not any(o.startswith("hydra.run.dir=") for o in overrides):
        overrides.append(f"hydra.run.dir={out_dir}")
    return flags + overrides


def _close(name: str, candidates, n: int = 3) -> list[str]:
    return difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)


def _did_you_mean(name: str, candidates) -> str:
    close = _close(name, candidates)
    return f"did you mean {' or '.join(close)}? " if close else ""


def _explain_composition_error(e: Exception, overrides: list[str], config_name: str) -> str:
    """One line for a Hydra composition error, naming the key and the closest valid names."""
    chain, cause = [], e
    while cause is not None and len(chain) < 5:
        chain.append(str(cause))
        cause = cause.__cause__ or cause.__context__
    text = "\n".join(chain)
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    m = re.search(r"Could not find '([^']+)/([^']+)'", text) or re.search(
        r"In '[^']*': Could not find '([^']+)/([^']+)'", text)
    if m:
        group, option = m.group(1).lstrip("/"), m.group(2)
        options = group_options(group)
        if not options and group not in groups():
            return f"{group}: no such config group; {_did_you_mean(group, groups())}(groups: {', '.join(groups())})"
        return (f"{group}={option}: no such option; {_did_you_mean(option, options)}"
                f"(the options of {group}: {', '.join(options)})")
    m = re.search(r"Key '([^']+)' (?:is not in struct|not in '\w+')", text)
    full = re.search(r"full_key: (\S+)", text)
    if m:
        key = full.group(1) if full else m.group(1)
        parent, _, leaf = key.rpartition(".")
        known = _keys_at(parent, overrides, config_name)
        hint = _did_you_mean(leaf, known)
        if parent and hint:
            hint = _did_you_mean(key, [f"{parent}.{k}" for k in known])
        listed = f"({parent or 'the config'} has: {', '.join(sorted(known))})" if known else ""
        return f"{key}: no such key; {hint}{listed}".rstrip()
    m = re.search(r"Value '([^']*)' (?:of type '\w+' )?could not be converted to (\w+)", text)
    if m:
        key = full.group(1) if full else "?"
        return f"{key}={m.group(1)!r}: expected {_type_word(m.group(2))}"
    if full:
        return f"{full.group(1)}: {first}"
    return first


def _type_word(name: str) -> str:
    return {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}.get(name, name)


def _keys_at(parent: str, overrides: list[str], config_name: str) -> list[str]:
    """The keys of node ``parent`` of the config composed without the overrides that touch it."""
    try:
        base = [o for o in overrides if not o.lstrip("+~").startswith(parent + ".")] if parent else []
        cfg = compose(config_name, base)
    except Exception:
        try:
            cfg = compose(config_name, [])
        except Exception:
            return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return [str(k) for k in node.keys() if not str(k).startswith("_")] if isinstance(node, DictConfig) else []


def check_command_line(config_name: str, argv: list[str]) -> None:
    """Compose the config the command line asks for (each value of a sweep once) and turn a composition
    error into one :class:`ConfigError` line that names the key and the closest valid names."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    flags, overrides, runs = split_command_line(argv)
    if not runs:
        return
    overrides = [o for o in normalise_overrides(overrides) if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(first_line(e)) from None
    fixed, sweeps = [], []
    for o in parsed:
        if o.is_sweep_override():
            try:
                values = list(o.sweep_string_iterator())
            except Exception:  # glob() needs Hydra's config loader: let Hydra expand it
                continue
            sweeps.append((o.get_key_element(), values))
        else:
            fixed.append(o.input_line)
    candidates = [fixed + [f"{k}={vs[0]}" for k, vs in sweeps]]
    for i, (key, values) in enumerate(sweeps):
        others = [f"{k}={vs[0]}" for j, (k, vs) in enumerate(sweeps) if j != i]
        candidates.extend(fixed + others + [f"{key}={v}"] for v in values[1:])
    for overrides_one in candidates:
        try:
            compose(config_name, overrides_one)
        except (HydraException, OmegaConfBaseException, ValueError) as e:
            raise ConfigError(_explain_composition_error(e, overrides_one, config_name)) from None


# -- fail fast ----------------------------------------------------------------------------------------
def _require(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


#: the typed nodes of each command's config: key -> schema
_TYPED_NODES = {"trainer": TrainerConfig, "eval": EvalConfig, "data.loader": LoaderConfig, "paths": PathsConfig,
                "input": InputConfig}


def check_schema_keys(cfg: DictConfig) -> None:
    """Every key of a typed node is a field of its schema: ``+trainer.bogus=1`` (which Hydra's struct mode lets
    through when forced) stops here, naming the key and the closest valid names."""
    import dataclasses

    for where, schema in _TYPED_NODES.items():
        node = OmegaConf.select(cfg, where)
        if not isinstance(node, DictConfig):
            continue
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if str(key) not in known:
                hint = _did_you_mean(str(key), known)
                raise ConfigError(f"{where}.{key}: no such key; {hint}({where} has: {', '.join(sorted(known))})"
                                  if hint else f"{where}.{key}: no such key ({where} has: {', '.join(sorted(known))})")


def check_device_and_precision(device: str, precision: str, where: str = "trainer") -> None:
    """The device exists on this machine and the precision runs on it (fp16/bf16 autocast is for CUDA)."""
    import torch

    cuda = torch.cuda.is_available()
    if str(device).startswith("cuda") and not cuda:
        raise ConfigError(f"{where}.device={device}: CUDA is not available on this machine (use auto or cpu)")
    on_cuda = str(device).startswith("cuda") or (device == "auto" and cuda)
    if precision in ("fp16", "bf16") and not on_cuda:
        raise ConfigError(f"{where}.precision={precision}: mixed precision is for CUDA; use fp32 (or auto) on the CPU")


def benchmark_nodes(cfg: DictConfig) -> dict[str, tuple[str, Any]]:
    """name -> (config key, node) of every benchmark: ``eval.benchmarks`` and ``benchmarks=[...]``."""
    nodes = {name: (f"eval.benchmarks.{name}", node) for name, node in (cfg.eval.get("benchmarks") or {}).items()}
    for name, node in (cfg.get("benchmarks") or {}).items():
        if name in nodes:
            raise ConfigError(f"benchmark {name!r} is both in eval.benchmarks and in benchmarks=[...]; keep one")
        nodes[name] = (f"benchmarks.{name}", node)
    return nodes


def validate_train(cfg: DictConfig, for_plan: bool = False) -> None:
    """Check every node of a training config, cheaply, before any data is read or generated.

    ``for_plan`` (frtrain-plan): the run may target a device this machine lacks, and with
    ``trainer.plan_classes`` its data need not be here.

    Keys and types of every ``_target_`` node are checked against its target; the backbone and the head
    are built on the ``meta`` device (no memory, no data needed: the head with a placeholder class
    count), the optimiser on a dummy parameter and the schedule for a dummy length, so their own range
    checks run too.
    """
    from frtrain.engine.build import check_node, dry_build

    _require(isinstance(cfg.get("seed"), int), "seed", cfg.get("seed"), "an integer")
    check_schema_keys(cfg)
    check_typed(cfg.trainer, TrainerConfig)  # the typed nodes check their own fields (__post_init__)
    if not for_plan:
        check_device_and_precision(cfg.trainer.device, cfg.trainer.precision)
    check_typed(cfg.eval, EvalConfig, skip=("benchmarks",))
    unknown = [n for n in cfg.eval.get("final_only") or [] if n not in benchmark_nodes(cfg)]
    if unknown:
        raise ConfigError(f"eval.final_only: {', '.join(unknown)} is not a benchmark of this run "
                          f"(benchmarks: {', '.join(benchmark_nodes(cfg)) or 'none'})")
    check_typed(cfg.data.loader, LoaderConfig)
    if str(cfg.data.get("_target_", "")).endswith(".ShardFaces") and cfg.eval.get("analysis"):
        raise ConfigError("eval.analysis reads training images by index; data=wds streams them (run frtrain-analyze "
                          "on a folder or .rec instead)")
    backbone = dry_build("backbone", cfg.backbone)
    check_finetuning(cfg, backbone)
    dry_build("head", cfg.head, embedding_size=int(backbone.embedding_size), num_classes=1_000_000)
    check_node("data", cfg.data, exclude=("loader",), input_size=tuple(backbone.input_size))
    if not (for_plan and cfg.trainer.get("plan_classes")):
        check_data_root(cfg)
    for name, node in (cfg.data.get("augment") or {}).items():
        if node is not None:
            check_node(f"data.augment.{name}", node)
    check_benchmarks(cfg)
    check_closed_set_split(cfg)
    dry_build("optim", cfg.optim)
    dry_build("sched", cfg.sched)
    warmup = cfg.sched.get("warmup_epochs")
    if isinstance(warmup, (int, float)) and cfg.trainer.max_steps is None and warmup >= cfg.trainer.epochs > 0:
        raise ConfigError(f"sched.warmup_epochs={warmup}: the warm-up is as long as the run or longer "
                          f"(trainer.epochs={cfg.trainer.epochs}); shorten it")


def check_finetuning(cfg: DictConfig, backbone) -> None:
    """backbone.freeze and backbone.lora: their values, and their patterns against the backbone built on the meta device
    (a pattern that matches no parameter or layer is named); LoRA needs PEFT."""
    from frtrain.engine import finetune

    freeze, lora = finetune.options(cfg.backbone)
    if backbone is None:
        return
    if freeze:
        finetune.matching([n for n, _ in backbone.named_parameters()], freeze, "backbone.freeze")
    import torch.nn as nn

    layers = [n for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n]
    finetune.matching(layers, lora["targets"], "backbone.lora.targets")  # a typo is named even with LoRA off
    if lora["rank"]:
        try:
            import peft  # noqa: F401
        except ImportError:
            raise ConfigError("backbone.lora.rank > 0 needs PEFT: pip install peft") from None


#: what a training reader expects under data.root, by target
_DATA_LAYOUTS = {"frtrain.data.folder.FaceFolder": "one folder per identity: <root>/<identity>/<image>",
                 "frtrain.data.recordio.RecordFaces": "insightface's train.rec and train.idx",
                 "frtrain.data.shard_stream.ShardFaces": "WebDataset shards and their index.json (frtrain.tools.folder2wds)"}


def check_data_root(cfg: DictConfig) -> None:
    """``data.root`` exists; when it is built from ``paths.datasets`` (the experiments), say to set that."""
    node = cfg.data
    if "root" not in node or OmegaConf.is_missing(node, "root") or node.root in (None, ""):
        return
    root = os.path.abspath(os.path.expanduser(str(node.root)))
    if os.path.exists(root):
        return
    layout = _DATA_LAYOUTS.get(str(node.get("_target_")), "the training data")
    raw = str(node._get_node("root")._value())
    if "paths.datasets" in raw:
        sub = raw.split("}", 1)[-1].lstrip("/") or "."
        raise ConfigError(f"data.root={root}: no such directory; it is paths.datasets + '/{sub}' "
                          f"(paths.datasets={cfg.paths.datasets}): set paths.datasets=<the directory that holds "
                          f"{sub}/> (or FRTRAIN_DATASETS); {sub}/ is expected to hold {layout}")
    raise ConfigError(f"data.root={root}: no such directory (expected {layout})")


def check_closed_set_split(cfg: DictConfig) -> None:
    """A closed-set benchmark in training needs the whole head (one process: under torchrun the class vectors are
    sharded over the ranks) and, on the training folder, must hold out what training leaves out (else its images are
    trained on): the same root, fraction, seed and list in ``data`` and in the benchmark."""
    data = cfg.get("data")
    folder = data is not None and str(data.get("_target_")) == "frtrain.data.folder.FaceFolder"
    for name, (where, node) in benchmark_nodes(cfg).items():
        if str(node.get("_target_")) != "frtrain.evaluation.closed_set.closed_set_benchmark":
            continue
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"{where}: closed-set accuracy needs the whole head, which is sharded over the "
                              f"{os.environ['WORLD_SIZE']} processes here; score the checkpoint afterwards with "
                              f"frtrain-eval model=<run> benchmarks=[{name}]")
        if not folder or os.path.abspath(str(node.get("root"))) != os.path.abspath(str(data.get("root"))):
            continue
        for key, default in (("holdout_fraction", 0.0), ("holdout_seed", 0), ("holdout_list", None)):
            if node.get(key, default) != data.get(key, default):
                raise ConfigError(f"{where}.{key}={node.get(key, default)!r} but data.{key}={data.get(key, default)!r}: "
                                  "the closed-set split must be what training leaves out; set both alike")


def check_benchmarks(cfg: DictConfig) -> None:
    from frtrain.engine.build import check_node

    nodes = benchmark_nodes(cfg)
    from frtrain.engine.build import BENCHMARK_OPTIONS

    for name, (where, node) in nodes.items():
        check_node(where, node, exclude=BENCHMARK_OPTIONS, name=name)
    select = cfg.eval.get("select")
    if select is not None and select not in nodes:
        raise ConfigError(f"eval.select={select!r} is not one of the benchmarks ({', '.join(nodes) or 'none'})")


def validate_eval_command(cfg: DictConfig) -> None:
    """Checks of a ``frtrain-eval`` config before any model or benchmark file is read."""
    check_schema_keys(cfg)
    check_typed(cfg.eval, EvalConfig, skip=("benchmarks",))
    convention = cfg.get("input")
    if convention is not None:
        _require(convention.channels in (None, "rgb", "bgr"), "input.channels", convention.channels, "rgb or bgr")
        _require(convention.layout in (None, "nchw", "nhwc"), "input.layout", convention.layout, "nchw or nhwc")
    if cfg.get("backbone") is not None:
        from frtrain.engine.build import dry_build

        dry_build("backbone", cfg.backbone)
    check_benchmarks(cfg)
    if not benchmark_nodes(cfg):
        raise ConfigError("no benchmarks to score: choose some with benchmarks=[lfw_bin,cfp_fp,...] or eval=lfw|bin")


def check_typed(node: DictConfig, schema, skip: tuple[str, ...] = ()) -> None:
    """Run ``schema``'s own checks (``__post_init__``) on a typed node's values, reading only its fields (not the
    ``skip`` ones: the eval node's benchmarks are checked by their readers)."""
    import dataclasses

    schema(**{f.name: node[f.name] for f in dataclasses.fields(schema) if f.name not in skip and f.name in node})


def to_object(node: DictConfig):
    """A schema node as its dataclass instance (``trainer`` -> TrainerConfig, ...)."""
    return OmegaConf.to_object(node)


__all__ = ["PathsConfig", "LoaderConfig", "TrainerConfig", "EvalConfig", "register_schemas", "compose",
           "check_command_line", "prepare_argv", "validate_train", "validate_eval_command", "benchmark_nodes",
           "group_options", "to_object"]
