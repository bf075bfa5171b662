"""Run every gradient-rule row's float32 gradient graph on onnxruntime's CUDA provider (a GPU
machine with onnxruntime-gpu): it must agree with the CPU provider, and the script lists every
node that onnxruntime placed on the CPU instead. Not collected by pytest; run it by hand:

    python tests/compiler/cuda_rules_check.py [OUT_DIR]
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as TP

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_grad_rules import ORT_ROWS, _row_id, _setup  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ort_placements import placements  # noqa: E402

from dlspec.compiler import Target, gradient_model  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    assert "CUDAExecutionProvider" in ort.get_available_providers(), ort.get_available_providers()
    lines: list[str] = []
    bad, cpu_ops = 0, collections.Counter[str]()
    for row in ORT_ROWS:
        rid = _row_id(row)
        if row.no_ort:
            lines.append(f"{rid:40} skipped: {row.no_ort}")
            continue
        try:
            names, xs, model, _ = _setup(row, TP.FLOAT)
            data = gradient_model(model, "loss", names, Target("cuda")).SerializeToString()
            feeds = dict(zip(names, xs))
            want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
            sess, on_cpu = placements(data, ["CUDAExecutionProvider", "CPUExecutionProvider"])
            got = sess.run(None, feeds)
            err = max(float(np.max(np.abs(g - w)) / max(1.0, float(np.max(np.abs(w))))) if w.size else 0.0
                      for g, w in zip(got[1:], want[1:]))
            cpu_ops.update(on_cpu)
            ok = err <= 1e-3
            bad += not ok
            lines.append(f"{rid:40} {'ok' if ok else 'MISMATCH'} rel.err {err:.1e}  on CPU: "
                         f"{','.join(sorted(set(on_cpu))) or '-'}")
        except Exception as e:  # report and go on
            bad += 1
            lines.append(f"{rid:40} ERROR {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    summary = [f"{len(ORT_ROWS)} rows, {bad} bad; ops placed on CPU across rows: {dict(cpu_ops)}"]
    text = "\n".join(lines + summary)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "cuda_rules.txt").write_text(text + "\n")
    print(text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
