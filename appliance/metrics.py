"""The appliance's own counters as records: sampled every ``health_interval`` seconds, written as line protocol.

The health socket and ``teleinfo status`` show the counters of :class:`~appliance.stats.Stats` now; the
:class:`HealthSampler` hands a :class:`~appliance.records.HealthSample` to the fan-out every interval, and the
outputs that take ``health`` records (InfluxDB) write it with :func:`snapshot_lines` (``teleinfo_health*``,
docs/DATA_FORMAT.md section 6), so the network dashboard can show their history: frames decoded, rejects by
reason, each output's failures, drops, queue and spool depth.

Samples travel each output's small record lane, never behind spooled frames: a counter point waiting behind an
hour of frames would be useless when it arrives.  Counters are cumulative since the service started
(derivatives and differences in the dashboards), so a sample that is lost costs resolution, never a count.

Every point carries a ``host`` tag (the machine's name) so that several appliances can share one database.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Final

from appliance.lineproto import encode_line
from appliance.records import HealthSample, Record
from appliance.runtime import stop_thread
from appliance.stats import Stats, StatsSnapshot
from appliance.tic import REJECT_REASONS

__all__ = ["BACKLOG_LINES", "HealthSampler", "snapshot_lines"]

_LOG = logging.getLogger(__name__)

#: Lines kept per output while it is unreachable: about an hour of samples at the default interval.
BACKLOG_LINES: Final = 1000
_OUTPUT_COUNTERS: Final = ("sent", "failed", "dropped", "queued", "spooled", "spool_dropped")


def snapshot_lines(snapshot: StatsSnapshot, at: int, host: str) -> list[str]:
    """Line protocol (second precision) for one :meth:`Stats.snapshot`: ``teleinfo_health``, one
    ``teleinfo_health_rejects`` point per reason (every known reason, 0 included, so that the series exist from
    the start) and one ``teleinfo_health_output`` point per output."""
    tags = {"host": host}
    source = snapshot.source
    rejects = snapshot.rejects
    main: dict[str, int | float | str] = {
        "uptime_s": float(snapshot.uptime_s),
        "frames": snapshot.frames,
        "groups": snapshot.groups,
        "rejects": sum(rejects.values()),
        "source_state": source.state,
        "source_reconnects": source.reconnects,
        "source_bytes": source.bytes,
    }
    if snapshot.last_frame_age_s is not None:
        main["last_frame_age_s"] = float(snapshot.last_frame_age_s)
    lines = [encode_line("teleinfo_health", tags, main, at)]
    lines.extend(
        encode_line("teleinfo_health_rejects", tags | {"reason": r}, {"count": rejects.get(r, 0)}, at)
        for r in sorted(set(REJECT_REASONS) | set(rejects))
    )
    for name, out in sorted(snapshot.outputs.items()):
        fields: dict[str, int | float | str] = {k: int(getattr(out, k)) for k in _OUTPUT_COUNTERS}
        fields["state"] = out.state
        lines.append(encode_line("teleinfo_health_output", tags | {"output": name}, fields, at))
    return lines


def sample_lines(sample: HealthSample) -> list[str]:
    """:func:`snapshot_lines` of a sample."""
    return snapshot_lines(sample.snapshot, int(sample.at), sample.host)


class HealthSampler:
    """Publishes a :class:`HealthSample` every ``interval`` seconds from a daemon thread; never raises.

    ::

        sampler = HealthSampler(stats, fanout.publish, 60.0)
        sampler.start()
        sampler.stop(1.0)
    """

    def __init__(
        self, stats: Stats, publish: Callable[[Record], None], interval: float, host: str | None = None
    ) -> None:
        self.stats = stats
        self.publish = publish
        self.interval = interval
        self.host = host or socket.gethostname()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="health-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        self._stop.set()
        return stop_thread(self._thread, timeout, "health sampler", _LOG)

    def sample(self) -> HealthSample:
        """Take a sample now and publish it."""
        sample = HealthSample(time.time(), self.host, self.stats.snapshot())
        self.publish(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # a bug here must not end the thread: the next interval tries again
                _LOG.exception("health sampler: cannot take a sample")
