"""How long dlspec takes to build its graphs: `dlspec compile` and `dlspec compile --train` of every
example spec and of ResNet-50, and `dlspec grad` of onnx's light model zoo, in this process.

    python bench/build_time.py [--runs 3] [--zoo-runs 1] [--threads 2] [--only NAME ...]
                               [--no-zoo] [--profile [NAME ...]] [--top 15]

Each build is timed in the stages the command line runs, interpreter start and imports apart
(printed once, from a fresh process): parse (the spec; for grad the model file, which `dlspec grad`
reads with onnx's checker and shape inference), build (dlspec.compile, dlspec.compile_training for
--threads, dlspec.grad), check (onnx.checker, full_check where `dlspec compile` asks for it; for
compile the model serialised once, for the checker and the file, as the command does) and write
(into a temporary folder as the command writes it, init.npz too for --train).
Prints nodes, the median total seconds over the runs and seconds per 1,000 nodes; `nodes` counts
the graphs written (for --train: model, train_step, gradients and apply together; for grad: the
gradients model, forward nodes included), and the load average (`uptime`) before and after.

Targets, on the total: compile of resnet50 under 1 s, compile --train of resnet50 under
5 s, grad of VGG-19 and of DenseNet-121 under 5 s each; marked met or MISSED. `--profile` runs
each missed one once more under cProfile and prints its top functions (`--profile resnet50 vgg19`:
those cases whatever their time).

Side by side, PyTorch building and initialising the same ResNet-50 (25,557,032 parameters; both
sides draw every weight), when PyTorch is installed: there is no graph to build in eager mode, so
that is the time before its first step.

The zoo models (onnx/backend/test/data/light) ship shapes instead of weights: each weight's
ConstantOfShape becomes a random float32 initializer (as tests/e2e/test_model_zoo_grad.py does),
and loss = ReduceSum(output). Making them is not timed.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO_MODELS = ["resnet50", "densenet121", "inception_v1", "inception_v2", "shufflenet", "squeezenet",
              "vgg19", "bvlc_alexnet", "zfnet512"]

RESNET50 = """
model resnet50 {
  input  image: float32[N, 3, 224, 224]
  target label: int64[N]
  backbone resnet50
  head     classify(classes=1000)
  loss     cross_entropy
}

train {
  batch     64
  optimizer sgd(lr=0.1, momentum=0.9, nesterov=true, weight_decay=1e-4)
  schedule  cosine(warmup=1)
}
"""

TARGETS = {("compile", "resnet50"): 1.0, ("compile --train", "resnet50"): 5.0,
           ("grad", "vgg19"): 5.0, ("grad", "densenet121"): 5.0}

Stages = dict[str, float]


@dataclass
class Case:
    """One build: `run(dest)` does it once, writing into the folder dest, and returns the seconds
    of each stage and the nodes written."""

    command: str
    name: str
    run: Callable[[Path], tuple[Stages, int]]
    runs: int
    target: float | None = None
    results: list[Stages] = field(default_factory=list)
    nodes: int = 0

    @property
    def total(self) -> float:
        return statistics.median(sum(r.values()) for r in self.results)

    @property
    def missed(self) -> bool:
        return self.target is not None and self.total >= self.target

    def verdict(self) -> str:
        return "" if self.target is None else f"< {self.target:g} s: {'MISSED' if self.missed else 'met'}"


class Clock:
    """Seconds per stage, in the order they ran."""

    def __init__(self) -> None:
        self.stages: Stages = {}
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self.last
        self.last = now


# ---------------------------------------------------------------- the builds

def compile_spec(path: Path, model: str) -> Callable[[Path], tuple[Stages, int]]:
    """As `dlspec compile FILE --model NAME -o DEST`."""
    def run(dest: Path) -> tuple[Stages, int]:
        from dlspec import api
        from dlspec.files import atomic_write
        from dlspec.spec import load

        clock = Clock()
        prog = load(path)
        clock.lap("parse")
        proto = api.compile(prog, model).onnx  # the weights are drawn when the proto is first asked for
        clock.lap("build")
        blob = proto.SerializeToString()  # once, for the checker and the file, as the command does
        onnx.checker.check_model(blob, full_check=True)
        clock.lap("check")
        atomic_write(dest / "model.onnx", blob)
        clock.lap("write")
        return clock.stages, len(proto.graph.node)
    return run


def compile_train(path: Path, model: str, threads: int) -> Callable[[Path], tuple[Stages, int]]:
    """As `dlspec compile FILE --model NAME --train --threads N -o DEST`."""
    def run(dest: Path) -> tuple[Stages, int]:
        from dlspec import api
        from dlspec.artifacts import write_training
        from dlspec.compiler import Target
        from dlspec.files import OutputFolder
        from dlspec.spec import load

        clock = Clock()
        prog = load(path)
        clock.lap("parse")
        tg = api.compile_training(prog, model, target=Target("cpu", threads))
        graphs = (tg.inference.onnx, tg.train_step, tg.gradients, tg.apply)
        clock.lap("build")
        for proto in graphs:
            onnx.checker.check_model(proto, full_check=True)
        clock.lap("check")
        write_training(tg, OutputFolder(dest / "train", "the training graphs"))
        clock.lap("write")
        return clock.stages, sum(len(p.graph.node) for p in graphs)
    return run


def zoo_model(name: str) -> onnx.ModelProto:
    """A light zoo model with random float32 weights in place of its ConstantOfShape stand-ins,
    and a scalar output `loss` = ReduceSum(its output)."""
    model = onnx.load(str(ZOO / f"light_{name}.onnx"))
    rng = np.random.default_rng(0)
    g = model.graph
    shapes = {t.name: [int(d) for d in numpy_helper.to_array(t)] for t in g.initializer
              if t.name.endswith("__SHAPE")}
    model.ir_version = max(model.ir_version, 4)  # from IR 4 on an initializer need not be an input
    keep = []
    for node in g.node:
        fill = next((a.t for a in node.attribute if a.name == "value"), None)
        if (node.op_type == "ConstantOfShape" and node.input[0] in shapes and fill is not None
                and fill.data_type == TensorProto.FLOAT):
            shape = shapes[node.input[0]]
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 200
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            g.initializer.append(numpy_helper.from_array(w, node.output[0]))
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    for items in (g.initializer, g.input):
        kept = [t for t in items if not t.name.endswith("__SHAPE") or t.name in used]
        del items[:]
        items.extend(kept)
    out = g.output[0]
    g.node.append(helper.make_node("ReduceSum", [out.name], ["loss"], keepdims=0))
    elem = out.type.tensor_type.elem_type
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("loss", elem, []))
    return model


def grad_zoo(name: str, scratch: Path) -> Callable[[Path], tuple[Stages, int]]:
    """As `dlspec grad NAME.onnx --loss loss -o DEST`, on the zoo model with weights, written to
    scratch (untimed) at the first run."""
    source = scratch / f"{name}.onnx"

    def run(dest: Path) -> tuple[Stages, int]:
        from dlspec import api
        from dlspec.files import atomic_write, load_model

        if not source.exists():
            onnx.save(zoo_model(name), str(source))
        clock = Clock()
        model = load_model(source)
        clock.lap("parse")
        grads = api.grad(model, "loss")
        clock.lap("build")
        onnx.checker.check_model(grads)
        clock.lap("check")
        atomic_write(dest / f"{name}.grad.onnx", grads.SerializeToString())
        clock.lap("write")
        return clock.stages, len(grads.graph.node)
    return run


def spec_cases(specs: list[tuple[Path, str]], threads: int, runs: int) -> list[Case]:
    out = []
    for path, model in specs:
        for command, make in (("compile", compile_spec(path, model)),
                              ("compile --train", compile_train(path, model, threads))):
            out.append(Case(command, model, make, runs, TARGETS.get((command, model))))
    return out


def example_specs() -> list[tuple[Path, str]]:
    """(spec, model) for every model of the example specs, each once (a spec that imports another
    holds its models too)."""
    from dlspec.spec import load

    out: dict[str, Path] = {}
    for path in sorted((REPO / "examples").rglob("*.dlspec")):
        for name in load(path).models:
            out.setdefault(name, path)
    return [(path, name) for name, path in out.items()]


# ---------------------------------------------------------------- references

def import_seconds() -> float:
    """Interpreter start and `import dlspec.cli`, in a fresh process: what every command pays first."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import dlspec.cli"], check=True)
    return time.perf_counter() - t


def torch_resnet50() -> float | None:
    """Seconds for PyTorch to build and initialise ResNet-50 (torchvision's layout, He init)."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None

    class Block(nn.Module):
        def __init__(self, cin: int, mid: int, out: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
                nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))
            self.short = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                          if cin != out or stride != 1 else nn.Identity())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.short(x))

    t0 = time.perf_counter()
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for mid, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(n):
            layers.append(Block(cin, mid, mid * 4, stride if i == 0 else 1))
            cin = mid * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000)]
    net = nn.Sequential(*layers)
    for mod in net.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 25_557_032, n_params
    return time.perf_counter() - t0


# ---------------------------------------------------------------- running and reporting

def measure(case: Case, scratch: Path) -> bool:
    """Time the case (False, and a line saying why, where it cannot be built here: an example that
    imports a file made by training another, say)."""
    from dlspec.spec.errors import CompileError, RunError, SpecError

    for i in range(case.runs):
        dest = scratch / f"{case.command.replace(' ', '')}.{case.name}.{i}"
        dest.mkdir()
        try:
            stages, case.nodes = case.run(dest)
        except (SpecError, CompileError, RunError) as err:
            print(f"{case.command:16} {case.name:20} skipped: {str(err).splitlines()[0]}")
            return False
        case.results.append(stages)
        shutil.rmtree(dest)  # a 100 MB model per run adds up
    row(case)
    return True


def row(case: Case) -> None:
    stages = "  ".join(f"{k} {statistics.median(r[k] for r in case.results):6.2f}" for k in case.results[0])
    total = case.total
    print(f"{case.command:16} {case.name:20} {case.nodes:7,} nodes  {total:7.2f} s  "
          f"{total / case.nodes * 1000:6.3f} s/1k  ({stages}; median of {len(case.results)})  "
          f"{case.verdict()}", flush=True)


def profile(case: Case, scratch: Path, top: int) -> None:
    dest = scratch / f"profile.{case.command.replace(' ', '')}.{case.name}"
    dest.mkdir()
    prof = cProfile.Profile()
    prof.runcall(case.run, dest)
    for key in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(prof, stream=text).strip_dirs().sort_stats(key).print_stats(top)
        body = text.getvalue()
        start = body.find("   ncalls")
        print(f"\nprofile of {case.command} {case.name}, top {top} by {key}:\n{body[start:].rstrip()}")


def torch_reference(mine: Case, runs: int) -> None:
    """PyTorch's build and init of ResNet-50 beside dlspec's compile of it."""
    times = [t for t in (torch_resnet50() for _ in range(runs)) if t is not None]
    if not times:
        return
    ref = statistics.median(times)
    bare = statistics.median(sum(r.values()) - r["check"] for r in mine.results)
    print(f"PyTorch builds and initialises resnet50 in {ref:.2f} s (median of {len(times)}); "
          f"dlspec compile / PyTorch: {mine.total / ref:.2f}, {bare / ref:.2f} without the check stage")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs of each spec build (median)")
    ap.add_argument("--zoo-runs", type=int, default=1, help="runs of each zoo gradient build (median)")
    ap.add_argument("--threads", type=int, default=2, help="the CPU threads compile --train tunes for")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only the models whose name has one of these")
    ap.add_argument("--no-zoo", action="store_true", help="skip the zoo gradients")
    ap.add_argument("--profile", nargs="*", metavar="NAME",
                    help="profile the missed targets, or the cases of these models")
    ap.add_argument("--top", type=int, default=15, help="functions shown per profile")
    args = ap.parse_args()

    def wanted(name: str) -> bool:
        return not args.only or any(s in name for s in args.only)

    print(f"load average {load()}")
    print(f"import dlspec.cli in a fresh process: {import_seconds():.2f} s (paid once per command, "
          "not counted below)")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        r50 = scratch / "resnet50.dlspec"
        r50.write_text(RESNET50)
        specs = [s for s in [*example_specs(), (r50, "resnet50")] if wanted(s[1])]
        cases = spec_cases(specs, args.threads, args.runs)
        if not args.no_zoo:
            cases += [Case("grad", name, grad_zoo(name, scratch), args.zoo_runs, TARGETS.get(("grad", name)))
                      for name in ZOO_MODELS if wanted(name)]
        warm = scratch / "warm"
        warm.mkdir()
        compile_train(REPO / "examples" / "digits.dlspec", "digits", args.threads)(warm)  # imports, tables
        cases = [case for case in cases if measure(case, scratch)]
        r50_compile = next((c for c in cases if (c.command, c.name) == ("compile", "resnet50")), None)
        if r50_compile is not None:
            torch_reference(r50_compile, args.runs)
        judged = [c for c in cases if c.target is not None]
        missed = [c for c in judged if c.missed]
        print(f"targets: {len(judged) - len(missed)} of {len(judged)} met"
              + (f"; missed: {', '.join(f'{c.command} {c.name}' for c in missed)}" if missed else "")
              + f"; load average {load()}")
        if args.profile is not None:
            chosen = [c for c in cases if any(s in c.name for s in args.profile)] if args.profile else missed
            for case in chosen:
                profile(case, scratch, args.top)

if __name__ == "__main__":
    main()
