"""Logging set-up: syslog priorities for the journal under systemd, timestamps in a terminal.

journald reads a ``<N>`` prefix on each standard-error line as the priority (``SyslogLevelPrefix=`` defaults
to yes), so ``journalctl -p warning`` works without any journald library.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Literal

from appliance.config import opt
from appliance.redaction import RedactingFilter
from appliance.systemd import under_systemd

__all__ = ["LoggingConfig", "setup_logging"]


@dataclass(frozen=True)
class LoggingConfig:
    """Logging (to the journal under systemd, to standard error otherwise)."""

    level: Literal["debug", "info", "warning", "error"] = opt("info", "Minimum level logged.")


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(level: str = "info", handler: logging.Handler | None = None) -> logging.Handler:
    """Configure the root logger once; calling it again (SIGHUP) only changes the level."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    # Third-party chatter (paramiko's transport thread, urllib3 retries) stays at warning unless debugging.
    for noisy in ("paramiko", "urllib3", "influxdb_client"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)
    existing = getattr(root, "_teleinfo_handler", None)
    if existing is not None and handler is None:
        return existing  # type: ignore[no-any-return]
    if existing is not None:
        root.removeHandler(existing)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        if under_systemd():
            handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
        else:
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter())  # credentials written in URLs never reach the journal
    root.addHandler(handler)
    root._teleinfo_handler = handler  # type: ignore[attr-defined]
    return handler
