"""The whole `dlspec train` command against an equivalent PyTorch eager script, each in its own
process, alternating, several pairs: what a user waits for and the memory it takes.

    python bench/train_e2e_vs_torch.py [--pairs 3] [--threads 2] [--target 0.99] [--epochs N]
                                       [--no-val] [--only digits|resnet18] [--steps 40] [--keep DIR]

digits: `dlspec train` of a copy of examples/digits.dlspec whose data reads `digits(test=0.2,
val=0.1)` (`--no-val`: the spec as written, without validation and so without a time to the target)
against bench/train_e2e_torch.py: the same network (tests/parity_torch.DigitsNet), the same splits
and batch order (made here by dlspec's loader before any timing and handed over in an .npz), init,
optimizer, per-step schedule, clipping, label smoothing, dropout and augmentation, read from the
parsed spec; both evaluate the validation split after every epoch and write their checkpoints.
Per side and pair: the process's wall time (interpreter start to exit), its peak RSS (os.wait4),
the test accuracy of the best checkpoint, and the time from launch to the first epoch whose
validation accuracy reaches --target (when its line appears on the process's stdout). Ratios per
pair and their median: PyTorch / dlspec for times (above 1: dlspec is faster), dlspec / PyTorch for
memory (below 1: dlspec takes less). Targets at 2 threads: wall time >= 1.5, memory
<= 0.7.

resnet18: `dlspec train` of examples/resnet18_cifar.dlspec on synthetic CIFAR-shaped data (a
cifar10.npz of random images and labels whose train split is one batch of 128), `--steps` epochs of
one step each, against the PyTorch twin doing the same steps. Steps/s from the step times after
the first (dlspec: metrics.jsonl's seconds per epoch; a dlspec epoch also copies the weights out
of onnxruntime once, and its checkpoints are written outside that time). Target: >= 1.2.

Both sides get the same threads: `--threads` for dlspec, torch.set_num_threads for PyTorch, and
OMP_NUM_THREADS / MKL_NUM_THREADS in both environments. The load average is printed before and
after: on a shared machine only ratios from side-by-side runs mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TWIN = REPO / "bench" / "train_e2e_torch.py"
SETTLE_S = 2.0  # between runs: the last process's threads and page cache writes settle
EPOCH_LINE = re.compile(r"^epoch (\d+) step \d+")
# what tests/parity_torch.DigitsNet(16) hardcodes; the train block's settings are read from the spec
DIGITS_NET = ("conv(32, k=3)", "bottleneck(64, mid=16) * 2", "bottleneck(128, mid=32, stride=2)",
              "bottleneck(128, mid=32)", "fpn(from=[stage1, stage2], channels=64)",
              "classify(classes=10, dropout=0.2)", "image = image / 16")
RESNET_NET = ("resnet18(stem=cifar_stem)", "classify(classes=10)")


@dataclass
class Run:
    side: str
    wall: float
    rss_mb: float
    lines: list[tuple[float, str]]
    records: list[dict[str, Any]] = field(default_factory=list)  # one per epoch
    test_accuracy: float | None = None
    step_seconds: list[float] = field(default_factory=list)

    def to_target(self, target: float) -> tuple[float, int] | None:
        """(seconds from launch, epoch) of the first epoch whose validation accuracy reaches target."""
        shown = {int(m.group(1)): t for t, line in self.lines if (m := EPOCH_LINE.match(line))}
        for r in self.records:
            if r.get("val_accuracy", -1.0) >= target and r["epoch"] in shown:
                return shown[r["epoch"]], r["epoch"]
        return None

    def steps_per_s(self) -> float:
        return (len(self.step_seconds) - 1) / sum(self.step_seconds[1:])


def launch(cmd: list[str], threads: int, log: Path) -> tuple[float, float, list[tuple[float, str]]]:
    """Run cmd to its end: wall seconds, peak RSS in MB (of the process and any it waited for),
    and its output lines with their seconds from launch."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONUNBUFFERED": "1"}
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the max over all children
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    log.write_text("".join(f"{t:8.2f} {line}\n" for t, line in lines))
    if proc.returncode:
        tail = "\n".join(line for _, line in lines[-20:])
        raise SystemExit(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    return wall, usage.ru_maxrss / 1024, lines


def dlspec_command() -> list[str]:
    script = Path(sys.executable).parent / "dlspec"  # the console script, without a pyenv shim before it
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dlspec"]


# ---------------------------------------------------------------- what both sides train

def twin_settings(spec: Path, net_lines: tuple[str, ...], epochs: int | None) -> dict[str, Any]:
    """The train block as the PyTorch twin reads it; SystemExit where the spec asks for something the
    twin does not do (it would no longer be the same training)."""
    from dlspec.compiler.lower.init import DEFAULTS
    from dlspec.schedule import base_rate
    from dlspec.spec.loader import load

    text = spec.read_text()
    missing = [s for s in net_lines if s not in text]
    if missing:
        raise SystemExit(f"{spec.name} no longer has {missing}: update the PyTorch twin")
    prog = load(spec)
    model = prog.model(None)
    train = prog.train(model.name)
    assert train is not None and model.loss is not None
    o, s, c = train.optimizer, train.schedule, train.clip
    if o is None or (c is not None and c.kind != "grad_norm"):
        raise SystemExit(f"{spec.name}: the twin needs an optimizer and at most grad_norm clipping")
    init = dict(DEFAULTS)
    twins = ("kaiming_normal", "kaiming_uniform", "xavier_normal", "xavier_uniform")
    for rule in sorted(train.init, key=lambda r: r.target is not None):  # a kind's own rule wins
        if rule.target not in (None, "conv", "linear") or rule.init.kind not in twins or rule.init.gain != 1:
            raise SystemExit(f"{spec.name}: init {rule.target or ''} {rule.init.kind} "
                             f"(gain {rule.init.gain}) has no twin")
        for kind in ("conv", "linear") if rule.target is None else (rule.target,):
            init[kind] = rule.init.kind
    term = model.loss.terms[0].loss
    return {"seed": train.seed, "batch": train.batch, "epochs": epochs or train.epochs,
            "optimizer": o.model_dump(include={"kind", "lr", "betas", "eps", "weight_decay", "momentum",
                                               "dampening", "nesterov"}),
            "lr0": base_rate(o.lr, s, train.batch),
            "schedule": {"kind": s.kind if s else None, "warmup": s.warmup if s else 0.0,
                         "min_lr": s.min_lr if s else 0.0, "every": s.every if s else None,
                         "gamma": s.gamma if s else 0.1},
            "clip": c.max_norm if c is not None and c.kind == "grad_norm" else None,
            "label_smoothing": getattr(term, "label_smoothing", 0.0),
            "augment": [{"kind": a.kind, "amount": a.amount, "p": a.p} for a in train.augment],
            "init": {k: init[k] for k in ("conv", "linear")}}


def prepare_digits(work: Path, val: bool, epochs: int | None) -> tuple[Path, dict[str, Any]]:
    """The spec dlspec trains and the twin's settings, with the splits and batch order in an .npz."""
    from dlspec.data import batches, load_dataset, size
    from dlspec.spec.loader import load

    text = (REPO / "examples" / "digits.dlspec").read_text()
    if val:
        if "digits(test=0.2)" not in text:
            raise SystemExit("examples/digits.dlspec no longer reads digits(test=0.2): update prepare_digits")
        text = text.replace("digits(test=0.2)", "digits(test=0.2, val=0.1)")
    spec = work / "digits.dlspec"
    spec.write_text(text)
    cfg = twin_settings(spec, DIGITS_NET, epochs)
    prog = load(spec)
    model = prog.model(None)
    train = prog.train(model.name)
    assert train is not None
    data = load_dataset(train, model, spec.parent, classes=10)
    index = {"i": np.arange(size(data.train))}
    order = np.stack([np.concatenate([b["i"] for b in batches(index, cfg["batch"], e, cfg["seed"])])
                      for e in range(cfg["epochs"])])
    empty = {"image": np.zeros((0, 1, 8, 8), np.float32), "label": np.zeros(0, np.int64)}
    splits = {"train": data.train, "val": data.val or empty, "test": data.test}
    arrays = {f"{xy}_{name}": split[key] for name, split in splits.items()
              for xy, key in (("x", "image"), ("y", "label"))}
    np.savez(work / "digits_data.npz", order=order, **arrays)
    print(f"digits: {len(order[0])} of {size(data.train)} train samples per epoch, {size(data.val)} val, "
          f"{size(data.test)} test")
    return spec, {**cfg, "mode": "digits", "data": str(work / "digits_data.npz")}


def prepare_resnet18(work: Path, steps: int) -> tuple[Path, dict[str, Any]]:
    """examples/resnet18_cifar.dlspec beside a synthetic cifar10.npz whose train split is one batch."""
    from dlspec.data import load_dataset, split_indices
    from dlspec.spec.loader import load

    spec = work / "resnet18_cifar.dlspec"
    spec.write_text((REPO / "examples" / "resnet18_cifar.dlspec").read_text())
    cfg = twin_settings(spec, RESNET_NET, steps)
    prog = load(spec)
    model = prog.model(None)
    train = prog.train(model.name)
    assert train is not None and train.data is not None
    n = cfg["batch"]
    while len(split_indices(n, train.data.test, train.data.val, cfg["seed"])[0][0]) < cfg["batch"]:
        n += 1
    rng = np.random.default_rng(0)
    np.savez(work / "cifar10.npz", x=rng.random((n, 3, 32, 32), dtype=np.float32),
             y=rng.integers(0, 10, n).astype(np.int64))
    data = load_dataset(train, model, spec.parent, classes=10)
    np.savez(work / "resnet18_data.npz", x_train=data.train["image"], y_train=data.train["label"])
    return spec, {**cfg, "mode": "resnet18", "data": str(work / "resnet18_data.npz")}


# ---------------------------------------------------------------- one run of each side

def run_dlspec(spec: Path, cfg: dict[str, Any], threads: int, out: Path, log: Path) -> Run:
    cmd = [*dlspec_command(), "train", str(spec), "--threads", str(threads), "--out", str(out),
           "--epochs", str(cfg["epochs"])]
    wall, rss, lines = launch(cmd, threads, log)
    run = Run("dlspec", wall, rss, lines)
    run.records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    if cfg["mode"] == "resnet18":
        run.step_seconds = [r["seconds"] for r in run.records]
    else:
        run.test_accuracy = test_accuracy(out / "model.onnx", Path(cfg["data"]))
    return run


def test_accuracy(model: Path, data: Path) -> float:
    """The trained model.onnx (the best checkpoint) on the test split, outside any timing."""
    import onnxruntime as ort

    arrays = np.load(data)
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: arrays["x_test"]})[0]
    return float(np.mean(logits.argmax(1) == arrays["y_test"]))


def run_torch(cfg: dict[str, Any], threads: int, out: Path, log: Path) -> Run:
    out.mkdir()
    config = out / "config.json"
    config.write_text(json.dumps({**cfg, "threads": threads, "out": str(out)}))
    wall, rss, lines = launch([sys.executable, str(TWIN), str(config)], threads, log)
    run = Run("PyTorch", wall, rss, lines)
    result = json.loads((out / "result.json").read_text())
    if cfg["mode"] == "resnet18":
        run.step_seconds = result["step_seconds"]
    else:
        run.records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        run.test_accuracy = result["test_accuracy"]
    return run


# ---------------------------------------------------------------- reports

def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def show(run: Run, target: float | None) -> str:
    text = f"  {run.side:8} wall {run.wall:7.2f} s  peak RSS {run.rss_mb:6.0f} MB"
    if run.step_seconds:
        return text + f"  {run.steps_per_s():6.3f} steps/s after the first"
    text += f"  test accuracy {run.test_accuracy:.4f}"
    if target is not None:
        hit = run.to_target(target)
        best = max((r.get("val_accuracy", 0.0) for r in run.records), default=0.0)
        text += (f"  to val {target:g}: {hit[0]:6.2f} s (epoch {hit[1]})" if hit
                 else f"  to val {target:g}: not reached (best {best:.4f})")
    return text


def summary(runs: list[Run], target: float | None) -> str:
    """One side's medians over the pairs."""
    med = statistics.median
    text = (f"  {runs[0].side:8} median wall {med(r.wall for r in runs):7.2f} s  "
            f"peak RSS {med(r.rss_mb for r in runs):6.0f} MB")
    if runs[0].step_seconds:
        return text + f"  {med(r.steps_per_s() for r in runs):6.3f} steps/s"
    hits = [h for r in runs if target is not None and (h := r.to_target(target))]
    if target is not None and len(hits) == len(runs):
        text += f"  to val {target:g} {med(h[0] for h in hits):6.2f} s"
    return text


def ratios(d: Run, t: Run, target: float | None) -> dict[str, float]:
    """Above 1 for times, below 1 for memory: dlspec is ahead."""
    if d.step_seconds:
        return {"steps/s dlspec/PyTorch": d.steps_per_s() / t.steps_per_s(),
                "memory dlspec/PyTorch": d.rss_mb / t.rss_mb}
    out = {"wall PyTorch/dlspec": t.wall / d.wall}
    hd, ht = (r.to_target(target) for r in (d, t)) if target is not None else (None, None)
    if hd and ht:
        out["to target PyTorch/dlspec"] = ht[0] / hd[0]
    out["memory dlspec/PyTorch"] = d.rss_mb / t.rss_mb
    return out


def bench(name: str, spec: Path, cfg: dict[str, Any], args: argparse.Namespace, work: Path,
          target: float | None) -> None:
    print(f"{name}: {cfg['epochs']} epochs of batch {cfg['batch']}, {args.threads} threads, "
          f"{args.pairs} pairs; load average before {load()}", flush=True)
    per_pair: list[dict[str, float]] = []
    sides: dict[str, list[Run]] = {"dlspec": [], "torch": []}
    for p in range(args.pairs):
        runs: dict[str, Run] = {}
        for side in ("dlspec", "torch") if p % 2 == 0 else ("torch", "dlspec"):
            time.sleep(SETTLE_S)
            out, log = work / f"{name}.{side}.{p}", work / f"{name}.{side}.{p}.log"
            runs[side] = (run_dlspec(spec, cfg, args.threads, out, log) if side == "dlspec"
                          else run_torch(cfg, args.threads, out, log))
        r = ratios(runs["dlspec"], runs["torch"], target)
        per_pair.append(r)
        for side, run in runs.items():
            sides[side].append(run)
        print(f"pair {p + 1}, {'dlspec' if p % 2 == 0 else 'PyTorch'} first (load average {load()})")
        for side in sides:
            print(show(runs[side], target))
        print("  ratios  " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    for done in sides.values():
        print(summary(done, target))
    keys = [k for k in per_pair[0] if all(k in r for r in per_pair)]
    print(f"{name} median of {len(per_pair)} pairs: "
          + "  ".join(f"{k} {statistics.median(r[k] for r in per_pair):.2f}" for k in keys)
          + f"; load average after {load()}")
    goals = ({"steps/s dlspec/PyTorch": (1.2, ">=")} if cfg["mode"] == "resnet18" else
             {"wall PyTorch/dlspec": (1.5, ">="), "memory dlspec/PyTorch": (0.7, "<=")})
    for key, (goal, how) in goals.items():
        med = statistics.median(r[key] for r in per_pair)
        met = med >= goal if how == ">=" else med <= goal
        print(f"  target {key} {how} {goal}: {med:.2f} {'met' if met else 'MISSED'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.99, help="validation accuracy to time (digits)")
    ap.add_argument("--epochs", type=int, help="digits epochs (default: the spec's)")
    ap.add_argument("--no-val", action="store_true",
                    help="digits as written: no validation split, no time to the target")
    ap.add_argument("--only", choices=["digits", "resnet18"])
    ap.add_argument("--steps", type=int, default=40, help="resnet18 steps, one per epoch")
    ap.add_argument("--keep", type=Path, help="keep the runs, logs and data in this folder")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps: at least 2 (the first is the warm-up)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.only != "resnet18":
            spec, cfg = prepare_digits(work, not args.no_val, args.epochs)
            bench("digits", spec, cfg, args, work, None if args.no_val else args.target)
        if args.only != "digits":
            spec, cfg = prepare_resnet18(work, args.steps)
            bench("resnet18_cifar", spec, cfg, args, work, None)


if __name__ == "__main__":
    main()
