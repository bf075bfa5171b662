"""Weight initialisation: seeded per parameter name, rules chosen by specificity."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dlspec.spec.errors import CompileError, did_you_mean
from dlspec.spec.model import Initializer, InitRule

# Defaults per layer kind, the habits of torchvision: He init for convolutions
# (they feed ReLUs), Glorot for the dense layers of heads.
DEFAULTS = {"conv": "kaiming_normal", "linear": "xavier_uniform"}
# Tables that are looked up or added rather than multiplied start as PyTorch and ViT start them:
# an embedding N(0, 1) (nn.Embedding), learned positions and a class token N(0, 0.02).
LOOKUP_DEFAULTS = {"embedding": Initializer(kind="normal", std=1.0),
                   "pos_embedding": Initializer(kind="normal", std=0.02),
                   "cls_token": Initializer(kind="normal", std=0.02)}


def make(init: Initializer, shape: Sequence[int], fan_in: int, fan_out: int,
         rng: np.random.Generator) -> np.ndarray:
    """One initial weight tensor (float32)."""
    kind, g = init.kind, init.gain
    if kind == "xavier_normal":  # Var = 2 / (n_in + n_out)
        out = _normal(rng, g * np.sqrt(2.0 / (fan_in + fan_out)), shape)
    elif kind == "xavier_uniform":  # U(-a, a), a = sqrt(6 / (n_in + n_out)): same variance
        a = g * np.sqrt(6.0 / (fan_in + fan_out))
        out = _uniform(rng, a, shape)
    elif kind == "kaiming_normal":  # Var = 2 / n_in keeps ReLU activations' scale
        out = _normal(rng, g * np.sqrt(2.0 / fan_in), shape)
    elif kind == "kaiming_uniform":
        a = g * np.sqrt(6.0 / fan_in)
        out = _uniform(rng, a, shape)
    elif kind == "normal":
        out = _normal(rng, init.std, shape)
    elif kind == "uniform":
        out = _uniform(rng, init.limit, shape)
    elif kind == "zeros":
        out = np.zeros(shape)
    elif kind == "ones":
        out = np.ones(shape)
    else:
        out = np.full(shape, init.value)
    return np.asarray(out, dtype=np.float32)


def _normal(rng: np.random.Generator, std: float, shape: Sequence[int]) -> np.ndarray:
    # float32 draws, as the weights are: numpy's float64 ones take several times as long
    return rng.standard_normal(tuple(shape), dtype=np.float32) * np.float32(std)


def _uniform(rng: np.random.Generator, a: float, shape: Sequence[int]) -> np.ndarray:
    return (rng.random(tuple(shape), dtype=np.float32) * np.float32(2 * a) - np.float32(a))


@dataclass
class InitPolicy:
    """Chooses the initializer of each weight from the train block's `init` rules."""

    rules: Sequence[InitRule] = ()
    seed: int = 0
    used: set[int] = field(default_factory=set)
    # (parameter path, layer kind) of every weight the rules were asked about: biases, bn's
    # scale and running statistics have fixed starts, so rules never reach them
    asked: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise CompileError(f"the seed must be a whole number >= 0, got {self.seed!r}")

    def choose(self, path: str, layer_kind: str) -> Initializer:
        self.asked.append((path, layer_kind))
        best: tuple[int, int] | None = None
        for i, rule in enumerate(self.rules):
            t = rule.target
            if t is None:
                score = 0
            elif t == layer_kind:
                score = 1
            elif path == t or path.startswith(t + "."):
                score = 2 + t.count(".")
            else:
                continue
            if best is None or (score, i) >= best:
                best = (score, i)
        if best is None:
            if layer_kind in LOOKUP_DEFAULTS:
                return LOOKUP_DEFAULTS[layer_kind]
            return Initializer(kind=DEFAULTS.get(layer_kind, "xavier_uniform"))  # type: ignore[arg-type]
        self.used.add(best[1])
        return self.rules[best[1]].init

    def explicit(self, path: str) -> Initializer | None:
        """The init of the most specific rule that names `path` or a prefix of it (not a layer
        kind, not the default), marked used; None if none does."""
        best: tuple[int, int] | None = None
        for i, rule in enumerate(self.rules):
            t = rule.target
            if t is not None and (path == t or path.startswith(t + ".")):
                score = 2 + t.count(".")
                if best is None or (score, i) >= best:
                    best = (score, i)
        if best is None:
            return None
        self.asked.append((path, "onnx"))
        self.used.add(best[1])
        return self.rules[best[1]].init

    def rng(self, name: str) -> np.random.Generator:
        """Each parameter draws from its own stream: adding a layer leaves the others as they were."""
        return np.random.default_rng([self.seed, zlib.crc32(name.encode())])

    def check_all_used(self, param_names: Sequence[str], kinds: Sequence[str]) -> None:
        """A rule that matches nothing is a typo: say so instead of ignoring it."""
        for i, rule in enumerate(self.rules):
            t = rule.target
            if i in self.used or t is None:
                continue
            if any(k == t or p == t or p.startswith(t + ".") for p, k in self.asked):
                continue  # matched, but every match was won by a more specific rule
            if t in kinds or any(p == t or p.startswith(t + ".") for p in param_names):
                weighted = ", ".join(sorted({k for _, k in self.asked})) or "none here"
                raise CompileError(f"init rule '{t}' matches only layers without initialised weights "
                                   f"(init sets the weights of: {weighted}; biases start at zero, "
                                   "bn scales at one)", rule.span)
            known = sorted(set(kinds) | {p.rsplit(".", 1)[0] for p in param_names})
            raise CompileError(f"init rule '{t}' matches no layer"
                               f"{did_you_mean(t, known)}", rule.span)
