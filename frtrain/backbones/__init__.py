"""Backbones: images (B, 3, H, W) normalised as (x/255 - mean)/std -> embeddings (B, d).

Every backbone carries ``input_size`` (H, W), ``mean``, ``std`` (per channel, on the 0..1 scale)
and ``embedding_size``; the data transforms and the evaluator derive their preprocessing from them.
"""

from frtrain.backbones.iresnet import IResNet
from frtrain.backbones.mobilefacenet import MobileFaceNet
from frtrain.backbones.timm_backbone import TimmBackbone
from frtrain.backbones.vit import FaceViT

#: the one registry of backbones: the classes a checkpoint's record may name (the allow-list of
#: :mod:`frtrain.engine.model_record` is derived from it) and a config's ``_target_`` should name (tested)
BACKBONES = (IResNet, MobileFaceNet, TimmBackbone, FaceViT)

__all__ = ["BACKBONES"] + [cls.__name__ for cls in BACKBONES]
