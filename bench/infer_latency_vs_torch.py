"""Inference latency of dlspec's exported model (batch norm folded, probabilities added, as
`dlspec export` writes it, in onnxruntime on the CPU) against the same model in PyTorch eager
(model.eval(), torch.inference_mode(), logits then softmax), same threads, in alternating rounds
(bench/paired.py).

    python bench/infer_latency_vs_torch.py [--threads 2] [--runs 50] [--only digits|resnet18]

Models: examples/digits.dlspec (1x8x8, batch 64 and 1) and examples/resnet18_cifar.dlspec
(3x32x32, batch 128 and 1). Weights are each side's own initialisation: the shapes and the work
match, the values need not. Prints the median ms per batch and the ratio PyTorch / dlspec
(above 1: dlspec is faster).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from paired import paired  # noqa: E402


def image(size: int, shape: tuple[int, ...]) -> np.ndarray:
    return (np.random.default_rng(0).random((size, *shape)) * 16).astype(np.float32)


def dlspec_infer(example: str, size: int, shape: tuple[int, ...], threads: int) -> Callable[[int], object]:
    import onnxruntime as ort

    from dlspec.compiler import compile_model
    from dlspec.compiler.lower.export import export
    from dlspec.session import options, providers
    from dlspec.spec.loader import load

    exported, _ = export(compile_model(load(REPO / "examples" / f"{example}.dlspec")).onnx, {})
    sess = ort.InferenceSession(exported.SerializeToString(), options(threads), providers=providers("cpu"))
    feeds = {sess.get_inputs()[0].name: image(size, shape)}
    return lambda _: sess.run(None, feeds)  # logits and probabilities


def torch_infer(example: str, size: int, shape: tuple[int, ...], threads: int) -> Callable[[int], object]:
    import torch
    from parity_torch import BasicBlock, DigitsNet, ResNet

    torch.set_num_threads(threads)
    net: torch.nn.Module = (DigitsNet() if example == "digits"
                            else ResNet(BasicBlock, [2, 2, 2, 2], stem="cifar", classes=10))
    net.eval()
    x = torch.from_numpy(image(size, shape))

    def infer(_: int) -> object:
        with torch.inference_mode():
            logits = net(x)
            return logits, logits.softmax(1)
    return infer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--only", choices=["digits", "resnet18"])
    args = ap.parse_args()
    cases = [("digits", "digits", 64, (1, 8, 8), args.runs),
             ("digits", "digits", 1, (1, 8, 8), args.runs),
             ("resnet18", "resnet18_cifar", 128, (3, 32, 32), max(args.runs // 5, 3)),
             ("resnet18", "resnet18_cifar", 1, (3, 32, 32), args.runs)]
    for key, example, bs, shape, runs in cases:
        if args.only and key != args.only:
            continue
        pair = paired(partial(dlspec_infer, example, bs, shape, args.threads),
                      partial(torch_infer, example, bs, shape, args.threads), runs)
        print(f"{example:16} batch {bs:3}  dlspec {1e3 * pair.a:8.2f} ms  "
              f"PyTorch eager {1e3 * pair.b:8.2f} ms  ratio {pair.ratio:.2f}  "
              f"({pair.spread()}, {runs} runs each, {args.threads} threads)")


if __name__ == "__main__":
    main()
