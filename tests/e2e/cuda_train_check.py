"""Train the digits example's compiled train_step on onnxruntime's CUDA provider and on the CPU
(a GPU machine with onnxruntime-gpu): lists every node the CUDA session left on the CPU, and
prints loss, test accuracy and steps/s for both. Not collected by pytest; run it by hand:

    python tests/e2e/cuda_train_check.py DIGITS.npz [STEPS]
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np
import onnx

try:  # torch first: it loads the CUDA and cuDNN libraries onnxruntime-gpu needs
    import torch  # noqa: F401
except ImportError:
    pass
import onnxruntime as ort  # noqa: E402
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ort_placements import placements  # noqa: E402

from compiler.train import compile_training  # noqa: E402
from spec import load  # noqa: E402


def main() -> None:
    data = np.load(sys.argv[1])
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    x, y = data["x"], data["y"]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    train, test = order[: int(0.8 * len(x))], order[int(0.8 * len(x)):]
    tg = compile_training(load(Path(__file__).resolve().parents[2] / "examples" / "digits.dlspec"))
    for providers in (["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"]):
        sess, on_cpu = placements(tg.train_step.SerializeToString(), providers)
        print(f"== {providers[0]}: session providers {sess.get_providers()}")
        if providers[0] != "CPUExecutionProvider":
            print(f"   train_step nodes {len(tg.train_step.graph.node)}; left on the CPU: "
                  f"{dict(collections.Counter(on_cpu)) or 'none'}")
        state = dict(tg.init)
        inputs = [i.name for i in sess.get_inputs()]
        outs = [o.name for o in sess.get_outputs()]
        batch_rng = np.random.default_rng(1)
        t0 = time.perf_counter()
        losses = []
        for step in range(1, steps + 1):
            idx = batch_rng.choice(train, 64, replace=False)
            feeds = {"image": x[idx], "label": y[idx], "lr": np.array(3e-3, np.float32),
                     "step": np.array(step, np.int64)}
            feeds.update({k: state[k] for k in inputs if k in state})
            res = dict(zip(outs, sess.run(None, feeds)))
            for k, v in res.items():
                if k.endswith(".next"):
                    state[k[:-5]] = v
            losses.append(float(res["loss"]))
            if step == 10:
                t0 = time.perf_counter()
        rate = (steps - 10) / (time.perf_counter() - t0)
        model = onnx.ModelProto()
        model.CopyFrom(tg.inference.onnx)
        for i, t in enumerate(model.graph.initializer):
            if t.name in state:
                model.graph.initializer[i].CopyFrom(numpy_helper.from_array(state[t.name], t.name))
        inf = ort.InferenceSession(model.SerializeToString(), providers=providers)
        logits = inf.run(None, {"image": x[test]})[0]
        acc = float((logits.argmax(1) == y[test]).mean())
        print(f"   loss {losses[0]:.3f} -> {np.mean(losses[-20:]):.3f}; test accuracy {acc:.4f}; "
              f"{rate:.1f} steps/s (batch 64, plain sess.run loop)")


if __name__ == "__main__":
    main()
