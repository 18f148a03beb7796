"""A dynamic batcher in the style of Triton's: many task threads, one model thread.

Task threads `submit` an item and wait on its future. The model thread takes the oldest items, up to
`max_batch_size`, as soon as that many are queued or `max_queue_delay_ms` after the oldest one arrived,
whichever comes first, and runs them as one batch. The batch function returns one result per item; an
item's own failure is its result (or exception) alone. If the whole batch call raises, each item is
retried alone, so one poisonous item cannot fail its neighbours.

`admit(item_id)` is asked for each item as its batch forms (the worker uses it to move the job from
preparing to running in the job store; a job canceled meanwhile is dropped there). `cancel(item_id)`
removes an item that is still queued. `shutdown()` finishes the batch in flight and fails the items
still queued with `ShuttingDown`, so their tasks can hand them back to the broker; `abandon()` then
fails the items of a batch that outlived the shutdown's deadline the same way (the batch's late results
are dropped).

Liveness: the model thread calls `tick()` every `tick_s` while idle and between batches, and the batch
function may call it while it works (the worker does, at every sampling step). `seconds_since_tick()`
is then a live signal: a wedged model thread stops ticking, however the process looks from outside.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


class Canceled(Exception):
    """The item was canceled before it ran."""


class ShuttingDown(Exception):
    """The batcher stopped before the item ran; the item should go back to the queue."""


@dataclass
class _Item(Generic[P, R]):
    id: str
    payload: P
    future: Future[R]
    enqueued: float


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    max_batch: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    busy_s: float = 0.0


class DynamicBatcher(Generic[P, R]):
    """run_batch(payloads) -> one result per payload, in order (a result may be an exception instance)."""

    def __init__(
        self,
        run_batch: Callable[[list[P]], Sequence[R | BaseException]],
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 10.0,
        admit: Callable[[str], bool] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        name: str = "batcher",
        tick_s: float = 1.0,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max(0.0, max_queue_delay_ms) / 1000.0
        self.admit = admit
        self.on_batch = on_batch
        self.stats = BatcherStats()
        self._queue: deque[_Item[P, R]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._in_flight: list[_Item[P, R]] = []
        self._tick_s = tick_s
        self._last_tick = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ---------------------------------------------------------------------------------- liveness
    def tick(self) -> None:
        """The model thread is alive and making progress (called from the model thread)."""
        self._last_tick = time.monotonic()

    def seconds_since_tick(self) -> float:
        return time.monotonic() - self._last_tick

    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------------------ task-thread API
    def start(self) -> DynamicBatcher[P, R]:
        self._thread.start()
        return self

    def submit(self, item_id: str, payload: P) -> Future[R]:
        fut: Future[R] = Future()
        with self._cond:
            if self._stopping:
                raise ShuttingDown("the batcher is shutting down")
            self._queue.append(_Item(item_id, payload, fut, time.monotonic()))
            self._cond.notify_all()
        return fut

    def cancel(self, item_id: str) -> bool:
        """Remove a queued item (its future raises Canceled). False if it is running, done or unknown."""
        with self._cond:
            for item in self._queue:
                if item.id == item_id:
                    self._queue.remove(item)
                    break
            else:
                return False
        item.future.set_exception(Canceled(item_id))
        return True

    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def in_flight(self) -> list[str]:
        with self._cond:
            return [it.id for it in self._in_flight]

    def abandon(self) -> list[str]:
        """Fail the items of the batch in flight with ShuttingDown (their results, if they still come,
        are dropped); returns their ids. For a shutdown whose deadline the batch would overrun."""
        with self._cond:
            items = list(self._in_flight)
        out = []
        for item in items:
            if _settle(item.future, exc=ShuttingDown(item.id)):
                out.append(item.id)
        return out

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking items, finish the batch in flight, fail the rest with ShuttingDown."""
        with self._cond:
            self._stopping = True
            left = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for item in left:
            item.future.set_exception(ShuttingDown(item.id))
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --------------------------------------------------------------------------------- model thread
    def _take_batch(self) -> list[_Item[P, R]] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait(self._tick_s)
                self.tick()
            if self._stopping:
                return None
            # Wait for a full batch, but never longer than the delay counted from the oldest item.
            deadline = self._queue[0].enqueued + self.max_queue_delay_s
            while len(self._queue) < self.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                if not self._queue:  # all canceled while waiting
                    return []
            if self._stopping:
                return None
            n = min(self.max_batch_size, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._in_flight = batch
            return batch

    def _loop(self) -> None:
        while True:
            self.tick()
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                self._run(batch)
            except BaseException as exc:  # never let the model thread die with futures unresolved
                log.exception("batch of %d failed outside run_batch", len(batch))
                for item in batch:
                    _settle(item.future, exc=exc)
            finally:
                with self._cond:
                    self._in_flight = []

    def _run(self, batch: list[_Item[P, R]]) -> None:
        admitted: list[_Item[P, R]] = []
        for item in batch:
            try:
                ok = self.admit(item.id) if self.admit is not None else True
            except Exception as exc:
                _settle(item.future, exc=exc)
                continue
            if ok:
                admitted.append(item)
            else:
                _settle(item.future, exc=Canceled(item.id))
        if not admitted:
            return
        t0 = time.perf_counter()
        try:
            results = list(self.run_batch([it.payload for it in admitted]))
            if len(results) != len(admitted):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(admitted)} items")
        except Exception as exc:
            if len(admitted) == 1:
                results = [exc]
            else:
                # Isolate the culprit: run each item alone so the others still get their results.
                log.warning("batch of %d raised %r; retrying its items one by one", len(admitted), exc)
                results = []
                for it in admitted:
                    try:
                        results += list(self.run_batch([it.payload]))[:1]
                    except Exception as item_exc:
                        results.append(item_exc)
        elapsed = time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.items += len(admitted)
        self.stats.max_batch = max(self.stats.max_batch, len(admitted))
        self.stats.sizes[len(admitted)] += 1
        self.stats.busy_s += elapsed
        if self.on_batch is not None:
            try:
                self.on_batch(len(admitted), elapsed)
            except Exception:
                log.exception("on_batch hook failed")
        for item, result in zip(admitted, results, strict=True):
            if isinstance(result, BaseException):
                _settle(item.future, exc=result)
            else:
                _settle(item.future, result=result)


def _settle(future: Future[R], result: R | None = None, exc: BaseException | None = None) -> bool:
    """Resolve a future unless it already is (an abandoned item's late result); True if this did."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        return False
    return True
