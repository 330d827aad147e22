"""Backbones: images (B, 3, H, W) normalised as (x/255 - mean)/std -> embeddings (B, d).

Every backbone carries ``input_size`` (H, W), ``mean``, ``std`` (per channel, on the 0..1 scale)
and ``embedding_size``; the data transforms and the evaluator derive their preprocessing from them.
"""

from frtrain.backbones.iresnet import IResNet
from frtrain.backbones.mobilefacenet import MobileFaceNet
from frtrain.backbones.timm_backbone import TimmBackbone

__all__ = ["IResNet", "MobileFaceNet", "TimmBackbone"]
