"""Training's health, from the gradient norms each step reports (grad_norm, grad_norm:<stage>):
a warning, once per stage, when a stage's gradients vanish (below 1e-6 of the largest stage's)
or explode (past 1e3 times their first epoch's)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

VANISHED = 1e-6  # of the largest stage's norm in the same epoch
EXPLODED = 1e3  # times the stage's norm in the first epoch
GLOBAL_NORM = "grad_norm"  # the train step's output: the norm of all gradients together
PREFIX = "train_grad_norm:"


def stage_norms(record: Mapping[str, object]) -> dict[str, float]:
    """An epoch record's gradient norm per stage."""
    return {k.removeprefix(PREFIX): float(v) for k, v in record.items()  # type: ignore[arg-type]
            if k.startswith(PREFIX)}


def is_health(key: str) -> bool:
    """A step output or record key that is a gradient norm (kept out of progress lines)."""
    return key.startswith(("grad_norm", "train_grad_norm"))


class Watch:
    """Reads each epoch's record; says what went wrong, once per stage and kind."""

    def __init__(self, note: Callable[[str], None], history: Sequence[Mapping[str, object]] = ()):
        self.note = note
        self.first: dict[str, float] = stage_norms(history[0]) if history else {}
        self.told: set[tuple[str, str]] = set()

    def epoch(self, record: Mapping[str, object]) -> list[str]:
        """The warnings this epoch's norms raise (each stage at most once per kind), also noted."""
        norms = stage_norms(record)
        if not norms:
            return []
        if not self.first:
            self.first = dict(norms)
        largest = max(norms.values())
        vanished = [s for s, n in norms.items() if largest > 0 and n < VANISHED * largest]
        exploded = [s for s, n in norms.items()
                    if self.first.get(s, 0.0) > 0 and n > EXPLODED * self.first[s]]
        said = []
        if new := self._new(vanished, "vanish"):
            said.append(f"warning: the gradients of {_list(new, norms)} vanish in epoch {record['epoch']}: "
                        f"below {VANISHED:g} of the largest stage's ({largest:.1e}), so they barely learn "
                        "(saturating activations? no normalisation? the init?)")
        if new := self._new(exploded, "explode"):
            said.append(f"warning: the gradients of {_list(new, norms)} explode in epoch {record['epoch']}: "
                        f"past {EXPLODED:g} times their first epoch's (lower the learning rate? clip the "
                        "gradients?)")
        for line in said:
            self.note(line)
        return said

    def _new(self, stages: list[str], kind: str) -> list[str]:
        new = [s for s in stages if (s, kind) not in self.told]
        self.told.update((s, kind) for s in new)
        return new


def _list(stages: list[str], norms: Mapping[str, float], most: int = 4) -> str:
    shown = ", ".join(f"{s} ({norms[s]:.1e})" for s in stages[:most])
    return shown + (f" and {len(stages) - most} more stages" if len(stages) > most else "")
