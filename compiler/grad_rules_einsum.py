"""The Einsum gradient: the gradient of one operand is an einsum of the other operands and the
output gradient, written back to that operand's subscripts (`ij,jk->ik` gives `jk,ik->ij` for
the first operand). Letters only that operand has are broadcast back, repeated letters (a
diagonal) are put back on the diagonal, and broadcast `...` dims are summed."""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
import onnx

from dlspec.compiler.autodiff import RuleCtx, rule
from dlspec.compiler.grad_rules import G, _need, attr, rank_of, static_shape
from dlspec.spec.errors import CompileError

ELLIPSIS = "..."


def parse(equation: str) -> tuple[list[str], str]:
    """The input terms and the output term; implicit mode names the letters used once, sorted."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    if not arrow:
        letters = [c for c in lhs if c.isalpha()]
        rhs = (ELLIPSIS if ELLIPSIS in lhs else "") + "".join(sorted(c for c in set(letters)
                                                                     if letters.count(c) == 1))
    return lhs.split(","), rhs


def tokens(term: str) -> list[str]:
    """Subscripts one dim-group each: single letters and the ellipsis."""
    head, ell, tail = term.partition(ELLIPSIS)
    return list(head) + ([ELLIPSIS] if ell else []) + list(tail)


@rule("Einsum")
def _einsum(ctx: RuleCtx, n: onnx.NodeProto, gy: list[G]) -> Sequence[G]:
    eq = attr(n, "equation")
    terms, rhs = parse(eq.decode() if isinstance(eq, bytes) else str(eq))
    return [_operand_grad(ctx, n, terms, rhs, _need(gy[0]), i) for i in range(len(terms))]


def _operand_grad(ctx: RuleCtx, n: onnx.NodeProto, terms: list[str], rhs: str, g: str, i: int) -> str:
    x, op = n.input[i], ctx.g.op1
    toks = tokens(terms[i])
    fresh = iter(c for c in string.ascii_letters if c not in "".join(terms) + rhs)
    diagonal: list[tuple[str, str]] = []  # (fresh letter, repeated letter) for each repeat
    for k, t in enumerate(toks):
        if t != ELLIPSIS and t in toks[:k]:
            toks[k] = next(fresh)
            diagonal.append((toks[k], t))
    elsewhere = set("".join(t for j, t in enumerate(terms) if j != i) + rhs)
    lonely = [t for t in toks if t != ELLIPSIS and t not in elsewhere]  # summed inside this operand alone
    ell_out = ELLIPSIS in rhs
    if ELLIPSIS in toks and not ell_out:
        raise CompileError(f"the Einsum gradient needs '...' in the output of '{','.join(terms)}->{rhs}'")
    kept = [t for t in toks if t not in lonely]
    if ell_out and ELLIPSIS not in kept:
        kept.insert(0, ELLIPSIS)  # this operand has no batch dims: sum the output's away
    target = "".join(kept)

    # R = einsum(other operands, g -> this operand's kept subscripts)
    ins = [(t, n.input[j]) for j, t in enumerate(terms) if j != i]
    if rhs:
        ins.append((rhs, g))
    if len(ins) == 1 and ins[0][0] == target:
        r = ins[0][1]
    elif ins:
        eq = ",".join(t for t, _ in ins) + "->" + target
        r = op("Einsum", [name for _, name in ins], "grad", equation=eq)
    else:
        r = g
    if ins and not rhs:
        r = op("Mul", [r, g], "grad")  # a scalar output gradient scales every term

    rank = rank_of(ctx, x, "Einsum")
    letters = sum(t != ELLIPSIS for t in toks)
    ell_x = rank - letters if ELLIPSIS in toks else 0
    if ell_out:  # batch dims that this operand broadcast (missing or of size 1) are summed
        rhs_toks = tokens(rhs)
        ell_y = rank_of(ctx, n.output[0], "Einsum") - (len(rhs_toks) - 1)
        at, extra = kept.index(ELLIPSIS), ell_y - ell_x
        xs, ys = ctx.shape(x) or (), ctx.shape(n.output[0]) or ()
        x_at, y_at = toks.index(ELLIPSIS) if ELLIPSIS in toks else 0, rhs_toks.index(ELLIPSIS)
        ones = [at + extra + k for k in range(ell_x)
                if xs[x_at + k] == 1 and ys[y_at + extra + k] != 1]
        if ones:
            r = op("ReduceSum", [r, ctx.g.ints(ones)], "grad", keepdims=1)
        if extra > 0:
            r = op("ReduceSum", [r, ctx.g.ints(list(range(at, at + extra)))], "grad", keepdims=0)

    # put back the dims einsum cannot produce: lonely letters (broadcast), then diagonals
    def dim(t: str) -> int:  # the axis of x that subscript t names
        k = toks.index(t)
        return k + (ell_x - 1 if ELLIPSIS in toks[:k] else 0)

    if lonely:
        r = op("Unsqueeze", [r, ctx.g.ints(sorted(dim(t) for t in lonely))], "grad")
    for f, t in diagonal:
        size = static_shape(ctx, x, "Einsum", [dim(t)])[dim(t)]
        shape = [1] * rank
        shape[dim(t)] = shape[dim(f)] = size
        eye = ctx.g.const(np.eye(size, dtype=np.float32).reshape(shape), hint="grad")
        r = op("Mul", [r, op("CastLike", [eye, r], "grad")], "grad")
    if set(lonely) - {f for f, _ in diagonal} - {t for _, t in diagonal}:
        r = op("Expand", [r, op("Shape", [x], "grad")], "grad")
    return r
