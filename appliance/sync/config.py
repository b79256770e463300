"""``[sync]`` and ``[sync.server]``: ``teleinfo sync`` and ``teleinfo sync-server`` (docs/SYNC.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.config import Secret, ip_address, opt, section

__all__ = ["SyncConfig", "SyncServerConfig"]


def _client_name(value: str) -> str | None:
    if value and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", value):
        return f"must be 1-64 letters, digits, '_' or '-' (got {value!r}): it names a directory on the server"
    return None


@dataclass(frozen=True)
class SyncServerConfig:
    """teleinfo sync-server: receives every client's tree (docs/SYNC.md)."""

    bind: str = opt("127.0.0.1", "Address to listen on (0.0.0.0: every IPv4 interface).", check=ip_address)
    port: int = opt(4243, "TCP port.", lo=1, hi=65535)
    root: str = opt("/srv/teleinfo-sync", "Each client's tree is stored in <root>/<client name>/.")
    tokens_file: str = opt(
        "/etc/teleinfo/sync-clients", 'One "name token" line per client (tokens at least 16 characters).'
    )
    tls_cert: str = opt("", 'Certificate chain file for TLS ("" = plain TCP).')
    tls_key: str = opt("", "Private key of tls_cert.")
    max_connections: int = opt(
        64, 'Connections served at once (logged in or not); further ones are told "server busy".', lo=1, hi=4096
    )
    max_pending: int = opt(
        16,
        "Connections at once that have not logged in yet (at most max_connections): the rest stays for clients. "
        "When full, a newcomer from an address holding fewer takes the slot of the oldest one from the address "
        'holding the most, else it is told "server busy".',
        lo=1,
        hi=4096,
    )
    max_file_mb: float = opt(1024.0, "Largest file a client may declare (MB).", lo=0.001, hi=1_000_000)
    max_tree_mb: float = opt(10240.0, "Largest tree a client may store (MB).", lo=0.001, hi=100_000_000)
    max_files: int = opt(100_000, "Most files and directories a client may store.", lo=1, hi=100_000_000)
    max_requests_per_second: float = opt(
        200.0, "Requests a connection may make per second (burst: as many); a faster one is cut off.", lo=1, hi=100_000
    )
    idle_timeout: float = opt(300.0, "A connection silent this long is closed (s).", lo=1, hi=86400)

    def validate(self) -> list[tuple[str, str]]:
        if bool(self.tls_cert) != bool(self.tls_key):
            return [("tls_key" if self.tls_cert else "tls_cert", "TLS needs both tls_cert and tls_key")]
        return []


@dataclass(frozen=True)
class SyncConfig:
    """teleinfo sync: mirror a directory (the journal by default) to a sync-server, live (inotify)."""

    address: str = opt("", 'The sync-server, "host:port" ("" = not configured).', example='"nas.lan:4243"')
    name: str = opt("", 'This client\'s name on the server ("" = the host name).', check=_client_name)
    token: Secret | None = opt(None, "This client's token on the server.", example='{ env = "TELEINFO_SYNC_TOKEN" }')
    directory: str = opt("", 'Directory to mirror ("" = the journal directory).')
    tls: bool = opt(False, "Connect with TLS.")
    ca_file: str = opt("", 'CA certificate to verify the server with ("" = the system\'s CAs).')
    reconnect_max_backoff: float = opt(30.0, "Longest wait between two connection attempts (s).", lo=0.1, hi=3600)
    server: SyncServerConfig = section(SyncServerConfig)
