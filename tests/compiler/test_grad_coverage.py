"""Ops without a gradient rule are found before training: the nodes between the parameters and
the output, named, and only those."""

from __future__ import annotations

import onnx
from onnx import helper

from dlspec.compiler.grad.coverage import describe, without_rules


def _nodes() -> list[onnx.NodeProto]:
    return [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
            helper.make_node("DeformConv", ["a"], ["d"], name="det", doc_string="m.dlspec:3:5 backbone.det1"),
            helper.make_node("Shape", ["x"], ["s"], name="shape"),
            helper.make_node("Unique", ["s"], ["u"], name="unique"),  # no rule, but reaches no parameter
            helper.make_node("Inverse", ["a"], ["i"], name="inv", domain="com.microsoft"),
            helper.make_node("Add", ["d", "u"], ["y"], name="add")]


def test_only_the_nodes_between_parameters_and_output_without_rules_are_named() -> None:
    missing = without_rules(_nodes(), ["w"], "y")
    assert [n.name for n in missing] == ["det"]  # inv does not reach y; unique reaches no parameter
    assert describe(missing[0]) == "DeformConv (node det, from backbone.det1)"
    assert [n.name for n in without_rules(_nodes()[:5], ["w"], "i")] == ["inv"]
    assert describe(without_rules(_nodes()[:5], ["w"], "i")[0]) == "com.microsoft.Inverse (node inv)"
