"""What a run folder records about its spec (run.json), and `--resume` checked against it: a spec
that changed since the run began is refused, saying what changed, unless `--force`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlspec.spec.errors import RunError

SOURCE = "run.json"  # the spec the run came from: its imports and data paths are relative to it
COPY = "spec.dlspec"  # a copy of that spec's file, for the record


def record(spec_path: Path, model: str, spec_hash: str, given: dict[str, int]) -> bytes:
    """run.json: the spec, and the `given` options (batch, epochs) that the command line set in
    place of the spec's."""
    return json.dumps({"spec": str(spec_path.resolve()), "model": model, "spec_hash": spec_hash,
                       **given}, indent=1).encode()


def given_options(run_dir: Path, batch: int | None, epochs: int | None, force: bool,
                  note: Callable[[str], None]) -> dict[str, int]:
    """The batch and epochs that a resumed run takes in place of its spec's: the command line's,
    else those the run began with (run.json). Another batch than the run's is refused without
    `force`: the steps, the schedule and the order of samples would no longer be the run's."""
    try:
        recorded = json.loads((run_dir / SOURCE).read_text())
    except (OSError, ValueError):
        recorded = {}
    kept = {k: v for k, v in (recorded.items() if isinstance(recorded, dict) else ())
            if k in ("batch", "epochs") and type(v) is int and v > 0}
    old = kept.get("batch")
    if batch is not None and old is not None and batch != old:
        if not force:
            raise RunError(f"--resume: {run_dir} was trained with --batch {old}; --batch {batch} would "
                           "change its steps and schedule: leave --batch out, or pass --force to go on "
                           "with it")
        note(f"--force: resuming {run_dir}, trained with --batch {old}, with --batch {batch}")
    asked = {"batch": batch, "epochs": epochs}
    taken = [f"--{k} {v}" for k, v in kept.items() if asked[k] is None]
    if taken:
        note(f"resuming with {' '.join(taken)}, as the run began")
    return {**kept, **{k: v for k, v in asked.items() if v is not None}}


def recorded_hash(run_dir: Path) -> str | None:
    """The spec hash run.json records, if it is readable and has one (older runs do not)."""
    try:
        value = json.loads((run_dir / SOURCE).read_text()).get("spec_hash")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _names(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _first_change(run_dir: Path, spec_path: Path) -> str | None:
    """'line 12: `epochs 50` is now `epochs 60`' between the run's copy of the spec and the spec
    (None when either cannot be read)."""
    try:
        old = (run_dir / COPY).read_text().splitlines()
        new = spec_path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for i, (a, b) in enumerate(zip(old, new), 1):
        if a != b:
            return f"line {i} of {spec_path.name}: `{a.strip()}` is now `{b.strip()}`"
    if len(old) != len(new):
        return f"{spec_path.name} has {len(new)} lines, the run's copy {len(old)}"
    return f"the text of {spec_path.name} is as it was: an imported file or --seed changed"


def changes(run_dir: Path, spec_path: Path, spec_hash: str, state: dict[str, np.ndarray],
            expected: dict[str, np.ndarray]) -> list[str]:
    """What differs between the run (run.json, its copy of the spec, the checkpoint's tensors)
    and the spec now (its hash, its parameters and optimizer state)."""
    found = []
    old_hash = recorded_hash(run_dir)
    if old_hash is not None and old_hash != spec_hash:
        found.append(f"the spec's hash was {old_hash}, now {spec_hash}")
        line = _first_change(run_dir, spec_path)
        if line is not None:
            found.append(line)
    missing = [n for n in expected if n not in state]
    extra = [n for n in state if n not in expected]
    reshaped = [f"{n} {state[n].dtype}{list(state[n].shape)} -> {expected[n].dtype}{list(expected[n].shape)}"
                for n in expected if n in state
                and (state[n].shape != expected[n].shape or state[n].dtype != expected[n].dtype)]
    for what, names in (("new tensors", missing), ("tensors no longer in the model", extra),
                        ("tensors of another shape", reshaped)):
        if names:
            found.append(f"{what}: {_names(names)}")
    return found


def resumable(run_dir: Path, spec_path: Path, spec_hash: str, state: dict[str, np.ndarray],
              expected: dict[str, np.ndarray], force: bool,
              note: Callable[[str], None]) -> dict[str, np.ndarray]:
    """The checkpoint's values to resume from. A changed spec is a RunError saying what changed;
    with `force` a note says it, and tensors that are new or of another shape start from their
    initial values."""
    found = changes(run_dir, spec_path, spec_hash, state, expected)
    if not found:
        return state
    if not force:
        raise RunError(f"--resume: the spec changed since {run_dir} was trained ({'; '.join(found)}); "
                       "train into a new --out folder, or pass --force to continue from the checkpoint "
                       "anyway (--epochs N trains longer without editing the spec)")
    note(f"--force: resuming {run_dir} although the spec changed ({'; '.join(found)}); tensors that are "
         "new or of another shape start from their initial values")
    return {n: v for n, v in state.items() if n in expected
            and v.shape == expected[n].shape and v.dtype == expected[n].dtype}
