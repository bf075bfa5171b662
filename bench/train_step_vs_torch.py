"""Train-step throughput of dlspec (train_step.onnx in onnxruntime, IOBinding loop) against the
same model in PyTorch eager, side by side in one process, same threads and batch.

    python bench/train_step_vs_torch.py [--threads 2] [--steps 30] [--only digits|resnet18]

Models: examples/digits.dlspec (batch 64, adamw, clipping, label smoothing) and
examples/resnet18_cifar.dlspec (3x32x32, batch 128, sgd nesterov). Augmentation is left out of
both sides, so each step does the same work. Prints steps/s and the ratio dlspec / PyTorch.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def dlspec_steps(example: str, batch: dict[str, np.ndarray], threads: int) -> Callable[[int], None]:
    from compiler.train import compile_training
    from runtime.session import StepRunner
    from spec.loader import load

    text = re.sub(r"^\s*augment\b.*\n", "", (REPO / "examples" / f"{example}.dlspec").read_text(), flags=re.M)
    path = REPO / "bench" / f".{example}.bench.dlspec"
    path.write_text(text)
    try:
        tg = compile_training(load(path))
    finally:
        path.unlink()
    runner = StepRunner(tg.train_step, tg.init, "cpu", threads)

    def step(i: int) -> None:
        runner.run(batch, 1e-3, i + 1)
    return step


def torch_steps(example: str, batch: dict[str, np.ndarray], threads: int) -> Callable[[int], None]:
    import torch
    import torch.nn.functional as F
    from parity_torch import BasicBlock, DigitsNet, ResNet

    torch.set_num_threads(threads)
    x, y = torch.tensor(batch["image"]), torch.tensor(batch["label"])
    if example == "digits":
        net: torch.nn.Module = DigitsNet()
        opt: torch.optim.Optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        smoothing, clip = 0.05, 1.0
    else:
        net = ResNet(BasicBlock, [2, 2, 2, 2], stem="cifar", classes=10)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        smoothing, clip = 0.0, 0.0
    net.train()

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y, label_smoothing=smoothing)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
    return step


def rate(step: Callable[[int], None], steps: int, warmup: int = 3) -> float:
    for i in range(warmup):
        step(i)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(warmup + i)
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--only", choices=["digits", "resnet18"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = {"digits": ("digits", 64, (1, 8, 8), args.steps),
             "resnet18": ("resnet18_cifar", 128, (3, 32, 32), max(args.steps // 10, 3))}
    for key, (example, bs, shape, steps) in cases.items():
        if args.only and key != args.only:
            continue
        batch = {"image": (rng.random((bs, *shape)) * 16).astype(np.float32),
                 "label": rng.integers(0, 10, bs).astype(np.int64)}
        ours = rate(dlspec_steps(example, batch, args.threads), steps)
        ref = rate(torch_steps(example, batch, args.threads), steps)
        print(f"{example:16} batch {bs:3}  dlspec {ours:8.2f} steps/s  PyTorch eager {ref:8.2f} steps/s  "
              f"ratio {ours / ref:.2f}  (median of {steps} steps, {args.threads} threads)")


if __name__ == "__main__":
    main()
