"""The output contract and the per-output worker that isolates outputs from the reader and from each other.

Each enabled output gets its own bounded queue and worker thread (Telegraf's per-output buffer): the reader
only appends to the queues, so an output that blocks, fails or dies never delays the reader or another output.
When a queue is full the oldest frame is dropped and counted.  A failing output is retried with capped
exponential backoff, and its state changes are logged once, not once per frame.

An output implements :class:`Output`: ``open``/``send``/``close``, raising on failure.  ``durable`` outputs
(MQTT, InfluxDB) keep a frame that failed and retry it; best-effort ones (UDP multicast) count it as failed and
move on, since a datagram that could not leave now is worthless later.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Protocol

from appliance.stats import Stats
from appliance.tic import Frame

__all__ = ["Fanout", "Output", "OutputWorker"]

_LOG = logging.getLogger(__name__)


class Output(Protocol):
    """What an output module provides (see ``appliance/outputs/*.py``)."""

    name: str
    durable: bool

    def open(self) -> None:
        """Connect; raise on failure (the worker retries with backoff)."""

    def send(self, frame: Frame) -> None:
        """Deliver one frame; raise on failure."""

    def close(self) -> None:
        """Release resources; must not raise and must return within a few seconds."""


class OutputWorker:
    """One output, its bounded drop-oldest queue and its thread."""

    def __init__(
        self,
        output: Output,
        stats: Stats,
        queue_size: int = 1000,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        self.output = output
        self.name = output.name
        self._stats = stats
        self._queue: collections.deque[Frame] = collections.deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._deadline = 0.0
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._thread = threading.Thread(target=self._run, name=f"output-{self.name}", daemon=True)
        stats.output(self.name)

    def start(self) -> None:
        self._thread.start()

    def submit(self, frame: Frame) -> None:
        """Queue a frame; never blocks, never raises.  A full queue drops its oldest frame (counted)."""
        with self._cond:
            dropped = 0
            while len(self._queue) >= self._queue_size:
                self._queue.popleft()
                dropped += 1
            self._queue.append(frame)
            queued = len(self._queue)
            self._cond.notify()
        if dropped:
            self._stats.update_output(self.name, dropped=dropped, queued=queued)
        else:
            self._stats.update_output(self.name, queued=queued)

    def request_stop(self, deadline: float) -> None:
        """Start stopping: keep delivering until ``deadline`` (monotonic), then close."""
        self._deadline = deadline
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float) -> bool:
        """Deliver what can be delivered within ``timeout`` seconds, then close.  True if the thread ended."""
        if not self._stop.is_set():
            self.request_stop(time.monotonic() + max(0.0, timeout - 0.5))
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            _LOG.error("output %s did not stop within %.1f s; abandoning its thread", self.name, timeout)
            return False
        return True

    # --- worker thread ---------------------------------------------------------------------------------
    def _set_state(self, state: str, error: BaseException | None = None) -> None:
        before = self._stats.output(self.name).state
        detail = None if error is None else f"{type(error).__name__}: {error}"
        self._stats.update_output(self.name, state=state, last_error=detail)
        if state == before:
            return
        if state == "failing":
            _LOG.warning("output %s failing: %s", self.name, detail)
        elif state == "up" and before == "failing":
            _LOG.info("output %s recovered", self.name)
        elif state == "up":
            _LOG.info("output %s up", self.name)

    def _next(self) -> Frame | None:
        with self._cond:
            while not self._queue:
                if self._stop.is_set():
                    return None
                self._cond.wait(0.5)
            return self._queue[0]

    def _draining_done(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._deadline

    def _run(self) -> None:
        backoff = self._backoff_initial
        opened = False
        try:
            while not self._draining_done():
                if not opened:
                    try:
                        self.output.open()
                        opened = True
                        backoff = self._backoff_initial
                    except Exception as e:
                        self._set_state("failing", e)
                        if self._stop.is_set():
                            break
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, self._backoff_max)
                        continue
                frame = self._next()
                if frame is None:
                    break
                try:
                    self.output.send(frame)
                except Exception as e:
                    self._stats.update_output(self.name, failed=1)
                    self._set_state("failing", e)
                    if not self.output.durable:
                        self._pop(frame)
                    if self._stop.is_set():
                        if not self.output.durable:
                            continue
                        break
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self._backoff_max)
                    continue
                self._pop(frame)
                backoff = self._backoff_initial
                self._stats.update_output(self.name, sent=1, last_sent_at=time.time())
                self._set_state("up")
        finally:
            try:
                self.output.close()
            except Exception:
                _LOG.exception("output %s: error while closing", self.name)
            left = len(self._queue)
            self._stats.update_output(self.name, state="stopped", queued=left)
            if left:
                _LOG.warning("output %s stopped with %d frames undelivered", self.name, left)

    def _pop(self, frame: Frame) -> None:
        with self._cond:
            if self._queue and self._queue[0] is frame:
                self._queue.popleft()
            queued = len(self._queue)
        self._stats.update_output(self.name, queued=queued)


class Fanout:
    """Hands every frame to every output worker."""

    def __init__(self, workers: list[OutputWorker]) -> None:
        self.workers = workers

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def submit(self, frame: Frame) -> None:
        for w in self.workers:
            w.submit(frame)

    def stop(self, timeout: float) -> None:
        """Stop every worker in parallel within ``timeout`` seconds in total."""
        deadline = time.monotonic() + timeout
        for w in self.workers:  # all of them start draining at once
            w.request_stop(deadline - 0.5)
        for w in self.workers:
            w.stop(max(0.1, deadline - time.monotonic()))
