"""How the installer drives the service: restart it and see whether it came back (systemd on the device).

The installer needs three things of the service manager: re-read the units, restart the service without waiting,
and tell whether the service is running and has sent READY (``Type=notify``) or has given up.  :class:`Systemctl`
does it with ``systemctl``; the tests give the installer a small supervisor with the same three methods, which
runs the unit's own ``ExecStartPre=``/``ExecStart=`` lines with a real ``$NOTIFY_SOCKET``.

Whether the new release is *healthy* is not the manager's business: the installer asks the health socket
(``GET /status``), exactly as a load balancer would (:func:`probe`).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ServiceControl", "ServiceState", "Systemctl", "health_address", "probe", "spooled"]


@dataclass(frozen=True)
class ServiceState:
    """The service as the service manager sees it after an update."""

    ready: bool  # running, READY=1 received
    failed: bool  # the manager gave up on it (start limit, failed state)
    detail: str = ""


class ServiceControl(Protocol):
    def reload_units(self) -> None: ...
    def restart(self) -> None: ...
    def state(self) -> ServiceState: ...


class Systemctl:
    """``teleinfo.service`` through ``systemctl`` (Type=notify: ``active``/``running`` only after READY=1)."""

    def __init__(self, unit: str = "teleinfo.service", systemctl: str = "systemctl") -> None:
        self.unit = unit
        self._systemctl = systemctl

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self._systemctl, *args], capture_output=True, text=True, timeout=60, check=False)

    def reload_units(self) -> None:
        self._run("daemon-reload")

    def restart(self) -> None:
        self._run("reset-failed", self.unit)  # a unit that hit its start limit would refuse the restart
        result = self._run("restart", "--no-block", self.unit)
        if result.returncode != 0:
            raise OSError(f"systemctl restart {self.unit}: {result.stderr.strip()[:200]}")

    def state(self) -> ServiceState:
        result = self._run("show", self.unit, "-p", "ActiveState", "-p", "SubState", "-p", "Result")
        props = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        active, sub = props.get("ActiveState", "?"), props.get("SubState", "?")
        return ServiceState(
            ready=active == "active" and sub == "running",
            failed=active == "failed",
            detail=f"{active}/{sub} ({props.get('Result', '?')})",
        )


def probe(host: str, port: int, timeout: float = 2.0) -> dict[str, Any] | str:
    """The health socket's ``/status`` document, or a short reason it could not be read."""
    from appliance.commands.status import fetch

    try:
        return fetch(host, port, timeout)
    except OSError as e:
        return f"health socket {host}:{port} unreachable ({e.strerror or type(e).__name__})"
    except ValueError as e:
        return f"health socket {host}:{port}: {e}"


def health_address(health: Any) -> tuple[str, int] | None:
    """Where this machine reaches its own health socket (``[health]``), or None when it is disabled."""
    if not health.enabled:
        return None
    host = "127.0.0.1" if health.bind in ("0.0.0.0", "::", "") else health.bind  # noqa: S104 - a bind, not a peer
    return host, health.port


def spooled(doc: dict[str, Any]) -> dict[str, int]:
    """The outputs of a ``/status`` document that hold spooled frames (an outage, or a replay going on)."""
    return {name: o.get("spooled", 0) for name, o in doc.get("outputs", {}).items() if o.get("spooled", 0)}
