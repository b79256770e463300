"""``[checks.peers]``: the SSH peers' settings."""

from __future__ import annotations

from dataclasses import dataclass

from appliance.config import host_name, opt

__all__ = ["PeerConfig", "PeersCheckConfig"]


def _name(value: str) -> str | None:
    if not value or any(c in value for c in ' ,=\\"\n'):
        return f"invalid name {value!r} (no spaces, commas, quotes or '=': it becomes an InfluxDB tag)"
    return None


@dataclass(frozen=True)
class PeerConfig:
    """A machine reached over SSH that scans the same targets, to compare what each vantage point sees."""

    name: str = opt("", "Name of the peer in reports and InfluxDB tags.", check=_name, example='"office"')
    host: str = opt("", "Address or host name of the peer.", check=host_name, example='"192.168.1.20"')
    port: int = opt(22, "SSH port.", lo=1, hi=65535)
    user: str = opt("teleinfo", "User to log in as.")
    key_file: str = opt("", "Private key (Ed25519 recommended) to log in with.", example='"/etc/teleinfo/id_ed25519"')
    nmap: str = opt("nmap", "The nmap program on the peer.")


@dataclass(frozen=True)
class PeersCheckConfig:
    """SSH peers that scan every ports target; every port seen open from one side only is reported."""

    interval: float = opt(3600.0, "Seconds between two scheduled checks (0 = not scheduled).", lo=0, hi=604800)
    known_hosts: str = opt(
        "",
        'Host keys of the peers, written by "teleinfo peers enroll" ("" = known_hosts in the state directory). '
        "Unknown or changed keys are refused.",
    )
    connect_timeout: float = opt(10.0, "Seconds for each of: TCP connect, SSH banner, authentication.", lo=0.5, hi=300)
    command_timeout: float = opt(180.0, "Seconds the remote scan may take.", lo=1, hi=3600)
    hosts: list[PeerConfig] = opt([], "A peer (repeat the table for more).")

    def validate(self) -> list[tuple[str, str]]:
        names = [p.name for p in self.hosts]
        errors: list[tuple[str, str]] = []
        if len(set(names)) != len(names):
            errors.append(("hosts", f"peer names must be unique (got {names})"))
        errors.extend(
            (f"hosts[{i}].{key}", "is required")
            for i, p in enumerate(self.hosts)
            for key in ("name", "host", "key_file")
            if not getattr(p, key)
        )
        return errors
