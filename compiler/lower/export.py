"""The deployable inference model: trained weights, batch norm folded into the preceding
convolution, probabilities for classifiers, metadata."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import helper, numpy_helper


def fold_batch_norm(model: onnx.ModelProto) -> int:
    """Fold every BatchNormalization that alone consumes a Conv's output into that Conv:
    W' = W * s, b' = (b - mean) * s + beta with s = gamma / sqrt(var + eps). Returns how many.
    A Conv whose float32 weight another node also reads keeps its BatchNormalization (the weight
    is rescaled in place), as does every one of a model of IR version 3 (whose initializers must
    also be graph inputs)."""
    g = model.graph
    if model.ir_version < 4:
        return 0
    inits = {t.name: t for t in g.initializer}
    taken = ({t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
             | {o for node in g.node for o in node.output})
    users: dict[str, int] = {}
    for node in g.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for out in g.output:
        users[out.name] = users.get(out.name, 0) + 1
    producer = {o: node for node in g.node for o in node.output}
    folded = []
    for bn in g.node:
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or users.get(bn.input[0], 0) != 1:
            continue
        if not all(n in inits for n in bn.input[1:5]) or conv.input[1] not in inits:
            continue
        if users.get(conv.input[1], 0) != 1 or inits[conv.input[1]].data_type != onnx.TensorProto.FLOAT:
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        scale = gamma / np.sqrt(var + eps)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
             if len(conv.input) > 2 and conv.input[2] else np.zeros_like(mean))
        w_name = conv.input[1]
        b_name = f"{w_name.rsplit('.', 1)[0]}.folded_bias"
        while b_name in taken:  # weights that differ only after their last dot
            b_name += "_"
        taken.add(b_name)
        inits[w_name].CopyFrom(numpy_helper.from_array((w * scale.reshape(-1, *[1] * (w.ndim - 1)))
                                                       .astype(np.float32), w_name))
        new_b = numpy_helper.from_array(((b - mean) * scale + beta).astype(np.float32), b_name)
        g.initializer.append(new_b)
        inits[b_name] = new_b
        if len(conv.input) > 2:
            conv.input[2] = b_name
        else:
            conv.input.append(b_name)
        conv.output[0] = bn.output[0]
        folded.append(bn)
    for bn in folded:
        g.node.remove(bn)
    used = {n for node in g.node for n in node.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return len(folded)


def add_probabilities(model: onnx.ModelProto) -> None:
    """Classifiers also output `probabilities` = softmax(logits) over the classes (a bce_with_logits
    head: sigmoid(logits)); a model with named heads, `probabilities:<head>` for each classifying
    head, as its metadata `heads` says."""
    g = model.graph
    heads = next((json.loads(p.value) for p in model.metadata_props if p.key == "heads"), None)
    if isinstance(heads, dict):
        outputs = {o.name: o for o in g.output}
        for name, kind in heads.items():
            out = "probabilities" if name == "logits" else f"probabilities:{name}"  # the unnamed head
            if name in outputs and kind in ("classify", "binary", "segment") and out not in outputs:
                if kind != "binary":  # softmax over the classes, of each pixel for segment
                    g.node.append(helper.make_node("Softmax", [name], [out], axis=1, name=f"{out}/Softmax"))
                else:
                    g.node.append(helper.make_node("Sigmoid", [name], [out], name=f"{out}/Sigmoid"))
                _output_like(g, outputs[name], out)
        return
    logits = next((o for o in g.output if o.name == "logits"), None)
    if logits is None or any(o.name == "probabilities" for o in g.output):  # none, or exported already
        return
    if len(logits.type.tensor_type.shape.dim) < 2:
        return
    g.node.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1,  # [N, C] or [N, C, H, W]
                                   name="probabilities/Softmax"))
    _output_like(g, logits, "probabilities")


def _output_like(g: onnx.GraphProto, source: onnx.ValueInfoProto, name: str) -> None:
    """A graph output `name` of the type and shape of `source` (softmax and sigmoid keep both),
    copied whole: a dimension known by neither size nor name stays unknown."""
    out = g.output.add()
    out.type.CopyFrom(source.type)
    out.name = name


def export(model: onnx.ModelProto, props: dict[str, str]) -> tuple[onnx.ModelProto, int]:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    folded = fold_batch_norm(out)
    add_probabilities(out)
    existing = {p.key: p.value for p in out.metadata_props}
    helper.set_model_props(out, {**existing, **props, "batch_norm_folded": str(folded)})
    onnx.checker.check_model(out, full_check=True)
    return out, folded
