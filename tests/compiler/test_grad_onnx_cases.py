"""The ONNX authors' node test cases as a second table of op configurations for the gradient rules.

onnx ships one small model per op configuration (onnx.backend.test.case.node). For every case
whose single node has a rule (or an op that left ONNX before OPSET, which the gradient builder
converts to ops with rules) and a float input, this appends loss = sum_k sum(y_k * R_k) over
its float outputs, computes the rule's gradients and compares <grad, v> with float64 central
differences along a random direction v (onnx's reference evaluator runs both). A case of an opset
newer than OPSET is taken back to OPSET, rewritten exactly where the op changed meaning (opset 21's
GroupNormalization: see _at_opset). A case is skipped, with its reason, where there is nothing to
check: no float input or output, values that are not finite, a configuration the rule refuses with
a CompileError (that message is the reason), or a point where the op is not differentiable (the
one-sided derivatives differ, or the loss jumps).

Ops that ONNX added after OPSET and the gradient builder rewrites into opset-OPSET ops (Swish,
RMSNormalization, RotaryEmbedding, SwiGLU: REWRITTEN_OPS) are checked in a model of opset OPSET
that uses them, as a model from elsewhere would: the central differences are of onnx's reference
implementation of the op, the gradients of the rewrite; the rewrite's forward values are compared
with the reference's too, in float64.

Run with -s to print how many cases were checked per op.
"""

from __future__ import annotations

import functools
import sys
import warnings
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

from dlspec.compiler import gradient_model
from dlspec.compiler.grad import RULES
from dlspec.compiler.graph import OPSET
from dlspec.compiler.graph.newer_ops import REWRITES, rewrite_newer_ops
from dlspec.spec.errors import CompileError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from grad_reference import reference  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # cases at the edge of a domain

MIN_CHECKED = 630  # cases actually compared (645 at onnx 1.23); fails if the table goes empty
MIN_OPS = 116  # distinct ops among them (120 at onnx 1.23: Upsample and Scatter through conversion,
# Swish, RMSNormalization, RotaryEmbedding and SwiGLU through rewriting)
FLOATS = (np.float16, np.float32, np.float64)
# ops deprecated before OPSET (Upsample, Scatter): the gradient builder converts a model that uses
# them to OPSET first, to ops with rules (Resize, ScatterElements), and their cases check that
CONVERTED_OPS = sorted({s.name for s in onnx.defs.get_all_schemas_with_history()
                        if s.domain == "" and s.deprecated and s.since_version <= OPSET} - set(RULES))
# ops newer than OPSET that the gradient builder rewrites into ops with rules
REWRITTEN_OPS = sorted(REWRITES)
RULE_OPS = sorted([*RULES, *CONVERTED_OPS, *REWRITTEN_OPS])
# ops that onnx's checker or strict shape inference refuses at a type that their schema allows:
# MeanVarianceNormalization's function body adds float32 constants to x; the checker refuses every
# node of opset 18's GroupNormalization (deprecated), which dlspec writes and onnxruntime runs.
# They are validated against the schema's types instead.
UNCHECKABLE = frozenset({"GroupNormalization", "MeanVarianceNormalization"})
LOSS = "loss.total"  # the appended loss, named apart from the cases' own outputs (test_nllloss_* has "loss")


@dataclass
class Outcome:
    checked: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # case -> reason
    failed: dict[str, str] = field(default_factory=dict)


class Skip(Exception):
    """This case has nothing to check; the message says why."""


@functools.cache
def cases_by_op() -> dict[str, list[object]]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():  # some cases compute their expected outputs from inf and nan
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    ops = set(RULE_OPS)
    by_op: dict[str, list[object]] = defaultdict(list)
    for case in cases:
        nodes = case.model.graph.node if case.model is not None else []
        if len(nodes) == 1 and nodes[0].domain in ("", "ai.onnx") and nodes[0].op_type in ops:
            by_op[nodes[0].op_type].append(case)
    return by_op


@functools.cache
def outcome(op: str) -> Outcome:
    result = Outcome()
    for case in cases_by_op().get(op, []):
        name = case.name  # type: ignore[attr-defined]
        try:
            check_case(case.model, case.data_sets[0][0], name)  # type: ignore[attr-defined]
            result.checked.append(name)
        except Skip as why:
            result.skipped[name] = str(why)
        except AssertionError as err:
            result.failed[name] = str(err).splitlines()[0]
        except Exception as err:  # a rule that builds a graph that does not run is a failure too
            result.failed[name] = f"{name}: {type(err).__name__}: {str(err).splitlines()[0][:300]}"
    return result


def check_case(model: onnx.ModelProto, arrays: list[object], name: str) -> None:
    feeds = {vi.name: _array(a) for vi, a in zip(model.graph.input, arrays)}
    if not all(isinstance(a, np.ndarray) for a in feeds.values()):
        raise Skip("an input is not a float16/32/64 or integer array (bfloat16, float8, sequences, ...)")
    version = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    nodes, feeds, version = _at_opset(model.graph.node[0], version, feeds)
    floats = [n for n, a in feeds.items() if isinstance(a, np.ndarray) and a.dtype in FLOATS]
    if not floats:
        raise Skip("no float16/32/64 input to differentiate")
    if not all(np.all(np.isfinite(feeds[n])) for n in floats):
        raise Skip("an input is not finite")
    float_outs = [vi.name for vi in model.graph.output
                  if vi.type.tensor_type.elem_type in (TP.FLOAT16, TP.FLOAT, TP.DOUBLE)]
    if not float_outs:
        raise Skip("no float output")
    for dtype, code in ((np.float64, TP.DOUBLE), (np.float32, TP.FLOAT)):
        x = {n: (a.astype(dtype) if n in floats else a) for n, a in feeds.items()}  # type: ignore[union-attr]
        forward = _forward(nodes, model, x, floats, float_outs, code, version)
        if forward is not None:
            break
    else:
        raise Skip(f"the op does not validate at opset {OPSET} in float64 or float32")
    ys = reference(forward).run(float_outs, {n: x[n] for n in floats})
    if nodes[0].op_type in REWRITTEN_OPS:
        _check_rewrite(nodes, model, feeds, floats, float_outs, name)
    if not all(np.all(np.isfinite(y)) for y in ys):
        raise Skip("an output is not finite")
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    rs = [rng.standard_normal(np.shape(y)).astype(dtype) for y in ys]
    lossy = _with_loss(forward, float_outs, rs)
    wrt = list(floats)
    while True:
        try:
            grads = gradient_model(lossy, LOSS, wrt)
            break
        except CompileError as err:
            msg = str(err).removeprefix("error: ")
            if not msg.startswith("the loss does not depend on: "):
                raise Skip(f"the rule refuses it: {msg}") from None
            frozen = msg.removeprefix("the loss does not depend on: ").split(", ")
            wrt = [n for n in wrt if n not in frozen]
            lossy = _freeze(lossy, frozen, x)
            if not wrt:
                raise Skip("no float input takes a gradient (all are constants of the rule)") from None
    _compare(lossy, grads, {n: x[n] for n in wrt}, rng, dtype, name)


def _array(a: object) -> object:
    """Numpy scalars and float TensorProtos as arrays; anything else (float8, strings) as it is."""
    if isinstance(a, np.generic):
        return np.asarray(a)
    if isinstance(a, onnx.TensorProto) and a.data_type in (TP.FLOAT16, TP.FLOAT, TP.DOUBLE):
        return numpy_helper.to_array(a)
    return a


def _at_opset(node: onnx.NodeProto, version: int, feeds: dict[str, object]
              ) -> tuple[list[onnx.NodeProto], dict[str, object], int]:
    """The case's node as nodes of an opset up to OPSET, their inputs and that opset. The cases come
    at the op's newest version: the node itself at OPSET, but where the op changed meaning after
    OPSET or onnx's shape inference misreads it. Opset 21's GroupNormalization (scale and bias per
    channel) is opset 18's (per group) with scale 1 and bias 0, times the scale plus the bias per
    channel: exact. The ones and zeros are inputs too, so that the rule's gradients of opset 18's
    scale and bias are checked as well. STFT's shape inference reads an unset onesided as 0, its
    schema as 1: it is spelled out."""
    if node.op_type == "STFT" and all(a.name != "onesided" for a in node.attribute):
        spelled = onnx.NodeProto()
        spelled.CopyFrom(node)
        spelled.attribute.append(helper.make_attribute("onesided", 1))
        return [spelled], feeds, min(version, OPSET)
    if node.op_type != "GroupNormalization" or version < 21:
        return [node], feeds, min(version, OPSET)
    x, scale, bias = node.input
    groups = next(a.i for a in node.attribute if a.name == "num_groups")
    eps = [a for a in node.attribute if a.name == "epsilon"]
    spatial = list(range(1, np.ndim(feeds[x]) - 1))  # scale [C] -> [C, 1, ...] against x [N, C, ...]
    dtype = np.asarray(feeds[scale]).dtype
    return [helper.make_node("GroupNormalization", [x, "gn.ones", "gn.zeros"], ["gn.y"], num_groups=groups,
                             **{a.name: a.f for a in eps}),
            helper.make_node("Unsqueeze", [scale, "gn.axes"], ["gn.scale"]),
            helper.make_node("Unsqueeze", [bias, "gn.axes"], ["gn.bias"]),
            helper.make_node("Mul", ["gn.y", "gn.scale"], ["gn.scaled"]),
            helper.make_node("Add", ["gn.scaled", "gn.bias"], list(node.output))], \
        {**feeds, "gn.ones": np.ones(groups, dtype), "gn.zeros": np.zeros(groups, dtype),
         "gn.axes": np.array(spatial, np.int64)}, OPSET


def _forward(nodes: list[onnx.NodeProto], model: onnx.ModelProto, x: dict[str, object], floats: list[str],
             float_outs: list[str], code: int, version: int, validate: bool = True) -> onnx.ModelProto | None:
    """The case's nodes with their float values typed `code`, other inputs as initializers; None when
    the op does not allow that type (or does not validate at `version`), unless not `validate`."""
    inputs = [helper.make_tensor_value_info(n, code, list(np.shape(x[n]))) for n in floats]
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in x.items() if n not in floats]
    outputs = []
    for vi in model.graph.output:
        if vi.name in float_outs:
            outputs.append(onnx.ValueInfoProto())
            outputs[-1].CopyFrom(vi)
            outputs[-1].type.tensor_type.elem_type = code
    graph = helper.make_graph(nodes, "case", inputs, outputs, initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", version)])
    m.ir_version = 9
    if not validate:
        return m
    if nodes[0].op_type in REWRITTEN_OPS:  # not an op at OPSET: the checker refuses it
        return m if _schema_allows(nodes[0].op_type, onnx.defs.get_schema(nodes[0].op_type).since_version,
                                   code) else None
    if nodes[0].op_type in UNCHECKABLE:
        return m if _schema_allows(nodes[0].op_type, version, code) else None
    try:
        onnx.checker.check_model(m)
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError):
        return None
    return m


def _check_rewrite(nodes: list[onnx.NodeProto], model: onnx.ModelProto, feeds: dict[str, object],
                   floats: list[str], float_outs: list[str], name: str) -> None:
    """The rewritten nodes compute what onnx's reference implementation of the op does, in float64
    (whether the op's schema takes it or not), to float32 precision where the op computes in
    float32 (RMSNormalization's stash_type 1)."""
    x = {n: (np.asarray(a).astype(np.float64) if n in floats else a) for n, a in feeds.items()}
    original = _forward(nodes, model, x, floats, float_outs, TP.DOUBLE, OPSET, validate=False)
    assert original is not None
    rewritten = rewrite_newer_ops(original)
    assert all(n.op_type not in REWRITES for n in rewritten.graph.node), f"{name}: not rewritten"
    onnx.checker.check_model(rewritten)  # opset-OPSET ops only
    stage = TP.DOUBLE if nodes[0].op_type != "RMSNormalization" else \
        next((a.i for a in nodes[0].attribute if a.name == "stash_type"), TP.FLOAT)
    tol = 1e-12 if stage == TP.DOUBLE else 1e-6
    inputs = {n: x[n] for n in floats}
    for out, want, got in zip(float_outs, reference(original).run(float_outs, inputs),
                              reference(rewritten).run(float_outs, inputs)):
        assert got.shape == want.shape, \
            f"{name}: {out} of the rewrite has shape {got.shape}, not {want.shape}"
        err = np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)), initial=0.0)
        assert err <= tol, f"{name}: {out} of the rewrite is off the reference by {err:.3g} (> {tol:g})"


def _schema_allows(op: str, version: int, code: int) -> bool:
    """Whether the op's schema at `version` takes input 0 of element type `code`."""
    schema = onnx.defs.get_schema(op, version, "")
    constraint = {c.type_param_str: c for c in schema.type_constraints}[schema.inputs[0].type_str]
    return f"tensor({helper.tensor_dtype_to_string(code).removeprefix('TensorProto.').lower()})" \
        in constraint.allowed_type_strs


def _with_loss(forward: onnx.ModelProto, outs: list[str], rs: list[np.ndarray]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(forward)
    g = m.graph
    terms = []
    for k, (y, r) in enumerate(zip(outs, rs)):
        g.initializer.append(numpy_helper.from_array(r, f"loss.R{k}"))
        g.node.extend([helper.make_node("Mul", [y, f"loss.R{k}"], [f"loss.yr{k}"]),
                       helper.make_node("ReduceSum", [f"loss.yr{k}"], [f"loss.l{k}"], keepdims=0)])
        terms.append(f"loss.l{k}")
    g.node.append(helper.make_node("Sum", terms, [LOSS]))
    elem = forward.graph.output[0].type.tensor_type.elem_type
    g.value_info.extend(g.output)  # the case's outputs keep the types they declare (inference may not
    del g.output[:]  # tell them: MaxUnpool's with output_shape)
    g.output.append(helper.make_tensor_value_info(LOSS, elem, []))
    return m


def _freeze(model: onnx.ModelProto, names: list[str], x: dict[str, object]) -> onnx.ModelProto:
    """Float inputs that take no gradient (Clip bounds, Resize scales, ...) become constants."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    keep = [vi for vi in m.graph.input if vi.name not in names]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    m.graph.initializer.extend(numpy_helper.from_array(np.asarray(x[n]), n) for n in names)
    return m


def _compare(model: onnx.ModelProto, grads_model: onnx.ModelProto, x: dict[str, np.ndarray],
             rng: np.random.Generator, dtype: type, name: str) -> None:
    _, *grads = reference(grads_model).run(None, x)  # the loss at x, then the gradients
    forward = reference(model)
    f0 = float(forward.run(None, x)[0])  # the loss as the differences see it (a rewritten op, such as
    # RMSNormalization's float32 stage, may round it apart from the reference's)
    double = dtype is np.float64
    eps, tol, kink = (1e-6, 1e-5, 1e-3) if double else (1e-3, 2e-2, 5e-2)
    for (n, value), grad in zip(x.items(), grads):
        v = rng.standard_normal(value.shape).astype(dtype)

        def loss(step: float, n: str = n, value: np.ndarray = value, v: np.ndarray = v) -> float:
            return float(forward.run(None, {**x, n: (value + step * v).astype(dtype)})[0])

        fp, fm = loss(eps), loss(-eps)
        if not np.all(np.isfinite([f0, fp, fm])):
            raise Skip(f"the loss is not finite near the case's inputs ('{n}' at the edge of its domain)")
        central = (fp - fm) / (2 * eps)
        scale = max(1.0, abs(central))
        if abs((fp - f0) - (f0 - fm)) / eps > kink * scale:
            raise Skip(f"not differentiable at the case's inputs along a random direction ('{n}': "
                       f"one-sided slopes {(fp - f0) / eps:.4g} and {(f0 - fm) / eps:.4g})")
        analytic = float(np.sum(grad.astype(np.float64) * v))
        if abs(central - analytic) > tol * scale:  # a jump, odd about x, passes the test above
            # but not this one: its central difference halves with twice the step
            wide = (loss(2 * eps) - loss(-2 * eps)) / (4 * eps)
            if abs(wide - central) > tol * scale:
                raise Skip(f"the loss jumps at the case's inputs ('{n}': central differences {central:.4g} "
                           f"with step eps, {wide:.4g} with 2 eps)")
        assert abs(central - analytic) <= tol * scale, \
            f"{name}: d/d{n} along v: rule {analytic:.8g}, central differences {central:.8g}"


@pytest.mark.parametrize("op", RULE_OPS)
def test_rule_on_onnx_cases(op: str) -> None:
    result = outcome(op)
    assert not result.failed, "\n".join(result.failed.values())
    if not result.checked:
        reasons = Counter(result.skipped.values())
        pytest.skip("; ".join(f"{why} ({k}x)" for why, k in reasons.most_common()) if reasons
                    else f"onnx has no single-node test case for {op}")


def test_enough_onnx_cases_are_checked() -> None:
    results = {op: outcome(op) for op in RULE_OPS}
    print("\nONNX node test cases checked per op (checked / skipped):")
    for op, r in results.items():
        if r.checked or r.skipped:
            print(f"  {op:24} {len(r.checked):3d} / {len(r.skipped):2d}")
            for case, why in r.skipped.items():
                print(f"      skipped {case}: {why}")
    checked = sum(len(r.checked) for r in results.values())
    ops = sum(bool(r.checked) for r in results.values())
    print(f"  total: {checked} cases of {ops} ops checked")
    assert checked >= MIN_CHECKED and ops >= MIN_OPS, (checked, ops)


def _chain(num_heads: int | None) -> onnx.ModelProto:
    """x -> RMSNormalization -> Swish -> RotaryEmbedding (3-D, positions) -> sum(y * R): each
    rewrite needs the rank that only the rewrite before it lets shape inference tell."""
    rng = np.random.default_rng(0)
    heads = {"num_heads": num_heads} if num_heads else {}
    nodes = [helper.make_node("RMSNormalization", ["x", "w"], ["n"], axis=1),
             helper.make_node("Swish", ["n"], ["s"], alpha=0.7),
             helper.make_node("RotaryEmbedding", ["s", "cos", "sin", "pos"], ["y"], **heads),
             helper.make_node("Mul", ["y", "r"], ["yr"]),
             helper.make_node("ReduceSum", ["yr"], [LOSS], keepdims=0)]
    inits = {"w": rng.standard_normal(8), "cos": rng.standard_normal((5, 2)),
             "sin": rng.standard_normal((5, 2)), "pos": np.array([[4, 0, 2], [1, 1, 3]]),
             "r": rng.standard_normal((2, 3, 8))}
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TP.DOUBLE, [2, 3, 8])],
                              [helper.make_tensor_value_info(LOSS, TP.DOUBLE, [])],
                              initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def test_newer_ops_in_a_chain_are_rewritten_and_differentiated() -> None:
    model = _chain(num_heads=2)
    grads = gradient_model(model, LOSS, ["x", "w", "cos", "sin"])
    assert not {n.op_type for n in grads.graph.node} & set(REWRITES)
    rng = np.random.default_rng(1)
    x = {"x": rng.standard_normal((2, 3, 8))}
    x.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer
              if t.name in ("w", "cos", "sin")})
    _compare(_freeze_all_but(model, list(x)), grads, x, rng, np.float64, "chain")


def test_rotary_embedding_of_3d_input_needs_num_heads() -> None:
    with pytest.raises(CompileError, match="node y .RotaryEmbedding.: a 3-D input needs the num_heads"):
        gradient_model(_chain(num_heads=None), LOSS, ["x"])


def _freeze_all_but(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """`model` with these initializers as its inputs, in this order (as gradient_model lists them)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name: t for t in m.graph.initializer}
    keep = [t for t in m.graph.initializer if t.name not in names]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    m.graph.input.extend(helper.make_tensor_value_info(n, inits[n].data_type, list(inits[n].dims))
                         for n in names if n in inits)
    return m
