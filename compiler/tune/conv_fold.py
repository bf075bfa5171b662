"""Convs with more filters than output positions, rewritten for a CPU step on many threads.

onnxruntime's CPU Conv threads over the images of a batch, unless a group has more filters than
the output has positions (a 3x3 conv with 64 filters on 4x4 maps) and the conv is more than a
1x1 at stride 1 without padding: then it runs one small matrix product per image and threads
inside each, and more threads make it slower. The rewrite folds the batch into a depth axis,
[N, C, H, W] -> [1, C, N, H, W], and runs one 3-D Conv with the kernel [O, C/g, 1, kh, kw]: a
single image whose N H W output positions the threads share. The two Transposes it adds
(channels to the front and back) are threaded too.
"""

from __future__ import annotations

import onnx
from onnx import helper

from dlspec.compiler.graph import Graph
from dlspec.compiler.graph import ops as op
from dlspec.compiler.graph.infer import Type, value_types
from dlspec.compiler.target import Target
from dlspec.compiler.train.step import finish
from dlspec.compiler.tune.when import many_threads

Types = dict[str, Type]


@finish.variant(many_threads)
def fold_crowded_convs(target: Target, model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every 2-D Conv whose filters per group outnumber its output positions (where
    shape inference knows both) computed over the batch folded into depth: the same function."""
    types = value_types(model, data_prop=True)  # the gradient graph reshapes to Shape(x)
    g = Graph({v for n in model.graph.node for v in [*n.input, *n.output, n.name]}
              | {v.name for v in [*model.graph.input, *model.graph.initializer]})
    for node in model.graph.node:
        if _crowded(node, types):
            _fold(g, node)
        else:
            g.nodes.append(node)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(g.nodes)
    return out


def _crowded(node: onnx.NodeProto, types: Types) -> bool:
    if node.op_type != "Conv":
        return False
    x, w, y = (types[v].shape if v in types else None for v in (*node.input[:2], node.output[0]))
    if x is None or w is None or y is None or len(x) != 4 or len(y) != 4:
        return False
    sizes = [v for v in (w[0], *w[2:], *y[2:]) if isinstance(v, int)]
    if len(sizes) != 5:
        return False
    filters, kernel, positions = sizes[0], sizes[1:3], sizes[3] * sizes[4]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    # a 1x1 at stride 1 (any auto_pad pads it by 0): a product per image, threaded over the images
    pointwise = (kernel == [1, 1] and all(v == 1 for v in attrs.get("strides", [1, 1]))
                 and not any(attrs.get("pads", [0])))
    return not pointwise and filters // int(attrs.get("group", 1)) > positions


def _fold(g: Graph, node: onnx.NodeProto) -> None:
    """Append to `g` the folded form of the Conv `node`: the same output name, and the same node
    name for the Conv (its input is named <output>.x5)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    for key in ("kernel_shape", "strides", "dilations"):
        attrs[key] = [1, *attrs.get(key, [] if key == "kernel_shape" else [1, 1])]
    if attrs["kernel_shape"] == [1]:
        del attrs["kernel_shape"]  # not given: taken from the weights
    if "pads" in attrs:
        p = attrs["pads"]
        attrs["pads"] = [0, p[0], p[1], 0, p[2], p[3]]
    out = node.output[0]
    with g.at(out, node.doc_string):
        x, w = g.value(node.input[0]), g.value(node.input[1])
        xt = op.Transpose(x, [1, 0, 2, 3])  # [C, N, H, W]
        w5 = op.Unsqueeze(w, [2])  # [O, C/g, 1, kh, kw]
        x5 = g.node("Unsqueeze", [xt, g.ints([0])], outputs=[g.fresh(f"{out}.x5")],
                    name=g.fresh(f"{out}/fold"))[0]  # [1, C, N, H, W]
        y5 = g.node("Conv", [x5, w5.name, *node.input[2:]], outputs=[g.fresh(f"{out}.y5")], name=node.name,
                    **attrs)[0]  # [1, O, N, H', W']
        y4 = op.Squeeze(g.value(y5), [0])  # [O, N, H', W']
        g.node("Transpose", [y4], outputs=[out], name=g.fresh(f"{out}/unfold"), perm=[1, 0, 2, 3])
