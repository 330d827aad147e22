"""``frtrain-export`` (also ``python -m frtrain.export``): write a trained backbone for other tools.

    frtrain-export model=runs/<run>                          # best.pt -> runs/<run>/checkpoints/best.onnx
    frtrain-export model=best.pt out=face.onnx               # ONNX, dynamic batch, checked with onnxruntime
    frtrain-export model=best.pt format=insightface fp16=true out=backbone.pth   # insightface's backbone.pth

ONNX: one input ``images`` (B, 3, H, W) float32, normalised as the checkpoint's meta says (the export's
metadata ``frtrain_meta`` records input size, mean, std and the backbone), one output ``embeddings``
(B, d), un-normalised. After writing, the export is run by onnxruntime on random images and compared
with PyTorch: the largest difference of the L2-normalised embeddings is printed and must be <= ``tolerance``.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from omegaconf import DictConfig

from frtrain.cli import hydra_entry_point
from frtrain.engine.checkpoint import load_model, resolve_checkpoint
from frtrain.errors import CheckpointError, ConfigError

log = logging.getLogger("frtrain")


def export_onnx(backbone: torch.nn.Module, meta: dict, out: str, opset: int = 18) -> str:
    """Write ``backbone`` (eval mode) as ONNX with a dynamic batch axis and frtrain's metadata."""
    import onnx

    from frtrain.evaluation.onnx_model import META_KEY

    backbone = backbone.eval().float().cpu()
    h, w = backbone.input_size
    example = torch.randn(2, 3, h, w)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        torch.onnx.export(backbone, (example,), out, input_names=["images"], output_names=["embeddings"],
                          dynamic_shapes={"x": {0: batch}} if _forward_arg(backbone) == "x" else ({0: batch},),
                          opset_version=opset, dynamo=True, external_data=False)
    model = onnx.load(out)
    record = {"input_size": list(backbone.input_size), "mean": list(backbone.mean), "std": list(backbone.std),
              "embedding_size": int(backbone.embedding_size), "backbone": meta.get("backbone")}
    entry = model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(record)
    onnx.save(model, out)
    return out


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


def export(cfg: DictConfig) -> str:
    """Export ``cfg.model`` in ``cfg.format``; returns the written path."""
    path = resolve_checkpoint(cfg.model)
    if path.endswith(".onnx"):
        raise ConfigError(f"model={path}: already an ONNX file; export takes a frtrain checkpoint")
    backbone, meta = load_model(path, cfg.get("backbone"))
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
    hydra_entry_point("frtrain-export", "export", export, argv)


if __name__ == "__main__":
    main()
