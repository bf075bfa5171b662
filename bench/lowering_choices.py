"""The gradient lowerings dlspec chose against the forms they replaced, op by op, in onnxruntime.

tests/compiler/test_grad_lowering.py pins each choice; this script shows why, and re-checks it
on another machine, thread count or onnxruntime release. Each case builds the chosen form with
the compiler itself (the gradient of one node) and the alternative by hand, checks that both
give the same values, and times them interleaved call by call in one process.

    python bench/lowering_choices.py [--threads 2] [--calls 100]

Prints microseconds per call and the ratio alternative / chosen (above 1: the choice is faster).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dlspec.compiler.autodiff import RuleCtx, constants, load_rules, static_shapes, used_nodes  # noqa: E402
from dlspec.compiler.grad_rules_norm import channel_affine  # noqa: E402
from dlspec.compiler.graph import Graph  # noqa: E402
from dlspec.compiler.opset import IR_VERSION, OPSET  # noqa: E402

Feeds = dict[str, np.ndarray]


def _model(nodes: list[onnx.NodeProto], inputs: Feeds, output: str,
           consts: dict[str, list[int]] | None = None) -> onnx.ModelProto:
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape) for n, v in inputs.items()]
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (consts or {}).items()]
    out = [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", ins, out, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def _chosen(node: onnx.NodeProto, inputs: Feeds, index: int, seed: np.ndarray,
            consts: Sequence[onnx.TensorProto] = ()) -> tuple[onnx.ModelProto, Feeds]:
    """The compiler's gradient rule for `node`, alone: input `index`'s gradient given the output
    gradient `seed` (no forward, no loss around it)."""
    feeds = {**inputs, "seed": seed}
    model = _model([node], inputs, node.output[0])
    model.graph.initializer.extend(consts)
    ctx = RuleCtx(Graph(set(feeds) | {i for i in node.input} | set(node.output)), static_shapes(model),
                  constants(model))
    grad = load_rules()[node.op_type](ctx, node, ["seed"])[index]
    assert grad is not None
    needed = used_nodes(ctx.g.nodes, [grad])  # the rule also wrote the other inputs' gradients
    out = _model(needed + [helper.make_node("Identity", [grad], ["grad"])], feeds, "grad")
    out.graph.initializer.extend(c for c in consts if any(c.name in n.input for n in needed))
    return out, feeds


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
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


def conv_weight_grad(shape: tuple[int, int, int, int], cout: int, k: int) -> tuple[onnx.ModelProto, Feeds,
                                                                                    onnx.ModelProto, Feeds]:
    """dW against channels-last im2col: one Concat of every tap, one MatMul."""
    rng = np.random.default_rng(0)
    n, c, h, w = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    wt = rng.standard_normal((cout, c, k, k), dtype=np.float32)
    g = rng.standard_normal((n, cout, h, w), dtype=np.float32)
    p = k // 2
    chosen, feeds = _chosen(helper.make_node("Conv", ["x", "w"], ["y"], pads=[p] * 4), {"x": x, "w": wt},
                            1, g)
    nodes = [helper.make_node("Transpose", ["x"], ["xl"], perm=[0, 2, 3, 1])]
    consts = {"cols": [-1, k * k * c], "rows": [cout, -1], "dw": [cout, k, k, c]}
    taps = ["xl"]  # a 1x1 kernel's only tap is the whole input, uncopied
    if k > 1:
        nodes.append(helper.make_node("Pad", ["xl", "pads"], ["xp"]))
        consts.update(pads=[0, p, p, 0, 0, p, p, 0], axes=[1, 2])
        taps = []
        for i, (a, b) in enumerate(itertools.product(range(k), range(k))):
            consts[f"s{i}"], consts[f"e{i}"] = [a, b], [a + h, b + w]
            nodes.append(helper.make_node("Slice", ["xp", f"s{i}", f"e{i}", "axes"], [f"t{i}"]))
            taps.append(f"t{i}")
    nodes += [helper.make_node("Concat", taps, ["cat"], axis=-1),  # as the former lowering did
              helper.make_node("Reshape", ["cat", "cols"], ["c2"]),
              helper.make_node("Transpose", ["seed"], ["gt"], perm=[1, 0, 2, 3]),
              helper.make_node("Reshape", ["gt", "rows"], ["g2"]),
              helper.make_node("MatMul", ["g2", "c2"], ["mm"]),
              helper.make_node("Reshape", ["mm", "dw"], ["dw4"]),
              helper.make_node("Transpose", ["dw4"], ["grad"], perm=[0, 3, 1, 2])]
    other_feeds = {"x": x, "seed": g}
    return chosen, feeds, _model(nodes, other_feeds, "grad", consts), other_feeds


def batch_norm_affine(shape: tuple[int, int, int, int]) -> tuple[onnx.ModelProto, Feeds, onnx.ModelProto,
                                                                  Feeds]:
    """x * s + t per channel: the inference-mode BatchNormalization the compiler writes against a
    broadcast Mul and Add."""
    rng = np.random.default_rng(0)
    c = shape[1]
    x = rng.standard_normal(shape, dtype=np.float32)
    s, t = rng.standard_normal(c, dtype=np.float32), rng.standard_normal(c, dtype=np.float32)
    g = Graph({"x", "s", "t"})
    out = channel_affine(g, "x", "s", "t", c, "affine")
    chosen = _model(g.nodes + [helper.make_node("Identity", [out], ["y"])], {"x": x, "s": s, "t": t}, "y")
    nodes = [helper.make_node("Reshape", ["s", "per_c"], ["s4"]),
             helper.make_node("Reshape", ["t", "per_c"], ["t4"]),
             helper.make_node("Mul", ["x", "s4"], ["m"]), helper.make_node("Add", ["m", "t4"], ["y"])]
    feeds = {"x": x, "s": s, "t": t}
    return chosen, feeds, _model(nodes, feeds, "y", {"per_c": [1, c, 1, 1]}), feeds


def upsample_grad(shape: tuple[int, int, int, int]) -> tuple[onnx.ModelProto, Feeds, onnx.ModelProto, Feeds]:
    """The gradient of a 2x nearest upsampling: AveragePool times 4 against a block ReduceSum."""
    rng = np.random.default_rng(0)
    n, c, h, w = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    g = rng.standard_normal((n, c, 2 * h, 2 * w), dtype=np.float32)
    scales = helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])
    resize = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    chosen, feeds = _chosen(resize, {"x": x}, 0, g, [scales])
    nodes = [helper.make_node("Reshape", ["seed", "blocks"], ["b"]),
             helper.make_node("ReduceSum", ["b", "axes"], ["grad"], keepdims=0)]
    other_feeds = {"seed": g}
    other = _model(nodes, other_feeds, "grad", {"blocks": [n, c, h, 2, w, 2], "axes": [3, 5]})
    return chosen, feeds, other, other_feeds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=100)
    args = ap.parse_args()
    cases = [(f"conv 3x3 dW {s[1]}->{o} at {s[2]}x{s[3]}: per tap vs im2col", conv_weight_grad(s, o, 3))
             for s, o in [((64, 64, 8, 8), 64), ((64, 16, 8, 8), 16), ((64, 32, 4, 4), 32)]]
    cases += [(f"conv 1x1 dW {s[1]}->{o} at {s[2]}x{s[3]}: Gemm vs im2col", conv_weight_grad(s, o, 1))
              for s, o in [((64, 64, 8, 8), 64), ((64, 32, 8, 8), 16)]]
    cases += [(f"per-channel affine {s[1]}x{s[2]}x{s[3]}: BatchNormalization vs Mul+Add",
               batch_norm_affine(s)) for s in [(64, 64, 8, 8), (64, 128, 4, 4)]]
    cases += [(f"2x upsampling grad {s[1]}x{s[2]}x{s[3]}: AveragePool vs ReduceSum", upsample_grad(s))
              for s in [(64, 64, 4, 4), (64, 64, 16, 16)]]
    print(f"{'case':66} {'chosen us':>10} {'other us':>10} {'ratio':>6}   ({args.threads} threads, "
          f"median of {args.calls} interleaved calls)")
    for title, (chosen, feeds, other, other_feeds) in cases:
        a, b = _session(chosen, args.threads), _session(other, args.threads)
        want, got = b.run(None, other_feeds)[0], a.run(None, feeds)[0]
        assert np.allclose(got, want, rtol=1e-4, atol=1e-3), title
        ta, tb = _race(partial(a.run, None, feeds), partial(b.run, None, other_feeds), args.calls)
        print(f"{title:66} {ta:10.0f} {tb:10.0f} {tb / ta:6.2f}")


if __name__ == "__main__":
    main()
