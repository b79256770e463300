"""Multicast addressing, shared by the sender and the receiver: interfaces by address or by name, group checks.

``IP_MULTICAST_IF`` and ``IP_ADD_MEMBERSHIP`` take an interface by address or, with ``struct ip_mreqn``, by index;
a name is resolved here so the source address is never 0.0.0.0 (Linux receivers drop such datagrams as martian).
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct
from typing import Final

from appliance.config import ipv4_packed

__all__ = ["check_group", "interface_request", "is_ipv4", "membership_request"]

SIOCGIFADDR: Final = 0x8915  # Linux ioctl: an interface's primary IPv4 address


def is_ipv4(value: str) -> bool:
    return ipv4_packed(value) is not None


def _interface_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        # if_nametoindex raises with errno None ("no interface with this name"); give it a real errno.
        raise OSError(errno.ENODEV, f"network interface {name!r} does not exist") from None


def _interface_address(name: str) -> str | None:
    """The interface's primary IPv4 address, or None (no address yet, or not Linux)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
    except OSError:
        return None
    return socket.inet_ntoa(raw[20:24])


def interface_request(interface: str) -> bytes | None:
    """The ``IP_MULTICAST_IF`` value for ``interface`` (address, name, or ``""`` = None: the system's route).

    Raises :class:`OSError` (``ENODEV``) for an interface name that does not exist.
    """
    if not interface:
        return None
    if is_ipv4(interface):
        return socket.inet_aton(interface)
    index = _interface_index(interface)
    addr = _interface_address(interface) or "0.0.0.0"  # noqa: S104 - "no address": the kernel then picks one
    return struct.pack("4s4si", socket.inet_aton("0.0.0.0"), socket.inet_aton(addr), index)  # noqa: S104


def membership_request(group: str, interface: str = "0.0.0.0") -> bytes:  # noqa: S104
    """The ``IP_ADD_MEMBERSHIP`` value: join ``group`` on an interface given by address or by name.

    ``"0.0.0.0"`` (or ``""``) lets the system choose (the default route's interface): right on a Pi with one
    LAN, wrong in tests, which must name 127.0.0.1 or a namespace's address.
    """
    g = socket.inet_aton(group)
    if not interface or is_ipv4(interface):
        return struct.pack("4s4s", g, socket.inet_aton(interface or "0.0.0.0"))  # noqa: S104
    return struct.pack("4s4si", g, socket.inet_aton("0.0.0.0"), _interface_index(interface))  # noqa: S104


def check_group(group: str) -> None:
    addr = ipv4_packed(group)
    if addr is None:
        raise ValueError(f"multicast group {group!r} is not an IPv4 address")
    if not 224 <= addr[0] <= 239:
        raise ValueError(f"{group} is not a multicast group (224.0.0.0/4; use one in 239.255.0.0/16)")
