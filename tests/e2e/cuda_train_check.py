"""The digits example's train step (or another spec on the digits' inputs) on onnxruntime's
CUDA provider, for a machine with onnxruntime-gpu. Not collected by pytest; run it by hand:

    python tests/e2e/cuda_train_check.py [--device cuda|cpu] [--steps 30] [--spec FILE]
                                         [--precision fp16|bf16]

It drives the runtime's own StepRunner (the path `dlspec train --device cuda` takes) through full
batches and one short last batch, and checks:

1. placement: onnxruntime's profiler lists the provider of every node each session ran; all of
   them must be the device's;
2. gradients: the compiled gradients graph on the device against the CPU provider at the same
   weights (relative error per parameter, TF32 convolutions allowed for);
3. CUDA graphs: steps replayed from the captured graphs against the same steps run node by
   node, from the same state and batch, and the speed of both.

With --precision fp16 or bf16 it checks the mixed-precision step instead of 2. (1. and 3. as
above), and 4.: one epoch of the digits (28 steps of 64, the rate warming up) from the same
initial weights in float32 and in mixed precision, the mean loss of each quarter after the first
within AMP's usual tolerance (2% for float16, 5% for bfloat16) of float32's, and how many steps
loss scaling skipped. On the CPU (a dry run) the float16 graph runs on onnxruntime's CPU fallbacks;
bfloat16 has no CPU kernels there.

It exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

try:  # torch first: it loads the CUDA and cuDNN libraries onnxruntime-gpu needs
    import torch  # noqa: F401
except ImportError:
    pass
import onnxruntime as ort  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import dlspec.session as rs  # noqa: E402
from dlspec.compiler import Target, TrainingGraphs, compile_training  # noqa: E402
from dlspec.compiler.graph.proto import BATCH_DIM  # noqa: E402
from dlspec.spec import load  # noqa: E402

PROVIDER = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
PLAIN_OPTIONS = rs.options
Batch = dict[str, np.ndarray]


def profiled(folder: str):  # type: ignore[no-untyped-def]
    """The runtime's session options with onnxruntime's profiler on, writing into `folder`."""
    def options(threads: int | None):  # type: ignore[no-untyped-def]
        so = PLAIN_OPTIONS(threads)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(folder) / "step")
        return so
    return options


def kernel_events(profile: str) -> list[dict[str, Any]]:
    events = json.loads(Path(profile).read_text())
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]


def digit_batches(sizes: list[int]) -> list[Batch]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = digits.images.astype(np.float32)[:, None], digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    picks = [rng.choice(len(x), n, replace=False) for n in sizes]
    return [{"image": x[i], "label": y[i]} for i in picks]


def check_placement(tg: TrainingGraphs, device: str, batches: list[Batch]) -> bool:
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        rs.options = profiled(folder)  # StepRunner's sessions read it
        try:
            runner = rs.StepRunner(tg.train_step, tg.init, device, batch=len(batches[0]["image"]),
                                   cuda_graph=False)
            for i, b in enumerate(batches, 1):
                runner.run(b, 3e-3, i)
            events = {size: kernel_events(sess.end_profiling()) for size, sess in runner.sessions.items()}
        finally:
            rs.options = PLAIN_OPTIONS
    for size, evs in events.items():
        per_provider = collections.Counter(e["args"]["provider"] for e in evs)
        print(f"batch {size}: nodes run per provider {dict(per_provider)}")
        elsewhere = collections.Counter(e["args"]["op_name"] for e in evs
                                        if e["args"]["provider"] != PROVIDER[device])
        if elsewhere:
            print(f"  not on {PROVIDER[device]}: {dict(elsewhere)}")
            ok = False
    busiest: collections.Counter[str] = collections.Counter()
    for e in events[max(events, key=lambda k: len(events[k]))]:
        busiest[e["args"]["op_name"]] += e["dur"]
    total = sum(busiest.values())
    shares = (f"{op} {100 * us / total:.0f}%" for op, us in busiest.most_common(8))
    print("  kernel time by op: " + ", ".join(shares))
    return ok


FLOOR = 1e-4


def check_gradients(tg: TrainingGraphs, device: str, batch: Batch) -> bool:
    """Relative L2 error of each parameter's gradient on `device` against the CPU provider: with
    the provider's defaults (TF32 convolutions and matrix products on CUDA) and, on CUDA, without
    TF32, where only float32 rounding may differ. A gradient that cancels to almost nothing is
    measured against FLOOR times the largest gradient's norm instead of its own: at the initial
    weights some batch-norm weight gradients sum to 1e-6, where a 1e-7 relative change of the
    input moves them by 1% on the CPU alone (digits_separable's backbone.b1.bn2.weight)."""
    feeds = {**batch, "step": np.array(1, np.int64)}

    def run(providers: list[Any]) -> dict[str, np.ndarray]:
        so = PLAIN_OPTIONS(None)
        so.add_free_dimension_override_by_name(BATCH_DIM, len(batch["image"]))
        sess = ort.InferenceSession(tg.gradients.SerializeToString(), so, providers=providers)
        names = [i.name for i in sess.get_inputs()]
        out = sess.run(None, {n: feeds[n] if n in feeds else tg.init[n] for n in names})
        return dict(zip([o.name for o in sess.get_outputs()], out))

    reference = run(["CPUExecutionProvider"])
    ok = True
    variants: list[tuple[str, list[Any], float]] = [("defaults", rs.providers(device), 1.0)]
    if device == "cuda":
        variants.append(("no TF32", [("CUDAExecutionProvider", {"use_tf32": "0"})], 1e-2))
    for label, providers, limit in variants:
        got = run(providers)
        norms = {k: float(np.linalg.norm(v)) for k, v in reference.items() if k.startswith("grad.")}
        floor = FLOOR * max(norms.values())
        errors = {k: float(np.linalg.norm(got[k] - reference[k])) / max(n, floor) for k, n in norms.items()}
        worst = max(errors, key=lambda k: errors[k])
        print(f"gradients on {device} ({label}) against the CPU provider: loss {float(got['loss']):.6f} vs "
              f"{float(reference['loss']):.6f}; relative error median "
              f"{float(np.median(list(errors.values()))):.1e}, largest {errors[worst]:.1e} ({worst}), "
              f"over {len(errors)} tensors")
        over = sorted((e, k) for k, e in errors.items() if e >= limit)[::-1]
        if over:
            print("  above the limit:", ", ".join(f"{k} {e:.1e}" for e, k in over))
        ok &= errors[worst] < limit
    return ok


def check_replay(tg: TrainingGraphs, batches: list[Batch]) -> bool:
    """After the graphs are captured: two steps (one through each graph) from the same state and
    batches, replayed and node by node; then steps/s of both over the remaining batches."""
    size = len(batches[0]["image"])
    graph = rs.StepRunner(tg.train_step, tg.init, "cuda", batch=size, cuda_graph=True)
    plain = rs.StepRunner(tg.train_step, tg.init, "cuda", batch=size, cuda_graph=False)
    if graph.graph_batch is None:
        print(f"no CUDA graph: {graph.graph_blockers}")
        return False
    speed = {}
    for runner in (graph, plain):
        for i, b in enumerate(batches[:5], 1):  # warm-up; the graphs are captured here
            runner.run(b, 3e-3, i)
        t0 = time.perf_counter()
        for i, b in enumerate(batches[5:], 6):
            runner.run(b, 3e-3, i)
        speed[runner] = (len(batches) - 5) / (time.perf_counter() - t0)
    state = plain.weights()
    losses = []
    for runner in (graph, plain):
        runner.load(state)
        losses.append([runner.run(b, 3e-3, 1000 + i)["loss"] for i, b in enumerate(batches[:2])])
    after = graph.weights(), plain.weights()
    errors = [float(np.max(np.abs(w - after[1][k])) / (np.max(np.abs(after[1][k])) + 1e-12))
              for k, w in after[0].items()]
    gaps = [abs(a - b) / abs(b) for a, b in zip(*losses)]
    print(f"CUDA graph: {speed[graph]:.1f} steps/s against {speed[plain]:.1f} node by node "
          f"({speed[graph] / speed[plain]:.2f}x, batch {size}); the same two steps replayed and node by "
          f"node: loss gaps {gaps[0]:.1e} and {gaps[1]:.1e}, weights' relative difference median "
          f"{float(np.median(errors)):.1e}, largest {max(errors):.1e}")
    return gaps[0] < 1e-4 and gaps[1] < 1e-3 and float(np.median(errors)) < 1e-3


AMP_TOLERANCE = {"fp16": 0.02, "bf16": 0.05}


def check_amp(spec: Path, device: str, precision: str) -> bool:
    """One epoch of the digits in float32 and in `precision` from the same weights: the windows'
    mean losses, and the loss scale where there is one."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x, y = digits.images.astype(np.float32)[:, None], digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))[:28 * 64].reshape(28, 64)
    losses, seconds = {}, {}
    for p in ("fp32", precision):
        tg = compile_training(load(spec), target=Target(device, precision=p))  # type: ignore[arg-type]
        runner = rs.StepRunner(tg.train_step, tg.init, device, batch=64)
        runner.run({"image": x[order[0]], "label": y[order[0]]}, 3e-3, 1)  # a warm-up, then from the start
        runner.load(tg.init)
        t0 = time.perf_counter()
        # the example's warm-up: the rate rises linearly over the first epoch
        losses[p] = np.array([runner.run({"image": x[i], "label": y[i]}, 3e-3 * s / len(order), s)["loss"]
                              for s, i in enumerate(order, 1)])
        seconds[p] = time.perf_counter() - t0
        state = runner.weights()
    windows = {p: v.reshape(4, 7).mean(1) for p, v in losses.items()}
    gaps = np.abs(windows[precision] - windows["fp32"]) / windows["fp32"]
    scale = (f"; loss scale {float(state['loss_scale']):g}, "
             f"{int(state['loss_scale.skipped'])} step(s) skipped" if "loss_scale" in state else "")
    print(f"{precision} against fp32 over one epoch: mean loss per quarter {np.round(windows[precision], 4)} "
          f"vs {np.round(windows['fp32'], 4)}, gaps {np.round(100 * gaps, 2)}% (limit after the first "
          f"{AMP_TOLERANCE[precision]:.0%}); the epoch's steps {seconds[precision]:.2f} s against "
          f"{seconds['fp32']:.2f} s{scale}")
    # the first quarter is shown, not judged: a step that the loss scale skips at the start (2^16
    # overflows the digits' first gradients) leaves float16 one update behind while the loss falls fast
    return bool(gaps[1:].max() <= AMP_TOLERANCE[precision]) and bool(np.all(np.isfinite(losses[precision])))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda", choices=sorted(PROVIDER))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--spec", type=Path, default=ROOT / "examples" / "digits.dlspec",
                    help="a spec that takes the digits' image [N, 1, 8, 8] and label")
    ap.add_argument("--precision", choices=["fp16", "bf16"],
                    help="check the mixed-precision step: placement, then losses against float32")
    args = ap.parse_args()
    tg = compile_training(load(args.spec), target=Target(args.device, precision=args.precision))
    # full batches, then a short last one, which gets a session of its own
    batches = digit_batches([64] * (args.steps - 1) + [40])
    ok = check_placement(tg, args.device, batches)
    if args.precision:
        ok &= check_amp(args.spec, args.device, args.precision)
    else:
        ok &= check_gradients(tg, args.device, batches[0])
    if args.device == "cuda":
        ok &= check_replay(tg, digit_batches([64] * 300))
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
