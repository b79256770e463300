"""``[checks.ports]``: the open-ports check's settings and its targets."""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.config import host_name, opt

__all__ = ["PortsCheckConfig", "PortsTargetConfig", "nmap_ports"]


def nmap_ports(value: str) -> str | None:
    """An nmap ``-p`` list: digits, commas and ranges only (no option can be smuggled in)."""
    if not re.fullmatch(r"\d{1,5}(-\d{1,5})?(,\d{1,5}(-\d{1,5})?)*", value):
        return f'must be an nmap port list such as "22,80,8000-8100" (got {value!r})'
    for part in value.split(","):
        bounds = [int(p) for p in part.split("-")]
        if not all(1 <= b <= 65535 for b in bounds) or bounds != sorted(bounds):
            return f"bad port range {part!r} (ports are 1-65535, low-high)"
    return None


def _ports_list(value: list[int]) -> str | None:
    if any(not 1 <= p <= 65535 for p in value):
        return f"ports are 1-65535 (got {value!r})"
    return None


@dataclass(frozen=True)
class PortsTargetConfig:
    """A machine whose open TCP ports are watched."""

    host: str = opt("", "IP address or host name to scan.", check=host_name, example='"192.168.1.1"')
    ports: str = opt("1-1024", "Ports to scan, nmap's -p syntax (digits, commas, ranges).", check=nmap_ports)
    expected: list[int] = opt(
        [],
        "Ports expected open; any other open port, or one of these closed, is reported.",
        check=_ports_list,
        example="[22, 80]",
    )


@dataclass(frozen=True)
class PortsCheckConfig:
    """Open TCP ports of the targets (nmap connect scan), compared with the expected ones."""

    interval: float = opt(3600.0, "Seconds between two scheduled checks (0 = not scheduled).", lo=0, hi=604800)
    nmap: str = opt("nmap", "The nmap program (a name looked up in PATH, or a path).")
    timeout: float = opt(120.0, "Seconds one nmap run may take before it is killed.", lo=1, hi=3600)
    targets: list[PortsTargetConfig] = opt([], "A target to scan (repeat the table for more).")
