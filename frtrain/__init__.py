"""frtrain: end-to-end face recognition training.

The data path: ``frtrain.data`` (images -> uint8 batches) -> ``frtrain.backbones`` (B x d
embeddings) -> ``frtrain.heads`` (class vectors, loss) -> ``frtrain.engine`` (optimiser step,
checkpoints, logs) -> ``frtrain.evaluation`` (pairs -> embeddings -> 10-fold scores).
"""

__version__ = "0.1.0"
