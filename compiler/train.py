"""The training graphs of a spec: forward (training mode) -> loss -> backward -> optimizer step.

Parameters are graph inputs, never initializers: onnxruntime's constant sharing would alias
identical initial values (all-zero biases) and corrupt training. Every output that the next
step reads back is named after its input plus `.next`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

import dlspec.compiler.gradients  # noqa: F401  (registers every gradient rule)
from dlspec.compiler.autodiff import RuleCtx, backward, constants, static_shapes
from dlspec.compiler.compile import (
    Compiled,
    Forward,
    Stats,
    build_forward,
    compile_model,
    loss_targets,
    model_proto,
    value_info,
)
from dlspec.compiler.conv_fold import fold_crowded_convs
from dlspec.compiler.losses import metrics, total_loss
from dlspec.compiler.optim import Slot, state_names, step_graph
from dlspec.compiler.tensor import Tensor
from dlspec.compiler.threads import many_threads
from dlspec.spec import model as m
from dlspec.spec.errors import CompileError, SpecError, did_you_mean
from dlspec.spec.loader import Program

DEFAULT_OPTIMIZER = m.Adam.model_validate({"kind": "adam"})


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


def compile_training(prog: Program, name: str | None = None, seed: int | None = None,
                     moments: Stats | None = None, device: str = "cpu",
                     threads: int | None = None) -> TrainingGraphs:
    """`moments`: the fitted statistics of standardized features, as `stats` of compile_model.
    `device`: where the step will run, "cpu" or "cuda"; a few lowerings differ (conv weight
    gradients, the optimizer's small-parameter pack, which would block a CUDA graph).
    `threads`: onnxruntime's intra-op threads on the CPU, where known; at many, batch norm's
    affine maps and conv weight gradients take ops that onnxruntime threads (compiler/threads.py),
    and convs with more filters than output positions fold the batch into depth
    (compiler/conv_fold.py). Every choice computes the same function."""
    inference = compile_model(prog, name, seed, moments)
    model = inference.model
    train = prog.train(model.name) or m.Train()
    if model.loss is None:
        raise SpecError(f"model '{model.name}' has no loss: training needs `loss ...`", model.name_span)
    names = [p.name for p in inference.params]
    _check_targets(train, names)
    wide = many_threads(device, threads)
    f = build_forward(prog, name, seed, training=True, frozen=train.freeze, stats=moments, many_threads=wide)
    g = f.comp.g
    g.where = f"{model.loss.span} loss"
    loss = total_loss(g, f.output, loss_targets(model))
    mets = metrics(g, f.output, loss_targets(model))
    weights = [p.name for p in f.comp.params if not p.state]
    mults = {p: _lr_mult(train, p) for p in weights}
    trainable = [p for p in weights if not _frozen(train, p) and mults[p] > 0]
    frozen = [p for p in weights if p not in trainable]
    stats = [p.name for p in f.comp.params if p.state]
    batch = [value_info(t) for t in f.inputs] + [value_info(t) for _, t in _unique_targets(model)]
    scalars = [helper.make_tensor_value_info("lr", TensorProto.FLOAT, []),
               helper.make_tensor_value_info("step", TensorProto.INT64, [])]
    values = {**g.initializers, **dict(_zeros_for(f, train))}
    param_inputs = [_vi(n, values[n]) for n in weights + stats]

    fwd = model_proto(model.name, g.nodes, batch + scalars + param_inputs, [_vi(loss, np.float32(0))], {},
                      f.spec_hash)
    ctx = RuleCtx(g, static_shapes(fwd), constants(fwd), f.comp.composites, device, wide)
    grads = backward(ctx, list(g.nodes), loss, trainable, g.const(1.0, hint="grad.seed"))
    missing = [p for p in trainable if p not in grads]
    if missing:
        raise CompileError(f"the loss does not depend on {', '.join(missing[:3])}"
                           f"{' ...' if len(missing) > 3 else ''}; freeze them or remove the layers")
    bn_next = f.comp.state_updates

    # gradients.onnx: batch + params + BN state -> loss, grad.<p>, next BN state
    grad_nodes = list(g.nodes)
    outs = [_named(grad_nodes, loss, "loss"), *(_named(grad_nodes, grads[p], f"grad.{p}") for p in trainable),
            *(_named(grad_nodes, v, f"{s}.next") for s, v in bn_next.items())]
    grads_model = model_proto(model.name, grad_nodes, batch + [scalars[1]] + param_inputs,
                            [_out(n, values, o) for n, o in outs], {}, f.spec_hash)

    # train_step.onnx: + lr, step, optimizer state -> loss, metrics, next params and state
    spec = train.optimizer or DEFAULT_OPTIMIZER
    slots = [Slot(p, grads[p], tuple(values[p].shape), mults[p]) for p in trainable]
    nexts = step_graph(g, spec, train.clip, slots, "lr", "step", pack=device != "cuda")
    opt_state = [s for p in trainable for s in state_names(spec, p)]
    step_nodes = list(g.nodes)
    outputs = [_named(step_nodes, loss, "loss"), *(_named(step_nodes, v, k) for k, v in mets.items())]
    outputs += [_named(step_nodes, v, f"{k}.next") for k, v in {**nexts, **bn_next}.items()]
    state_inputs = [_vi(s, values[s]) for s in opt_state]
    train_step = model_proto(model.name, step_nodes, batch + scalars + param_inputs + state_inputs,
                             [_out(n, values, o) for n, o in outputs], {}, f.spec_hash)
    init = {n: values[n] for n in weights + stats + opt_state}
    if wide:
        train_step, grads_model = fold_crowded_convs(train_step), fold_crowded_convs(grads_model)
    return TrainingGraphs(inference, train_step, grads_model, init, trainable, frozen, list(mets),
                          _evaluate_model(prog, name, seed, moments))


def _evaluate_model(prog: Program, name: str | None, seed: int | None,
                    moments: Stats | None) -> onnx.ModelProto:
    """The inference graph plus the loss, parameters as inputs: validation loss and metrics with
    the current weights, in eval mode (running statistics, no dropout, no augmentation)."""
    f = build_forward(prog, name, seed, stats=moments)
    g, model = f.comp.g, f.model
    assert model.loss is not None
    g.where = f"{model.loss.span} loss"
    loss = total_loss(g, f.output, loss_targets(model))
    inputs = [value_info(t) for t in f.inputs] + [value_info(t) for _, t in _unique_targets(model)]
    proto = model_proto(model.name, g.nodes, inputs, [value_info(f.output), _vi(loss, np.float32(0))],
                        g.initializers, f.spec_hash)
    return params_as_inputs(proto)


def params_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with its initializers turned into inputs, to run with the current weights."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for t in g.initializer:
        g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    del g.initializer[:]
    return out


def _unique_targets(model: m.Model) -> list[tuple[str, Tensor]]:
    seen: dict[str, Tensor] = {}
    for _, t in loss_targets(model):
        seen.setdefault(t.name, t)
    return list(seen.items())


def _zeros_for(f: Forward, train: m.Train) -> list[tuple[str, np.ndarray]]:
    spec = train.optimizer or DEFAULT_OPTIMIZER
    return [(s, np.zeros_like(v)) for p, v in f.comp.g.initializers.items()
            for s in state_names(spec, p)]


def _vi(name: str, value: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype),
                                         list(np.shape(value)))


def _out(name: str, values: dict[str, np.ndarray], source: str) -> onnx.ValueInfoProto:
    """Outputs that mirror an input keep its shape; loss and metrics are float scalars."""
    base = name[: -len(".next")] if name.endswith(".next") else name.removeprefix("grad.")
    if base in values:
        return _vi(name, values[base])
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [])


def _named(nodes: list[onnx.NodeProto], value: str, name: str) -> tuple[str, str]:
    """Expose `value` as graph output `name` with an Identity (a value may feed several outputs)."""
    nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}/Identity"))
    return name, value


def _matches(path: str, target: str) -> bool:
    return path == target or path.startswith(target + ".")


def _frozen(train: m.Train, param: str) -> bool:
    return any(_matches(param, f) for f in train.freeze)


def _lr_mult(train: m.Train, param: str) -> float:
    """The most specific (longest) matching lr_mult rule wins."""
    best: tuple[int, float] = (-1, 1.0)
    for rule in train.lr_mult:
        if _matches(param, rule.target) and len(rule.target) > best[0]:
            best = (len(rule.target), rule.value)
    return best[1]


def _check_targets(train: m.Train, params: list[str]) -> None:
    """A freeze or lr_mult target that matches no parameter is a typo: say so."""
    prefixes = sorted({p.rsplit(".", i)[0] for p in params for i in range(1, p.count(".") + 1)})
    for target in train.freeze:
        if not any(_matches(p, target) for p in params):
            raise SpecError(f"freeze target '{target}' matches no parameter{did_you_mean(target, prefixes)}",
                            train.arg_spans.get("freeze"))
    for rule in train.lr_mult:
        if not any(_matches(p, rule.target) for p in params):
            raise SpecError(f"lr_mult target '{rule.target}' matches no parameter"
                            f"{did_you_mean(rule.target, prefixes)}",
                            rule.span or train.arg_spans.get("lr_mult"))


def with_weights(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The inference graph with its initializers replaced by trained values (same names)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for i, t in enumerate(out.graph.initializer):
        if t.name in weights:
            value = np.ascontiguousarray(weights[t.name], dtype=np.float32)
            out.graph.initializer[i].raw_data = value.tobytes()
    return out
