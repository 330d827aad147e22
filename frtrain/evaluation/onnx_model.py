"""Running an ONNX export of a backbone with onnxruntime, as an embedding function for the evaluator."""

from __future__ import annotations

import json
import os

import numpy as np
import torch

from frtrain.errors import CheckpointError

#: metadata key of the exported model that holds the frtrain record (input size, normalisation, backbone)
META_KEY = "frtrain_meta"


class OnnxEmbedder:
    """An ``.onnx`` backbone export: normalised float images (B, 3, H, W) -> embeddings (B, d) float32.

    Has the attributes the evaluator reads from a backbone (``input_size``, ``mean``, ``std``,
    ``embedding_size``), taken from the export's metadata.
    """

    def __init__(self, path: str, providers: list[str] | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError(f"{path}: scoring an .onnx file needs onnxruntime (pip install 'frtrain[onnx]')") from None
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: no such ONNX file")
        try:
            self.session = ort.InferenceSession(path, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in meta:
            raise CheckpointError(f"{path}: has no '{META_KEY}' metadata (input size, normalisation); "
                                  "export it with frtrain-export")
        self.meta = json.loads(meta[META_KEY])
        self.path = path
        self.input_size = tuple(self.meta["input_size"])
        self.mean, self.std = tuple(self.meta["mean"]), tuple(self.meta["std"])
        self.embedding_size = int(self.meta["embedding_size"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def to(self, device):  # the evaluator moves models to its device; onnxruntime runs where it was created
        return self
