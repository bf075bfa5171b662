"""Where a train step's GPU time goes: every CUDA kernel onnxruntime launches for one step of an
example, traced with CUPTI through torch.profiler (needs onnxruntime-gpu and PyTorch with CUDA).

    python bench/gpu_kernels.py [digits|resnet18_cifar] [--batch N] [--rows 20]

Runs the step node by node (no CUDA graph, so each kernel is attributed), after four warm-up
steps that leave cuDNN's algorithm search out of the timing, and prints the GPU time per step
and the kernels that took most of it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def main() -> None:
    import torch  # first: it loads the CUDA libraries onnxruntime-gpu needs
    from torch.profiler import ProfilerActivity, profile
    from train_step_vs_torch import batch_of  # the benchmark's batch: raw pixels and labels

    from dlspec.compiler import Target, compile_training
    from dlspec.session import StepRunner
    from dlspec.spec import load

    ap = argparse.ArgumentParser()
    ap.add_argument("example", nargs="?", default="resnet18_cifar", choices=["digits", "resnet18_cifar"])
    ap.add_argument("--batch", type=int)
    ap.add_argument("--rows", type=int, default=20)
    args = ap.parse_args()
    shape, batch = ((1, 8, 8), 64) if args.example == "digits" else ((3, 32, 32), 128)
    batch = args.batch or batch
    tg = compile_training(load(REPO / "examples" / f"{args.example}.dlspec"), target=Target("cuda"))
    feeds = batch_of(batch, shape)
    runner = StepRunner(tg.train_step, tg.init, "cuda", batch=batch, cuda_graph=False)
    for i in range(4):
        runner.run(feeds, 1e-3, i + 1)
    steps = 3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(steps):
            runner.run(feeds, 1e-3, i + 5)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.device_time for e in kernels) / steps
    print(f"{args.example} batch {batch}: {len(kernels) // steps} kernels and {total / 1000:.2f} ms "
          f"of GPU time per step")
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
