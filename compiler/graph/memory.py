"""Initial values are made only once it is known that they fit: in one ONNX file (protobuf holds
at most 2 GiB) and, with the copies a session keeps, in the memory this process may still use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dlspec.compiler.graph.builder import Initial
from dlspec.spec.errors import CompileError, Span

MAX_FILE_BYTES = 2**31 - 2**26  # protobuf's 2 GiB, less room for the graph itself


def materialize(initials: Mapping[str, Initial], copies: int, what: str,
                span: Span | None = None) -> dict[str, np.ndarray]:
    """Every initial value, after checking that they fit: `copies` of them at once (weights,
    their gradients, optimizer state, next values) in the memory left, and one in a file."""
    check_fits(sum(i.nbytes for i in initials.values()), copies, what, span)
    return {name: i.value() for name, i in initials.items()}


def check_fits(nbytes: int, copies: int, what: str, span: Span | None = None) -> None:
    if nbytes > MAX_FILE_BYTES:
        raise CompileError(f"{what}: the parameters take {_gib(nbytes)}, more than an ONNX file holds "
                           f"({_gib(MAX_FILE_BYTES)}); make the model smaller", span)
    free = available_memory()
    if free is not None and nbytes * copies > free:
        raise CompileError(f"{what}: the parameters take {_gib(nbytes)}, about {_gib(nbytes * copies)} "
                           f"with the {copies} copies this needs, and this process has "
                           f"{_gib(free)} of memory left", span)


def available_memory() -> int | None:
    """The bytes this process can still allocate: the machine's available memory, or what is
    left under an address-space limit, whichever is smaller; None where neither is known."""
    limits = []
    meminfo = _read("/proc/meminfo")
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            limits.append(int(line.split()[1]) * 1024)
    try:
        import resource  # Unix only
    except ImportError:
        return min(limits) if limits else None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = next((int(line.split()[1]) * 1024 for line in _read("/proc/self/status").splitlines()
                     if line.startswith("VmSize:")), 0)
        limits.append(max(soft - used, 0))
    return min(limits) if limits else None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"
