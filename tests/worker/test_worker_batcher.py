"""The dynamic batcher's own contract, with a plain function in place of synthesize_batch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from worker.batcher import Canceled, DynamicBatcher, ShuttingDown


class Recorder:
    """Doubles each payload; records the batches it saw; can block on a gate or fail on demand."""

    def __init__(self, gate: threading.Event | None = None, poison: set[int] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate
        self.poison = poison or set()
        self.started = threading.Event()

    def __call__(self, payloads: list[int]) -> list[int | BaseException]:
        self.batches.append(list(payloads))
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if any(p in self.poison for p in payloads) and len(payloads) > 1:
            raise RuntimeError("the whole batch crashed")
        return [ValueError(f"bad {p}") if p in self.poison or p < 0 else 2 * p for p in payloads]


def test_items_submitted_together_form_full_batches_in_order() -> None:
    run = Recorder()
    # A long delay: the first two batches form because they are full, the last one when its delay ends.
    b = DynamicBatcher(run, max_batch_size=4, max_queue_delay_ms=1000).start()
    futures = [b.submit(str(i), i) for i in range(10)]
    assert [f.result(5) for f in futures] == [2 * i for i in range(10)]
    assert run.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert b.stats.batches == 3
    assert b.stats.max_batch == 4
    assert dict(b.stats.sizes) == {4: 2, 2: 1}
    b.shutdown(5)


def test_items_from_many_threads_are_batched() -> None:
    run = Recorder()
    b = DynamicBatcher(run, max_batch_size=8, max_queue_delay_ms=5000).start()
    results: dict[int, int] = {}
    start = threading.Barrier(8)

    def task(i: int) -> None:
        start.wait()
        results[i] = b.submit(f"job-{i}", i).result(5)

    threads = [threading.Thread(target=task, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: 2 * i for i in range(8)}
    assert len(run.batches) == 1 and sorted(run.batches[0]) == list(range(8))
    b.shutdown(5)


def test_a_lone_item_waits_for_company_within_the_delay() -> None:
    # No wall-clock window: an item that arrives while the first one waits joins its batch.
    run = Recorder()
    b = DynamicBatcher(run, max_batch_size=8, max_queue_delay_ms=2000).start()
    f1 = b.submit("a", 1)
    f2 = b.submit("b", 2)
    assert (f1.result(10), f2.result(10)) == (2, 4)
    assert run.batches == [[1, 2]]
    b.shutdown(5)


def test_a_lone_item_runs_alone_once_the_delay_ends() -> None:
    run = Recorder()
    b = DynamicBatcher(run, max_batch_size=8, max_queue_delay_ms=50).start()
    assert b.submit("a", 1).result(10) == 2  # nobody else ever comes: the delay alone releases it
    assert run.batches == [[1]]
    b.shutdown(5)


def test_a_full_batch_does_not_wait_for_the_delay() -> None:
    run = Recorder()
    # A delay far beyond the futures' timeout: only a full batch can be released in time.
    b = DynamicBatcher(run, max_batch_size=2, max_queue_delay_ms=600_000).start()
    f1, f2 = b.submit("a", 1), b.submit("b", 2)
    assert (f1.result(10), f2.result(10)) == (2, 4)
    assert run.batches == [[1, 2]]
    b.shutdown(5)


def test_an_idle_model_thread_keeps_ticking() -> None:
    b = DynamicBatcher(Recorder(), max_batch_size=2, max_queue_delay_ms=10, tick_s=0.05).start()
    first = b.seconds_since_tick()
    time.sleep(0.3)
    # Idle for six tick periods, yet its last tick is recent: the wait loop itself ticks.
    assert b.seconds_since_tick() < 0.3 + first
    assert b.alive()
    b.shutdown(5)
    assert not b.alive()


def test_an_item_failure_fails_that_item_only() -> None:
    run = Recorder()
    b = DynamicBatcher(run, max_batch_size=3, max_queue_delay_ms=5000).start()
    good1, bad, good2 = b.submit("a", 1), b.submit("b", -5), b.submit("c", 3)
    assert good1.result(5) == 2 and good2.result(5) == 6
    with pytest.raises(ValueError, match="bad -5"):
        bad.result(5)
    assert run.batches == [[1, -5, 3]]
    b.shutdown(5)


def test_a_crashing_batch_is_retried_item_by_item() -> None:
    run = Recorder(poison={7})
    b = DynamicBatcher(run, max_batch_size=3, max_queue_delay_ms=5000).start()
    fa, fp, fb = b.submit("a", 1), b.submit("p", 7), b.submit("b", 2)
    assert fa.result(5) == 2 and fb.result(5) == 4
    with pytest.raises(ValueError, match="bad 7"):
        fp.result(5)
    assert run.batches == [[1, 7, 2], [1], [7], [2]]
    b.shutdown(5)


def test_cancel_removes_a_queued_item_but_not_a_running_one() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    b = DynamicBatcher(run, max_batch_size=1, max_queue_delay_ms=0).start()
    running = b.submit("run", 1)
    assert run.started.wait(5)
    queued = b.submit("wait", 2)
    also = b.submit("keep", 3)
    assert b.in_flight() == ["run"]
    assert b.cancel("wait") is True
    assert b.cancel("run") is False
    assert b.cancel("unknown") is False
    with pytest.raises(Canceled):
        queued.result(1)
    gate.set()
    assert running.result(5) == 2 and also.result(5) == 6
    assert run.batches == [[1], [3]]  # the canceled item never reached the model
    b.shutdown(5)


def test_admit_drops_items_refused_when_the_batch_forms() -> None:
    run = Recorder()
    refused = {"b"}
    b = DynamicBatcher(
        run, max_batch_size=3, max_queue_delay_ms=5000, admit=lambda i: i not in refused
    ).start()
    fa, fb, fc = b.submit("a", 1), b.submit("b", 2), b.submit("c", 3)
    assert fa.result(5) == 2 and fc.result(5) == 6
    with pytest.raises(Canceled):
        fb.result(5)
    assert run.batches == [[1, 3]]
    b.shutdown(5)


def test_shutdown_finishes_the_batch_in_flight_and_hands_back_the_rest() -> None:
    gate = threading.Event()
    run = Recorder(gate=gate)
    b = DynamicBatcher(run, max_batch_size=2, max_queue_delay_ms=0).start()
    in_flight = [b.submit("a", 1), b.submit("b", 2)]
    assert run.started.wait(5)
    waiting: list[Future[int]] = [b.submit("c", 3), b.submit("d", 4)]
    stopper = threading.Thread(target=b.shutdown, args=(10,))
    stopper.start()
    time.sleep(0.1)
    assert stopper.is_alive()  # shutdown waits for the batch in flight
    gate.set()
    stopper.join(10)
    assert [f.result(1) for f in in_flight] == [2, 4]
    for f in waiting:
        with pytest.raises(ShuttingDown):
            f.result(1)
    with pytest.raises(ShuttingDown):
        b.submit("e", 5)
    assert run.batches == [[1, 2]]
