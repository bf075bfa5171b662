"""Data-parallel steps without MPI: two ranks as two threads whose `sum` meets at a barrier, run
against one process's train_step on the same global batches."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from dlspec.compiler import TrainingGraphs
from dlspec.data_parallel import DataParallelRunner, shard
from dlspec.distributed import World, digest_of
from dlspec.session import StepRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from train_helpers import compile_training_text  # noqa: E402

PLAIN = """
model m {
  input  x: float32[N, 12]
  target y: int64[N]
  backbone { linear(16) -> gelu -> linear(16) -> tanh }
  head { linear(4) }
  loss cross_entropy(label_smoothing=0.1)
}
train { optimizer adamw(lr=0.01, weight_decay=0.01)  clip grad_norm(0.5)  seed 3 }
"""

NORMED = PLAIN.replace("linear(16) -> gelu", "linear(16) -> bn -> relu").replace("-> tanh", "-> dropout(0.3)")


class ThreadWorld(World):
    """Rank `rank` of `size` threads: `sum` adds every rank's buffer once all have arrived."""

    def __init__(self, rank: int, size: int, shared: dict[str, object]):
        self.rank, self.size = rank, size
        self.shared = shared

    def sum(self, buffer: np.ndarray) -> np.ndarray:
        parts: list[np.ndarray | None] = self.shared["parts"]  # type: ignore[assignment]
        barrier: threading.Barrier = self.shared["barrier"]  # type: ignore[assignment]
        parts[self.rank] = buffer
        barrier.wait()
        total = np.sum(np.stack(parts), axis=0, dtype=np.float32)  # type: ignore[arg-type]
        barrier.wait()  # everyone has read the parts before the next step overwrites them
        return total


def _batches(steps: int, n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((n, 12)).astype(np.float32),
             "y": rng.integers(0, 4, n).astype(np.int64)} for _ in range(steps)]


def _ranks(tg: TrainingGraphs, size: int,
           batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    shared: dict[str, object] = {"parts": [None] * size, "barrier": threading.Barrier(size)}
    results: list[dict[str, np.ndarray]] = [{} for _ in range(size)]

    def rank(r: int) -> None:
        runner = DataParallelRunner(tg, ThreadWorld(r, size, shared), threads=1)
        for step, batch in enumerate(batches, 1):
            runner.run(batch, 0.01, step)
        results[r] = runner.weights()

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_shards_cover_the_batch_once() -> None:
    for n, size in ((64, 2), (7, 3), (2, 4)):
        rows = [shard(n, r, size) for r in range(size)]
        assert [i for s in rows for i in range(n)[s]] == list(range(n))
        assert max(s.stop - s.start for s in rows) - min(s.stop - s.start for s in rows) <= 1


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_train_as_one_process_on_the_global_batch(tmp_path: Path, size: int) -> None:
    tg = compile_training_text(tmp_path, PLAIN)
    batches = _batches(4, 64)
    one = StepRunner(tg.train_step, tg.init, threads=1)
    for step, batch in enumerate(batches, 1):
        one.run(batch, 0.01, step)
    want = one.weights()
    ranks = _ranks(tg, size, batches)
    for name in tg.trainable:
        for got in ranks:
            err = np.linalg.norm(got[name] - want[name]) / np.linalg.norm(want[name])
            assert err < 1e-5, (name, err)
        assert np.array_equal(ranks[0][name], ranks[-1][name])
    moved = max(np.abs(want[n] - tg.init[n]).max() for n in tg.trainable)
    assert moved > 1e-3  # the steps did something to compare


def test_with_batch_norm_and_dropout_the_ranks_stay_bit_identical(tmp_path: Path) -> None:
    tg = compile_training_text(tmp_path, NORMED)
    batches = _batches(3, 64)
    ranks = _ranks(tg, 2, batches)
    assert digest_of(ranks[0]) == digest_of(ranks[1])
    stats = [n for n in tg.init if n.endswith("running_mean")]
    assert stats and not np.array_equal(ranks[0][stats[0]], tg.init[stats[0]])


def test_running_statistics_are_the_mean_of_the_ranks_updates(tmp_path: Path) -> None:
    import onnxruntime as ort

    tg = compile_training_text(tmp_path, NORMED)
    batch = _batches(1, 64)[0]
    after = _ranks(tg, 2, [batch])[0]
    sess = ort.InferenceSession(tg.gradients.SerializeToString())
    names = [i.name for i in sess.get_inputs()]
    stat = next(n for n in tg.init if n.endswith("running_var"))
    updates = []
    for rank in range(2):
        rows = shard(64, rank, 2)
        feeds = {n: tg.init[n] for n in names if n in tg.init}
        feeds.update({"x": batch["x"][rows], "y": batch["y"][rows], "step": np.array(2 + rank, np.int64)})
        updates.append(sess.run([f"{stat}.next"], feeds)[0])
    np.testing.assert_allclose(after[stat], (updates[0] + updates[1]) / 2, rtol=1e-6)
