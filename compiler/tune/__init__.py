"""Speed only: lowerings that compute the same function as the plain ones, faster on some
Targets (device, CPU threads), and passes over finished graphs. Each module registers its
variants with the plain lowering it replaces; README, Speed, has what each was measured to gain.
"""

from dlspec.compiler.tune import batch_norm, conv, conv_fold, optim, reductions, resize  # noqa: F401
from dlspec.compiler.tune.when import MANY_THREADS, many_threads

__all__ = ["MANY_THREADS", "many_threads"]
