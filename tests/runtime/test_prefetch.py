"""runtime/prefetch.py: the background batch thread gives the plain loop's batches, in its order,
raises its errors where they are read, stops when left early, and measures the time waited."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dlspec import data as d
from dlspec import shards
from dlspec.prefetch import Prefetch
from dlspec.spec import model as m


def _split(n: int = 203) -> d.Split:
    rng = np.random.default_rng(1)
    return {"x": rng.normal(size=(n, 3, 4)).astype(np.float32), "y": rng.integers(0, 5, n)}


@pytest.mark.parametrize("shuffle", [True, False])
def test_the_same_batches_in_the_same_order(shuffle: bool) -> None:
    split = _split()
    for epoch in range(3):
        plain = list(d.batches(split, 16, epoch, seed=7, shuffle=shuffle))
        with Prefetch(d.batches(split, 16, epoch, seed=7, shuffle=shuffle), depth=2) as feed:
            fetched = list(feed)
        assert len(fetched) == len(plain) == d.batch_count(split, 16, shuffle)
        for a, b in zip(plain, fetched):
            assert a.keys() == b.keys()
            assert all(np.array_equal(a[k], b[k]) for k in a)


def test_mapped_rows_give_the_in_memory_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A split read through a memory map, batch by batch in the thread, equals the one in memory."""
    split = _split()
    (tmp_path / "set").mkdir()
    for k, v in split.items():
        np.save(tmp_path / "set" / f"{k}.npy", v)
    x = m.TensorDecl(role="input", name="x", dtype="float32", shape=["N", 3, 4])
    net = m.Model(name="net", inputs=[x],
                  targets=[m.TensorDecl(role="target", name="y", dtype="int64", shape=["N"])])
    train = m.Train(data=m.NpzData(kind="npz", path="set", test=0.2, val=0.1))
    in_memory = d.load_dataset(train, net, tmp_path)
    monkeypatch.setattr(shards, "MAP_BYTES", 0)
    mapped = d.load_dataset(train, net, tmp_path)
    assert isinstance(mapped.train["x"], shards.Rows) and not isinstance(in_memory.train["x"], shards.Rows)
    for epoch in range(2):
        with Prefetch(d.batches(mapped.train, 32, epoch, seed=3)) as feed:
            for a, b in zip(d.batches(in_memory.train, 32, epoch, seed=3), feed, strict=True):
                assert all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_an_error_in_the_source_is_raised_where_it_is_read() -> None:
    def source() -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("bad batch")

    with Prefetch(source()) as feed:
        assert next(feed) == 1 and next(feed) == 2
        with pytest.raises(ValueError, match="bad batch"):
            next(feed)


def test_leaving_early_stops_the_thread() -> None:
    made = []

    def endless() -> Iterator[int]:
        i = 0
        while True:
            made.append(i)
            yield i
            i += 1

    with Prefetch(endless(), depth=2) as feed:
        assert [next(feed) for _ in range(3)] == [0, 1, 2]
    assert not any(t.name == "dlspec-prefetch" and t.is_alive() for t in threading.enumerate())
    assert len(made) <= 3 + 2 + 1  # read, queued, and the one it held when told to stop


def test_it_counts_only_the_time_spent_waiting() -> None:
    def slow() -> Iterator[int]:
        for i in range(4):
            time.sleep(0.05)
            yield i

    with Prefetch(slow()) as feed:
        assert list(feed) == [0, 1, 2, 3]
    assert 0.15 <= feed.waited < 1.0  # nothing overlaps the sleeps: about 4 x 0.05 s

    with Prefetch(iter(range(4))) as feed:
        time.sleep(0.05)
        for _ in feed:
            time.sleep(0.05)  # a step long enough for the next item to be ready
    assert feed.waited < 0.02
