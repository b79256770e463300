"""When the tariff record is published: the bridge between the reader's frames and the fan-out.

The service (phase 2b) builds one :class:`TariffPublisher` around its :class:`~appliance.tariff.TariffKeeper` and
``Service.publish``, and hands it every frame::

    tariff = TariffPublisher(keeper, service.publish)
    ...
    tariff.on_frame(frame)          # in the reader's loop, after the fan-out got the frame

Every frame is counted; a :class:`~appliance.records.TariffRecord` is published when the period, a Tempo colour
or the local day changes, and otherwise at most once every ``interval`` seconds (a minute), by the frames'
reception times.  When the day changes, the record of the day that ended is published first, stamped with its
last second: the last point of every day (and of every month) holds its whole total, including the part of a
gap the engine spread over that day, which is what the dashboards' "last value of the day" queries read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from appliance.records import Record, TariffRecord
from appliance.tic import Frame

if TYPE_CHECKING:  # the engine is loaded by whoever builds one: the lane sizes (tariff.lines) need none of it
    from appliance.tariff.engine import TariffEngine
    from appliance.tariff.store import TariffKeeper

__all__ = ["INTERVAL", "RECORDS_PER_HOUR", "TariffPublisher"]

INTERVAL: Final = 60.0  # seconds: the record is at most this old when nothing else changes
#: Records in an hour, at most for any real meter: one a minute, and a few more for the changes of period, of
#: Tempo colour (announced once a day) and of day (two records), each of which restarts the minute.
RECORDS_PER_HOUR: Final = int(3600 / INTERVAL) + 4


class TariffPublisher:
    """Counts frames with ``counter`` (a :class:`TariffKeeper`, which also saves the state, or a bare
    :class:`TariffEngine`) and publishes the record through ``publish``; never raises for a frame it cannot use
    (no reception time)."""

    def __init__(
        self, counter: TariffKeeper | TariffEngine, publish: Callable[[Record], None], interval: float = INTERVAL
    ) -> None:
        from appliance.tariff.engine import TariffEngine

        self.counter = counter
        self.engine = counter if isinstance(counter, TariffEngine) else counter.engine
        self.publish = publish
        self.interval = interval
        self.published = 0
        self._last_t: float | None = None
        self._last_key: tuple[Any, ...] | None = None

    def on_frame(self, frame: Frame) -> TariffRecord | None:
        """Count ``frame``; publish and return the record when one is due (else None)."""
        if frame.received_at is None:
            return None
        at = datetime.fromtimestamp(frame.received_at, UTC)
        self.counter.update_frame(frame.mode, frame.values, frame.meter, at)
        return self.maybe_publish(at)

    def maybe_publish(self, at: datetime) -> TariffRecord | None:
        """Publish the record at ``at`` if the period, a colour or the day changed, or ``interval`` passed."""
        engine = self.engine
        local = at.astimezone(engine.tz)
        live = engine.live
        tempo = engine.tempo() or {}
        key = (local.date(), live.period if live else None, tempo.get("today"), tempo.get("tomorrow"))
        t = at.timestamp()
        last_t, last_key = self._last_t, self._last_key
        due = last_key is None or key != last_key or last_t is None or not 0 <= t - last_t < self.interval
        if not due:
            return None
        if last_key is not None and last_t is not None and key[0] > last_key[0]:
            # The day that ended, stamped with its last second: its complete totals.
            closing = datetime.combine(key[0], datetime.min.time(), tzinfo=engine.tz) - timedelta(seconds=1)
            if closing.timestamp() > last_t:
                self._send(TariffRecord.from_engine(engine, closing))
        record = TariffRecord.from_engine(engine, local)
        self._send(record)
        self._last_t, self._last_key = t, key
        return record

    def _send(self, record: TariffRecord) -> None:
        self.publish(record)
        self.published += 1
