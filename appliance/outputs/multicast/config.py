"""``[outputs.multicast]``: the UDP multicast output's settings (docs/DATA_FORMAT.md section 3)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.config import ipv4_packed, measurement_name, opt

__all__ = ["MulticastConfig"]


def _multicast_group(value: str) -> str | None:
    addr = ipv4_packed(value)
    if addr is None:
        return f"not an IPv4 address: {value!r}"
    if not 224 <= addr[0] <= 239:
        return f"{value} is not a multicast address (224.0.0.0/4)"
    if addr[:3] == bytes((224, 0, 0)):
        return f"{value} is in 224.0.0.0/24, reserved for link-local control traffic"
    return None


def _interface(value: str) -> str | None:
    if not value:
        return None
    if ipv4_packed(value) is not None:
        return None
    if len(value) > 15 or not value.replace("-", "").replace("_", "").replace(".", "").isalnum():
        return f"neither an IPv4 address nor an interface name: {value!r}"
    return None


@dataclass(frozen=True)
class MulticastConfig:
    """UDP multicast: every frame, in real time, to every listener on the LAN (teleinfo listen, Telegraf...)."""

    enabled: bool = opt(True, "Send frames to the multicast group.")
    group: str = opt(
        "239.255.42.1", "Multicast group (keep it in 239.255.0.0/16, the IPv4 local scope).", check=_multicast_group
    )
    port: int = opt(4242, "UDP port.", lo=1, hi=65535)
    ttl: int = opt(1, "Multicast TTL: 1 keeps datagrams on the local network.", lo=0, hi=255)
    interface: str = opt(
        "",
        'Outgoing interface, by IPv4 address or name ("" = the system\'s route). The simulator demo uses 127.0.0.1.',
        check=_interface,
    )
    format: Literal["influx", "json"] = opt(
        "influx", "influx: InfluxDB line protocol (Telegraf socket_listener, InfluxDB UDP); json: decoded frames."
    )
    precision: Literal["s", "ms", "us", "ns"] = opt(
        "ns", "Timestamp precision of the line protocol (ns is what Telegraf and InfluxDB's UDP listener expect)."
    )
    measurement: str = opt("teleinfo", "Measurement name of the line protocol.", check=measurement_name)
    queue_size: int = opt(1000, "Frames queued for this output before the oldest are dropped.", lo=1, hi=1_000_000)
