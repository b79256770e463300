"""The appliance's own counters in InfluxDB (``teleinfo_health*``, docs/DATA_FORMAT.md section 6).

The health socket and ``teleinfo status`` show the counters of :class:`~appliance.stats.Stats` now; this writes
them to the InfluxDB of ``outputs.influxdb`` every ``health_interval`` seconds so that the network dashboard can
show their history: frames decoded, rejects by reason, each output's failures, drops, queue and spool depth.

Why a thread of its own with :class:`~appliance.checks.writer.InfluxWriter` rather than the frame output: the
output's queue and spool are for frames, in order, and a counter point waiting behind an hour of spooled frames
would be useless when it arrives.  Counters are cumulative since the service started (derivatives and
differences in the dashboards), so a point that is lost costs resolution, never a count; the writer keeps a
small backlog and drops the oldest beyond it.

Every point carries a ``host`` tag (the machine's name) so that several appliances can share one database.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
from typing import Any, Final

from appliance.checks.writer import InfluxWriter
from appliance.config import InfluxConfig
from appliance.stats import Stats
from appliance.tic import REJECT_REASONS

__all__ = ["BACKLOG_LINES", "HealthReporter", "snapshot_lines"]

_LOG = logging.getLogger(__name__)

#: Lines kept for the next write while InfluxDB is unreachable: about an hour of points at the default interval.
BACKLOG_LINES: Final = 1000
_OUTPUT_COUNTERS: Final = ("sent", "failed", "dropped", "queued", "spooled", "spool_dropped")


def _key(value: str) -> str:
    """Measurement names, tag keys and values: escaped, never empty."""
    value = value.replace("\n", " ") or "-"
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _value(value: int | float | str) -> str:
    if isinstance(value, bool):  # never written, but a bool is an int: refuse to write it as one
        raise TypeError("boolean counters are not part of the schema")
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else "0.0"
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'


def _line(measurement: str, tags: dict[str, str], fields: dict[str, int | float | str], ts: int) -> str:
    tag_text = "".join(f",{_key(k)}={_key(v)}" for k, v in sorted(tags.items()))
    field_text = ",".join(f"{_key(k)}={_value(v)}" for k, v in fields.items())
    return f"{_key(measurement)}{tag_text} {field_text} {ts}"


def snapshot_lines(snapshot: dict[str, Any], at: int, host: str) -> list[str]:
    """Line protocol (second precision) for one :meth:`Stats.snapshot`: ``teleinfo_health``, one
    ``teleinfo_health_rejects`` point per reason (every known reason, 0 included, so that the series exist from
    the start) and one ``teleinfo_health_output`` point per output."""
    tags = {"host": host}
    source = snapshot["source"]
    rejects: dict[str, int] = snapshot["rejects"]
    main: dict[str, int | float | str] = {
        "uptime_s": float(snapshot["uptime_s"]),
        "frames": int(snapshot["frames"]),
        "groups": int(snapshot["groups"]),
        "rejects": int(sum(rejects.values())),
        "source_state": str(source["state"]),
        "source_reconnects": int(source["reconnects"]),
        "source_bytes": int(source["bytes"]),
    }
    if snapshot.get("last_frame_age_s") is not None:
        main["last_frame_age_s"] = float(snapshot["last_frame_age_s"])
    lines = [_line("teleinfo_health", tags, main, at)]
    lines.extend(
        _line("teleinfo_health_rejects", tags | {"reason": r}, {"count": rejects.get(r, 0)}, at)
        for r in sorted(set(REJECT_REASONS) | set(rejects))
    )
    for name, out in sorted(snapshot["outputs"].items()):
        fields: dict[str, int | float | str] = {k: int(out[k]) for k in _OUTPUT_COUNTERS}
        fields["state"] = str(out["state"])
        lines.append(_line("teleinfo_health_output", tags | {"output": name}, fields, at))
    return lines


class HealthReporter:
    """Writes :func:`snapshot_lines` every ``cfg.health_interval`` seconds from a daemon thread; never raises."""

    def __init__(self, cfg: InfluxConfig, stats: Stats, host: str | None = None) -> None:
        self.cfg = cfg
        self.stats = stats
        self.host = host or socket.gethostname()
        self.writer = InfluxWriter(cfg, BACKLOG_LINES)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-metrics", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop after at most the write in progress (bounded by the output's timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def report(self) -> bool:
        """Write the counters now; True when written (else they wait in the writer's backlog)."""
        lines = snapshot_lines(self.stats.snapshot(), int(time.time()), self.host)
        ok = self.writer.write(lines)
        self.stats.set_extra("health_metrics", self.writer.counters())
        return ok

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.health_interval):
            try:
                self.report()
            except Exception:  # a bug here must not end the thread: the next interval tries again
                _LOG.exception("health metrics: cannot write the counters")
