"""``[web]``: the live page's HTTP server (docs/WEB.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from appliance.config import ip_address, opt
from appliance.health.config import HealthConfig

__all__ = ["WebConfig"]

#: Bound like the health socket: the same default address, whatever rule decides it there (on the Pi, every
#: interface, since the people who read it are on the LAN; ``teleinfo run --simulate`` moves both to loopback).
HEALTH_BIND: Final = str(next(f.default for f in dataclasses.fields(HealthConfig) if f.name == "bind"))


@dataclass(frozen=True)
class WebConfig:
    """Live page: the meter, the costs per period and the appliance at a glance, for a phone or a computer on the
    home network (http://teleinfo.local:8080/). Read-only; never the meter's address nor the PRM."""

    enabled: bool = opt(True, "Serve the live page.")
    bind: str = opt(
        HEALTH_BIND,
        "Address to listen on, the health socket's by default: 0.0.0.0 for every IPv4 interface (a phone on the "
        "home Wi-Fi), 127.0.0.1 for this machine only.",
        check=ip_address,
    )
    port: int = opt(8080, "TCP port.", lo=1, hi=65535)
    max_clients: int = opt(
        32, "Connections at once (a page makes a few requests and holds one event stream); a further one gets 503.",
        lo=2, hi=1024,
    )  # fmt: skip
    max_subscribers: int = opt(
        8, "Event streams at once (one per open page); a further one gets 503 and the page tries again.", lo=1, hi=256
    )
    request_timeout: float = opt(
        5.0, "Seconds a client has to send its whole request (from the connection on); then 408.", lo=0.5, hi=60
    )
    max_request_bytes: int = opt(
        8192, "Largest request a client may send (request line and headers); a larger one gets 431.", lo=512, hi=65536
    )

    def validate(self) -> list[tuple[str, str]]:
        if self.max_subscribers >= self.max_clients:
            return [("max_subscribers", f"must be under max_clients ({self.max_clients}): a page needs a request too")]
        return []
