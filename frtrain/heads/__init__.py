"""Loss heads: ``Head(embedding_size, num_classes, **hyper)``; ``head(embeddings, labels)`` -> loss.

See docs/heads.md for every head's formula, options, citation and fidelity.
"""

from frtrain.heads.adaptive import AdaFace, CurricularFace
from frtrain.heads.center import CenterLoss
from frtrain.heads.class_vectors import Head
from frtrain.heads.classic import ArcFace, CombinedMargin, CosFace, MagFace, MarginSoftmax, NormFace, Softmax, SphereFace
from frtrain.heads.elasticface import ElasticArcFace, ElasticCosFace
from frtrain.heads.ie import IELoss
from frtrain.heads.margins import ArcMargin, Combined, CosMargin, MagFaceMargin
from frtrain.heads.intraloss import IntraLoss
from frtrain.heads.marginloss import MarginLoss
from frtrain.heads.npt import NPTLoss
from frtrain.heads.unpg import UNPG

__all__ = [
    "Head", "Softmax", "MarginSoftmax", "NormFace", "SphereFace", "CosFace", "ArcFace",
    "CombinedMargin", "MagFace", "CenterLoss", "NPTLoss", "UNPG", "IELoss", "IntraLoss", "MarginLoss",
    "ArcMargin", "CosMargin", "Combined", "MagFaceMargin", "AdaFace", "CurricularFace", "ElasticArcFace", "ElasticCosFace",
]
