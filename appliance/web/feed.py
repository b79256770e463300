"""What the live page shows, kept by the reader's thread and read by the web server's.

The service calls :meth:`LiveFeed.on_frame` for every frame (after the tariff engine counted it); the work per
frame is small: the ``frame`` event (:func:`~appliance.web.live.frame_payload`, one ``json.dumps``), one minute of
the in-memory :class:`~appliance.web.history.PowerHistory` (nothing is written anywhere), and, at most every
:data:`TARIFF_REFRESH_S` seconds or when the tariff publisher just made a record, the tariff snapshot for the
``tariff`` event.  The events go into a bounded queue (:meth:`LiveFeed.take`) that the server drains on its own
thread, woken through ``notify``; the server never touches the engine, whose state belongs to the reader.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo

from appliance.clock import FLOOR
from appliance.tic import Frame
from appliance.web.history import PowerHistory
from appliance.web.live import frame_payload, snapshot_payload, sse_event

if TYPE_CHECKING:
    from appliance.records import TariffRecord
    from appliance.tariff.feed import TariffFeed

__all__ = ["MAX_EVENTS", "TARIFF_REFRESH_S", "LiveFeed"]

TARIFF_REFRESH_S: Final = 5.0  # the page's costs are at most this much behind the frames
MAX_EVENTS: Final = 1024  # events waiting for the server's thread; beyond, the oldest are dropped (counted)


class LiveFeed:
    """The page's data: the last frame, the costs, the 24 h history, and the events not yet sent."""

    def __init__(self, tz: ZoneInfo, tariff: TariffFeed | None = None) -> None:
        self.tz = tz
        self.tariff: TariffFeed | None = None
        self.history = PowerHistory()
        self.notify: Callable[[], None] = lambda: None  # the server's wake()
        self.events_dropped = 0
        self._lock = threading.Lock()
        self._events: collections.deque[bytes] = collections.deque()
        self._frame: dict[str, Any] | None = None
        self._frame_mono = 0.0
        self._tariff: Mapping[str, Any] | None = None
        self._tariff_mono = float("-inf")
        self._record: TariffRecord | None = None
        self.attach(tariff)

    def attach(self, tariff: TariffFeed | None) -> None:
        """Show ``tariff``'s costs (None: no costs), from now on: the ledger it restored is on the page before
        the first frame.  Called from the reader's thread, like :meth:`on_frame`."""
        snapshot = None if tariff is None else tariff.engine.snapshot(datetime.now(self.tz))
        with self._lock:
            self.tariff = tariff
            self._tariff, self._record = snapshot, None
            self._tariff_mono = time.monotonic() if snapshot is not None else float("-inf")

    # --- the reader's thread -----------------------------------------------------------------------------
    def on_frame(self, frame: Frame) -> None:
        t = frame.received_at
        if t is None:
            return
        at = datetime.fromtimestamp(t, self.tz)
        tariff = self.tariff
        engine = tariff.engine if tariff is not None else None
        payload = frame_payload(frame.mode, frame.values, at, engine)
        events = [sse_event("frame", payload)]
        va = payload["power_va"]
        now = time.monotonic()
        snapshot = self._tariff_due(at, now)
        with self._lock:
            self._frame, self._frame_mono = payload, now
            closed = self.history.add(t, va) if va is not None and t >= FLOOR else None
            if snapshot is not None:
                self._tariff, self._tariff_mono = snapshot, now
        if closed is not None:
            events.append(sse_event("history", {"bucket_s": self.history.bucket_s, "point": list(closed)}))
        if snapshot is not None:
            events.append(sse_event("tariff", snapshot))
        self._push(events)

    def _tariff_due(self, at: datetime, now: float) -> Mapping[str, Any] | None:
        """A new tariff snapshot when the publisher made a record, or every few seconds; None if nothing changed."""
        tariff = self.tariff
        if tariff is None:
            return None
        record = tariff.last_record
        if record is not None and record is not self._record:
            self._record = record
            return record.snapshot
        if now - self._tariff_mono < TARIFF_REFRESH_S:
            return None
        snapshot = tariff.engine.snapshot(at)
        old = self._tariff
        if old is not None and {**old, "at": None} == {**snapshot, "at": None}:
            self._tariff_mono = now  # unchanged (a silent meter, nothing counted): no event
            return None
        return snapshot

    def _push(self, events: list[bytes]) -> None:
        with self._lock:
            self._events.extend(events)
            over = len(self._events) - MAX_EVENTS
            for _ in range(max(0, over)):
                self._events.popleft()
            self.events_dropped += max(0, over)
        self.notify()

    # --- the server's thread ---------------------------------------------------------------------------------
    def take(self) -> list[bytes]:
        """The events waiting, oldest first (they leave the queue)."""
        with self._lock:
            events = list(self._events)
            self._events.clear()
        return events

    def snapshot(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /api/snapshot`` (docs/WEB.md section 2), ``status`` being the current status event."""
        now = datetime.now(self.tz)
        with self._lock:
            frame, age = self._frame, time.monotonic() - self._frame_mono
            return snapshot_payload(
                now,
                frame=frame,
                frame_age_s=None if frame is None else age,
                tariff=self._tariff,
                history=self.history,
                status=status,
            )
