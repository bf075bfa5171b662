"""The Targets that tuned lowerings are registered for."""

from __future__ import annotations

from dlspec.compiler.target import Target

# From this many intra-op threads a CPU step gets the lowerings that onnxruntime spreads over its
# thread pool (README, Speed: 4 threads measured even, 8 faster).
MANY_THREADS = 6


def always(t: Target) -> bool:
    return True


def on_cpu(t: Target) -> bool:
    return t.device == "cpu"


def on_cuda(t: Target) -> bool:
    return t.device == "cuda"


def many_threads(t: Target) -> bool:
    """A CPU step on enough threads that kernels which onnxruntime runs on one thread (its
    BatchNormalization, Sum, Slice, Pad, a channels-last Transpose) leave cores idle."""
    return t.device == "cpu" and t.threads is not None and t.threads >= MANY_THREADS
