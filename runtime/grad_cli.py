"""`dlspec grad MODEL.onnx --loss NAME -o GRAD.onnx`: the gradients graph of any ONNX model.

The written model takes the original inputs plus the differentiated initializers, and returns
the loss and `grad.<name>` for every name differentiated (default: every float initializer).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlspec.spec.errors import CompileError

if TYPE_CHECKING:  # onnx and the API load when the command runs: `dlspec grad --help` needs neither
    from rich.console import Console


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `grad` on an argparse subparsers object (the result of add_subparsers)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "grad", help="write the gradients graph of an ONNX model: the loss and grad.<name> outputs")
    p.add_argument("model_file", help="the .onnx model")
    p.add_argument("--loss", required=True,
                   help="the scalar value to differentiate: a graph output or any value inside the graph")
    p.add_argument("-o", "--output", help="where to write the gradients model (default MODEL.grad.onnx)")
    p.add_argument("--wrt", action="append", metavar="NAME",
                   help="an input or initializer to differentiate with respect to (repeatable; "
                        "default: every float initializer)")
    return p


def run(args: argparse.Namespace, out: Console) -> int:
    import numpy as np
    import onnx

    from dlspec.api import grad
    from dlspec.files import atomic_write, load_model

    model = load_model(args.model_file)
    grads = grad(model, args.loss, args.wrt)
    try:
        onnx.checker.check_model(grads)
    except onnx.checker.ValidationError as err:  # a bug in a gradient rule, not in the user's model
        raise CompileError(f"the gradients graph fails onnx's checker: {str(err).splitlines()[0]}") from None
    dest = Path(args.output or f"{Path(args.model_file).name.removesuffix('.onnx')}.grad.onnx")
    atomic_write(dest, grads.SerializeToString())
    wrt = [o.name.removeprefix("grad.") for o in grads.graph.output[1:]]
    inits = {t.name: t for t in model.graph.initializer}
    values = sum(int(np.prod(inits[n].dims)) for n in wrt if n in inits)
    added = len(grads.graph.node) - len(model.graph.node)
    out.print(f"wrote {dest}: gradients of '{args.loss}' for {len(wrt)} parameter tensors "
              f"({values:,} values), {added} nodes added to the model's {len(model.graph.node)}",
              markup=False)
    return 0
