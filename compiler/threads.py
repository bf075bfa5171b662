"""Lowerings that depend on how many threads run a training step on the CPU.

onnxruntime runs some CPU kernels on one thread whatever the size of its intra-op pool:
BatchNormalization, Sum, Slice, Pad and a Transpose that moves channels last among them (in a
resnet18 step on a 16-core Xeon, 16 threads against 2: 1.0x to 1.1x for those, 2.8x to 4.6x for
Conv, Mul, Add and ReduceSum; on an 8 MB tensor on a 2-core AMD EPYC, Sum and Where take as long
at 2 threads as at 1, Add and Mul 1.4x to 1.8x less). At a few threads they are the fast way
to write a per-channel affine map (one BatchNormalization where Mul and Add take two slower
passes) and the conv weight gradient (one Slice and one MatMul per kernel tap); at many threads
they leave the other cores idle. With `many_threads` the compiler writes those two with ops
onnxruntime spreads over its pool: Mul and Add, and one Conv per weight gradient
(grad_rules_nn._weight_grad_depth_conv). Gradients that meet at one value are added with Add,
not Sum, for the same reason (resnet18 at 16 threads: Sum took 39 ms a step, as at 2). Convs
that onnxruntime threads inside each image, not over the batch, fold the batch into depth
(compiler/conv_fold.py).

Measured on a 16-core Xeon, train step against the few-thread lowering (both in one run):
resnet18 at 32x32, batch 128: 0.99x at 4 threads, 1.30x at 8, 1.48x at 16 (1955 -> 1325 ms),
0.84x at 2; the digits example, batch 64: 1.00x at 4, 1.15x at 8, 1.27x at 16.
"""

from __future__ import annotations

MANY_THREADS = 6  # 4 measured even, 8 faster


def many_threads(device: str, threads: int | None) -> bool:
    """Whether a step on `device` with `threads` intra-op threads (None: not known) gets the
    lowerings for many threads."""
    return device == "cpu" and threads is not None and threads >= MANY_THREADS
