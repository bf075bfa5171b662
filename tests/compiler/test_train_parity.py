"""Training-graph parity with torch.autograd and torch.optim on every example and built-in backbone.

The same weights (randomised, batch-norm running statistics included) and the same batch go into
dlspec's gradients.onnx / train_step.onnx and into a hand-written PyTorch twin (tests/parity_torch.py,
loaded through its strict name maps). Each tensor is compared by its norm-relative error

    ||onnx - torch|| / max(||torch||, 1e-12)  <= 1e-4     (Frobenius norms, in float64)

for the loss and metric, every parameter gradient, the next batch-norm running statistics, and
the parameters and optimizer state after each of two steps of sgd (momentum, nesterov,
dampening), adam and adamw, with weight decay and gradient clipping (global norm or value) on
and biting; torch takes the graph's state after the first step, so the second starts from the
same point on both sides. The torch twin runs in float64 (float32 where float64 convolutions are
slow), so what is measured is the graph's own float32 rounding. On its own, the optimizer step is
checked to 1e-5 against torch.optim fed the graph's own gradients, lr_mult included; each loss
against torch.nn.functional; frozen layers for absent outputs and eval-mode batch norm.

Two things are read out of the graph rather than recomputed: dropout masks (dlspec's counter-based
noise is not torch's; each mask is an extra graph output applied in place of nn.Dropout), and the
side of the kink of ReLU inputs within float32 rounding of 0 (see AlignedRelu).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import parity_torch as pt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from parity_helpers import example_inputs, randomize  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.optim import Optimizer  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402
from train_helpers import (  # noqa: E402
    EXAMPLES,
    carried,
    dropout_masks,
    example_model_text,
    feeds_for,
    input_names,
    load_text,
    output_names,
    rel_err,
    relu_inputs,
    run,
    scalars,
    session,
    with_outputs,
)

from dlspec.compiler import Target, TrainingGraphs, compile_training  # noqa: E402
from dlspec.compiler.graph.infer import value_types  # noqa: E402
from dlspec.compiler.tune import conv_fold  # noqa: E402
from dlspec.spec import model as m  # noqa: E402

TOL = 1e-4
TIGHT = 1e-5  # the optimizer step alone, given the graph's own gradients
WORST: dict[str, tuple[float, str]] = {}  # check -> (worst error, where): printed at the end
KINKS: dict[str, int] = {}  # case -> ReLU elements put on the graph's side of the kink


def check(kind: str, what: str, got: np.ndarray, want: np.ndarray, tol: float = TOL) -> None:
    err = rel_err(got, want)
    if err > WORST.get(kind, (-1.0, ""))[0]:
        WORST[kind] = (err, what)
    assert err <= tol, f"{kind} {what}: ||onnx - torch|| / ||torch|| = {err:.3g} > {tol:g}"


def check_update(kind: str, what: str, got: np.ndarray, got_before: np.ndarray, want: np.ndarray,
                 want_before: np.ndarray, tol: float = TOL) -> None:
    """An update p.next - p, measured beyond the float32 rounding of p.next itself (which alone
    is eps32 ||p.next||, large next to a small step): (||d_onnx - d_torch|| - eps32 ||p.next||)
    / ||d_torch||, d = p.next - p."""
    diff = np.linalg.norm((got.astype(np.float64) - got_before) - (want - want_before))
    rounding = float(np.finfo(np.float32).eps) * float(np.linalg.norm(want))
    err = max(0.0, float(diff) - rounding) / max(float(np.linalg.norm(want - want_before)), 1e-12)
    if err > WORST.get(kind, (-1.0, ""))[0]:
        WORST[kind] = (err, what)
    assert err <= tol, f"{kind} {what}: update error beyond float32 rounding = {err:.3g} > {tol:g}"


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_report() -> Iterator[None]:
    """Torch on one thread: these models are small, and with two, torch's OpenMP waits ran up
    to 50x slower whenever another process had a core (measured: 0.13 s against 6.4 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    print("\nworst norm-relative errors, onnx vs torch:")
    for kind, (err, what) in sorted(WORST.items()):
        print(f"  {kind:<28} {err:.2e}  {what}")
    print(f"ReLU elements put on the graph's side of the kink: {KINKS}")


def np_(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().copy()


# ---------------------------------------------------------------- torch twins

class Masked(nn.Module):
    """Stands in for nn.Dropout: multiplies by the mask (keep / (1 - p)) the graph drew."""

    def __init__(self) -> None:
        super().__init__()
        self.mask: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        assert self.mask is not None and self.mask.shape == x.shape, "no dropout mask of this shape"
        return x * self.mask


class Classified(nn.Module):
    """A backbone (VGG) under dlspec's classify head: gap -> flatten -> linear."""

    def __init__(self, body: nn.Module, fin: int, classes: int) -> None:
        super().__init__()
        self.body = body
        self.fc = nn.Linear(fin, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1))


class LandPrice(nn.Module):
    """examples/land_price.dlspec by hand: its features block in torch ops, then the MLP. Compiled
    without data, one_hot(district) is one column (the unknown slot: no vocabulary learnt), all 1,
    and no distance is missing (fill is the identity, missing(distance) 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = pt.MLP(8, [32, 32], 1, act="gelu")

    def forward(self, length: Tensor, width: Tensor, distance: Tensor) -> Tensor:
        feats = [length, width, torch.clamp(distance, 0, 50), torch.ones_like(length),
                 torch.zeros_like(length), length * width, length / width, torch.log(1 + distance)]
        return self.mlp(torch.stack(feats, 1))[:, 0]


@dataclass
class Case:
    """One model: its spec (no train block), its torch twin, its batch, loss and optimizers."""

    id: str
    text: str
    build: Callable[[], nn.Module]
    mapping: Callable[[nn.Module], dict[str, str]]
    batch: Callable[[int, int], dict[str, np.ndarray]]  # (n, seed) -> inputs and targets
    inputs: list[str]
    target: str
    loss: Callable[[Tensor, Tensor], Tensor]
    opts: list[str]  # train blocks (OPTS keys); the first also checks gradients.onnx
    n: int = 2
    dropout: dict[str, str] = field(default_factory=dict)  # dlspec layer path -> torch module path
    dtype: torch.dtype = torch.float64  # of the torch twin (float32 where float64 convs are slow)
    lr: float | None = None  # fed instead of the train block's lr (see OPTS)
    example: str | None = None  # the examples/ file whose train block is opts' "example"
    # of the parameters; a unit whose gelu sits in its tail on the whole batch (x ~ -5: float32's
    # 1 + erf(x) keeps few digits) makes adam's second step differ where torch's float64 does not
    seed: int = 41


def image_batch(c: int, size: int, classes: int = 10) -> Callable[[int, int], dict[str, np.ndarray]]:
    def make(n: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {"image": rng.standard_normal((n, c, size, size)).astype(np.float32),
                "label": rng.integers(0, classes, n).astype(np.int64)}
    return make


def digits_batch(n: int, seed: int) -> dict[str, np.ndarray]:
    labels = np.random.default_rng(seed + 100).integers(0, 10, n).astype(np.int64)
    return {**example_inputs("digits", n, seed), "label": labels}


def land_batch(n: int, seed: int) -> dict[str, np.ndarray]:
    prices = np.random.default_rng(seed + 100).uniform(-3.0, 3.0, n).astype(np.float32)
    inputs = example_inputs("land_price", n, seed)  # the training graphs take district's indices
    return {**inputs, "district": np.zeros(n, np.int64), "price": prices}


def mlp_batch(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 3, 4, 4)).astype(np.float32),
            "label": rng.integers(0, 5, n).astype(np.int64)}


def image_model(backbone: str, size: int) -> str:
    return (f"model m {{\n  input image: float32[N, 3, {size}, {size}]\n  target label: int64[N]\n"
            f"  backbone {backbone}\n  head classify(classes=10)\n  loss cross_entropy\n}}\n")


def ce(smoothing: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda y, t: F.cross_entropy(y, t, label_smoothing=smoothing)


def resnet_case(id: str, call: str, block: type, layers: list[int], stem: str, width: int,
                size: int, opts: list[str], n: int = 2, dtype: torch.dtype = torch.float64) -> Case:
    return Case(id, image_model(call, size),
                lambda: pt.ResNet(block, layers, stem=stem, width=width, classes=10),
                lambda mod: pt.resnet_map(mod),  # type: ignore[arg-type]
                image_batch(3, size), ["image"], "label", ce(), opts, n=n, dtype=dtype)


def vgg_case(name: str, bn: bool, opts: list[str]) -> Case:
    cfg = pt.VGG_CFGS[name]
    call = f"{name}(norm=bn)" if bn else name

    def mapping(_: nn.Module) -> dict[str, str]:
        out = {f"body.{k}": v for k, v in pt.vgg_map(cfg, bn).items()}
        out.update(pt.lin_keys("fc", "head.linear1"))
        return out

    return Case(call, image_model(call, 32), lambda: Classified(pt.VGG(cfg, bn), 512, 10), mapping,
                image_batch(3, 32), ["image"], "label", ce(), opts, n=4 if bn else 2, dtype=torch.float32)


def vgg11_example_map(_: nn.Module) -> dict[str, str]:
    out = {f"0.{k}": v for k, v in pt.vgg_map(pt.VGG_CFGS["vgg11"], bn=True).items()}
    out.update({f"1.{k}": v for k, v in pt.mlp_map(2, "head.classifier").items()})
    return out


SEPARABLE = ("{ a: conv(8, k=3) -> bn -> relu -> conv(8, k=3, groups=8) -> bn -> relu -> conv(16, k=1) "
             "-> relu -> conv(16, k=3, stride=2, groups=16) -> bn -> relu -> conv(32, k=3, groups=2) }")


def separable() -> nn.Module:
    """SEPARABLE by hand: depthwise 3x3 convs (stride 1 and 2) and a conv of 2 groups of 16."""
    def bn_relu(c: int) -> list[nn.Module]:
        return [nn.BatchNorm2d(c), nn.ReLU()]
    body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), *bn_relu(8),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), *bn_relu(8),
                         nn.Conv2d(8, 16, 1), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16, bias=False), *bn_relu(16),
                         nn.Conv2d(16, 32, 3, padding=1, groups=2))
    return Classified(body, 32, 10)


def separable_map(_: nn.Module) -> dict[str, str]:
    a = "backbone.a"
    return {"body.0.weight": f"{a}.conv1.weight", **pt.bn_keys("body.1", f"{a}.bn1"),
            "body.3.weight": f"{a}.conv2.weight", **pt.bn_keys("body.4", f"{a}.bn2"),
            **pt.lin_keys("body.6", f"{a}.conv3"),
            "body.8.weight": f"{a}.conv4.weight", **pt.bn_keys("body.9", f"{a}.bn3"),
            **pt.lin_keys("body.11", f"{a}.conv5"), **pt.lin_keys("fc", "head.linear1")}


MATRIX = ["sgd_nesterov", "sgd_dampening", "adam", "adamw"]
CASES = [
    # ---- examples/ as shipped: the first train block is the example's own
    Case("digits", example_model_text("digits"), pt.DigitsNet,
         lambda mod: pt.digits_map(mod),  # type: ignore[arg-type]
         digits_batch, ["image"], "label", ce(0.05), ["example"], n=4,
         dropout={"head.dropout1": "head.drop"}, example="digits"),
    Case("land_price", example_model_text("land_price"), LandPrice,
         lambda _: pt.mlp_map(2, "head", torch_prefix="mlp.net"), land_batch,
         ["length", "width", "distance"], "price", lambda y, t: F.mse_loss(y, t),
         ["example"] + MATRIX, n=8, example="land_price", seed=44),  # 41: one unit in gelu's tail
    Case("resnet18_cifar", example_model_text("resnet18_cifar"),
         lambda: pt.ResNet(pt.BasicBlock, [2, 2, 2, 2], stem="cifar", width=64, classes=10),
         lambda mod: pt.resnet_map(mod),  # type: ignore[arg-type]
         image_batch(3, 32), ["image"], "label", ce(), ["example"], dtype=torch.float32,
         example="resnet18_cifar"),
    Case("vgg11_example", example_model_text("vgg11"),
         lambda: nn.Sequential(pt.VGG(pt.VGG_CFGS["vgg11"], bn=True), pt.MLP(512, [512, 512], 10)),
         vgg11_example_map, image_batch(3, 32), ["image"], "label", ce(0.1), ["example"], n=4,
         dropout={"head.classifier.dropout1": "1.net.3", "head.classifier.dropout2": "1.net.6"},
         dtype=torch.float32, example="vgg11", lr=1e-4),  # no train block: adam(lr=1e-3)
    # ---- the built-in backbones, narrow (resnet18_cifar above has the full width) and at small
    # sizes (the imagenet stem ends at 2x2 on 64 px).
    # resnet50 in float32 is ill-conditioned with few values per batch-norm channel: torch's own
    # float32 gradients are 2e-4 from float64 at 64 px, batch 2; at 16 px, batch 8 they are 5e-5.
    resnet_case("resnet18", "resnet18(width=16)", pt.BasicBlock, [2, 2, 2, 2], "imagenet", 16, 64,
                ["sgd_nesterov"]),
    resnet_case("resnet34", "resnet34(width=16)", pt.BasicBlock, [3, 4, 6, 3], "imagenet", 16, 64,
                ["adam"]),
    resnet_case("resnet50", "resnet50(width=8, stem=cifar_stem)", pt.Bottleneck, [3, 4, 6, 3], "cifar",
                8, 16, ["sgd_nesterov"], n=8),
    vgg_case("vgg11", bn=True, opts=["sgd_dampening"]),
    vgg_case("vgg16", bn=False, opts=["adamw"]),
    Case("separable", image_model(SEPARABLE, 12), separable, separable_map, image_batch(3, 12),
         ["image"], "label", ce(), ["adamw"], n=4),
    Case("mlp", "model m {\n  input x: float32[N, 3, 4, 4]\n  target label: int64[N]\n"
         "  backbone mlp(5, hidden=[12, 8], activation=gelu, dropout=0.3)\n  loss cross_entropy\n}\n",
         lambda: pt.MLP(48, [12, 8], 5, "gelu"), lambda _: pt.mlp_map(2, "backbone"), mlp_batch,
         ["x"], "label", ce(), MATRIX, n=4,
         dropout={"backbone.dropout1": "net.3", "backbone.dropout2": "net.6"}),
]
CASE = {c.id: c for c in CASES}

# Train blocks: limits tight enough that clipping bites on every model here; "example" is the
# example's own train block as shipped (vgg11 has none: the default optimizer).
#
# Adam's step is lr m / (sqrt(v) + eps) per element, so an element whose gradient is within float32
# noise of 0 moves by an arbitrary fraction of lr, in any float32 implementation (seen: g = 2.7e-8
# exactly, 2.0e-7 in float32, typical |g| 0.17: 95% of lr against 73%). eps=1e-3 keeps every
# element's step a smooth function of its gradient; the examples' own Adam (eps 1e-8) runs at a
# tenth of its lr (Case.lr); and test_optimizer_step_given_the_graphs_gradients checks the Adam
# step itself, eps 1e-8 included, to 1e-5. Value clipping that clips nearly every element leaves
# only the few unclipped ones' float32 error, so its limits clip some elements, not all.
OPTS = {
    "sgd_nesterov": "optimizer sgd(lr=0.05, momentum=0.9, nesterov=true, weight_decay=0.01)\n"
                    "  clip grad_norm(0.3)",
    "sgd_dampening": "optimizer sgd(lr=0.03, momentum=0.8, dampening=0.3, weight_decay=0.02)\n"
                     "  clip grad_value(0.01)",
    "adam": "optimizer adam(lr=1e-3, betas=[0.8, 0.99], eps=1e-3, weight_decay=0.01)\n"
            "  clip grad_norm(0.5)",
    "adamw": "optimizer adamw(lr=1e-3, eps=1e-3, weight_decay=0.1)\n  clip grad_value(0.02)",
    "adamw_eps1e-8": "optimizer adamw(lr=3e-3, weight_decay=1e-4)\n  clip grad_norm(1.0)",  # digits'
}


def training_text(case: Case, opt: str, extra: str = "") -> str:
    if opt == "example":
        assert case.example is not None
        text = (EXAMPLES / f"{case.example}.dlspec").read_text()
        return re.sub(r"^\s*augment\b.*\n", "", text, flags=re.M)  # torch sees the raw batch
    return f"{case.text}\ntrain {{\n  {OPTS[opt]}\n  seed 3\n{extra}}}\n"


def compile_case(tmp_path: Path, text: str, threads: int | None = None) -> tuple[TrainingGraphs, m.Train]:
    prog = load_text(tmp_path, text)
    name = prog.model().name
    return compile_training(prog, target=Target(threads=threads)), prog.train(name) or m.Train()


# ---------------------------------------------------------------- the torch side

class AlignedRelu(TorchFunctionMode):
    """ReLU whose mask follows the graph's pre-activation where torch's lies within 1e-5 of the
    kink (relative to the tensor's largest value): there float32 rounding may land a value on the
    other side, and one flipped element moves a gradient by ~1/sqrt(its size), far more than the
    tolerance. Everywhere else the mask is torch's own; the aligned elements are counted."""

    BAND = 1e-5

    def __init__(self, graph_inputs: list[np.ndarray]) -> None:
        super().__init__()
        self.pending = list(graph_inputs)
        self.aligned = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func not in (F.relu, torch.relu):
            return func(*args, **(kwargs or {}))
        x = args[0]
        value = x.detach()
        theirs = self._take(value.cpu().numpy()) > 0
        ours = value > 0
        mask = torch.where(value.abs() <= self.BAND * float(value.abs().max()), theirs, ours)
        self.aligned += int((mask != ours).sum())
        return x * mask.to(x.dtype)

    def _take(self, x: np.ndarray) -> Tensor:
        for i, v in enumerate(self.pending):
            if v.shape == x.shape and rel_err(v, x) < 1e-3:
                return torch.from_numpy(self.pending.pop(i))
        raise AssertionError(f"no ReLU input of the graph matches torch's {x.shape}")


@dataclass
class Probe:
    """Values the torch twin reads out of the graph: dropout masks and ReLU inputs."""

    masks: dict[str, str]  # dlspec dropout path -> the graph value of its scaled mask
    relus: list[str]

    @classmethod
    def of(cls, proto: onnx.ModelProto, case: Case) -> Probe:
        return cls(dropout_masks(proto, list(case.dropout)), relu_inputs(proto))

    def extend(self, proto: onnx.ModelProto) -> onnx.ModelProto:
        return with_outputs(proto, list(self.masks.values()) + self.relus)


def torch_optimizer(spec: m.Optimizer, params: list[Any]) -> Optimizer:
    """dlspec's optimizer settings mean what torch.optim's do (params: tensors or param groups)."""
    if isinstance(spec, m.Sgd):
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, dampening=spec.dampening,
                               nesterov=spec.nesterov, weight_decay=spec.weight_decay)
    cls = torch.optim.AdamW if spec.kind == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, betas=spec.betas, eps=spec.eps, weight_decay=spec.weight_decay)


def torch_clip(spec: m.Clip | None, params: list[nn.Parameter]) -> bool:
    """torch.nn.utils.clip_grad_*; whether it changed anything."""
    if spec is None:
        return False
    if isinstance(spec, m.GradNorm):
        return float(torch.nn.utils.clip_grad_norm_(params, spec.max_norm)) > spec.max_norm
    bites = any(bool((p.grad.abs() > spec.limit).any()) for p in params if p.grad is not None)
    torch.nn.utils.clip_grad_value_(params, spec.limit)
    return bites


STATE_KEYS = {"momentum": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq"}


class Torch:
    """The torch twin of one case, loaded with the same values."""

    def __init__(self, case: Case, values: dict[str, np.ndarray], frozen: tuple[str, ...] = ()) -> None:
        self.case = case
        self.module = case.build()
        self.map = case.mapping(self.module)
        pt.load_state(self.module, values, self.map)
        self.module.to(case.dtype).train()
        self.masks: dict[str, Masked] = {}
        for dl_path, torch_path in case.dropout.items():
            self.masks[dl_path] = Masked()
            self.module.set_submodule(torch_path, self.masks[dl_path])
        self.params = {self.map[k]: p for k, p in self.module.named_parameters()}
        for prefix in frozen:  # frozen layers: no gradient, batch norm in eval mode
            for name, mod in self.module.named_modules():
                if self.map.get(f"{name}.weight", "").startswith(prefix + "."):
                    mod.eval()
                    for p in mod.parameters(recurse=False):
                        p.requires_grad_(False)
        self.trainable = [p for p in self.params.values() if p.requires_grad]

    def tensor(self, x: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.to(self.case.dtype) if t.is_floating_point() else t

    def forward(self, batch: dict[str, np.ndarray], probe: Probe,
                graph: dict[str, np.ndarray]) -> tuple[Tensor, Tensor]:
        """The output and the loss; dropout masks and ReLU kinks as the graph had them."""
        for path, mod in self.masks.items():
            mod.mask = self.tensor(graph[probe.masks[path]])
        with AlignedRelu([graph[r] for r in probe.relus]) as relu:
            y = self.module(*(self.tensor(batch[k]) for k in self.case.inputs))
        KINKS[self.case.id] = KINKS.get(self.case.id, 0) + relu.aligned
        return y, self.case.loss(y, self.tensor(batch[self.case.target]))

    def grads(self) -> dict[str, np.ndarray]:
        return {n: np_(p.grad) for n, p in self.params.items() if p.grad is not None}

    def load(self, values: dict[str, np.ndarray], opt: Optimizer) -> None:
        """Take the graph's parameters, statistics and optimizer state: the next step starts from
        the same point on both sides, so float32 differences do not compound across steps."""
        with torch.no_grad():
            for key, t in self.module.state_dict().items():
                if key in self.map:
                    t.copy_(self.tensor(values[self.map[key]]))
            for name, p in self.params.items():
                for suffix, key in STATE_KEYS.items():
                    if key in opt.state.get(p, {}):
                        opt.state[p][key].copy_(self.tensor(values[f"{name}.{suffix}"]))

    def state(self, opt: Optimizer) -> dict[str, np.ndarray]:
        """Parameters, running statistics and optimizer state under dlspec's names."""
        out = {self.map[k]: np_(v) for k, v in self.module.state_dict().items() if k in self.map}
        for name, p in self.params.items():
            for suffix, key in STATE_KEYS.items():
                if key in opt.state.get(p, {}):
                    out[f"{name}.{suffix}"] = np_(opt.state[p][key])
        return out


def stat_kind(name: str) -> str:
    return "bn running stat" if name.endswith(("running_mean", "running_var")) else ""


# ---------------------------------------------------------------- the checks

def check_gradients(tg: TrainingGraphs, case: Case, values: dict[str, np.ndarray],
                    batch: dict[str, np.ndarray], frozen: tuple[str, ...] = ()) -> None:
    """gradients.onnx: the loss, every trainable parameter's gradient, the next running stats."""
    probe = Probe.of(tg.gradients, case)
    proto = probe.extend(tg.gradients)
    got = run(session(proto), feeds_for(proto, batch, scalars(step=1), values))
    ref = Torch(case, values, frozen)
    _, loss = ref.forward(batch, probe, got)
    loss.backward()
    check("loss", case.id, got["loss"], np_(loss))
    want = ref.grads()
    assert sorted(want) == sorted(tg.trainable)
    assert sorted(o for o in output_names(tg.gradients) if o.startswith("grad.")) == sorted(
        f"grad.{p}" for p in tg.trainable)
    for p in tg.trainable:
        check("gradient", f"{case.id} {p}", got[f"grad.{p}"], want[p])
    stats = {n: v for n, v in ref.state(torch.optim.SGD(ref.trainable, lr=0.0)).items() if stat_kind(n)}
    moving = {s: v for s, v in stats.items() if not any(s.startswith(f + ".") for f in frozen)}
    assert sorted(o for o in output_names(tg.gradients) if o.endswith(".next")) == sorted(
        f"{s}.next" for s in moving)
    for s, v in moving.items():
        check("bn running stat", f"{case.id} {s}", got[f"{s}.next"], v)


def check_steps(tg: TrainingGraphs, train: m.Train, case: Case, values: dict[str, np.ndarray],
                batches: list[dict[str, np.ndarray]], label: str, frozen: tuple[str, ...] = (),
                must_clip: bool = True) -> None:
    """train_step.onnx, each step's outputs fed back as the next step's inputs, against torch.optim
    (which then takes the graph's state too, see Torch.load)."""
    probe = Probe.of(tg.train_step, case)
    proto = probe.extend(tg.train_step)
    sess = session(proto)
    spec = train.optimizer or m.Adam.model_validate({"kind": "adam"})
    if case.lr is not None:
        spec = spec.model_copy(update={"lr": case.lr})
    ref = Torch(case, values, frozen)
    opt = torch_optimizer(spec, ref.trainable)
    state = {**tg.init, **values}  # zero optimizer state, the case's parameters and statistics
    for step, batch in enumerate(batches, start=1):
        got = run(sess, feeds_for(proto, batch, scalars(spec.lr, step), state))
        before = ref.state(opt)
        opt.zero_grad()
        y, loss = ref.forward(batch, probe, got)
        loss.backward()
        clipped = torch_clip(train.clip, ref.trainable)
        assert clipped or not must_clip, f"{train.clip} does not bite here: choose a tighter limit"
        opt.step()
        where = f"{case.id} {label} step {step}"
        check("loss", where, got["loss"], np_(loss))
        target = ref.tensor(batch[case.target])
        if "accuracy" in got:
            check("accuracy", where, got["accuracy"], np_((y.argmax(1) == target).double().mean()))
        else:
            check("mae", where, got["mae"], np_((y - target).abs().mean()))
        want = ref.state(opt)
        nexts = carried(got)
        frozen_names = {n for n in want if any(n.startswith(f + ".") for f in frozen)}
        assert sorted(nexts) == sorted(set(want) - frozen_names), "the .next outputs are not torch's"
        for name, value in want.items():
            if name in frozen_names:
                assert np.array_equal(value, state[name]), f"torch moved frozen {name}"
                continue
            kind = stat_kind(name) or ("parameter" if name in values else "optimizer state")
            check(f"{kind} (step {step})", f"{where} {name}", nexts[name], value)
            if kind == "parameter" and isinstance(spec, m.Sgd):  # the update, not only p after it
                check_update(f"sgd update (step {step})", f"{where} {name}", nexts[name], state[name],
                             value, before[name])
        state = {**state, **nexts}
        ref.load(state, opt)


def step_cases() -> list[tuple[str, str]]:
    return [(c.id, o) for c in CASES for o in c.opts]


@pytest.mark.parametrize("case_id,opt", step_cases(), ids=[f"{c}-{o}" for c, o in step_cases()])
def test_training_matches_torch(tmp_path: Path, case_id: str, opt: str) -> None:
    """The case's first train block also checks gradients.onnx; every one runs two steps."""
    case = CASE[case_id]
    tg, train = compile_case(tmp_path, training_text(case, opt))
    values = randomize(tg.inference, seed=case.seed)
    batches = [case.batch(case.n, 42), case.batch(case.n, 43)]
    if opt == case.opts[0]:
        check_gradients(tg, case, values, batches[0])
    check_steps(tg, train, case, values, batches, opt, must_clip=opt != "example")


MANY_THREAD_CASES = [("digits", "example"), ("resnet18", "sgd_nesterov")]


@pytest.mark.parametrize("case_id,opt", MANY_THREAD_CASES, ids=[f"{c}-{o}" for c, o in MANY_THREAD_CASES])
def test_many_thread_lowering_matches_torch(tmp_path: Path, case_id: str, opt: str) -> None:
    """The lowering for a CPU step on many threads (batch norm's affine maps as Mul and Add, conv
    weight gradients as 3-D Convs over the batch) trains as torch does, as above."""
    case = CASE[case_id]
    tg, train = compile_case(tmp_path, training_text(case, opt), threads=16)
    ops = [n.op_type for n in tg.train_step.graph.node]
    accumulating = [n.op_type for n in tg.train_step.graph.node if n.name.startswith("grad")]
    assert "BatchNormalization" not in ops and "Sum" not in accumulating  # one thread in onnxruntime
    assert any(n.op_type == "Conv" and n.name.startswith("grad") and  # a 3-D weight gradient
               any(a.name == "strides" and len(a.ints) == 3 for a in n.attribute)
               for n in tg.train_step.graph.node)
    # crowded convs folded (dlspec.compiler.tune.conv_fold), a dX among them: the forward's 4x4 or 2x2 maps
    folded = [n.name for n in tg.train_step.graph.node if n.op_type == "Conv" and n.input[0].endswith(".x5")]
    assert any(not f.startswith("grad") for f in folded) and any(f.startswith("grad") for f in folded)
    types = value_types(tg.train_step, data_prop=True)
    assert not [n.name for n in tg.train_step.graph.node if conv_fold._crowded(n, types)]  # none left
    values = randomize(tg.inference, seed=41)
    batches = [case.batch(case.n, 42), case.batch(case.n, 43)]
    check_gradients(tg, case, values, batches[0])
    check_steps(tg, train, case, values, batches, opt, must_clip=opt != "example")


# ---------------------------------------------------------------- frozen layers

def test_frozen_stem_has_no_gradient_no_update_and_eval_mode_batch_norm(tmp_path: Path) -> None:
    case = resnet_case("frozen", "resnet18(width=8)", pt.BasicBlock, [2, 2, 2, 2], "imagenet", 8, 64,
                       ["sgd_nesterov"], n=4)
    tg, train = compile_case(tmp_path, training_text(case, "sgd_nesterov", "  freeze backbone.stem\n"))
    stem = sorted(n for n in tg.init if n.startswith("backbone.stem."))
    assert stem == sorted(f"backbone.stem.{s}" for s in (
        "conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"))
    assert set(tg.frozen) == {"backbone.stem.conv1.weight", "backbone.stem.bn1.weight",
                              "backbone.stem.bn1.bias"}
    assert not any(p.startswith("backbone.stem.") for p in tg.trainable)
    for proto in (tg.gradients, tg.train_step):
        assert set(stem) <= set(input_names(proto)), "frozen parameters are still inputs"
        assert not [o for o in output_names(proto) if o.startswith(("backbone.stem.", "grad.backbone.stem."))]
    assert not [n for n in tg.init if n.startswith("backbone.stem.") and n.endswith((".momentum", ".m"))]
    values = randomize(tg.inference, seed=51)
    batches = [case.batch(case.n, 52), case.batch(case.n, 53)]
    check_gradients(tg, case, values, batches[0], frozen=("backbone.stem",))
    check_steps(tg, train, case, values, batches, "frozen stem", frozen=("backbone.stem",))


# ---------------------------------------------------------------- the optimizer step on its own

def lr_mult(train: m.Train, name: str) -> float:
    """The most specific matching lr_mult rule (by prefix), as the spec defines it."""
    rules = [r for r in train.lr_mult if name == r.target or name.startswith(r.target + ".")]
    return max(rules, key=lambda r: len(r.target)).value if rules else 1.0


STEP_ONLY = ([("mlp", o) for o in [*MATRIX, "adamw_eps1e-8"]]
             + [("land_price", o) for o in ["example", *MATRIX]])


@pytest.mark.parametrize("case_id,opt", STEP_ONLY, ids=[f"{c}-{o}" for c, o in STEP_ONLY])
def test_optimizer_step_given_the_graphs_gradients(tmp_path: Path, case_id: str, opt: str) -> None:
    """train_step's update against torch.optim fed gradients.onnx's own gradients, two steps, with
    an lr_mult of 0.1 on one layer (torch: its own param group): the optimizer alone, to 1e-5."""
    case = CASE[case_id]
    extra = f"  lr_mult {'backbone' if case_id == 'mlp' else 'head'}.linear1: 0.1\n"
    text = training_text(case, opt, extra)
    if opt == "example":
        text = text.replace("train {", "train {\n" + extra, 1)
    tg, train = compile_case(tmp_path, text)
    spec = train.optimizer or m.Adam.model_validate({"kind": "adam"})
    values = randomize(tg.inference, seed=61)
    params = {n: nn.Parameter(torch.from_numpy(values[n]).double()) for n in tg.trainable}
    groups: dict[float, list[nn.Parameter]] = {}
    for n, p in params.items():
        groups.setdefault(lr_mult(train, n), []).append(p)
    assert sorted(groups) == [0.1, 1.0]
    torch_opt = torch_optimizer(spec, [{"params": ps, "lr": spec.lr * k} for k, ps in groups.items()])
    grads, steps = session(tg.gradients), session(tg.train_step)
    state = {**tg.init, **values}
    for step in (1, 2):
        batch = case.batch(case.n, 62 + step)
        g = run(grads, feeds_for(tg.gradients, batch, scalars(step=step), state))
        got = run(steps, feeds_for(tg.train_step, batch, scalars(spec.lr, step), state))
        assert np.array_equal(g["loss"], got["loss"]), "gradients.onnx and train_step.onnx disagree"
        for n, p in params.items():
            p.data = torch.from_numpy(state[n]).double()  # both start the step from the graph's values
            p.grad = torch.from_numpy(g[f"grad.{n}"]).double()
        torch_clip(train.clip, list(params.values()))
        torch_opt.step()
        nexts = carried(got)
        for n, p in params.items():
            where = f"{case_id} {opt} step {step} {n}"
            check_update(f"{spec.kind} step alone", where, nexts[n], state[n], np_(p), state[n], TIGHT)
            for suffix, key in STATE_KEYS.items():
                if key in torch_opt.state[p]:
                    check(f"{spec.kind} state alone", f"{where}.{suffix}", nexts[f"{n}.{suffix}"],
                          np_(torch_opt.state[p][key]), TIGHT)
        state = {**state, **nexts}


# ---------------------------------------------------------------- losses

def _ce(**kw: Any) -> Callable[[Tensor, dict[str, Tensor]], Tensor]:
    return lambda y, t: F.cross_entropy(y, t["label"], **kw)


CLASS_W = [1.0, 2.0, 0.5, 1.5, 3.0]
LOSSES: list[tuple[str, str, Callable[[Tensor, dict[str, Tensor]], Tensor]]] = [
    # (dlspec loss line, targets (name: type), torch.nn.functional)
    ("cross_entropy", "label: int64[N]", _ce()),
    ("cross_entropy(label_smoothing=0.2)", "label: int64[N]", _ce(label_smoothing=0.2)),
    (f"cross_entropy(weight={CLASS_W})", "label: int64[N]", _ce(weight=torch.tensor(CLASS_W).double())),
    ("cross_entropy(ignore_index=-1)", "label: int64[N]", _ce(ignore_index=-1)),
    (f"cross_entropy(label_smoothing=0.1, weight={CLASS_W}, ignore_index=3)", "label: int64[N]",
     _ce(label_smoothing=0.1, weight=torch.tensor(CLASS_W).double(), ignore_index=3)),
    ("bce_with_logits", "hit: float32[N, 5]",
     lambda y, t: F.binary_cross_entropy_with_logits(y, t["hit"])),
    ("bce_with_logits(pos_weight=2.5)", "hit: float32[N, 5]",
     lambda y, t: F.binary_cross_entropy_with_logits(y, t["hit"], pos_weight=torch.tensor(2.5).double())),
    ("mse", "size: float32[N, 5]", lambda y, t: F.mse_loss(y, t["size"])),
    ("l1", "size: float32[N, 5]", lambda y, t: F.l1_loss(y, t["size"])),
    ("huber(delta=0.7)", "size: float32[N, 5]", lambda y, t: F.huber_loss(y, t["size"], delta=0.7)),
    ("0.3 * bce_with_logits(target=hit) + 2 * mse(target=size)",
     "hit: float32[N, 5]\n  target size: float32[N, 5]",
     lambda y, t: 0.3 * F.binary_cross_entropy_with_logits(y, t["hit"]) + 2 * F.mse_loss(y, t["size"])),
]


def _targets(loss: str, decl: str, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if "label" in decl:  # every class; three rows of the ignored value where there is one
        labels = np.array([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 1, 2])
        if "ignore_index" in loss:
            labels[[2, 6, 9]] = int(loss.split("ignore_index=")[1].split(")")[0])
        out["label"] = labels[rng.permutation(n)].astype(np.int64)
    if "hit" in decl:
        out["hit"] = (rng.uniform(size=(n, 5)) > 0.4).astype(np.float32)
    if "size" in decl:
        out["size"] = rng.normal(0.0, 2.0, (n, 5)).astype(np.float32)  # |y - t| on both sides of delta
    return out


@pytest.mark.parametrize("loss,targets,reference", LOSSES, ids=[row[0] for row in LOSSES])
def test_loss_and_its_gradient_match_torch_functional(tmp_path: Path, loss: str, targets: str,
                                                      reference: Callable[[Tensor, dict[str, Tensor]],
                                                                          Tensor]) -> None:
    """Each loss on a linear layer's output: the value, the gradient of the layer's parameters
    (gradients.onnx) and the metric (train_step.onnx) against torch.nn.functional in float64."""
    text = (f"model m {{\n  input x: float32[N, 7]\n  target {targets}\n"
            f"  head {{ fc: linear(5) }}\n  loss {loss}\n}}\n")
    tg, _ = compile_case(tmp_path, text)
    values = randomize(tg.inference, seed=71)
    rng = np.random.default_rng(72)
    n = 12
    batch = {"x": rng.normal(0.0, 1.5, (n, 7)).astype(np.float32), **_targets(loss, targets, n, rng)}
    got = run(session(tg.gradients), feeds_for(tg.gradients, batch, scalars(), values))
    step = run(session(tg.train_step), feeds_for(tg.train_step, batch, scalars(0.0), values, tg.init))
    w, b = (torch.from_numpy(values[f"head.fc.linear1.{k}"]).double().requires_grad_()
            for k in ("weight", "bias"))
    y = torch.from_numpy(batch["x"]).double() @ w.T + b
    t = {k: torch.from_numpy(v).double() if v.dtype == np.float32 else torch.from_numpy(v)
         for k, v in batch.items() if k != "x"}
    want = reference(y, t)
    want.backward()
    check("loss function", loss, got["loss"], np_(want))
    check("loss function", loss, step["loss"], np_(want))
    assert w.grad is not None and b.grad is not None
    check("loss gradient", f"{loss} weight", got["grad.head.fc.linear1.weight"], np_(w.grad))
    check("loss gradient", f"{loss} bias", got["grad.head.fc.linear1.bias"], np_(b.grad))
    first = loss.split("+")[0].split("*")[-1].split("(")[0].strip()  # the first term's kind
    if first == "cross_entropy":
        metric = (y.argmax(1) == t["label"]).double().mean()
    elif first == "bce_with_logits":
        metric = ((y > 0) == (t["hit"] > 0.5)).double().mean()
    else:
        metric = (y - t["size"]).abs().mean()
    check("metric", loss, step[tg.metrics[0]], np_(metric))
