"""``[health]``: the health socket's settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.config import ip_address, opt

__all__ = ["HealthConfig"]


@dataclass(frozen=True)
class HealthConfig:
    """Health socket: the state, for HAProxy (agent-check, tcp-check, httpchk), Nagios, nc and curl alike."""

    enabled: bool = opt(
        True,
        "Serve the health socket. A silent client reads one HAProxy agent line; GET or HEAD gets an HTTP/1.0 answer "
        "(200 when up, 503 otherwise) with that line as body; GET /status gets every counter as JSON.",
    )
    bind: str = opt(
        "0.0.0.0",  # noqa: S104 - monitors and load balancers are on the LAN; strangers read only what health needs
        "Address to listen on: 0.0.0.0 for every IPv4 interface (load balancers and monitors on the LAN, which "
        "read only what health needs: see status_detail), 127.0.0.1 for this machine only.",
        check=ip_address,
    )
    port: int = opt(9999, "TCP port.", lo=1, hi=65535)
    down_after: float = opt(
        60.0,
        "Seconds without a valid frame (counted from the start while none has come) before the state is down: "
        '"down 0%". While frames flow: "drain 0%" when every output is failing, "up ready 50%" when some are, '
        'else "up ready 100%".',
        lo=1,
        hi=86400,
    )
    max_connections: int = opt(
        32, "Connections served at once; a further client gets the agent line at once and is closed.", lo=1, hi=1024
    )
    read_timeout: float = opt(
        2.0, "Seconds an HTTP client has to send its request (HAProxy's agent-inter is 2 s).", lo=0.2, hi=60
    )
    max_request_bytes: int = opt(
        4096, "Largest HTTP request head accepted (bytes); a larger one gets 400.", lo=256, hi=65536
    )
    status_detail: Literal["local", "full", "health"] = opt(
        "local",
        'What GET /status shows. "local": every counter to a client on this machine (teleinfo status), and to '
        "others only what health needs (the verdict, frame counts and age, the source's and each output's "
        'state); "full": every counter to everyone; "health": only what health needs, to everyone. Errors, '
        "self-check results (public address, open ports of other machines) and the version are counters "
        "strangers on the LAN do not need. Credentials written in URLs are redacted whatever the setting.",
    )
    expose_meter: bool = opt(
        False, "Include the meter address (personal data) in health answers; without it, it is never shown."
    )
