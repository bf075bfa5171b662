"""Which nodes onnxruntime placed on the CPU provider, read from its verbose session log."""

from __future__ import annotations

import os
import re
import tempfile

import onnxruntime as ort


def placements(model_bytes: bytes, providers: list[str]) -> tuple[ort.InferenceSession, list[str]]:
    """A session, and the op types of the nodes placed on the CPU provider (from ORT's own log)."""
    so = ort.SessionOptions()
    so.log_severity_level = 0  # VERBOSE: where each node went
    so.log_verbosity_level = 0
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            sess = ort.InferenceSession(model_bytes, so, providers=providers)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        text = log.read()
    on_cpu: list[str] = []
    provider = None
    for line in text.splitlines():
        tag = "VerifyEachNodeIsAssignedToAnEp]"
        if tag not in line:
            continue
        msg = line.split(tag, 1)[1].strip()
        placed = re.search(r"placed on \[(\w+)\]", msg)
        if placed:
            provider = placed.group(1)
            if msg.startswith("All nodes") and provider == "CPUExecutionProvider":
                on_cpu.append("<all>")
        elif provider == "CPUExecutionProvider" and msg and msg != "Node placements":
            on_cpu.append(msg.split()[0])
    return sess, on_cpu
