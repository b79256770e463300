"""systemd integration without a dependency: the sd_notify datagram protocol (``man sd_notify``).

``Type=notify`` units get ``$NOTIFY_SOCKET``; ``WatchdogSec=`` gives ``$WATCHDOG_USEC``.  Outside systemd
every call is a no-op, so the service code does not need to know where it runs.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["Notifier", "under_systemd"]

_LOG = logging.getLogger(__name__)


def under_systemd() -> bool:
    """True when started by systemd (its journal captures our standard error)."""
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("JOURNAL_STREAM"))


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING/RELOADING to systemd when ``$NOTIFY_SOCKET`` is set."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._addr: str | None = None
        if path.startswith("@"):  # abstract namespace
            self._addr = "\0" + path[1:]
        elif path.startswith("/"):
            self._addr = path
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        #: How often to ping: half the watchdog timeout, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval: float | None = int(usec) / 2e6 if enabled else None
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, message: str) -> None:
        if self._addr is None:
            return
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._addr)
        except OSError as e:  # systemd went away or the socket is gone: keep running
            _LOG.debug("sd_notify failed: %s", e)

    def ready(self) -> None:
        self.notify("READY=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self, monotonic_usec: int) -> None:
        self.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        """STATUS= shown by ``systemctl status``; sent only when it changed."""
        text = text.replace("\n", " ")
        if text != self._last_status:
            self._last_status = text
            self.notify(f"STATUS={text}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
