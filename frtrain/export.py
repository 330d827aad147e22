"""``frtrain-export`` (also ``python -m frtrain.export``): write a trained backbone for other tools.

    frtrain-export model=runs/<run>                          # best.pt -> runs/<run>/checkpoints/best.onnx
    frtrain-export model=best.pt out=face.onnx               # ONNX, dynamic batch, checked with onnxruntime
    frtrain-export model=best.pt format=insightface fp16=true out=backbone.pth   # insightface's backbone.pth

    frtrain-export model=best.pt threshold.report=runs/eval/<date>/<time> threshold.benchmark=lfw threshold.far=1e-3

ONNX: one input ``images`` (B, 3, H, W) float32, normalised as the checkpoint's meta says (the export's
metadata ``frtrain_meta`` records input size, mean, std, the backbone and, with ``threshold.report``, the cosine
threshold at a false accept rate that a frtrain-eval report states), one output ``embeddings``
(B, d), un-normalised. After writing, the export is run by onnxruntime on random images and compared
with PyTorch: the largest difference of the L2-normalised embeddings is printed and must be <= ``tolerance``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import sys
import warnings

import torch
from omegaconf import DictConfig

from frtrain.cli import hydra_entry_point
from frtrain.engine.model_files import load_model, resolve_checkpoint
from frtrain.errors import CheckpointError, ConfigError

log = logging.getLogger("frtrain")


@contextlib.contextmanager
def _quiet():
    """Keep torch.onnx's and onnxscript's progress notes (~20 lines per export) off the console; yields them."""
    said = io.StringIO()
    disabled = logging.root.manager.disable
    logging.disable(logging.INFO)  # onnxscript's and onnx_ir's pass reports are INFO records of many loggers
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield said
    finally:
        logging.disable(disabled)


def export_onnx(backbone: torch.nn.Module, meta: dict, out: str, opset: int = 18) -> str:
    """Write ``backbone`` (eval mode) as ONNX with a dynamic batch axis and frtrain's metadata."""
    import onnx

    from frtrain.evaluation.onnx_model import META_KEY

    backbone = backbone.eval().float().cpu()
    h, w = backbone.input_size
    example = torch.randn(2, 3, h, w)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad(), _quiet() as said:
        try:
            torch.onnx.export(backbone, (example,), out, input_names=["images"], output_names=["embeddings"],
                              dynamic_shapes={"x": {0: batch}} if _forward_arg(backbone) == "x" else ({0: batch},),
                              opset_version=opset, dynamo=True, external_data=False, verbose=False)
        except Exception:
            print(said.getvalue(), file=sys.stderr, end="")  # what the exporter said helps with its error
            raise
    model = onnx.load(out)
    record = {"input_size": list(backbone.input_size), "mean": list(backbone.mean), "std": list(backbone.std),
              "embedding_size": int(backbone.embedding_size), "backbone": meta.get("backbone")}
    if meta.get("threshold"):
        record["threshold"] = meta["threshold"]
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(record)
    onnx.save(model, out)
    return out


def write_threshold_to_checkpoint(path: str, threshold: dict) -> None:
    """Record the threshold in a frtrain checkpoint's ``meta`` (rewritten atomically); other files are left alone."""
    from frtrain.engine import checkpoint as ckpt_io

    obj = ckpt_io.load_file(path)
    if isinstance(obj, dict) and obj.get("format") == ckpt_io.FORMAT:
        obj["meta"] = dict(obj.get("meta") or {}, threshold=threshold)
        ckpt_io.save_atomic(obj, path)
        print(f"{path}: threshold {threshold['cosine']:.4f} (FAR {threshold['far']:g} on {threshold['benchmark']}) "
              "recorded", flush=True)


def _forward_arg(module: torch.nn.Module) -> str:
    import inspect

    return next(iter(inspect.signature(module.forward).parameters))


def onnx_parity(backbone: torch.nn.Module, path: str, batch_size: int = 4, seed: int = 0) -> float:
    """Largest |difference| of L2-normalised embeddings, PyTorch vs onnxruntime, on random images."""
    from frtrain.evaluation.onnx_model import OnnxEmbedder

    h, w = backbone.input_size
    x = torch.randn(batch_size, 3, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(backbone.eval().float().cpu()(x), dim=1)
    got = torch.nn.functional.normalize(OnnxEmbedder(path)(x), dim=1)
    return float((ref - got).abs().max())


def read_threshold(source: str, benchmark: str | None, far: float) -> dict:
    """The cosine threshold at ``far`` that a ``frtrain-eval`` report (its report.json, or the run directory holding
    it) states for ``benchmark`` (the only one when None): ``{cosine, far, benchmark, impostors, reliable, source}``."""
    from frtrain.engine.checkpoint_fields import check_threshold
    from frtrain.errors import CheckpointError
    from frtrain.safe_files import read_json

    path = os.path.join(source, "report.json") if os.path.isdir(source) else source
    if not os.path.isfile(path):
        raise ConfigError(f"threshold.report={source}: no report.json there (write one with frtrain-eval)")
    results = read_json(path, "frtrain-eval report").get("results", {})
    if not isinstance(results, dict) or not all(isinstance(r, dict) and isinstance(r.get("far_thresholds", {}), dict)
                                                for r in results.values()):
        raise ConfigError(f"{path}: is not a frtrain-eval report.json (results by benchmark with far_thresholds)")
    names = [n for n, r in results.items() if r.get("far_thresholds")]
    if benchmark is None:
        if len(names) != 1:
            raise ConfigError(f"{path}: scores {names}; say which with threshold.benchmark=<name>")
        benchmark = names[0]
    if benchmark not in names:
        raise ConfigError(f"threshold.benchmark={benchmark!r}: {path} has thresholds for {names}")
    entry = results[benchmark]["far_thresholds"].get(f"{far:g}")
    if entry is None:
        raise ConfigError(f"threshold.far={far:g}: {path} states FARs {sorted(results[benchmark]['far_thresholds'])}")
    record = {"cosine": entry.get("cosine") if isinstance(entry, dict) else None, "far": far, "benchmark": benchmark,
              "impostors": entry.get("impostors") if isinstance(entry, dict) else None,
              "reliable": bool(entry.get("reliable")) if isinstance(entry, dict) else False,
              "source": os.path.abspath(path)}
    try:
        return check_threshold(record, f"{path}: results.{benchmark}.far_thresholds.{far:g}")
    except CheckpointError as e:
        raise ConfigError(str(e)) from None


def check_enough_impostors(threshold: dict, allowed: bool, option: str = "threshold.allow_few_impostors") -> None:
    """A threshold at FAR f backed by fewer than 10/f impostor pairs will not hold f in deployment: refused unless
    ``allowed``, and said with the count either way."""
    far, impostors = threshold.get("far"), threshold.get("impostors")
    if far is None or impostors is None or threshold.get("reliable", True):
        return
    message = (f"the threshold at FAR {far:g} on {threshold.get('benchmark')} rests on {impostors:,} impostor pairs, "
               f"fewer than 10/FAR = {int(round(10 / far)):,}: it will not hold that false accept rate")
    if not allowed:
        raise ConfigError(f"{message}; score more impostor pairs, take a larger FAR, or set {option}=true")
    log.warning("%s (%s=true)", message, option)


def export(cfg: DictConfig) -> str:
    """Export ``cfg.model`` in ``cfg.format``; returns the written path. With ``threshold.report`` the cosine threshold
    at ``threshold.far`` from that frtrain-eval report goes into the ONNX metadata and the checkpoint's record."""
    path = resolve_checkpoint(cfg.model)
    if path.endswith(".onnx"):
        raise ConfigError(f"model={path}: already an ONNX file; export takes a frtrain checkpoint")
    backbone, meta = load_model(path, cfg.get("backbone"))
    t = cfg.get("threshold") or {}
    if t.get("report"):
        threshold = read_threshold(str(t.report), t.get("benchmark"), float(t.get("far", 1e-3)))
        check_enough_impostors(threshold, bool(t.get("allow_few_impostors", False)))
        meta = dict(meta, threshold=threshold)
        write_threshold_to_checkpoint(path, meta["threshold"])
    fmt = str(cfg.format)
    stem = os.path.splitext(path)[0]
    if fmt == "onnx":
        out = cfg.out or stem + ".onnx"
        export_onnx(backbone, meta, out, int(cfg.opset))
        diff = onnx_parity(backbone, out)
        print(f"wrote {out}; onnxruntime vs PyTorch, max |difference| of normalised embeddings: {diff:.2e}", flush=True)
        if diff > float(cfg.tolerance):
            raise CheckpointError(f"{out}: onnxruntime differs from PyTorch by {diff:.2e} > tolerance {cfg.tolerance}")
        return out
    if fmt == "insightface":
        from frtrain.engine.insightface import export_insightface

        out = cfg.out or os.path.join(os.path.dirname(path), "backbone.pth")
        export_insightface(backbone, out, bool(cfg.fp16))
        print(f"wrote {out}: plain state dict ({'float16' if cfg.fp16 else 'float32'}) in insightface's layout",
              flush=True)
        return out
    raise ConfigError(f"format={fmt!r}: choose onnx or insightface")


def main(argv: list[str] | None = None) -> None:
    hydra_entry_point("frtrain-export", "export", export, argv, doc=__doc__)


if __name__ == "__main__":
    main()
