"""The Einsum gradient: the gradient of one operand is an einsum of the other operands and the
output gradient, written back to that operand's subscripts (`ij,jk->ik` gives `jk,ik->ij` for
the first operand). Letters only that operand has are broadcast back, repeated letters (a
diagonal) are put back on the diagonal, and broadcast `...` dims are summed."""

from __future__ import annotations

import string
from dataclasses import dataclass

import numpy as np

from dlspec.compiler.grad.common import rank, sizes
from dlspec.compiler.grad.table import Grads, Node, rule
from dlspec.compiler.graph import Value
from dlspec.compiler.graph import ops as op
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
def _einsum(n: Node, g: Value) -> Grads:
    terms, rhs = parse(n.s("equation"))
    return [_operand_grad(n, terms, rhs, g, i) for i in range(len(terms))]


@dataclass
class _Operand:
    """Operand i's subscripts, each repeated letter renamed to a fresh one (a diagonal), and the
    letters that no other operand nor the output has (summed inside this operand alone)."""

    toks: list[str]
    diagonal: list[tuple[str, str]]  # (fresh letter, repeated letter)
    lonely: list[str]
    kept: list[str]  # the subscripts the einsum of the others can produce

    @classmethod
    def of(cls, terms: list[str], rhs: str, i: int) -> _Operand:
        toks = tokens(terms[i])
        fresh = iter(c for c in string.ascii_letters if c not in "".join(terms) + rhs)
        diagonal = []
        for k, t in enumerate(toks):
            if t != ELLIPSIS and t in toks[:k]:
                toks[k] = next(fresh)
                diagonal.append((toks[k], t))
        elsewhere = set("".join(t for j, t in enumerate(terms) if j != i) + rhs)
        lonely = [t for t in toks if t != ELLIPSIS and t not in elsewhere]
        kept = [t for t in toks if t not in lonely]
        if ELLIPSIS in rhs and ELLIPSIS not in kept:
            kept.insert(0, ELLIPSIS)  # this operand has no batch dims: sum the output's away
        return cls(toks, diagonal, lonely, kept)


def _operand_grad(n: Node, terms: list[str], rhs: str, g: Value, i: int) -> Value:
    x, o = n.inputs[i], _Operand.of(terms, rhs, i)
    if ELLIPSIS in o.toks and ELLIPSIS not in rhs:
        raise CompileError(f"the Einsum gradient needs '...' in the output of '{','.join(terms)}->{rhs}'")
    # R = einsum(other operands, g -> this operand's kept subscripts)
    target = "".join(o.kept)
    ins = [(t, n.inputs[j]) for j, t in enumerate(terms) if j != i] + ([(rhs, g)] if rhs else [])
    if len(ins) == 1 and ins[0][0] == target:
        r = ins[0][1]
    elif ins:
        r = op.Einsum([v for _, v in ins], equation=",".join(t for t, _ in ins) + "->" + target)
    else:
        r = g
    if ins and not rhs:
        r = r * g  # a scalar output gradient scales every term
    ell_x = rank(x, "Einsum") - sum(t != ELLIPSIS for t in o.toks) if ELLIPSIS in o.toks else 0
    if ELLIPSIS in rhs:
        r = _sum_broadcast(n, o, rhs, r, x, ell_x)
    return _restore(o, r, x, ell_x)


def _sum_broadcast(n: Node, o: _Operand, rhs: str, r: Value, x: Value, ell_x: int) -> Value:
    """Sum the batch (`...`) dims that this operand broadcast, missing or of size 1."""
    rhs_toks = tokens(rhs)
    y = n.outputs[0]
    ell_y = rank(y, "Einsum") - (len(rhs_toks) - 1)
    at, extra = o.kept.index(ELLIPSIS), ell_y - ell_x
    xs, ys = x.shape or (), y.shape or ()
    x_at, y_at = o.toks.index(ELLIPSIS) if ELLIPSIS in o.toks else 0, rhs_toks.index(ELLIPSIS)
    ones = [at + extra + k for k in range(ell_x) if xs[x_at + k] == 1 and ys[y_at + extra + k] != 1]
    if ones:
        r = op.ReduceSum(r, ones, keepdims=1)
    if extra > 0:
        r = op.ReduceSum(r, list(range(at, at + extra)), keepdims=0)
    return r


def _restore(o: _Operand, r: Value, x: Value, ell_x: int) -> Value:
    """Put back the dims einsum cannot produce: lonely letters (broadcast), then diagonals."""
    def dim(t: str) -> int:  # the axis of x that subscript t names
        k = o.toks.index(t)
        return k + (ell_x - 1 if ELLIPSIS in o.toks[:k] else 0)

    if o.lonely:
        r = op.Unsqueeze(r, sorted(dim(t) for t in o.lonely))
    for f, t in o.diagonal:
        size = sizes(x, "Einsum", [dim(t)])[dim(t)]
        shape = [1] * x.rank
        shape[dim(t)] = shape[dim(f)] = size
        r = r * r.graph.const(np.eye(size, dtype=np.float32).reshape(shape)).cast_like(r)
    if set(o.lonely) - {f for f, _ in o.diagonal} - {t for _, t in o.diagonal}:
        r = op.Expand(r, op.Shape(x))
    return r
