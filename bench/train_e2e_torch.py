"""The PyTorch side of bench/train_e2e_vs_torch.py: a plain eager training script, run in its own
process, that does what `dlspec train` does for the same spec. It does not import dlspec: the
arrays (the splits dlspec's loader made, and for digits each epoch's batch order) come in an .npz,
the settings (read from the spec by the caller) in a JSON file.

    python bench/train_e2e_torch.py CONFIG.json

Mode `digits`: the network of examples/digits.dlspec (tests/parity_torch.DigitsNet), its init,
optimizer, per-step schedule, clipping, label smoothing, dropout and augmentation; after every epoch
the validation split in eval mode, a line `epoch N step S ... val_accuracy A seconds T` on stdout,
metrics.jsonl rewritten, last.pt written and best.pt where validation accuracy did not fall (as
dlspec's best.npz); at the end the test split on the best weights (the last without a validation
split) and model.pt. Mode `resnet18`: tests/parity_torch's CIFAR ResNet-18, `steps` steps of one
batch each (dlspec's run has one step per epoch), each step's seconds in result.json.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from parity_torch import BasicBlock, DigitsNet, ResNet  # noqa: E402

Config = dict[str, Any]


def learning_rate(s: Config, base: float, epoch: float, epochs: int) -> float:
    """runtime/schedule.py's learning_rate, on the schedule's fields."""
    if s["kind"] is None:
        return base
    if s["warmup"] > 0 and epoch < s["warmup"]:
        return base * epoch / s["warmup"]
    span = max(epochs - s["warmup"], 1e-9)
    t = min(max((epoch - s["warmup"]) / span, 0.0), 1.0)
    low = s["min_lr"]
    if s["kind"] == "cosine":
        return low + (base - low) * 0.5 * (1 + math.cos(math.pi * t))
    if s["kind"] == "linear":
        return base + (low - base) * t
    if s["kind"] == "step":
        every = s["every"] or max(epochs // 3, 1)
        return base * s["gamma"] ** math.floor(epoch / every)
    return base


# ---------------------------------------------------------------- augmentation (compiler/lower/augment.py)

def shift(x: torch.Tensor, k: int) -> torch.Tensor:
    """translate(k) / crop(k): zero-pad by k, cut the original size out at a per-sample offset:
    out[i, j] = x[i + dy, j + dx] (zero outside), dy and dx uniform in -k .. k."""
    n, c, h, w = x.shape
    padded = F.pad(x, (k, k, k, k))
    oy, ox = torch.randint(0, 2 * k + 1, (2, n, 1))
    rows = (torch.arange(h) + oy)[:, None, :, None].expand(n, c, h, w + 2 * k)
    cols = (torch.arange(w) + ox)[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def augment(x: torch.Tensor, augs: list[Config]) -> torch.Tensor:
    for a in augs:
        kind = a["kind"]
        if kind in ("translate", "crop"):
            x = shift(x, int(a["amount"])) if a["amount"] else x
        elif kind == "noise":  # x + amount * z, z ~ N(0, 1) per element
            x = x + a["amount"] * torch.randn_like(x)
        elif kind in ("hflip", "vflip"):  # with probability p per sample
            flip = torch.rand(len(x), 1, 1, 1) < a["p"]
            x = torch.where(flip, x.flip(3 if kind == "hflip" else 2), x)
        else:
            raise SystemExit(f"augmentation {kind} has no PyTorch twin here")
    return x


# ---------------------------------------------------------------- the network

def initialise(net: nn.Module, init: dict[str, str]) -> None:
    """dlspec's init (compiler/lower/init.py): weights by layer kind, biases zero, bn scale one."""
    fns = {"kaiming_normal": lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"),
           "kaiming_uniform": lambda w: nn.init.kaiming_uniform_(w, nonlinearity="relu"),
           "xavier_normal": nn.init.xavier_normal_, "xavier_uniform": nn.init.xavier_uniform_}
    for mod in net.modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            fns[init["conv" if isinstance(mod, nn.Conv2d) else "linear"]](mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)


def network(mode: str) -> tuple[nn.Module, Any]:
    """The net, and its train-mode forward from the network input (after the spec's features, where
    dlspec applies augmentation)."""
    if mode == "digits":
        net = DigitsNet(16)

        def body(x: torch.Tensor) -> torch.Tensor:  # DigitsNet.forward after its `image / 16`
            c1 = net.stage1(net.stem(x))
            return net.head(net.fpn([c1, net.stage2(c1)]))
        return net, lambda image, augs: body(augment(image / 16, augs))
    res = ResNet(BasicBlock, [2, 2, 2, 2], stem="cifar", classes=10)
    return res, lambda image, augs: res(augment(image, augs))


def optimizer(params: Any, o: Config) -> torch.optim.Optimizer:
    if o["kind"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], dampening=o["dampening"],
                               nesterov=o["nesterov"], weight_decay=o["weight_decay"])
    cls = torch.optim.AdamW if o["kind"] == "adamw" else torch.optim.Adam
    return cls(params, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])


# ---------------------------------------------------------------- training

def evaluate(net: nn.Module, x: torch.Tensor, y: torch.Tensor, smoothing: float) -> dict[str, float]:
    net.eval()
    loss, right = 0.0, 0
    with torch.no_grad():
        for lo in range(0, len(x), 512):
            logits = net(x[lo:lo + 512])
            loss += F.cross_entropy(logits, y[lo:lo + 512], label_smoothing=smoothing).item() * len(logits)
            right += int((logits.argmax(1) == y[lo:lo + 512]).sum())
    net.train()
    return {"loss": loss / len(x), "accuracy": right / len(x)}


def step_once(net: nn.Module, forward: Any, opt: torch.optim.Optimizer, cfg: Config, xb: torch.Tensor,
              yb: torch.Tensor, lr: float) -> dict[str, float]:
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    logits = forward(xb, cfg["augment"])
    loss = F.cross_entropy(logits, yb, label_smoothing=cfg["label_smoothing"])
    loss.backward()
    out = {"loss": loss.item(), "accuracy": float((logits.argmax(1) == yb).float().mean())}
    if cfg["clip"] is not None:  # global L2 norm, before weight decay, as dlspec's graph
        out["grad_norm"] = float(nn.utils.clip_grad_norm_(net.parameters(), cfg["clip"]))
    opt.step()
    return out


def train_digits(cfg: Config, net: nn.Module, forward: Any, opt: torch.optim.Optimizer,
                 data: Any, out: Path) -> dict[str, Any]:
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    xv, yv = torch.from_numpy(data["x_val"]), torch.from_numpy(data["y_val"])
    order = data["order"]
    bs, epochs = cfg["batch"], cfg["epochs"]
    n_batches = math.ceil(order.shape[1] / bs)
    history: list[dict[str, Any]] = []
    step, best = 0, -math.inf
    for epoch in range(epochs):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for i in range(n_batches):
            idx = torch.from_numpy(order[epoch, i * bs:(i + 1) * bs])
            step += 1
            lr = learning_rate(cfg["schedule"], cfg["lr0"], epoch + i / n_batches, epochs)
            for k, v in step_once(net, forward, opt, cfg, x[idx], y[idx], lr).items():
                sums[k] = sums.get(k, 0.0) + v
        val = evaluate(net, xv, yv, cfg["label_smoothing"]) if len(xv) else {}
        record = {"epoch": epoch + 1, "step": step, "lr": lr,
                  **{f"train_{k}": v / n_batches for k, v in sums.items()},
                  **{f"val_{k}": v for k, v in val.items()}, "seconds": round(time.perf_counter() - t0, 3)}
        history.append(record)
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
        state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch, "step": step}
        score = val.get("accuracy", epoch)  # without validation the last epoch is the best
        if score >= best:
            best = score
            torch.save(state, out / "best.pt")
        torch.save(state, out / "last.pt")
        print(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
              flush=True)
    net.load_state_dict(torch.load(out / "best.pt")["model"])
    torch.save(net.state_dict(), out / "model.pt")
    test = evaluate(net, torch.from_numpy(data["x_test"]), torch.from_numpy(data["y_test"]),
                    cfg["label_smoothing"])
    print(f"test_accuracy {test['accuracy']:.4f}", flush=True)
    return {"test_accuracy": test["accuracy"]}


def train_steps(cfg: Config, net: nn.Module, forward: Any, opt: torch.optim.Optimizer,
                data: Any) -> dict[str, Any]:
    """`steps` steps over the one batch of the train split, reshuffled each time, one per epoch."""
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])
    steps, seconds = cfg["epochs"], []
    for s in range(steps):
        t0 = time.perf_counter()
        idx = torch.randperm(len(x))
        lr = learning_rate(cfg["schedule"], cfg["lr0"], float(s), steps)
        step_once(net, forward, opt, cfg, x[idx], y[idx], lr)
        seconds.append(time.perf_counter() - t0)
        print(f"step {s + 1} seconds {seconds[-1]:.3f}", flush=True)
    return {"step_seconds": seconds}


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    data = np.load(cfg["data"])
    net, forward = network(cfg["mode"])
    initialise(net, cfg["init"])
    net.train()
    opt = optimizer(net.parameters(), cfg["optimizer"])
    if cfg["mode"] == "digits":
        result = train_digits(cfg, net, forward, opt, data, out)
    else:
        result = train_steps(cfg, net, forward, opt, data)
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
