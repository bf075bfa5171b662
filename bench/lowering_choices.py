"""Each tuned lowering (dlspec.compiler.tune) against the plain one it replaces, op by op, in
onnxruntime on the CPU.

For each case, the gradient graph of one node (or the training step of a small model) is
compiled twice, for Target(tuned=False) and for the CPU Target at --threads; both must give the
same values. They are timed interleaved, call by call, in one process, and the op counts of each
form are printed: which ops the tuned lowering writes instead of the plain ones.

    python bench/lowering_choices.py [--threads 2] [--calls 100]

Prints microseconds per call and the ratio plain / tuned (above 1: the tuned form is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dlspec.compiler import Target, compile_training, gradient_model  # noqa: E402
from dlspec.compiler.graph import IR_VERSION, OPSET  # noqa: E402
from dlspec.spec import load  # noqa: E402

Feeds = dict[str, np.ndarray]
Case = Callable[[Target], tuple[onnx.ModelProto, Feeds]]


def _node_case(node: onnx.NodeProto, inputs: Feeds, wrt: list[str],
               consts: list[onnx.TensorProto] | None = None) -> Case:
    """The gradients of loss = sum(node's output * R) with respect to `wrt`."""
    rng = np.random.default_rng(1)
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape) for n, v in inputs.items()]
    out = [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)]
    probe = helper.make_model(helper.make_graph([node], "g", ins, out, consts or []),
                              opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, inputs)[0]
    r = numpy_helper.from_array(rng.standard_normal(y.shape).astype(np.float32), "R")
    nodes = [node, helper.make_node("Mul", [node.output[0], "R"], ["yr"]),
             helper.make_node("ReduceSum", ["yr"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", ins, [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                              [r, *(consts or [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return lambda target: (gradient_model(model, "loss", wrt, target), inputs)


def conv(shape: tuple[int, int, int, int], cout: int, k: int, stride: int = 1, group: int = 1) -> Case:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal((cout, shape[1] // group, k, k), dtype=np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[k // 2] * 4, strides=[stride] * 2, group=group)
    return _node_case(node, {"x": x, "w": w}, ["x", "w"])


def relu(shape: tuple[int, ...]) -> Case:
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    return _node_case(helper.make_node("Relu", ["x"], ["y"]), {"x": x}, ["x"])


def upsample(shape: tuple[int, int, int, int]) -> Case:
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                            coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    return _node_case(node, {"x": x}, ["x"], [scales])


def train_step(example: str, batch: int) -> Case:
    """The whole training step: batch norm's fused forward and closed-form gradient, the
    optimizer's pack, the sums where gradients meet."""
    prog = load(Path(__file__).resolve().parents[1] / "examples" / f"{example}.dlspec")

    def build(target: Target) -> tuple[onnx.ModelProto, Feeds]:
        tg = compile_training(prog, target=target)
        rng = np.random.default_rng(0)
        feeds: Feeds = {}
        for vi in tg.train_step.graph.input:
            if vi.name in tg.init:
                feeds[vi.name] = tg.init[vi.name]
            elif vi.name == "lr":
                feeds[vi.name] = np.array(1e-3, np.float32)
            elif vi.name == "step":
                feeds[vi.name] = np.array(1, np.int64)
            else:
                dims = [d.dim_value or batch for d in vi.type.tensor_type.shape.dim]
                integer = vi.type.tensor_type.elem_type == TensorProto.INT64
                feeds[vi.name] = rng.integers(0, 10, dims) if integer else rng.random(dims, dtype=np.float32)
        return tg.train_step, feeds
    return build


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _race(a: Callable[[], object], b: Callable[[], object], calls: int) -> tuple[float, float]:
    for _ in range(5):
        a(), b()
    ta, tb = [], []
    for _ in range(calls):
        t = time.perf_counter()
        a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb.append(time.perf_counter() - t)
    return 1e6 * statistics.median(ta), 1e6 * statistics.median(tb)


def _form(plain: onnx.ModelProto, tuned: onnx.ModelProto) -> str:
    """The ops whose counts differ between the two graphs: plain -> tuned."""
    a = Counter(n.op_type for n in plain.graph.node if n.op_type != "Constant")
    b = Counter(n.op_type for n in tuned.graph.node if n.op_type != "Constant")
    return ", ".join(f"{op} {a[op]}->{b[op]}" for op in sorted(set(a) | set(b)) if a[op] != b[op])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=100)
    args = ap.parse_args()
    cases: list[tuple[str, Case]] = [
        (f"conv 3x3 {s[1]}->{o} at {s[2]}x{s[3]}", conv(s, o, 3)) for s, o in
        [((64, 64, 8, 8), 64), ((64, 16, 8, 8), 16), ((64, 32, 4, 4), 32)]]
    cases += [(f"conv 3x3 stride 2 {s[1]}->{o} at {s[2]}x{s[3]}", conv(s, o, 3, 2)) for s, o in
              [((64, 32, 8, 8), 64)]]
    cases += [(f"conv 1x1 {s[1]}->{o} at {s[2]}x{s[3]}", conv(s, o, 1)) for s, o in
              [((64, 64, 8, 8), 64), ((64, 32, 8, 8), 16)]]
    cases += [(f"depthwise 3x3 {s[1]} at {s[2]}x{s[3]}", conv(s, s[1], 3, group=s[1])) for s in
              [(64, 64, 8, 8)]]
    cases += [(f"relu {'x'.join(map(str, s))}", relu(s)) for s in [(64, 64, 8, 8)]]
    cases += [(f"2x upsampling {s[1]}x{s[2]}x{s[3]}", upsample(s))
              for s in [(64, 64, 4, 4), (64, 64, 16, 16)]]
    cases += [("digits train step, batch 64", train_step("digits", 64))]
    tuned_target, plain_target = Target("cpu", args.threads), Target(tuned=False)
    print(f"{'case':40} {'plain us':>10} {'tuned us':>10} {'ratio':>6}   ({args.threads} threads, median of "
          f"{args.calls} interleaved calls); ops plain -> tuned")
    for title, case in cases:
        plain, feeds = case(plain_target)
        tuned, _ = case(tuned_target)
        a, b = _session(tuned, args.threads), _session(plain, args.threads)
        want = dict(zip([o.name for o in plain.graph.output], b.run(None, feeds)))
        got = dict(zip([o.name for o in tuned.graph.output], a.run(None, feeds)))
        for name, w in want.items():
            assert np.allclose(got[name], w, rtol=1e-3, atol=1e-3), (title, name)
        ta, tb = _race(partial(a.run, None, feeds), partial(b.run, None, feeds), args.calls)
        print(f"{title:40} {tb:10.0f} {ta:10.0f} {tb / ta:6.2f}   {_form(plain, tuned)}")


if __name__ == "__main__":
    main()
