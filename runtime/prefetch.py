"""The next batch made by a background thread while the current step runs, and the time the
training loop spent waiting for it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Generic, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL = 0.1  # seconds a blocked producer waits before looking whether it was stopped


class Prefetch(Generic[T]):
    """The items of `source`, in its order, made `depth` ahead by one thread (numpy's gathers and
    onnxruntime's steps let go of the GIL, so the two overlap). `waited`: seconds the consumer spent
    blocked on the next item. An error in `source` is raised by the next() that reaches it. Use it in
    a `with`: leaving early stops the thread."""

    def __init__(self, source: Iterable[T], depth: int = 2):
        self.waited = 0.0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(iter(source),), daemon=True,
                                        name="dlspec-prefetch")
        self._thread.start()

    def _produce(self, items: Iterator[T]) -> None:
        try:
            for item in items:
                if not self._put(item):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            self._put(_Failed(err))
            return
        self._put(_DONE)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetch[T]:
        return self

    def __next__(self) -> T:
        try:
            item = self._queue.get_nowait()  # ready: no wait (a thread switch inside get is not one)
        except queue.Empty:
            start = time.perf_counter()
            item = self._queue.get()
            self.waited += time.perf_counter() - start
        if item is _DONE:
            self._queue.put(_DONE)  # a further next() stops again rather than blocking
            raise StopIteration
        if isinstance(item, _Failed):
            raise item.error
        return item  # type: ignore[return-value]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error
