"""Self-check results to InfluxDB: one synchronous write per check run, on the scheduler's thread.

The frame pipeline's InfluxDB output has its own queue, spool and worker; check results are a few lines every few
minutes, so they are written here directly with influxdb-client (``/api/v2/write``, InfluxDB 1.8+, 2.x, 3.x and
VictoriaMetrics), with the output's URL, bucket, organisation and token, a short timeout and no client-side
retries.  Lines that cannot be written are counted, logged and kept in a small bounded backlog that goes first in
the next write; when the backlog is full the oldest lines are dropped (and counted).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from appliance.config import InfluxConfig

__all__ = ["InfluxWriter"]

_LOG = logging.getLogger(__name__)


class InfluxWriter:
    """Writes line protocol (second precision) to ``cfg``; never raises."""

    def __init__(self, cfg: InfluxConfig, backlog: int) -> None:
        self.cfg = cfg
        self._backlog: deque[str] = deque(maxlen=backlog)
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None

    def counters(self) -> dict[str, Any]:
        return {
            "written": self.written,
            "failed": self.failed,
            "dropped": self.dropped,
            "backlog": len(self._backlog),
            "last_error": self.last_error,
        }

    def write(self, lines: list[str]) -> bool:
        """Write the backlog then ``lines``; True on success.  On failure they all wait in the backlog."""
        pending = [*self._backlog, *lines]
        if not pending:
            return True
        try:
            self._post(pending)
        except Exception as e:
            self.failed += len(lines)
            self.last_error = _reason(e)
            room = self._backlog.maxlen or 0
            overflow = max(0, len(pending) - room)
            self.dropped += overflow
            self._backlog.clear()
            self._backlog.extend(pending[overflow:])
            _LOG.warning(
                "checks: %d result line(s) not written to InfluxDB %s (%s); %d kept for the next run, %d dropped",
                len(lines),
                self.cfg.url,
                self.last_error,
                len(self._backlog),
                overflow,
            )
            return False
        self.written += len(pending)
        self.last_error = None
        self._backlog.clear()
        return True

    def _post(self, lines: list[str]) -> None:
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.domain.write_precision import WritePrecision

        from appliance.outputs.influx import make_client

        with make_client(self.cfg) as client:
            client.write_api(write_options=SYNCHRONOUS).write(
                bucket=self.cfg.bucket,
                org=self.cfg.org or "-",
                record="\n".join(lines),
                write_precision=WritePrecision.S,
            )


def _reason(exc: BaseException) -> str:
    """A short, single-line reason: the HTTP status and message, or the innermost network error."""
    status = getattr(exc, "status", None) or getattr(getattr(exc, "response", None), "status", None)
    if isinstance(status, int) and status:
        body = " ".join(str(getattr(exc, "message", "") or "").split())[:200]
        return f"HTTP {status}" + (f": {body}" if body else "")
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, TimeoutError):
            return "timed out"
        nxt = getattr(e, "reason", None)
        e = nxt if isinstance(nxt, BaseException) else (e.__cause__ or e.__context__)
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]
