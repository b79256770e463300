"""Open TCP ports of a machine, with nmap, compared with the ports expected open (docs/NETWORK.md §5).

nmap runs as a subprocess with a timeout (killed past it), so a scan that hangs costs its timeout and nothing
else.  The command is always ``nmap -sT -Pn -n --open -p PORTS -oX - HOST``: a connect scan gives the same results
as root or not (as root nmap would pick a SYN scan), ``-Pn`` skips host discovery (which, unprivileged, can call a
live host down), ``-n`` skips reverse DNS.  The XML is read with the standard library; nmap exits 0 even when no
host was scanned (a name that does not resolve, a host down), so the run statistics are read too, and a
``<service>`` element is optional.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from appliance.checks.ports.config import PortsCheckConfig, PortsTargetConfig
from appliance.checks.results import ERROR, OK, PROBLEM, CheckResult
from appliance.errors import ApplianceError

__all__ = ["PortsCheck", "ScanError", "ScanReport", "check_target", "nmap_args", "parse_nmap_xml", "port_list", "scan"]

MAX_OUTPUT = 16 * 1024 * 1024  # bytes of XML accepted from a (possibly remote) nmap


class ScanError(ApplianceError):
    """The scan could not be done or its output could not be read; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class ScanReport:
    """What one nmap run found: the open ports of ``host`` (``services`` maps a port to its guessed name)."""

    host: str
    open: frozenset[int]
    services: dict[int, str]
    elapsed_s: float


def nmap_args(nmap: str, host: str, ports: str) -> list[str]:
    """The argument vector; ``host`` and ``ports`` are validated by the configuration (no leading '-').

    An IPv6 address needs ``-6``: without it nmap skips the target and still exits 0.
    """
    try:
        family = ["-6"] if ipaddress.ip_address(host).version == 6 else []
    except ValueError:
        family = []
    return [nmap, *family, "-sT", "-Pn", "-n", "--open", "-p", ports, "-oX", "-", host]


def port_list(ports: set[int] | frozenset[int]) -> str:
    """``{443, 22}`` -> ``"22,443"`` (the form stored in InfluxDB string fields and shown to people)."""
    return ",".join(str(p) for p in sorted(ports))


def parse_nmap_xml(text: str | bytes, host: str) -> ScanReport:
    """The open TCP ports in nmap's ``-oX`` output; raises :class:`ScanError` if no host was scanned."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if b"<!ENTITY" in data:  # nmap never declares entities: refuse expansion tricks from a hostile peer
        raise ScanError("nmap output declares XML entities: refused")
    try:
        root = ET.fromstring(data)  # noqa: S314 - no entities (checked above); expat limits amplification
    except ET.ParseError as e:
        raise ScanError(f"nmap output is not valid XML ({e})") from None
    if root.tag != "nmaprun":
        raise ScanError(f"not nmap XML output (root element <{root.tag}>)")
    finished = root.find("runstats/finished")
    if finished is None:
        raise ScanError("nmap output is incomplete (no run statistics): the scan was interrupted")
    if finished.get("exit") == "error":
        raise ScanError(f"nmap failed: {finished.get('errormsg') or 'no message'}")
    hosts = root.find("runstats/hosts")
    if hosts is None or hosts.get("up", "0") == "0":
        summary = finished.get("summary") or "no host up"
        raise ScanError(f"{host} was not scanned ({summary.strip()})")
    open_ports: set[int] = set()
    services: dict[int, str] = {}
    for port in root.iterfind("host/ports/port"):
        state = port.find("state")
        if port.get("protocol") != "tcp" or state is None or state.get("state") != "open":
            continue
        number = int(port.get("portid", "0"))
        open_ports.add(number)
        service = port.find("service")  # often missing with -sT and no -sV
        if service is not None and service.get("name"):
            services[number] = service.get("name", "")
    try:
        elapsed = float(finished.get("elapsed", "0"))
    except ValueError:
        elapsed = 0.0
    return ScanReport(host, frozenset(open_ports), services, elapsed)


def _first_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else "no message"


def scan(nmap: str, host: str, ports: str, timeout: float) -> ScanReport:
    """Run nmap locally; raises :class:`ScanError` (nmap missing, killed at ``timeout``, failed, no host)."""
    argv = nmap_args(nmap, host, ports)
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise ScanError(f"{nmap} not found: install nmap (apt-get install nmap)") from None
    except PermissionError:
        raise ScanError(f"{nmap} is not executable") from None
    except subprocess.TimeoutExpired:
        raise ScanError(f"nmap did not finish within {timeout:.3g} s (killed): {shlex.join(argv)}") from None
    if proc.returncode != 0:
        raise ScanError(f"nmap exited with status {proc.returncode}: {_first_line(proc.stderr)}")
    if len(proc.stdout) > MAX_OUTPUT:
        raise ScanError(f"nmap output larger than {MAX_OUTPUT} bytes")
    return parse_nmap_xml(proc.stdout, host)


def check_target(cfg: PortsCheckConfig, target: PortsTargetConfig, deadline: float) -> CheckResult:
    """Scan one target and compare with its expected ports: unexpected open ports and expected ones found closed
    are a problem; a scan that could not be done is an error."""
    start = time.monotonic()
    timeout = max(0.1, min(cfg.timeout, deadline - start))
    try:
        report = scan(cfg.nmap, target.host, target.ports, timeout)
    except ScanError as e:
        return CheckResult(
            "ports", target.host, ERROR, str(e), {"ports": target.ports}, duration_s=time.monotonic() - start
        )
    expected = frozenset(target.expected)
    unexpected = report.open - expected
    missing = expected - report.open
    problems = []
    if unexpected:
        problems.append(f"unexpected open: {port_list(unexpected)}")
    if missing:
        problems.append(f"expected but not open: {port_list(missing)}")
    summary = f"{target.host}: open {port_list(report.open) or 'none'}"
    details = {
        "ports": target.ports,
        "open": sorted(report.open),
        "expected": sorted(expected),
        "unexpected": sorted(unexpected),
        "missing": sorted(missing),
        "services": {str(p): name for p, name in sorted(report.services.items())},
    }
    fields: dict[str, bool | int | float | str] = {
        "open": len(report.open),
        "ports": port_list(report.open),
        "unexpected": len(unexpected),
        "unexpected_ports": port_list(unexpected),
        "missing": len(missing),
        "missing_ports": port_list(missing),
    }
    return CheckResult(
        "ports",
        target.host,
        PROBLEM if problems else OK,
        summary + ("; " + "; ".join(problems) if problems else ", as expected"),
        details,
        measurement="ports",
        tags={"target": target.host},
        fields=fields,
        duration_s=time.monotonic() - start,
    )


class PortsCheck:
    """The registered ``ports`` check: every target of ``[checks.ports]``, one result each."""

    def __init__(self, cfg: PortsCheckConfig) -> None:
        self.cfg = cfg

    def run(self, deadline: float) -> list[CheckResult]:
        return [check_target(self.cfg, t, deadline) for t in self.cfg.targets]
