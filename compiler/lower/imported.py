"""An ONNX graph from elsewhere as a layer: `onnx("resnet18.onnx", output="flatten_out")`.

The graph is cut to the nodes `output` needs and copied in under fresh names. Its float weights
become dlspec parameters named after the layer and their ONNX names, initialised from the file;
inference-mode BatchNormalization trains with batch statistics (and updates its running ones) and
Dropout follows the train mode, as dlspec's own layers do.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import onnx
from onnx import helper

from dlspec.compiler.graph import Value, show
from dlspec.compiler.graph.fold import fold_constants
from dlspec.compiler.graph.infer import Type, constants, value_types
from dlspec.compiler.graph.newer_ops import rewrite_newer_ops
from dlspec.compiler.graph.opsets import to_opset
from dlspec.compiler.lower.imported_groups import group_records
from dlspec.compiler.lower.layers import Layer, batch_norm_train, layer
from dlspec.compiler.lower.random import stream_seed, uniform_like
from dlspec.spec.errors import CompileError

if TYPE_CHECKING:
    from dlspec.compiler.lower.context import LayerCtx

MAX_FILE_BYTES = 2**31  # what protobuf reads
# the inputs of these ops that hold weights: a float Constant there is a parameter, as an
# initializer would be (some exporters write weights as Constant nodes)
WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
                 "BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2),
                 "LayerNormalization": (1, 2), "GroupNormalization": (1, 2), "PRelu": (1,)}
CONTROL_FLOW = ("If", "Loop", "Scan")
FLOATS = ("float32", "float64", "float16")


@layer("onnx")
class OnnxGraph(Layer):
    """`onnx("path/model.onnx", output="name")`: the graph of an ONNX file (a path relative to the
    spec), cut at the value `output` (default: the graph's only output), as a layer; its weights
    are parameters initialised from the file."""

    positional: ClassVar[tuple[str, ...]] = ("path",)
    maps: ClassVar[bool] = False
    names_scope: ClassVar[bool] = True
    path: str
    output: str | None = None

    def build_many(self, ctx: LayerCtx, xs: list[Value]) -> list[Value]:
        model = fold_constants(to_opset_at(read_model(self._file(ctx), ctx), ctx))
        out = self._output(ctx, model)
        nodes = needed(model.graph.node, [out])
        data = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
        if len(xs) != len(data):
            raise ctx.error(f"{self.path} takes {len(data)} input(s) ({', '.join(i.name for i in data)}); "
                            f"the chain gives {len(xs)} ({', '.join(show(x.dims) for x in xs)})")
        types = _types(model, data, xs, ctx)
        copy = _Copy(ctx, constants(model), types, {i.name: x for i, x in zip(data, xs)})
        copy.params(nodes, {t.name for t in model.graph.initializer})
        for node in nodes:
            copy.node(node)
        if out not in copy.values:
            raise ctx.error(f"'{out}' of {self.path} is a constant, not computed from the graph's input")
        y = copy.values[out]
        kind = types[out] if out in types else None
        if kind is None or kind.shape is None:
            raise ctx.error(f"ONNX shape inference cannot tell the shape of '{out}' in {self.path}")
        if kind.dtype not in FLOATS:
            raise ctx.error(f"'{out}' of {self.path} is {kind.dtype}: the layers after it take float tensors")
        group_records(ctx, nodes, copy.param_of, types)
        dims = self._output_dims(ctx, out, kind.shape, dynamic=any(d is None for x in xs for d in x.dims[1:]))
        return [y.with_shape(dims) if kind.dtype == "float32" else y.cast("float32").with_shape(dims)]

    def _output_dims(self, ctx: LayerCtx, out: str, shape: tuple, dynamic: bool) -> tuple[int | None, ...]:
        """The output's dims for the layers after it: the batch first (a size left symbolic), every
        other size known and >= 1 (unknown sizes only where the chain's had some)."""
        shown = "[" + ", ".join(str(d if d is not None else "?") for d in shape) + "]"
        if not shape or isinstance(shape[0], int):  # the batch's symbol, or one the graph declares
            raise ctx.error(f"'{out}' of {self.path} is {shown}: the layers after it need the batch as its "
                            "first axis, as the graph's input has it")
        for d in shape[1:]:
            if isinstance(d, int) and d < 1:
                raise ctx.error(f"'{out}' of {self.path} is {shown}: a size of {d} leaves nothing to compute")
            if not isinstance(d, int) and not dynamic:
                raise ctx.error(f"'{out}' of {self.path} is {shown}: ONNX shape inference cannot tell its "
                                "sizes after the batch, which the layers after it need")
        return tuple(d if isinstance(d, int) else None for d in shape)

    def _file(self, ctx: LayerCtx) -> Path:
        base = Path(ctx.span.file).parent if ctx.span is not None else Path.cwd()
        return base / self.path

    def _output(self, ctx: LayerCtx, model: onnx.ModelProto) -> str:
        values = {o for n in model.graph.node for o in n.output} | {o.name for o in model.graph.output}
        if self.output is None:
            if len(model.graph.output) != 1:
                raise ctx.error(f"{self.path} has {len(model.graph.output)} outputs "
                                f"({', '.join(o.name for o in model.graph.output)}): name one with output=")
            return model.graph.output[0].name
        if self.output not in values:
            close = sorted(values, key=lambda v: (not v.startswith(self.output or ""), v))[:5]
            raise ctx.error(f"{self.path} has no value named '{self.output}' (some it has: "
                            f"{', '.join(close)})")
        return self.output


def read_model(path: Path, ctx: LayerCtx) -> onnx.ModelProto:
    """An ONNX file: a regular file of at most MAX_FILE_BYTES that protobuf parses as a model."""
    try:
        if not path.is_file():
            raise ctx.error(f"no ONNX file {path}" if not path.exists() else f"{path} is not a regular file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ctx.error(f"{path} is larger than the {MAX_FILE_BYTES >> 30} GiB an ONNX file can hold")
        data = path.read_bytes()
    except OSError as err:
        raise ctx.error(f"cannot read {path}: {err.strerror or err}") from None
    try:
        model = onnx.load_from_string(data)
    except Exception:  # protobuf's DecodeError and kin
        raise ctx.error(f"{path} is not an ONNX model (protobuf cannot parse it)") from None
    if not model.HasField("graph") or not model.opset_import:
        raise ctx.error(f"{path} is not an ONNX model (no graph or no opset)")
    return model


def to_opset_at(model: onnx.ModelProto, ctx: LayerCtx) -> onnx.ModelProto:
    """`model` at OPSET, its newer ops (Swish, RMSNormalization, ...) as the ops they compute."""
    try:
        return rewrite_newer_ops(to_opset(model))
    except CompileError as err:
        raise ctx.error(err.message) from None


def needed(nodes: Iterable[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes that `outputs` depend on, in their order."""
    wanted, kept = set(outputs), []
    for node in reversed(list(nodes)):
        if any(o in wanted for o in node.output):
            kept.append(node)
            wanted.update(node.input)
    return kept[::-1]


def _types(model: onnx.ModelProto, data: list[onnx.ValueInfoProto], xs: list[Value],
           ctx: LayerCtx) -> dict[str, Type]:
    """Every value's type with the graph's inputs shaped as the chain's tensors (the batch
    symbolic): what shape inference tells, and a located error where the two disagree."""
    typed = onnx.ModelProto()
    typed.CopyFrom(model)
    for vi, x in zip(typed.graph.input, xs):
        want = [d.dim_value or d.dim_param or None for d in vi.type.tensor_type.shape.dim]
        have = ["N" if d is None else d for d in x.dims]
        if vi.type.tensor_type.HasField("shape") and (len(want) != len(have) or any(
                isinstance(w, int) and w != h for w, h in zip(want, have))):
            shown = "[" + ", ".join(str(d or "?") for d in want) + "]"
            raise ctx.error(f"input '{vi.name}' of the ONNX graph is {shown}; the chain gives {show(x.dims)}")
        del vi.type.tensor_type.shape.dim[:]
        for d in have:
            dim = vi.type.tensor_type.shape.dim.add()
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = str(d)
    del typed.graph.value_info[:]
    try:
        return value_types(typed)
    except CompileError as err:
        raise ctx.error(f"the ONNX graph does not take the chain's tensors: {err.message}") from None


def sanitized(name: str) -> str:
    """An ONNX value name as part of a parameter path: letters, digits, '_' and single dots."""
    out = re.sub(r"[^A-Za-z0-9_.]", "_", name)
    out = re.sub(r"\.{2,}", ".", out).strip("._")
    return out or "value"


@dataclass
class _Copy:
    """The imported nodes being copied into the layer's graph under fresh names."""

    ctx: LayerCtx
    consts: dict[str, np.ndarray]
    types: dict[str, Type]
    values: dict[str, Value]  # ONNX name -> its value in dlspec's graph
    param_of: dict[str, str] = field(default_factory=dict)  # ONNX name -> parameter name
    _dropout_count: int = 0

    def params(self, nodes: list[onnx.NodeProto], initializers: set[str]) -> None:
        """Which float constants are parameters: those on weight inputs (initializers or Constant
        nodes), and initializers of more than one value elsewhere (a positional embedding, a
        learned scale), but not the constants PyTorch's exporter names onnx::*. Scalars
        elsewhere (a dropout ratio, a clip bound) stay constants; batch norm's running
        statistics are state."""
        for n in nodes:  # exporters share equal initial values through Identity: each is its own
            if n.op_type == "Identity" and n.input[0] in initializers and n.input[0] in self.consts:
                self.consts[n.output[0]] = self.consts[n.input[0]]
                initializers = initializers | {n.output[0]}
        weights = {n.input[i] for n in nodes for i in WEIGHT_INPUTS.get(n.op_type, ())
                   if i < len(n.input) and n.input[i]}
        stats = {n.input[i] for n in nodes if n.op_type == "BatchNormalization" for i in (3, 4)}
        used = {i for n in nodes for i in n.input if i}
        taken: set[str] = set()
        for name in sorted(used & set(self.consts)):
            value = self.consts[name]
            learned = name in initializers and value.size > 1 and not name.startswith("onnx::")
            if value.dtype.name not in FLOATS or (name not in weights and not learned):
                continue
            suffix = sanitized(name)
            while suffix in taken:
                suffix += "_"
            taken.add(suffix)
            self.values[name] = self.ctx.imported(suffix, value.astype(np.float32), state=name in stats)
            self.param_of[name] = self.values[name].name

    def value(self, name: str) -> Value | None:
        if not name:
            return None
        if name not in self.values:  # a constant that stays one (ints, a Constant the walk met late)
            if name not in self.consts:
                raise self.ctx.error(f"the ONNX graph reads '{name}' before any node computes it (its nodes "
                                     "are out of order, or form a cycle)")
            self.values[name] = self.ctx.g.const(self.consts[name], self.consts[name].dtype.name)
        return self.values[name]

    def node(self, node: onnx.NodeProto) -> None:
        if node.domain not in ("", "ai.onnx"):
            raise self.ctx.error(f"node {node.name or node.output[0]} of the ONNX graph is "
                                 f"{node.domain}.{node.op_type}, outside the standard ONNX domain")
        if node.op_type in CONTROL_FLOW:
            article = "an" if node.op_type == "If" else "a"
            raise self.ctx.error(f"node {node.name or node.output[0]} of the ONNX graph is {article} "
                                 f"{node.op_type}: control flow cannot be imported")
        if node.op_type in ("Constant", "Identity") and node.output[0] in self.consts:
            self.value(node.output[0])  # a parameter already, or a constant of dlspec's graph
            return
        ins = [self.value(i) for i in node.input]
        if node.op_type == "BatchNormalization":  # batch statistics follow dlspec's train mode
            self.values[node.output[0]] = self._batch_norm(node, ins) if self.ctx.training else \
                self._copy(node, ins, output_only=True, training_mode=None)
        elif node.op_type == "Dropout":
            assert ins[0] is not None
            self.values[node.output[0]] = self._dropout(node, ins[0])
        else:
            self._copy(node, ins)

    def _copy(self, node: onnx.NodeProto, ins: list[Value | None], output_only: bool = False,
              **changed: Any) -> Value:
        """The node under fresh names (`output_only`: its first output alone), with attributes
        `changed` (None drops one); returns its first output."""
        g = self.ctx.g
        hint = f"{self.ctx.path}/{sanitized(node.name or node.op_type)}"
        names = node.output[:1] if output_only else node.output
        outs = [g.fresh(f"{self.ctx.path}:{sanitized(o)}") if o else "" for o in names]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        g.node(node.op_type, ins, outputs=outs, name=g.fresh(hint), **{**attrs, **changed})
        for onnx_name, out in zip(names, outs):
            if onnx_name:
                t = self.types.get(onnx_name)
                self.values[onnx_name] = g.value(out, t.dtype if t else None, t.shape if t else None)
        return self.values[names[0]]

    def _batch_norm(self, node: onnx.NodeProto, ins: list[Value | None]) -> Value:
        """Batch statistics while training, as dlspec's `bn`; the running ones blend toward them
        with ONNX's momentum (running = momentum running + (1 - momentum) batch)."""
        x, scale, bias, mean, var = ins[:5]
        if x is None or scale is None or bias is None or mean is None or var is None:
            raise self.ctx.error(f"batch norm {node.name} lacks an input")
        if x.shape is None or x.rank < 2:
            raise self.ctx.error(f"batch norm {node.name} needs the rank of its input")
        stats = batch_norm_train(x, scale, bias, _attr(node, "epsilon", 1e-5))
        keep = _attr(node, "momentum", 0.9)
        comp = self.ctx.comp
        if mean.name in comp.state_updates or var.name in comp.state_updates:
            raise self.ctx.error(f"batch norm {node.name} shares its running statistics with another one")
        comp.state_updates[mean.name] = mean * keep + stats.mean * (1.0 - keep)
        comp.state_updates[var.name] = var * keep + stats.unbiased_var() * (1.0 - keep)
        return stats.y

    def _dropout(self, node: onnx.NodeProto, x: Value) -> Value:
        """Inverted dropout with the node's ratio while training, the identity otherwise."""
        ratio_in = node.input[1] if len(node.input) > 1 and node.input[1] else ""
        if ratio_in and ratio_in not in self.consts:
            raise self.ctx.error(f"dropout {node.name}: its ratio is computed in the graph; dlspec needs a "
                                 "constant")
        p = float(self.consts[ratio_in]) if ratio_in else 0.5
        if not self.ctx.training or p == 0:
            return x
        self._dropout_count += 1
        u = uniform_like(x, self.ctx.comp.step, stream_seed(self.ctx.comp.policy.seed,
                                                             f"{self.ctx.path}.dropout{self._dropout_count}"))
        return x * ((u >= p).cast("float32") * (1.0 / (1.0 - p)))


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default

