"""Fan-out isolation: one blocked, failing or dead output never delays the reader or the other outputs.

The outputs here are small in-test classes: the point is the worker and queue logic, and a blocking or dying
output on demand is something no real server provides.
"""

from __future__ import annotations

import threading
import time

import pytest

from appliance.outputs.base import Fanout, OutputWorker
from appliance.stats import Stats
from appliance.tic import Frame

from .util import wait_until


def frame(i: int) -> Frame:
    return Frame("historique", {"ADCO": "012345678901", "PAPP": i})


class Recorder:
    durable = False

    def __init__(self, name: str = "rec") -> None:
        self.name = name
        self.got: list[int] = []
        self.closed = False

    def open(self) -> None:
        pass

    def send(self, f: Frame) -> None:
        self.got.append(int(f.values["PAPP"]))

    def close(self) -> None:
        self.closed = True


class Blocked(Recorder):
    def __init__(self) -> None:
        super().__init__("blocked")
        self.release = threading.Event()

    def send(self, f: Frame) -> None:
        self.release.wait(30)
        super().send(f)


class Flaky(Recorder):
    """Fails the first ``n`` sends."""

    def __init__(self, n: int, durable: bool) -> None:
        super().__init__("flaky")
        self.n = n
        self.durable = durable

    def send(self, f: Frame) -> None:
        if self.n > 0:
            self.n -= 1
            raise OSError("network is unreachable")
        super().send(f)


def test_blocked_output_delays_neither_reader_nor_others() -> None:
    stats = Stats()
    blocked, rec = Blocked(), Recorder()
    fan = Fanout([OutputWorker(blocked, stats, queue_size=50), OutputWorker(rec, stats, queue_size=50)])
    fan.start()
    for i in range(200):  # would hang here if submit waited for the blocked output
        fan.submit(frame(i))
    # Wait for the healthy output to have taken everything it was handed, not merely 50 frames: when its worker
    # ran during the loop (a loaded machine switches threads more often), 50 frames were in before the last.
    wait_until(lambda: len(rec.got) >= 50 and stats.snapshot().outputs["rec"].queued == 0)
    assert rec.got[-1] == 199  # the healthy output got the latest frames while the other was stuck
    s = stats.snapshot().outputs
    assert s["blocked"].dropped >= 149  # drop-oldest overflow, counted
    assert s["blocked"].queued <= 50
    blocked.release.set()
    wait_until(lambda: stats.snapshot().outputs["blocked"].queued == 0)
    assert blocked.got[-1] == 199  # the newest frames were kept, the oldest dropped
    fan.stop(2)


def test_overflow_drops_oldest_and_counts() -> None:
    stats = Stats()
    w = OutputWorker(Recorder(), stats, queue_size=3)  # not started: nothing is consumed
    for i in range(10):
        w.submit(frame(i))
    assert [int(f.values["PAPP"]) for f in w._queue] == [7, 8, 9]
    assert stats.snapshot().outputs["rec"].dropped == 7


def test_best_effort_output_counts_failures_and_moves_on() -> None:
    stats = Stats()
    flaky = Flaky(3, durable=False)
    w = OutputWorker(flaky, stats, backoff_initial=0.01, backoff_max=0.02)
    w.start()
    for i in range(6):
        w.submit(frame(i))
    wait_until(lambda: len(flaky.got) == 3)
    o = stats.snapshot().outputs["flaky"]
    assert o.failed == 3 and o.sent == 3 and o.state == "up"
    assert flaky.got == [3, 4, 5]
    w.stop(2)


def test_durable_output_retries_the_same_frame_in_order() -> None:
    stats = Stats()
    flaky = Flaky(3, durable=True)
    w = OutputWorker(flaky, stats, backoff_initial=0.01, backoff_max=0.02)
    w.start()
    for i in range(5):
        w.submit(frame(i))
    wait_until(lambda: len(flaky.got) == 5)
    assert flaky.got == [0, 1, 2, 3, 4]
    assert stats.snapshot().outputs["flaky"].failed == 3
    w.stop(2)


def test_open_failure_is_retried_with_backoff() -> None:
    class LateOpen(Recorder):
        def __init__(self) -> None:
            super().__init__("late")
            self.attempts = 0

        def open(self) -> None:
            self.attempts += 1
            if self.attempts < 3:
                raise ConnectionRefusedError("connection refused")

    stats = Stats()
    out = LateOpen()
    w = OutputWorker(out, stats, backoff_initial=0.01, backoff_max=0.05)
    w.start()
    w.submit(frame(1))
    wait_until(lambda: out.got == [1])
    assert out.attempts == 3
    w.stop(2)
    assert out.closed and stats.snapshot().outputs["late"].state == "stopped"


@pytest.mark.slow
def test_stop_is_bounded_even_when_an_output_hangs() -> None:
    stats = Stats()
    blocked = Blocked()
    fan = Fanout([OutputWorker(blocked, stats), OutputWorker(Recorder(), stats)])
    fan.start()
    fan.submit(frame(1))
    wait_until(lambda: stats.snapshot().outputs["rec"].sent == 1)
    t0 = time.monotonic()
    fan.stop(1.0)
    assert time.monotonic() - t0 < 2.0
    blocked.release.set()


def test_stop_delivers_what_is_queued() -> None:
    stats = Stats()
    rec = Recorder()
    w = OutputWorker(rec, stats)
    for i in range(100):
        w.submit(frame(i))
    w.start()
    w.stop(3)
    assert rec.got == list(range(100))


class Counting(Recorder):
    """An output with counters of its own (as MQTT's reconnects and skipped frames)."""

    def counters(self) -> dict[str, int]:
        return {"seen": len(self.got)}


def test_an_outputs_own_counters_reach_the_snapshot() -> None:
    stats = Stats()
    out = Counting()
    w = OutputWorker(out, stats, queue_size=10)
    w.start()
    for i in range(3):
        w.submit(frame(i))
    wait_until(lambda: stats.snapshot().outputs["rec"].details == {"seen": 3}, 5)
    w.stop(2.0)
    plain = Stats()
    w2 = OutputWorker(Recorder(), plain, queue_size=10)
    w2.start()
    w2.submit(frame(0))
    wait_until(lambda: plain.snapshot().outputs["rec"].sent == 1, 5)
    w2.stop(2.0)
    assert "details" not in plain.snapshot().outputs["rec"].to_json()  # outputs without counters add nothing
