"""How long `dlspec compile` takes for ResNet-50 (25.6M parameters), in one process.

Reports the median of several runs of parse + validate + compile + serialize, split by stage,
and, when PyTorch is installed, the time PyTorch takes to build and initialise the same
network as a side-by-side reference (both draw 25.6M random weights). Target: under 1 s.

    python bench/compile_resnet50.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SPEC = """
model resnet50_imagenet {
  input  image: float32[N, 3, 224, 224]
  target label: int64[N]
  backbone resnet50
  head     classify(classes=1000)
  loss     cross_entropy
}
"""


def dlspec_once(path: Path) -> dict[str, float]:
    from dlspec.compiler import compile_model
    from dlspec.spec import load

    t0 = time.perf_counter()
    prog = load(path)
    t1 = time.perf_counter()
    c = compile_model(prog)
    t2 = time.perf_counter()
    data = c.onnx.SerializeToString()
    t3 = time.perf_counter()
    assert len(data) > 100_000_000
    return {"parse+validate": t1 - t0, "compile": t2 - t1, "serialize": t3 - t2, "total": t3 - t0}


def torch_once() -> float | None:
    try:
        import torch
        from torch import nn
    except ImportError:
        return None

    def block(cin: int, mid: int, out: int, stride: int) -> nn.Module:
        class B(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                    nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                    nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))
                self.short = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                              if cin != out or stride != 1 else nn.Identity())

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return torch.relu(self.body(x) + self.short(x))
        return B()

    t0 = time.perf_counter()
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for mid, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(n):
            layers.append(block(cin, mid, mid * 4, stride if i == 0 else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    net = nn.Sequential(*layers)
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 25_557_032, n_params
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "resnet50.dlspec"
        path.write_text(SPEC)
        dlspec_once(path)  # warm-up: imports, grammar table
        runs = [dlspec_once(path) for _ in range(args.runs)]
    torch_runs = [t for t in (torch_once() for _ in range(args.runs)) if t is not None]
    print(f"ResNet-50, 25,557,032 parameters, median of {args.runs} runs")
    for key in runs[0]:
        print(f"  dlspec {key:<15} {statistics.median(r[key] for r in runs) * 1000:8.1f} ms")
    total = statistics.median(r["total"] for r in runs)
    if torch_runs:
        ref = statistics.median(torch_runs)
        print(f"  torch build+init       {ref * 1000:8.1f} ms")
        print(f"  ratio dlspec total / torch build+init: {total / ref:.2f}")
    print(f"target: total under 1000 ms -> {'met' if total < 1.0 else 'NOT met'} ({total * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
