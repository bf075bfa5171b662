"""The training graphs of a spec: forward (training mode) -> loss -> backward -> optimizer step.

Parameters are graph inputs, never initializers: onnxruntime's constant sharing would alias
identical initial values (all-zero biases) and corrupt training. Every output that the next
step reads back is named after its input plus `.next`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dlspec.compiler.grad import backward
from dlspec.compiler.graph import Graph, Value
from dlspec.compiler.graph.builder import output_node
from dlspec.compiler.graph.infer import constants, value_types
from dlspec.compiler.graph.memory import materialize
from dlspec.compiler.graph.precision import to_mixed
from dlspec.compiler.graph.proto import array_info, initial_info, model_proto, value_info
from dlspec.compiler.lower.compile import (
    Compiled,
    Forward,
    Stats,
    build_forward,
    compile_model,
)
from dlspec.compiler.lower.freeze import frozen, lr_mult
from dlspec.compiler.lower.heads import head_metrics, term_outputs
from dlspec.compiler.lower.losses import total_loss
from dlspec.compiler.target import HALF, Target, lowering, step_precision
from dlspec.compiler.train import loss_scale
from dlspec.compiler.train.health import gradient_norms
from dlspec.compiler.train.optim import Slot, state_names, step_graph
from dlspec.spec import model as m
from dlspec.spec.errors import CompileError, SpecError
from dlspec.spec.loader import Program

DEFAULT_OPTIMIZER = m.Adam.model_validate({"kind": "adam"})
DEFAULT_FP16 = m.Fp16.model_validate({"kind": "fp16"})  # loss scaling where a Target asks for float16
SCALARS = [helper.make_tensor_value_info("lr", TensorProto.FLOAT, []),
           helper.make_tensor_value_info("step", TensorProto.INT64, [])]
# nodes that stay float32 in a mixed-precision step: the loss, metrics, gradient norms, loss
# scaling and the optimizer (float32 master weights and state)
FLOAT32_SCOPES = ("loss/", "metric/", "health/", f"{loss_scale.SCOPE}/", "optim/")


@dataclass
class TrainingGraphs:
    inference: Compiled
    train_step: onnx.ModelProto
    gradients: onnx.ModelProto
    init: dict[str, np.ndarray]  # parameters, batch-norm statistics and optimizer state
    trainable: list[str]
    frozen: list[str]
    metrics: list[str]
    evaluate: onnx.ModelProto  # inference graph + loss, parameters as inputs: eval mode, any weights
    apply: onnx.ModelProto  # the optimizer step alone: parameters, state, gradients -> next values
    health: list[str]  # train_step's gradient norms: grad_norm and grad_norm:<stage>
    terms: list[str] = field(default_factory=list)  # each loss term's own loss, `loss:<label>`, if several
    precision: str = "fp32"  # what train_step computes in (gradients and apply: float32 always)


@lowering
def finish(target: Target, model: onnx.ModelProto) -> onnx.ModelProto:
    """A finished training graph, as the layers and rules wrote it."""
    return model


def compile_training(prog: Program, name: str | None = None, seed: int | None = None,
                     moments: Stats | None = None, target: Target | None = None) -> TrainingGraphs:
    """`moments`: the fitted statistics of standardized features, as `stats` of compile_model.
    `target`: where the step will run (device, CPU threads); it picks lowerings that compute the
    same function (dlspec.compiler.tune), and the precision the step computes in: the spec's
    `precision` on CUDA, float32 on the CPU (dlspec.compiler.target.step_precision)."""
    target = target or Target()
    inference = compile_model(prog, name, seed, moments)
    model = inference.model
    train = prog.train(model.name) or m.Train()
    if model.loss is None:
        raise SpecError(f"model '{model.name}' has no loss: training needs `loss ...`", model.name_span)
    f = build_forward(prog, name, seed, training=True, frozen=train.freeze, stats=moments, target=target,
                      encoded=True)
    g = f.comp.g
    with g.at("loss", f"{model.loss.span} loss"):
        loss, parts = total_loss([(t.spec, t.prediction, t.target) for t in f.bound.terms])
        with g.at("metric"):
            mets = head_metrics(f.bound)
    terms = term_outputs(f.bound.terms, parts)  # each term's own loss, where there are several
    weights = [p.name for p in f.comp.params if not p.state]
    mults = {p: lr_mult(train, p) for p in weights}
    trainable = [p for p in weights if not frozen(train, p) and mults[p] > 0]
    stats = [p.name for p in f.comp.params if p.state]
    optimizer = train.optimizer or DEFAULT_OPTIMIZER
    precision = step_precision(target, train.precision.kind if train.precision else "fp32")
    scaling = None  # float16 scales the loss: the spec's settings, or the defaults where a Target asks
    if precision == "fp16":
        scaling = train.precision if isinstance(train.precision, m.Fp16) else DEFAULT_FP16
    # a step holds the weights, their gradients, optimizer state, and the next weights and state
    copies = 2 * (1 + len(state_names(optimizer, ""))) + 1
    values = materialize(g.initializers, copies, f"training '{model.name}'", model.name_span)
    values.update({s: np.zeros_like(values[p]) for p in trainable for s in state_names(optimizer, p)})
    batch = [value_info(t) for t in f.inputs] + [value_info(t) for t in _unique_targets(f)]
    inputs = batch + SCALARS + [array_info(n, values[n]) for n in weights + stats]
    scale = g.value(loss_scale.SCALE, "float32", ()) if scaling else None
    grads = _backward(f, loss, trainable, inputs, scale)
    if scaling:
        grads = loss_scale.unscale(grads)
        values.update(loss_scale.initial(scaling))

    # gradients.onnx: batch + params + BN state -> loss, metrics, grad.<p>, next BN state
    bn_next = f.comp.state_updates
    outputs = {"loss": loss, **terms, **mets, **{f"grad.{p}": grads[p] for p in trainable},
               **{f"{s}.next": v for s, v in bn_next.items()}}
    gradients = _model(f, [i for i in inputs if i.name != "lr"], outputs, values)
    if scaling:  # gradients.onnx computes in float32: its loss scale is a constant 1
        gradients.graph.initializer.append(numpy_helper.from_array(np.float32(1), loss_scale.SCALE))

    # train_step.onnx: + lr, step, optimizer state -> loss, metrics, gradient norms, next params and state
    with g.at("health"):
        health = gradient_norms({p: grads[p] for p in trainable})
    slots = [Slot(p, grads[p], tuple(values[p].shape), mults[p]) for p in trainable]
    step, scaled = f.comp.step, None
    if scaling:
        scaled = loss_scale.states(g, scaling, grads, step)
        step = scaled.step
        health = loss_scale.zero_unless(scaled.finite, health)
    nexts = step_graph(g, optimizer, train.clip, slots, g.value("lr", "float32", ()), step)
    opt_state = [s for p in trainable for s in state_names(optimizer, p)]
    if scaled is not None:  # a step with gradients that overflowed changes no parameter or state
        shapes = {k: values[k].shape for k in nexts}
        nexts = {**loss_scale.keep_if(scaled.finite, nexts, shapes), **scaled.nexts}
        opt_state += list(loss_scale.STATES)
    outputs = {"loss": loss, **terms, **mets, **health,
               **{f"{k}.next": v for k, v in {**nexts, **bn_next}.items()}}
    train_step = _model(f, inputs + [array_info(s, values[s]) for s in opt_state], outputs, values)
    init = {n: values[n] for n in weights + stats + opt_state}
    apply = _apply_model(model.name, f.spec_hash, optimizer, train.clip, slots, values, target)
    train_step = finish(target, train_step)
    if precision != "fp32":
        train_step = to_mixed(train_step, HALF[precision], lambda node: node.name.startswith(FLOAT32_SCOPES),
                              exact=["lr", *loss_scale.STATES])
    return TrainingGraphs(inference, train_step, finish(target, gradients), init, trainable,
                          [p for p in weights if p not in trainable], list(mets),
                          _evaluate_model(prog, name, seed, moments), apply, list(health), list(terms),
                          precision)


def _apply_model(name: str, spec_hash: str, optimizer: m.Optimizer, clip: m.Clip | None,
                 slots: list[Slot], values: dict[str, np.ndarray], target: Target) -> onnx.ModelProto:
    """The optimizer step alone: lr, step, the trainable parameters, their optimizer state and
    gradients (`grad.<p>`, averaged across processes, say) -> their next values, with clipping."""
    g = Graph(target=target)
    slots = [Slot(s.name, g.value(f"grad.{s.name}", "float32", s.shape), s.shape, s.lr_mult) for s in slots]
    nexts = step_graph(g, optimizer, clip, slots, g.value("lr", "float32", ()), g.value("step", "int64", ()))
    states = [n for s in slots for n in state_names(optimizer, s.name)]
    inputs = SCALARS + [array_info(n, values[n]) for n in [s.name for s in slots] + states]
    inputs += [array_info(f"grad.{s.name}", values[s.name]) for s in slots]
    nodes = list(g.nodes) + [output_node(v.name, f"{k}.next") for k, v in nexts.items()]
    outputs = [array_info(f"{k}.next", values[k]) for k in nexts]
    return model_proto(name, nodes, inputs, outputs, {}, spec_hash)


def _backward(f: Forward, loss: Value, trainable: list[str], inputs: list[onnx.ValueInfoProto],
              seed: Value | None = None) -> dict[str, Value]:
    """The gradients of the trainable parameters, each of which the loss must depend on, times
    `seed` (the loss scale) where given."""
    g = f.comp.g
    fwd = model_proto(f.model.name, g.nodes, inputs, [array_info(loss.name, np.float32(0))], {}, f.spec_hash)
    with g.at("grad.seed"):
        seed = seed or g.const(1.0)
    grads = backward(g, list(g.nodes), loss.name, trainable, seed, value_types(fwd), constants(fwd))
    missing = [p for p in trainable if p not in grads]
    if missing:  # located at the layer of the first
        layer = next((r for r in f.comp.records if missing[0].startswith(r.path + ".")), None)
        raise CompileError(f"the loss does not depend on {', '.join(missing[:3])}"
                           f"{' ...' if len(missing) > 3 else ''}; freeze them or remove the layers",
                           layer.span if layer is not None else None)
    return grads


def _model(f: Forward, inputs: list[onnx.ValueInfoProto], outputs: dict[str, Value],
           values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The graph built so far, with `outputs` exposed under their names (each by an Identity: a
    value may feed several outputs)."""
    nodes = list(f.comp.g.nodes) + [output_node(v.name, name) for name, v in outputs.items()]
    return model_proto(f.model.name, nodes, inputs, [_out(n, values) for n in outputs], {}, f.spec_hash)


def _evaluate_model(prog: Program, name: str | None, seed: int | None,
                    moments: Stats | None) -> onnx.ModelProto:
    """The inference graph plus the loss, parameters as inputs: validation loss and metrics with
    the current weights, in eval mode (running statistics, no dropout, no augmentation)."""
    f = build_forward(prog, name, seed, stats=moments, encoded=True)
    g, model = f.comp.g, f.model
    assert model.loss is not None
    with g.at("loss", f"{model.loss.span} loss"):
        loss, parts = total_loss([(t.spec, t.prediction, t.target) for t in f.bound.terms])
    terms = term_outputs(f.bound.terms, parts)
    for key, v in terms.items():
        g.output(v, key)
    inputs = [value_info(t) for t in f.inputs] + [value_info(t) for t in _unique_targets(f)]
    outputs = ([value_info(v) for v in f.bound.outputs.values()] + [array_info(loss.name, np.float32(0))]
               + [array_info(k, np.float32(0)) for k in terms])
    params = [initial_info(k, v) for k, v in g.initializers.items()]  # inputs: no value is drawn
    return model_proto(model.name, g.nodes, inputs + params, outputs, {}, f.spec_hash)


def _unique_targets(f: Forward) -> list[Value]:
    """The targets the loss reads (their graph inputs), each once, in the order the terms name them."""
    seen: dict[str, Value] = {}
    for t in f.bound.terms:
        seen.setdefault(t.source.name, t.source)
    return list(seen.values())


def _out(name: str, values: dict[str, np.ndarray]) -> onnx.ValueInfoProto:
    """Outputs that mirror an input keep its shape; loss and metrics are float scalars."""
    base = name[: -len(".next")] if name.endswith(".next") else name.removeprefix("grad.")
    if base in values:
        return array_info(name, values[base])
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [])
