"""frtrain: end-to-end face recognition training.

The data path: ``frtrain.data`` (images -> uint8 batches) -> ``frtrain.backbones`` (B x d
embeddings) -> ``frtrain.heads`` (class vectors, loss) -> ``frtrain.engine`` (optimiser step,
checkpoints, logs) -> ``frtrain.evaluation`` (pairs -> embeddings -> 10-fold scores).
"""

import os as _os

__version__ = "0.1.0"

# OpenMP threads sleep when they have no work instead of spinning (unless the user chose a policy): on 2 cores the
# default training run is 1.7x faster with another job on the cores, for 14% idle (docs/benchmarks.md,
# scripts/bench_threads.py). libgomp reads the variable once, when PyTorch loads, so it is set here, before
# anything of frtrain imports torch.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
