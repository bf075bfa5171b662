"""Train-step throughput of dlspec (train_step.onnx in onnxruntime, IOBinding loop) against the
same model in PyTorch eager, same threads and batch, in alternating rounds (bench/paired.py).

    python bench/train_step_vs_torch.py [--threads 2] [--steps 60] [--only digits|resnet18|vit]
                                        [--device cpu|cuda] [--digits-widths 4 8 16]
                                        [--precision fp32|fp16|bf16]

Models: examples/digits.dlspec (batch 64, adamw, clipping, label smoothing),
examples/resnet18_cifar.dlspec (3x32x32, batch 128, sgd nesterov) and examples/vit_digits.dlspec
(batch 64, adamw, clipping, label smoothing; in PyTorch nn.TransformerEncoder with norm_first).
Augmentation is left out of both sides, so each step does the same work. dlspec compiles the step
for --threads, as `dlspec
train` does for the cores it may use (compiler/threads.py). Prints steps/s and the ratio dlspec /
PyTorch: the median over rounds of each round's ratio, with its quartiles. On the CPU in float32
it also prints each side's FLOP rate against its runtime's own matrix-product rate, and the
ratio's ceiling at onnxruntime's (bench/flop_rate.py).

--digits-widths scales the digits model's channels (16: the example as written; 8: half the
channels everywhere), to show how the ratio moves with the size of the convolutions against the
fixed per-op costs of each side.

--device cuda runs dlspec on onnxruntime's CUDA provider and PyTorch on the GPU (cuDNN autotuned,
as onnxruntime's is by default); both sides copy the batch from the host and read the loss back
every step, as a training loop does.

--precision fp16 / bf16 (with --device cuda) compiles dlspec's step in mixed precision (fp16 with
its loss scaling in the graph) and runs PyTorch under torch.autocast, with a GradScaler for fp16:
the AMP loop of PyTorch's documentation (scale, backward, unscale_, clip, step, update).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
from flop_rate import GEMM, gemm_rates, report, step_flops  # noqa: E402
from paired import paired  # noqa: E402


def batch_of(size: int, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"image": (rng.random((size, *shape)) * 16).astype(np.float32),
            "label": rng.integers(0, 10, size).astype(np.int64)}


DIGITS_WIDTH = 16  # stage 1's bottleneck width in examples/digits.dlspec


def digits_at_width(text: str, w: int) -> str:
    """examples/digits.dlspec with every channel count scaled as parity_torch.DigitsNet(w) has them."""
    for old, new in [("conv(32, k=3)", f"conv({2 * w}, k=3)"),
                     ("bottleneck(64, mid=16)", f"bottleneck({4 * w}, mid={w})"),
                     ("bottleneck(128, mid=32, stride=2)", f"bottleneck({8 * w}, mid={2 * w}, stride=2)"),
                     ("bottleneck(128, mid=32)", f"bottleneck({8 * w}, mid={2 * w})"),
                     ("channels=64", f"channels={4 * w}")]:
        if old not in text:
            raise SystemExit(f"examples/digits.dlspec no longer has '{old}': update digits_at_width")
        text = text.replace(old, new)
    return text


def spec_text(example: str, width: int) -> str:
    """The example as both sides train it: without augmentation, the digits at `width`."""
    text = re.sub(r"^\s*augment\b.*\n", "", (REPO / "examples" / f"{example}.dlspec").read_text(), flags=re.M)
    return digits_at_width(text, width) if example == "digits" and width != DIGITS_WIDTH else text


def dlspec_steps(example: str, size: int, shape: tuple[int, ...], threads: int,
                 device: str, width: int = DIGITS_WIDTH, precision: str = "fp32") -> Callable[[int], None]:
    from dlspec.compiler import Target, compile_training
    from dlspec.session import StepRunner
    from dlspec.spec.loader import load

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{example}.dlspec"
        path.write_text(spec_text(example, width))
        tg = compile_training(load(path), target=Target(device, threads, precision=precision))  # type: ignore[arg-type]
    runner = StepRunner(tg.train_step, tg.init, device, threads, size)
    batch = batch_of(size, shape)

    def step(i: int) -> None:
        runner.run(batch, 1e-3, i + 1)
    return step


def torch_steps(example: str, size: int, shape: tuple[int, ...], threads: int,
                device: str, width: int = DIGITS_WIDTH, precision: str = "fp32") -> Callable[[int], None]:
    import torch
    import torch.nn.functional as F
    from parity_torch import BasicBlock, DigitsNet, ResNet, ViT

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = True
    batch = batch_of(size, shape)
    x, y = torch.tensor(batch["image"]), torch.tensor(batch["label"])
    if example == "digits":
        net: torch.nn.Module = DigitsNet(width)
        opt: torch.optim.Optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        smoothing, clip = 0.05, 1.0
    elif example == "vit_digits":  # vit(patch=2, dim=64, depth=4, heads=4, mlp=2) -> linear(10)
        net = torch.nn.Sequential(ViT(1, 2, 16, 64, 4, 4, 2), torch.nn.Linear(64, 10))
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=0.01)
        smoothing, clip = 0.1, 1.0
        x = x / 16  # the spec's features block, once: negligible beside a step
    else:
        net = ResNet(BasicBlock, [2, 2, 2, 2], stem="cifar", classes=10)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        smoothing, clip = 0.0, 0.0
    net.train().to(device)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")

    def step(i: int) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=half or torch.float32, enabled=half is not None):
            loss = F.cross_entropy(net(x.to(device)), y.to(device), label_smoothing=smoothing)
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        scaler.step(opt)
        scaler.update()
        loss.item()  # the loss on the host, as dlspec's runner returns it
    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--only", choices=["digits", "resnet18", "vit"])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--digits-widths", type=int, nargs="+", default=[DIGITS_WIDTH], metavar="W",
                    help=f"digits models to time, by stage 1's bottleneck width ({DIGITS_WIDTH}: as written)")
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32",
                    help="mixed precision on both sides: dlspec's `precision`, PyTorch's autocast "
                         "(and GradScaler for fp16)")
    args = ap.parse_args()
    if args.precision != "fp32" and args.device != "cuda":
        raise SystemExit("--precision fp16/bf16 is lowered for CUDA only: give --device cuda")
    cases = [("digits", "digits" if w == DIGITS_WIDTH else f"digits w={w}", 64, (1, 8, 8), args.steps, w)
             for w in args.digits_widths]
    resnet_steps = max(args.steps // 6, 3)
    # resnet18 ignores the width, which only the digits model has
    cases.append(("resnet18_cifar", "resnet18_cifar", 128, (3, 32, 32), resnet_steps, DIGITS_WIDTH))
    cases.append(("vit_digits", "vit_digits", 64, (1, 8, 8), args.steps, DIGITS_WIDTH))
    # on the CPU in float32: each side's FLOP rate against its runtime's matrix-product rate
    rates = gemm_rates(args.threads) if args.device == "cpu" and args.precision == "fp32" else None
    if rates:
        print(f"matrix product {GEMM}^3 at {args.threads} threads: onnxruntime {rates.ort / 1e9:.0f} "
              f"GFLOP/s, PyTorch {rates.torch / 1e9:.0f} GFLOP/s")
    for example, label, bs, shape, steps, width in cases:
        if args.only and not example.startswith(args.only):
            continue
        setting = (example, bs, shape, args.threads, args.device, width, args.precision)
        pair = paired(partial(dlspec_steps, *setting), partial(torch_steps, *setting), steps)
        torch_side = "PyTorch eager" if args.precision == "fp32" else f"PyTorch AMP {args.precision}"
        print(f"{label:16} batch {bs:3}  dlspec {1 / pair.a:8.2f} steps/s  {torch_side} {1 / pair.b:8.2f} "
              f"steps/s  ratio {pair.ratio:.2f}  ({pair.spread()}, {steps} steps each, "
              f"{args.threads} threads, {args.device}, {args.precision})")
        if rates:
            print(report(step_flops(spec_text(example, width), bs), pair.a, pair.b, rates))


if __name__ == "__main__":
    main()
