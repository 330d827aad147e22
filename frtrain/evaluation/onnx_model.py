"""Running an ONNX face model with onnxruntime, as an embedding function for the evaluator.

A model exported by frtrain carries its input convention (size, mean, std) in the metadata entry
``frtrain_meta`` (every field checked). A graph with a fixed batch size (OpenCV's SFace is exported with 1) is run that
many images at a time; a graph that takes more than the image (weights wired as extra graph inputs, as in SFace's
int8 block-quantised release) is refused at load, naming the inputs. A model made elsewhere is scored once the user states the convention (``input=insightface``,
``input=sface``, or ``input.size``, ``input.mean``, ``input.std``, ``input.channels``, ``input.layout``): the
evaluator normalises RGB images as ``(x/255 - mean)/std`` with the convention's mean and std turned to the
0..1 scale and reordered to RGB, and this wrapper reorders channels (BGR) and axes (NHWC) as the model wants.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from frtrain.backbones.common import as_hw
from frtrain.errors import CheckpointError, ConfigError, first_line

#: metadata key of the exported model that holds the frtrain record (input size, normalisation, backbone)
META_KEY = "frtrain_meta"

_ADVICE = ("say how it takes its input: input=insightface (RGB, (x - 127.5) / 127.5), input=sface (RGB, 0..255), or "
           "input.size=112 input.mean=127.5 input.std=127.5 input.channels=rgb|bgr [input.layout=nchw|nhwc]")


def _per_channel(value, name: str, default: float) -> tuple[float, float, float]:
    if value is None:
        value = default
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 3 and \
            all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    raise ConfigError(f"input.{name}={value!r}: expected one number or three (one per channel)")


def checked_metadata(text: str, path: str) -> dict:
    """frtrain's metadata record of an ONNX file, every field checked (types, input size within
    :data:`~frtrain.backbones.common.MAX_INPUT_SIDE`, positive std, a threshold in [-1, 1])."""
    from frtrain.engine.checkpoint_fields import check_meta

    if len(text) > 1 << 20:
        raise CheckpointError(f"{path}: its '{META_KEY}' metadata is {len(text):,} characters; expected a small record")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: its '{META_KEY}' metadata is not JSON ({first_line(e)})") from None
    if not isinstance(record, dict):
        raise CheckpointError(f"{path}: its '{META_KEY}' metadata is a {type(record).__name__}, expected a JSON object")
    missing = [k for k in ("input_size", "mean", "std", "embedding_size") if record.get(k) is None]
    if missing:
        raise CheckpointError(f"{path}: its '{META_KEY}' metadata has no {missing[0]!r}")
    return check_meta(record, path, META_KEY)


class OnnxEmbedder:
    """An ``.onnx`` face model: normalised RGB float images (B, 3, H, W) -> embeddings (B, d) float32.

    Has the attributes the evaluator reads from a backbone (``input_size``, ``mean``, ``std`` on the 0..1
    scale in RGB order, ``embedding_size``), from ``convention`` when given, else from frtrain's metadata.

    Args:
        path: the ``.onnx`` file.
        convention: a mapping with ``size``, ``mean``, ``std`` (0..255 scale, the model's channel order),
            ``channels`` (``rgb``/``bgr``), ``layout`` (``nchw``/``nhwc``); None or all-None: the metadata.
    """

    def __init__(self, path: str, convention: Mapping | None = None, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError(f"{path}: scoring an .onnx file needs onnxruntime (pip install 'frtrain[onnx]')") from None
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: no such ONNX file")
        try:
            self.session = ort.InferenceSession(path, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({first_line(e)})") from None
        self.path = path
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            others = ", ".join(repr(i.name) for i in inputs[1:])
            raise CheckpointError(f"{path}: the graph takes {len(inputs)} inputs ({', '.join(repr(i.name) for i in inputs)})"
                                  f"; frtrain feeds one image tensor, and {others} would need values it does not have "
                                  "(weights wired as graph inputs: export the model with them as initializers)")
        self.input_name = inputs[0].name
        batch = inputs[0].shape[0] if inputs[0].shape else None
        #: a batch size fixed in the graph (1 in OpenCV's SFace export): images are run that many at a time
        self.fixed_batch = int(batch) if isinstance(batch, int) and batch > 0 else None
        given = {k: v for k, v in dict(convention or {}).items() if v is not None}
        meta = self.session.get_modelmeta().custom_metadata_map
        self.channels, self.layout = given.get("channels", "rgb"), given.get("layout", "nchw")
        if given:
            self._from_convention(given)
        elif META_KEY in meta:
            self.meta = checked_metadata(meta[META_KEY], path)
            self.input_size = tuple(int(v) for v in self.meta["input_size"])
            self.mean = tuple(float(v) for v in self.meta["mean"])
            self.std = tuple(float(v) for v in self.meta["std"])
            self.embedding_size = int(self.meta["embedding_size"])
        else:
            raise CheckpointError(f"{path}: has no '{META_KEY}' metadata (it was not exported by frtrain); {_ADVICE}")

    def _from_convention(self, given: dict) -> None:
        if self.channels not in ("rgb", "bgr") or self.layout not in ("nchw", "nhwc"):
            raise ConfigError(f"input.channels={self.channels!r} / input.layout={self.layout!r}: expected rgb|bgr and "
                              "nchw|nhwc")
        size = given.get("size") or self._static_size()
        if size is None:
            raise ConfigError(f"{self.path}: its input size is not fixed in the file; give input.size=<pixels>")
        self.input_size = as_hw(size, "input.size")
        mean, std = _per_channel(given.get("mean"), "mean", 0.0), _per_channel(given.get("std"), "std", 1.0)
        if any(not (s > 0 and math.isfinite(s)) for s in std) or not all(math.isfinite(m) for m in mean):
            raise ConfigError(f"input.std={given.get('std')!r}: expected positive values")
        order = slice(None, None, -1) if self.channels == "bgr" else slice(None)  # given in the model's order
        self.mean = tuple(m / 255.0 for m in mean[order])
        self.std = tuple(s / 255.0 for s in std[order])
        self.meta = {"input_convention": {"size": list(self.input_size), "mean": list(mean), "std": list(std),
                                          "channels": self.channels, "layout": self.layout}}
        out = self.session.get_outputs()[0].shape
        self.embedding_size = int(out[-1]) if isinstance(out[-1], int) else -1

    def _static_size(self):
        shape = self.session.get_inputs()[0].shape
        h, w = (shape[2], shape[3]) if self.layout == "nchw" else (shape[1], shape[2])
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().cpu()
        if self.channels == "bgr":
            x = x.flip(1)
        if self.layout == "nhwc":
            x = x.permute(0, 2, 3, 1)
        if self.fixed_batch is None:
            return self._run(x)
        n, b, parts = x.shape[0], self.fixed_batch, []
        for lo in range(0, n, b):  # the graph's fixed batch at a time; the last chunk padded with zeros
            chunk = x[lo:lo + b]
            if chunk.shape[0] < b:
                chunk = torch.cat([chunk, chunk.new_zeros((b - chunk.shape[0],) + tuple(chunk.shape[1:]))])
            parts.append(self._run(chunk)[:min(b, n - lo)])
        return torch.cat(parts) if parts else torch.zeros(0, max(self.embedding_size, 0))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: np.ascontiguousarray(x.numpy())})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(out.shape[0], -1))

    def to(self, device):  # the evaluator moves models to its device; onnxruntime runs where it was created
        return self
