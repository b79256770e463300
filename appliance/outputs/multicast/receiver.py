"""Receiving the multicast stream: a socket bound to the group and joined on an explicit interface.

Used by ``teleinfo listen`` and the tests, with :class:`~appliance.outputs.multicast.parts.JsonReassembler` for
the JSON format and :func:`appliance.lineproto.parse_line` for the line protocol.
"""

from __future__ import annotations

import socket
from typing import Final

from appliance.outputs.multicast.addressing import check_group, membership_request

__all__ = ["open_receiver"]

IP_MULTICAST_ALL: Final = 49  # Linux value; Python has no constant for it (man 7 ip)


def open_receiver(group: str, port: int, interface: str = "0.0.0.0") -> socket.socket:  # noqa: S104
    """A UDP socket that receives ``group``:``port``, joined on ``interface`` (an address or a name).

    Bound to ``(group, port)``, not ``0.0.0.0``, so it never gets the datagrams of other groups joined on this
    host (Linux's ``IP_MULTICAST_ALL`` default), and ``SO_REUSEADDR`` so several listeners can share the port.
    Raises :class:`ValueError` for a group that is not multicast and :class:`OSError` with a clear message if
    the interface does not exist or has no such address.
    """
    check_group(group)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range (1-65535)")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((group, port))
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
        except OSError:  # not Linux: binding to the group already filters
            pass
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership_request(group, interface))
    except OSError as e:
        sock.close()
        where = interface or "0.0.0.0"  # noqa: S104
        raise OSError(e.errno, f"cannot join {group}:{port} on {where}: {e.strerror or e}") from e
    return sock
