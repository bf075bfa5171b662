"""Dynamic loss scaling for float16 training, in the step graph (as torch.amp.GradScaler).

The backward pass starts from the loss scale instead of 1, so small gradients survive float16;
the gradients are divided by it again before clipping and the optimizer. A step whose gradients
hold an inf or a NaN changes no parameter or optimizer state, is not counted as an optimizer step
(Adam's bias correction), and halves the scale; `growth_interval` good steps in a row double it.
The scale and both counters are carried states, checkpointed with the weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlspec.compiler.graph import Graph, Value
from dlspec.compiler.graph import ops as op
from dlspec.spec import model as m

SCALE = "loss_scale"
GOOD = "loss_scale.good"  # good steps since the scale last changed
SKIPPED = "loss_scale.skipped"  # steps skipped so far: the optimizer's step count is step - skipped
STATES = (SCALE, GOOD, SKIPPED)
SCOPE = "loss_scale"  # node names: the mixed-precision pass keeps these in float32


def initial(spec: m.Fp16) -> dict[str, np.ndarray]:
    return {SCALE: np.array(spec.loss_scale, np.float32), GOOD: np.zeros((), np.float32),
            SKIPPED: np.zeros((), np.float32)}


def unscale(grads: dict[str, Value]) -> dict[str, Value]:
    """`grads`, computed from the loss times the `loss_scale` input, divided by it (in float32)."""
    g = next(iter(grads.values())).graph
    with g.at(SCOPE):
        # exact where the scale is a power of two (the default start, and every halving or doubling)
        inv = op.Reciprocal(g.value(SCALE, "float32", ()))
        return {p: v.cast("float32") * inv for p, v in grads.items()}


@dataclass
class Scaled:
    """What the step graph reads of the loss scale."""

    finite: Value  # bool: every gradient is finite
    step: Value  # int64: the optimizer's step count, 1 at its first update
    nexts: dict[str, Value]  # each state's next value, named without `.next`


def states(g: Graph, spec: m.Fp16, grads: dict[str, Value], step: Value) -> Scaled:
    """Whether the (unscaled) `grads` are all finite, and the loss scale's next states."""
    with g.at(SCOPE):
        # inf * 0 and nan * 0 are nan, any finite x * 0 is 0: one sum is 0 where all are finite
        poison = [op.ReduceSum(v * 0.0, keepdims=0) for v in grads.values()]
        total = poison[0] if len(poison) == 1 else op.Sum(poison)
        finite = op.Equal(total, 0.0)
        scale = g.value(SCALE, "float32", ())
        good, skipped = g.value(GOOD, "float32", ()), g.value(SKIPPED, "float32", ())
        counted = good + 1.0
        grow = op.GreaterOrEqual(counted, float(spec.growth_interval))
        nexts = {
            SCALE: op.Where(finite, op.Where(grow, scale * 2.0, scale), scale * 0.5),
            GOOD: op.Where(finite, op.Where(grow, good.scalar(0.0), counted), good.scalar(0.0)),
            SKIPPED: op.Where(finite, skipped, skipped + 1.0),
        }
        return Scaled(finite, step - skipped.cast("int64"), nexts)


def keep_if(finite: Value, nexts: dict[str, Value], shapes: dict[str, tuple[int, ...]]) -> dict[str, Value]:
    """Each next value where the gradients are finite, else the current one."""
    g = finite.graph
    with g.at(SCOPE):
        return {k: op.Where(finite, v, g.value(k, "float32", shapes[k])) for k, v in nexts.items()}


def zero_unless(finite: Value, norms: dict[str, Value]) -> dict[str, Value]:
    """Gradient norms as 0 on a skipped step: its inf would read as gradients exploding."""
    with finite.graph.at(SCOPE):
        return {k: op.Where(finite, v, v.scalar(0.0)) for k, v in norms.items()}
