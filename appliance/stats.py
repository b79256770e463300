"""The appliance's counters, in one place: the health socket, the status command, the LED, the journal summary
and the metrics that go to InfluxDB all read them from here.

Writers are the reader loop (frames, rejects, source state) and each output's worker (sent, failed, dropped,
queue depth, state).  Every method takes one short lock, so readers get a consistent :meth:`Stats.snapshot`
and no writer ever waits on I/O.

Readers get a :class:`StatsSnapshot`: frozen, typed, safe to hand to any thread.  Its :meth:`~StatsSnapshot.to_json`
is the counters' JSON form (``GET /status``, ``teleinfo status``, docs/DATA_FORMAT.md), the only place where the
field names become strings.  Further sections (self-checks, GPIO, the control socket, the journal) are attached
by their producers with :meth:`Stats.set_extra` and travel as JSON-ready data in ``sections``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from appliance.tic import RejectReason

__all__ = ["OutputSnapshot", "OutputStats", "SourceSnapshot", "Stats", "StatsSnapshot"]


@dataclass(frozen=True, slots=True)
class SourceSnapshot:
    """The source at one instant.  ``state`` is ``starting``, ``open``, ``no_data``, ``lost`` or ``closed``."""

    state: str = "starting"
    detail: str = ""
    mode: str | None = None
    reconnects: int = 0
    bytes: int = 0
    since: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class OutputSnapshot:
    """One output at one instant (:class:`OutputStats` copied): ``details`` are the output's own counters,
    ``records`` its record lanes' counters per kind."""

    state: str = "starting"
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    queued: int = 0
    spooled: int = 0
    spool_dropped: int = 0
    spool_error: str | None = None
    last_error: str | None = None
    last_sent_at: float | None = None
    since: float = 0.0
    details: Mapping[str, int] = field(default_factory=dict)
    records: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Every counter; ``details`` and ``records`` only when the output has some."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("details", "records")}
        if self.details:
            doc["details"] = dict(self.details)
        if self.records:
            doc["records"] = {k: dict(v) for k, v in self.records.items()}
        return doc


@dataclass(frozen=True, slots=True)
class StatsSnapshot:
    """Every counter at one instant; what the health state, ``/status``, the status line, the LED and the
    health samples are computed from.  ``meter`` is personal data (shown only where configured)."""

    uptime_s: float = 0.0
    frames: int = 0  # verified frames only (Frame.verified): what health, the LED and the counters call a frame
    groups: int = 0
    rejects: Mapping[str, int] = field(default_factory=dict)
    bad_frames: int = 0  # frames that did not verify (garbage, the wrong speed): not frames, not fresh data
    last_frame_at: float | None = None
    last_frame_age_s: float | None = None
    source: SourceSnapshot = field(default_factory=SourceSnapshot)
    outputs: Mapping[str, OutputSnapshot] = field(default_factory=dict)
    meter: str | None = None
    sections: Mapping[str, Any] = field(default_factory=dict)  # set_extra(): "checks", "control", "gpio", "journal"...

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-ready data: the counters of ``GET /status`` (docs/DATA_FORMAT.md)."""
        return {
            "uptime_s": self.uptime_s,
            "frames": self.frames,
            "groups": self.groups,
            "rejects": dict(self.rejects),
            "bad_frames": self.bad_frames,
            "last_frame_at": self.last_frame_at,
            "last_frame_age_s": self.last_frame_age_s,
            "source": self.source.to_json(),
            "outputs": {name: o.to_json() for name, o in self.outputs.items()},
            **({"meter": self.meter} if self.meter is not None else {}),
            **self.sections,
        }


@dataclass(slots=True)
class OutputStats:
    """Counters of one output.  ``state`` is ``starting``, ``up``, ``failing`` or ``stopped``."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    queued: int = 0
    spooled: int = 0
    spool_dropped: int = 0
    spool_error: str | None = None
    state: str = "starting"
    last_error: str | None = None
    last_sent_at: float | None = None
    since: float = field(default_factory=time.time)
    details: dict[str, int] = field(default_factory=dict)  # the output's own counters (CountingOutput)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # per record kind: its lane's counters


@dataclass(slots=True)
class _SourceStats:
    """What the source last said of itself, for the health line and the live view."""

    state: str = "starting"  # starting | open | no_data | lost | closed
    detail: str = ""
    mode: str | None = None
    reconnects: int = 0
    bytes: int = 0
    since: float = field(default_factory=time.time)


class Stats:
    """Thread-safe counters of the whole pipeline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = time.time()
        self._frames = 0
        self._bad_frames = 0
        self._groups = 0
        self._rejects: Counter[str] = Counter()  # RejectReason keys (a str) or plain strings: equal keys
        self._last_frame_wall: float | None = None
        self._last_frame_mono: float | None = None
        self._source = _SourceStats()
        self._outputs: dict[str, OutputStats] = {}
        self._extra: dict[str, Any] = {}
        self._meter: str | None = None

    # --- writers -----------------------------------------------------------------------------------------
    def frame(
        self,
        groups: int,
        rejected: Counter[RejectReason] | Counter[str] | None = None,
        now: float | None = None,
        *,
        verified: bool = True,
    ) -> None:
        """A frame was decoded (``groups`` valid groups); ``rejected`` are the rejections it added.

        A frame that did not verify (:attr:`Frame.verified`: no valid group, or more rejected than valid) is
        counted in ``bad_frames`` only: garbage between STX and ETX must never look like fresh meter data."""
        with self._lock:
            if rejected:
                self._rejects.update(rejected)
            if not verified:
                self._bad_frames += 1
                return
            self._frames += 1
            self._groups += groups
            self._last_frame_wall = time.time() if now is None else now
            self._last_frame_mono = time.monotonic()

    def rejected(self, delta: Counter[RejectReason] | Counter[str]) -> None:
        """Rejections seen outside a decoded frame (interrupted, overflow, empty...)."""
        if delta:
            with self._lock:
                self._rejects.update(delta)

    def source(
        self,
        state: str | None = None,
        detail: str | None = None,
        *,
        mode: str | None = None,
        reconnect: bool = False,
        nbytes: int = 0,
    ) -> None:
        """Update the source's state; returns nothing, logs nothing (the caller logs state changes)."""
        with self._lock:
            s = self._source
            if state is not None and state != s.state:
                s.state, s.since = state, time.time()
            if detail is not None:
                s.detail = detail
            if mode is not None:
                s.mode = mode
            if reconnect:
                s.reconnects += 1
            s.bytes += nbytes

    def output(self, name: str) -> OutputStats:
        """Register (or get) the counters of output ``name``; mutate them through :meth:`update_output`."""
        with self._lock:
            return self._outputs.setdefault(name, OutputStats())

    def update_output(self, name: str, **changes: Any) -> None:
        """Add to counters (``sent=1``) or set fields (``state="up"``) of output ``name``, atomically.

        Integer counters (sent, failed, dropped) are incremented; everything else is assigned.
        """
        with self._lock:
            o = self._outputs.setdefault(name, OutputStats())
            for key, value in changes.items():
                if key in ("sent", "failed", "dropped"):
                    setattr(o, key, getattr(o, key) + value)
                elif key == "state" and value != o.state:
                    o.state, o.since = value, time.time()
                else:
                    setattr(o, key, value)

    def remove_output(self, name: str) -> None:
        with self._lock:
            self._outputs.pop(name, None)

    def set_meter(self, meter: str) -> None:
        """The meter's address (ADCO/ADSC) last seen: personal data, shown by health answers only if configured."""
        with self._lock:
            self._meter = meter

    def set_extra(self, key: str, value: Any) -> None:
        """Attach a further section to the snapshot (self-check results, GPIO state...)."""
        with self._lock:
            self._extra[key] = value

    def remove_extra(self, key: str) -> None:
        """Drop a section whose producer is gone (self-checks disabled by a reload), so no stale result shows."""
        with self._lock:
            self._extra.pop(key, None)

    # --- readers -----------------------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        with self._lock:
            return self._frames

    def last_frame_age(self) -> float | None:
        """Seconds since the last decoded frame (monotonic), or None if there has been none."""
        with self._lock:
            t = self._last_frame_mono
        return None if t is None else time.monotonic() - t

    def output_states(self) -> dict[str, str]:
        with self._lock:
            return {name: o.state for name, o in self._outputs.items()}

    def snapshot(self) -> StatsSnapshot:
        """Every counter, at once (one lock), as a frozen :class:`StatsSnapshot`."""
        age = self.last_frame_age()
        with self._lock:
            src = self._source
            return StatsSnapshot(
                uptime_s=round(time.time() - self.started_at, 1),
                frames=self._frames,
                groups=self._groups,
                rejects=dict(self._rejects),
                bad_frames=self._bad_frames,
                last_frame_at=self._last_frame_wall,
                last_frame_age_s=None if age is None else round(age, 3),
                source=SourceSnapshot(**{f.name: getattr(src, f.name) for f in fields(SourceSnapshot)}),
                outputs={name: _frozen(o) for name, o in self._outputs.items()},
                meter=self._meter,
                sections=dict(self._extra),
            )


def _frozen(o: OutputStats) -> OutputSnapshot:
    """A copy of an output's counters that nothing can change (its dicts copied too)."""
    values = {f.name: getattr(o, f.name) for f in fields(OutputSnapshot)}
    values["details"] = dict(o.details)
    values["records"] = {k: dict(v) for k, v in o.records.items()}
    return OutputSnapshot(**values)
