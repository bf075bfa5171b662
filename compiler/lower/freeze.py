"""Which parameters a train block freezes or scales: `freeze` and `lr_mult` name spec-path
prefixes (`backbone.stem` covers backbone.stem.conv1.weight)."""

from __future__ import annotations

from dlspec.spec import model as m
from dlspec.spec.errors import SpecError, did_you_mean


def matches(path: str, target: str) -> bool:
    return path == target or path.startswith(target + ".")


def frozen(train: m.Train, param: str) -> bool:
    return any(matches(param, f) for f in train.freeze)


def lr_mult(train: m.Train, param: str) -> float:
    """The most specific (longest) matching lr_mult rule wins."""
    best: tuple[int, float] = (-1, 1.0)
    for rule in train.lr_mult:
        if matches(param, rule.target) and len(rule.target) > best[0]:
            best = (len(rule.target), rule.value)
    return best[1]


def check_targets(train: m.Train, params: list[str], loaded: list[str]) -> None:
    """A freeze or lr_mult target that matches no parameter is a typo: say so; as is a `from ...
    except` target that matches none of the tensors `from` loads (`loaded`: batch norm's
    statistics too), which would load what it meant to start fresh."""
    prefixes = sorted({p.rsplit(".", i)[0] for p in params for i in range(1, p.count(".") + 1)})
    for target in train.from_except:
        if not any(matches(p, target) for p in loaded):
            raise SpecError(f"except target '{target}' matches no parameter{did_you_mean(target, prefixes)}",
                            train.arg_spans.get("from_except"))
    for target in train.freeze:
        if not any(matches(p, target) for p in params):
            raise SpecError(f"freeze target '{target}' matches no parameter{did_you_mean(target, prefixes)}",
                            train.arg_spans.get("freeze"))
    for rule in train.lr_mult:
        if not any(matches(p, rule.target) for p in params):
            raise SpecError(f"lr_mult target '{rule.target}' matches no parameter"
                            f"{did_you_mean(rule.target, prefixes)}",
                            rule.span or train.arg_spans.get("lr_mult"))
