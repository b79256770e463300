"""``[checks]``: the self-checks' common settings and one table per registered check
(:data:`appliance.checks.CHECKS`), each defined next to its check (``appliance/checks/<name>/config.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.checks.peers.config import PeersCheckConfig
from appliance.checks.ports.config import PortsCheckConfig, nmap_ports
from appliance.checks.public_ip.config import PublicIpCheckConfig
from appliance.config import opt, section

__all__ = ["ChecksConfig"]


@dataclass(frozen=True)
class ChecksConfig:
    """Network self-checks: public IP, open ports (nmap), SSH peers comparing the ports they see.  Results go to
    InfluxDB (outputs.influxdb, when enabled), to the health socket's /status and to "teleinfo check"."""

    enabled: bool = opt(False, "Run the checks periodically inside the service (teleinfo check works either way).")
    deadline: float = opt(
        300.0, "Hard limit of one check run (s): past it the run is reported as failed and abandoned.", lo=5, hi=7200
    )
    backlog: int = opt(1000, "Result points kept in memory while InfluxDB cannot be written.", lo=0, hi=100_000)
    public_ip: PublicIpCheckConfig = section(PublicIpCheckConfig)
    ports: PortsCheckConfig = section(PortsCheckConfig)
    peers: PeersCheckConfig = section(PeersCheckConfig)

    def validate(self) -> list[tuple[str, str]]:
        errors: list[tuple[str, str]] = []
        for i, t in enumerate(self.ports.targets):
            if not t.host:
                errors.append((f"ports.targets[{i}].host", "is required"))
            if nmap_ports(t.ports) is None:
                ranges = [[int(b) for b in part.split("-")] for part in t.ports.split(",")]
                outside = [p for p in t.expected if not any(r[0] <= p <= r[-1] for r in ranges)]
                if outside:
                    errors.append((f"ports.targets[{i}].expected", f"{outside} not in the scanned ports {t.ports!r}"))
        if self.peers.hosts and not self.ports.targets:
            errors.append(
                ("peers.hosts", "peers scan the ports targets: configure at least one [[checks.ports.targets]]")
            )
        return errors
