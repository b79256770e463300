"""The output contract and the per-output worker that isolates outputs from the reader and from each other.

Each enabled output gets its own bounded queue and worker thread (Telegraf's per-output buffer): the reader
only appends to the queues, so an output that blocks, fails or dies never delays the reader or another output.
When a queue is full the oldest frame is dropped and counted.  A failing output is retried with capped
exponential backoff, and its state changes are logged once, not once per frame.

An output implements :class:`Output`: ``open``/``send``/``close``, raising on failure.  Optional abilities are
named protocols the worker checks once, when it is built: :class:`BatchOutput` (several frames per call),
:class:`CountingOutput` (its own counters in ``/status``) and :class:`RecordOutput` (record kinds other than
frames: self-check runs, health samples; :mod:`appliance.records`).  ``durable`` outputs (MQTT, InfluxDB) keep a
frame that failed and retry it; best-effort ones (UDP multicast) count it as failed and move on, since a
datagram that could not leave now is worthless later.

An output whose delivery never has to wait (a non-blocking UDP datagram: :class:`DirectOutput`) is sent to by the
submitting thread itself while it keeps up, with no hand-off to its worker: waking a thread and switching the
interpreter to it costs more than the send.  Anything that would wait or fails still goes through the worker.

Records other than frames are serialised by the output when they are submitted, kept in a small bounded lane per
kind (never spooled: the oldest are dropped and counted beyond it) and sent before any frame, so telemetry never
waits behind an hour of spooled frames.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from appliance.errors import ApplianceError, error_reason
from appliance.outputs.spool import Batch, Spool, fsync_paths
from appliance.records import Record
from appliance.runtime import Backoff
from appliance.stats import Stats
from appliance.tic import Frame

__all__ = [
    "DEFAULT_LANE_SIZE",
    "PROBE_EVERY",
    "BatchOutput",
    "CountingOutput",
    "DirectOutput",
    "Fanout",
    "Output",
    "OutputWorker",
    "PartialDelivery",
    "ProbingOutput",
    "RecordOutput",
    "Rejected",
]

_LOG = logging.getLogger(__name__)
DEFAULT_LANE_SIZE = 1000  # serialised units (lines, messages) of one record kind kept while an output is down
IDLE_WAIT = 5.0  # s: an idle worker's longest sleep (submit, submit_record and request_stop wake it at once)
PROBE_EVERY = 1.0  # seconds between two probes of a failing output's server while it backs off


@runtime_checkable
class Output(Protocol):
    """What every output provides (``appliance/outputs/<name>/``); the worker owns queueing and retries."""

    name: str
    durable: bool

    def open(self) -> None:
        """Connect; raise on failure (the worker retries with backoff)."""

    def send(self, frame: Frame) -> None:
        """Deliver one frame; raise on failure, :class:`Rejected` for a frame the server refused for its content."""

    def close(self) -> None:
        """Release resources; must not raise and must return within a few seconds."""


@runtime_checkable
class BatchOutput(Output, Protocol):
    """An output that delivers several frames per call: the spool's replay, and catching up on a backlog."""

    def send_batch(self, frames: Sequence[Frame]) -> None:
        """Deliver ``frames`` in order or raise; :class:`PartialDelivery` says how many went through first."""


@runtime_checkable
class CountingOutput(Output, Protocol):
    """An output with counts of its own (reconnects, frames skipped on purpose...), shown under ``details``."""

    def counters(self) -> dict[str, int]:
        """The output's own counters, copied into :class:`~appliance.stats.Stats` by the worker."""


@runtime_checkable
class RecordOutput(Output, Protocol):
    """An output that takes records other than frames (:mod:`appliance.records`), of the kinds in ``accepts``.

    :meth:`encode` runs in the producer's thread and turns a record into the units the output sends (lines,
    messages); :meth:`deliver` sends a lane's units, in order, from the worker's thread, raising like ``send``.
    """

    accepts: frozenset[str]

    def encode(self, record: Record) -> list[Any]:
        """The record serialised for this output (an empty list: nothing to send for it)."""

    def deliver(self, units: Sequence[Any]) -> None:
        """Send units made by :meth:`encode`; raise on failure (:class:`Rejected`: refused, never retried)."""


@runtime_checkable
class DirectOutput(Output, Protocol):
    """An output that can try a delivery without ever waiting, from the submitting thread (the reader's).

    :meth:`OutputWorker.submit` calls :meth:`send_now` instead of queueing while the worker is idle and its last
    delivery succeeded; the frame goes to the worker's queue whenever it returns False.
    """

    def send_now(self, frame: Frame) -> bool:
        """Deliver ``frame`` at once if nothing has to wait (no lock held elsewhere, no full buffer); False with
        nothing delivered otherwise, including on an error the worker will meet and report.  Must never block.
        Raises only when a delivery failed half-way (the frame is then counted as failed, as the worker would)."""


@runtime_checkable
class ProbingOutput(Output, Protocol):
    """An output that can tell cheaply whether its server answers (InfluxDB ``/ping``, an MQTT CONNECT)."""

    def probe(self) -> bool:
        """True when the server answers now; within about a second, never raises, sends no data."""


class PartialDelivery(ApplianceError):
    """Raised by ``send_batch`` when only the first ``delivered`` frames went through."""

    def __init__(self, delivered: int, cause: BaseException) -> None:
        super().__init__(f"{delivered} delivered, then {type(cause).__name__}: {cause}")
        self.delivered = delivered
        self.cause = cause


class Rejected(ApplianceError):
    """Raised by ``send``/``send_batch`` when the server refused ``count`` frames for their content (HTTP 400 on a
    field type conflict...) and took the others: retrying refused data can never succeed and would block the
    output forever, so the worker counts them as failed and moves on."""

    def __init__(self, count: int, message: str) -> None:
        super().__init__(message)
        self.count = count


@dataclass(slots=True)
class _Lane:
    """The serialised records of one kind waiting for one output: bounded, drop-oldest, never on disk.

    Counters (in serialised units: line-protocol lines, MQTT messages): ``written`` delivered, ``failed`` units
    whose first delivery attempt failed (retried while they stay), ``dropped`` pushed out by newer ones or
    refused by the server, ``backlog`` waiting now.
    """

    size: int
    units: collections.deque[Any]
    written: int = 0
    failed: int = 0
    dropped: int = 0
    fresh: int = 0  # units added since the last attempt: counted as failed once if that attempt fails
    last_error: str | None = None

    def counters(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "failed": self.failed,
            "dropped": self.dropped,
            "backlog": len(self.units),
            "last_error": self.last_error,
        }


class OutputWorker:
    """One output, its bounded drop-oldest queue and its thread.

    With a ``spool`` (durable outputs) the spool is a write-ahead log: :meth:`submit` appends every frame to it in
    the caller's thread (the reader's) before the worker can send it, so a worker blocked on a hung server never
    holds a frame that only memory knows (``kill -9`` loses nothing).  The worker sends the spool's oldest frames,
    in batches of ``batch_size``, from a copy kept in memory (the newest ``queue_size`` frames: no reading back
    while it keeps up) or read back from disk after an outage or a restart, and consumes them once the server
    has them.  Only when the spool cannot be written (a full disk) do frames wait in the bounded in-memory queue,
    behind the spool, the oldest dropped and counted.  A thread of its own fsyncs records that stay unconsumed for
    the spool's ``fsync_interval`` (power cuts).  An output with ``send_batch`` also gets up to ``batch_size``
    queued frames per call when it has fallen behind.

    While a failing output backs off, an output with ``probe`` (:class:`ProbingOutput`) is asked every
    :data:`PROBE_EVERY` seconds whether its server answers: once it went from silent to answering, the pause
    ends, so the first delivery follows the server's return by about a second, not by the backoff (up to 30 s).
    """

    def __init__(
        self,
        output: Output,
        stats: Stats,
        queue_size: int = 1000,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        spool: Spool | None = None,
        batch_size: int = 500,
        lane_sizes: Mapping[str, int] | None = None,
    ) -> None:
        """``lane_sizes``: units kept per record kind while the output is down (default :data:`DEFAULT_LANE_SIZE`)."""
        self.output = output
        # The optional abilities, looked up once (runtime protocol checks are slow, frames are many).
        self._batch = output if isinstance(output, BatchOutput) else None
        self._counting = output if isinstance(output, CountingOutput) else None
        self._records = output if isinstance(output, RecordOutput) else None
        self._probe = output.probe if isinstance(output, ProbingOutput) else None
        # send_now() from submit() while the worker is idle and its last attempt succeeded (set by the worker
        # only, cleared by submit() when a direct send failed half-way and by request_stop()).
        self._direct = output if isinstance(output, DirectOutput) and spool is None else None
        self._direct_ok = False
        sizes = lane_sizes or {}
        self._lanes: dict[str, _Lane] = {
            kind: _Lane(sizes.get(kind, DEFAULT_LANE_SIZE), collections.deque())
            for kind in (self._records.accepts if self._records is not None else ())
        }
        self._spool = spool
        # Held while the spool is read or written (by the reader in submit(), the worker, the syncer), never
        # during a delivery: stop() may have to save the queue from another thread while this worker is stuck
        # on a dead server.  Taken before _cond, never after it.
        self._spool_lock = threading.RLock()
        self._batch_size = batch_size
        self._spool_error: str | None = None
        self._backlog = spool is not None and len(spool) > 0  # frames from an outage or a previous run to replay
        self.name = output.name
        self._stats = stats
        self._queue: collections.deque[Frame] = collections.deque()  # not on disk (no spool, or it failed)
        # The spool's newest records with where each ends, to send them without reading them back.
        self._cache: collections.deque[tuple[Frame, tuple[int, int]]] = collections.deque()
        self._queue_size = queue_size
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._deadline = 0.0
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._thread = threading.Thread(target=self._run, name=f"output-{self.name}", daemon=True)
        self._syncer = (
            None if spool is None else threading.Thread(target=self._sync, name=f"spool-{self.name}", daemon=True)
        )
        stats.output(self.name)
        if spool is not None:
            stats.update_output(self.name, spooled=len(spool))

    def start(self) -> None:
        self._thread.start()
        if self._syncer is not None:
            self._syncer.start()

    def submit(self, frame: Frame) -> bool:
        """Queue a frame; never blocks on the network, never raises.  With a spool the frame is on disk when this
        returns (one ``write()``; none if the disk is full: then it waits in memory).  A full queue drops its
        oldest frame (counted).  A :class:`DirectOutput` keeping up is sent the frame from here instead.

        True when the worker's thread was woken to deliver it, False when it was delivered here."""
        if self._spool is not None and self._write_ahead(frame):
            return True
        if self._direct_ok and not self._queue and self._send_now(frame):
            return False
        with self._cond:
            dropped = 0
            while len(self._queue) >= self._queue_size:
                self._queue.popleft()
                dropped += 1
            self._queue.append(frame)
            queued = len(self._queue)
            self._cond.notify()
        self._stats.update_output(self.name, dropped=dropped, queued=queued)
        return True

    def _send_now(self, frame: Frame) -> bool:
        """Deliver ``frame`` from the caller's thread (:class:`DirectOutput`); False: queue it for the worker.

        Only with an empty queue (the worker's frame in flight stays at its head until delivered), so frames
        never overtake one another."""
        assert self._direct is not None
        try:
            if not self._direct.send_now(frame):
                return False
        except Exception as e:  # failed half-way: counted as the worker counts it; the worker takes the next ones
            self._direct_ok = False
            self._stats.update_output(self.name, failed=1, last_error=f"{type(e).__name__}: {e}")
            return True
        self._stats.update_output(self.name, sent=1, last_sent_at=time.time())
        return True

    def submit_many(self, frames: Sequence[Frame]) -> None:
        """:meth:`submit` of each frame in order, under one lock and one counters update (``teleinfo replay``
        hands frames over by the batch).  A durable worker writes each ahead as :meth:`submit` does."""
        if not frames:
            return
        if self._spool is not None:  # written ahead one by one: the spool's own order and failure rules
            for frame in frames:
                self.submit(frame)
            return
        with self._cond:
            self._queue.extend(frames)
            dropped = max(0, len(self._queue) - self._queue_size)
            for _ in range(dropped):
                self._queue.popleft()
            queued = len(self._queue)
            self._cond.notify()
        self._stats.update_output(self.name, dropped=dropped, queued=queued)

    def _write_ahead(self, frame: Frame) -> bool:
        """Append ``frame`` to the spool (the caller's thread); False when it must wait in memory instead: the
        disk failed, or frames already wait there (they go first)."""
        assert self._spool is not None
        with self._spool_lock:
            if self._queue:  # only this thread adds to it, and _to_spool() empties it under the spool lock
                return False
            try:
                end = self._spool.append(frame)
            except OSError as e:
                self._spool_failed(e)
                return False
            self._cache_frames([(frame, end)])
            if self._spool_error is not None:
                self._spool_writable()
        # ``spooled`` is the worker's to report: frames it keeps for later (a backlog), not the one it is about
        # to send; it refreshes it after every delivery and every half second while it backs off.
        return True

    def _cache_frames(self, entries: list[tuple[Frame, tuple[int, int]]]) -> None:
        """Remember frames just appended to the spool (its newest records), and wake the worker."""
        with self._cond:
            self._cache.extend(entries)
            while len(self._cache) > self._queue_size:  # still on disk: read back when their turn comes
                self._cache.popleft()
            self._cond.notify()

    def _spool_failed(self, error: OSError) -> None:
        if self._spool_error is None:
            _LOG.error("output %s: cannot write the spool (%s); keeping frames in memory", self.name, error)
        self._spool_error = str(error)
        assert self._spool is not None
        self._stats.update_output(self.name, spool_error=self._spool_error, spooled=len(self._spool))

    def _spool_writable(self) -> None:
        _LOG.info("output %s: spool writable again", self.name)
        self._spool_error = None
        self._stats.update_output(self.name, spool_error=None)

    @property
    def pending(self) -> int:
        """Frames accepted and not yet delivered (those being sent stay counted until the server has them)."""
        return len(self._queue) + (len(self._spool) if self._spool is not None else 0)

    @property
    def kept(self) -> int:
        """Frames the spool keeps for a later delivery (0 without a spool)."""
        return len(self._spool) if self._spool is not None else 0

    def accepts(self, kind: str) -> bool:
        """Whether this output takes records of ``kind`` (frames: every output)."""
        return kind == "frame" or kind in self._lanes

    def submit_record(self, record: Record) -> None:
        """Serialise ``record`` (in the caller's thread) into its lane; never blocks, never raises."""
        lane = self._lanes.get(record.kind)
        if lane is None or self._records is None:
            return
        try:
            units = self._records.encode(record)
        except Exception:  # a bug in one output's serialiser must not reach the producer
            _LOG.exception("output %s: cannot serialise a %s record", self.name, record.kind)
            return
        if not units:
            return
        with self._cond:
            lane.units.extend(units)
            lane.fresh += len(units)
            over = max(0, len(lane.units) - lane.size)
            for _ in range(over):
                lane.units.popleft()
            lane.dropped += over
            lane.fresh = min(lane.fresh, len(lane.units))
            self._cond.notify()
        self._publish_lanes()

    def _publish_lanes(self) -> None:
        with self._cond:
            counters = {kind: lane.counters() for kind, lane in self._lanes.items()}
        self._stats.update_output(self.name, records=counters)

    def _records_waiting(self) -> bool:
        return any(lane.units for lane in self._lanes.values())

    def _send_records(self) -> None:
        """Deliver every lane (oldest first); raises like ``send`` after counting, units kept for the retry."""
        assert self._records is not None
        try:
            for lane in self._lanes.values():
                with self._cond:
                    units = list(lane.units)
                if not units:
                    continue
                refused = 0
                try:
                    self._records.deliver(units)
                except Rejected as e:
                    refused = min(e.count, len(units))
                    lane.last_error = error_reason(e)
                with self._cond:
                    for _ in range(len(units)):
                        lane.units.popleft()
                    lane.fresh = max(0, lane.fresh - len(units))
                    lane.written += len(units) - refused
                    lane.dropped += refused
                    if not refused:
                        lane.last_error = None
        except Exception as e:
            self._records_failed(e)
            raise
        finally:
            self._publish_lanes()

    def _records_failed(self, error: BaseException) -> None:
        """An attempt failed (opening or sending): units never tried before count as failed once."""
        with self._cond:
            for lane in self._lanes.values():
                if lane.fresh:
                    lane.failed += lane.fresh
                    lane.fresh = 0
                if lane.units:
                    lane.last_error = error_reason(error)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def request_stop(self, deadline: float) -> None:
        """Start stopping: keep delivering until ``deadline`` (monotonic), then close."""
        self._deadline = deadline
        self._direct_ok = False  # from now on every frame goes through the worker, which drains and closes
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def stop(self, timeout: float) -> bool:
        """Deliver what can be delivered within ``timeout`` seconds, then close.  True if the thread ended.

        A thread stuck in a delivery (a server that accepts and never answers) is abandoned; what it had not
        delivered is in the spool (written ahead; a queue the spool could not take is tried once more and
        fsynced), so that a restart replays it: nothing accepted is lost to a slow server.
        """
        if not self._stop.is_set():
            self.request_stop(time.monotonic() + max(0.0, timeout - 0.5))
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            saved = self._rescue()
            _LOG.error(
                "output %s did not stop within %.1f s; abandoning its thread%s",
                self.name,
                timeout,
                f" ({saved} queued frames moved to the spool)" if saved else "",
            )
            return False
        return True

    def _rescue(self) -> int:
        """From the stopping thread: what memory still holds to the spool, and the spool fsynced; how many frames
        the spool keeps."""
        if self._spool is None or not self._spool_lock.acquire(timeout=0.5):
            return 0
        try:
            self._to_spool()
            self._spool.sync()
            return len(self._spool)
        except OSError:  # already logged and counted by _to_spool, or a dying card: nothing more to do here
            return len(self._spool)
        finally:
            self._spool_lock.release()

    # --- worker thread ---------------------------------------------------------------------------------
    def _set_state(self, state: str, error: BaseException | None = None) -> None:
        before = self._stats.output(self.name).state
        detail = None if error is None else f"{type(error).__name__}: {error}"
        changes: dict[str, object] = {"state": state}
        if detail is not None:  # else last_error stays: the last problem seen, refused frames included
            changes["last_error"] = detail
        if self._counting is not None:
            changes["details"] = self._counting.counters()
        self._stats.update_output(self.name, **changes)
        if state == before:
            return
        if state == "failing":
            _LOG.warning("output %s failing: %s", self.name, detail)
        elif state == "up" and before == "failing":
            _LOG.info("output %s recovered", self.name)
        elif state == "up":
            _LOG.info("output %s up", self.name)

    def _spooled(self) -> bool:
        return self._spool is not None and len(self._spool) > 0

    def _head(self) -> list[Frame] | None:
        """The oldest frames of the in-memory queue, left there until delivered: up to ``batch_size`` for a
        :class:`BatchOutput`, else one.  Waits for a frame or a record: ``[]`` when records or spooled frames
        wait, None once stopping with nothing left."""
        n = self._batch_size if self._batch is not None else 1
        with self._cond:
            while not self._queue:
                if self._records_waiting() or self._spooled():
                    return []
                if self._stop.is_set():
                    return None
                self._cond.wait(IDLE_WAIT)
            return list(itertools.islice(self._queue, n))

    def _draining_done(self) -> bool:
        return self._stop.is_set() and time.monotonic() >= self._deadline

    def _pause(self, seconds: float) -> None:
        """Wait before retrying.  Frames the spool could not take are tried again meanwhile; a probing output
        ends the pause once its server, silent at first, answers."""
        deadline = time.monotonic() + seconds
        probe = self._probe if seconds > PROBE_EVERY else None
        next_probe = 0.0
        silent = False  # the server was seen not answering during this pause
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            if probe is not None and now >= next_probe:
                if not probe():
                    silent = True
                elif silent:
                    _LOG.info("output %s: the server answers again; retrying now", self.name)
                    return
                else:
                    probe = None  # it answers, yet the delivery failed (a token, a bucket...): the whole backoff
                next_probe = time.monotonic() + PROBE_EVERY
            wait = min(deadline, next_probe if probe is not None else deadline) - time.monotonic()
            if self._spool is None or not self._queue or self._spool_error is not None:  # never spin on a full disk
                self._stop.wait(min(max(0.0, wait), 0.5))
            if self._spool is not None:
                self._to_spool()
                self._stats.update_output(self.name, spooled=len(self._spool))

    def _sync(self) -> None:
        """The syncer thread: fsync the records that stay unconsumed for ``fsync_interval`` (an outage, a hung
        server), never waiting on the network nor holding the spool lock while the card writes.  It sleeps until
        the oldest unsynced record falls due (a whole ``fsync_interval`` while none waits: a healthy output's records
        are consumed within milliseconds), so it wakes about once a second, not four times."""
        assert self._spool is not None
        failed = False
        while True:
            with self._spool_lock:
                wait = self._spool.sync_wait()
            if self._done.wait(wait):
                return
            with self._spool_lock:
                paths = self._spool.sync_due()
            try:
                fsync_paths(paths)
                failed = False
            except OSError as e:
                if not failed:
                    _LOG.error("output %s: cannot fsync the spool: %s", self.name, e)
                failed = True

    def _to_spool(self) -> None:
        """Move the frames waiting in memory to the end of the spool, in order.  A full disk keeps them in memory."""
        assert self._spool is not None
        with self._spool_lock:
            with self._cond:
                frames = list(self._queue)
                self._queue.clear()
            if not frames:
                return
            done = over = 0
            entries: list[tuple[Frame, tuple[int, int]]] = []
            try:
                for frame in frames:
                    entries.append((frame, self._spool.append(frame)))
                    done += 1
                if self._spool_error is not None:
                    self._spool_writable()
            except OSError as e:
                self._spool_failed(e)
                with self._cond:  # back at the front, oldest first; the queue bound still applies
                    self._queue.extendleft(reversed(frames[done:]))
                    over = max(0, len(self._queue) - self._queue_size)
                    for _ in range(over):
                        self._queue.popleft()
            self._cache_frames(entries)
            if over:
                self._stats.update_output(self.name, dropped=over)
            self._stats.update_output(
                self.name,
                queued=len(self._queue),
                spooled=len(self._spool),
                spool_error=self._spool_error,
                spool_dropped=self._spool.dropped,
            )

    def _deliver(self, frames: list[Frame]) -> int:
        """Deliver in order; return how many frames the server refused (:class:`Rejected`), else raise
        (:class:`PartialDelivery` when some were delivered first)."""
        if self._batch is not None:
            try:
                self._batch.send_batch(frames)
            except Rejected as e:
                self._stats.update_output(self.name, last_error=str(e))
                return min(e.count, len(frames))
            return 0
        refused = 0
        for i, frame in enumerate(frames):
            try:
                self.output.send(frame)
            except Rejected as e:
                self._stats.update_output(self.name, last_error=str(e))
                refused += 1
            except Exception as e:
                raise PartialDelivery(i, e) from e
        return refused

    def _count(self, delivered: int, refused: int = 0) -> None:
        if refused:
            self._stats.update_output(self.name, failed=refused)
        if delivered > refused:
            self._stats.update_output(self.name, sent=delivered - refused, last_sent_at=time.time())

    def _spool_batch(self) -> tuple[Batch, bool]:
        """The oldest spooled frames: from the memory copy when it holds them all (True), else read back."""
        assert self._spool is not None
        with self._spool_lock:
            pending = len(self._spool)
            with self._cond:
                while len(self._cache) > pending:  # consumed, or dropped by the spool's bound
                    self._cache.popleft()
                entries = list(itertools.islice(self._cache, self._batch_size)) if len(self._cache) == pending else []
            if entries:
                return self._spool.batch([f for f, _ in entries], [end for _, end in entries]), True
            return self._spool.peek(self._batch_size), False

    def _consumed(self, batch: Batch, count: int | None, cached: bool) -> int:
        """Commit what the server has (``count``: the first frames only); how many frames the spool keeps."""
        assert self._spool is not None
        with self._spool_lock:
            self._spool.commit(batch, count, keep=cached)
            left = len(self._spool)
            with self._cond:
                while len(self._cache) > left:
                    self._cache.popleft()
        self._stats.update_output(self.name, spooled=left)
        if not left and self._backlog:
            self._backlog = False
            _LOG.info("output %s: spool replayed", self.name)
        return left

    def _replay(self) -> None:
        """Send the oldest spooled frames; raises like ``send`` (after committing what was delivered)."""
        assert self._spool is not None
        self._to_spool()  # frames that waited in memory go behind the spool, so the order is kept
        batch, cached = self._spool_batch()
        try:
            refused = self._deliver(batch.frames)
        except PartialDelivery as e:
            self._consumed(batch, e.delivered, cached)
            self._count(e.delivered)
            raise e.cause from e
        # Counters first, as soon as the server has the frames: the commit below does file I/O.
        self._count(len(batch.frames), refused)
        self._consumed(batch, None, cached)

    def _send_queued(self, frames: list[Frame]) -> None:
        """Deliver frames from the head of the queue and pop them; raises like ``send`` after popping what went
        through, so that the failed frame is still at the head."""
        try:
            refused = self._deliver(frames)
        except PartialDelivery as e:
            self._pop(frames[: e.delivered])
            self._count(e.delivered)
            raise e.cause from e
        self._pop(frames)
        self._count(len(frames), refused)

    def _run(self) -> None:
        backoff = self._backoff
        opened = False
        try:
            while not self._draining_done():
                if not opened:
                    try:
                        self.output.open()
                        opened = True
                        backoff.reset()
                    except Exception as e:
                        if self._lanes:
                            self._records_failed(e)
                            self._publish_lanes()
                        self._set_state("failing", e)
                        if self._stop.is_set():
                            break
                        self._pause(backoff.next())
                        continue
                frames: list[Frame] = []
                try:
                    if self._records_waiting():
                        self._send_records()  # telemetry first: it never waits behind spooled frames
                    if self._spooled():
                        self._replay()
                    else:
                        head = self._head()
                        if head is None:
                            break
                        if not head:
                            continue  # records or spooled frames arrived: sent at the top of the loop
                        frames = head
                        self._send_queued(frames)
                except Exception as e:
                    self._direct_ok = False
                    if frames or not self._records_waiting():
                        self._stats.update_output(self.name, failed=1)
                    self._set_state("failing", e)
                    if self._spool is not None:
                        self._to_spool()  # frames waiting in memory, if the disk takes them now
                        self._backlog = self._backlog or self._spooled()
                    elif not self.output.durable:
                        self._pop_failed(frames)  # best effort: a frame that could not leave now is worthless
                    if self._stop.is_set():
                        if self._spool is None and not self.output.durable:
                            continue
                        break
                    self._pause(backoff.next())
                    continue
                backoff.reset()
                self._direct_ok = self._direct is not None and not self._stop.is_set()
                self._set_state("up")
        finally:
            if self._spool is not None:
                with self._spool_lock:
                    try:
                        self._to_spool()  # nothing accepted is lost across a restart
                    finally:
                        self._spool.close()
            self._done.set()
            try:
                self.output.close()
            except Exception:
                _LOG.exception("output %s: error while closing", self.name)
            left = len(self._queue)
            self._stats.update_output(self.name, state="stopped", queued=left)
            if left:
                _LOG.warning("output %s stopped with %d frames undelivered", self.name, left)

    def _pop_failed(self, frames: list[Frame]) -> None:
        """Remove the frame that failed: the first of ``frames`` still at the head (delivered ones are gone)."""
        with self._cond:
            for frame in frames:
                if self._queue and self._queue[0] is frame:
                    self._queue.popleft()
                    break
            queued = len(self._queue)
        self._stats.update_output(self.name, queued=queued)

    def _pop(self, frames: list[Frame]) -> None:
        """Remove delivered frames from the head (those the overflow already dropped are no longer there)."""
        with self._cond:
            for frame in frames:
                if self._queue and self._queue[0] is frame:
                    self._queue.popleft()
            queued = len(self._queue)
        self._stats.update_output(self.name, queued=queued)


class Fanout:
    """Hands every frame to every output worker, and every other record to the workers that take its kind."""

    def __init__(self, workers: list[OutputWorker]) -> None:
        self.workers = workers
        # Durable outputs first: by the time a best-effort one sends a frame (a multicast datagram someone may
        # see), the frame is on disk for every durable one.
        self._submit_order = sorted(workers, key=lambda w: not w.output.durable)

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def submit(self, frame: Frame) -> bool:
        """From the reader: a frame for every output (never blocks on the network).  True when a worker's thread
        was woken to deliver it (False: every output took it directly, :class:`DirectOutput`)."""
        woken = False
        for w in self._submit_order:
            woken = w.submit(frame) or woken
        return woken

    def publish(self, record: Record) -> None:
        """From any producer thread (self-checks, health sampler...): ``record`` for the outputs that take it."""
        for w in self.workers:
            if w.accepts(record.kind):
                w.submit_record(record)

    def request_stop(self, deadline: float) -> None:
        """Every worker starts stopping at once: delivering what it holds until ``deadline`` (monotonic)."""
        for w in self.workers:
            w.request_stop(deadline)

    def stop(self, timeout: float) -> None:
        """Stop every worker in parallel within ``timeout`` seconds in total (draining until 0.5 s before, unless
        :meth:`request_stop` set an earlier deadline)."""
        deadline = time.monotonic() + timeout
        for w in self.workers:  # all of them start draining at once
            if not w.stopping:
                w.request_stop(deadline - 0.5)
        for w in self.workers:
            w.stop(max(0.1, deadline - time.monotonic()))
